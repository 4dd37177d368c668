"""A grant's daily quota across two `exchange serve` processes on one PostgreSQL store.

Calls spread over both are refused at exactly the quota (not twice it), and a process killed with
SIGKILL while it holds a leased block gives the block's unused calls back once its holder record has
expired: within four heartbeats (see "Scaling out" in docs/operating.md).
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from exchange.cli.client import HubClient
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import exchange_pb2_grpc
from tests.exchange_world import World, lookup, make_world, serve_lookup
from tests.harness import RunningHub, base_settings, running_hub
from tests.test_two_processes import _hub_b

HEARTBEAT = 0.5
# Longest wait for something the hubs do by themselves: the documented four beats, with room for a busy
# machine. A deadline, not a measure of speed.
DEADLINE = 4 * HEARTBEAT + 20


@pytest.fixture
def hub_a(tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningHub]:
    monkeypatch.setenv("EXCHANGE_QUOTA_HEARTBEAT_SECONDS", str(HEARTBEAT))  # for hub B, started with this env
    with running_hub(base_settings(tmp_path / "hub", postgres_url, quota_heartbeat_seconds=HEARTBEAT)) as a:
        yield a


def _stub(a: RunningHub, world: World, address: str) -> exchange_pb2_grpc.ExchangeServiceStub:
    client = HubClient(replace(a.settings, hub_address=address), world.consumer_system)
    return exchange_pb2_grpc.ExchangeServiceStub(client.channel)


def _answered(stub: exchange_pb2_grpc.ExchangeServiceStub, ask: xpb.QueryRequest) -> str:
    """'' when answered, else the refusal's message (which must be the quota's)."""
    try:
        stub.Query(ask, timeout=20)
        return ""
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        return e.details() or "?"


def _until(check: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < DEADLINE, f"not seen within {DEADLINE}s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_calls_on_two_processes_are_refused_at_exactly_the_quota(
    hub_a: RunningHub, postgres_url: str, tmp_path: Path
) -> None:
    a = hub_a
    world = make_world(a)
    grant = serve_lookup(world, tmp_path, quota=30, rate=10_000)
    ask = lookup()
    with _hub_b(a, postgres_url, tmp_path / "b.log") as (b_address, _):
        stubs = [_stub(a, world, a.settings.hub_address), _stub(a, world, b_address)]
        answered = [0, 0]
        refusals: list[str] = []

        def call(n: int) -> bool:
            refused = _answered(stubs[n % 2], ask)
            if refused:
                refusals.append(refused)
            else:
                answered[n % 2] += 1
            return not refused

        for n in range(200):  # alternating, with pauses for heartbeats to park and unpark blocks
            if n % 7 == 0:
                time.sleep(HEARTBEAT / 2)
            call(n)
            # One process may be refused while the other still holds leased calls: done when both are.
            if len(refusals) >= 4 and not call(0) and not call(1):
                break
    assert sum(answered) == 30 and min(answered) > 0, answered  # both served, together exactly the quota
    today = dt.datetime.now(dt.UTC).date()
    assert a.hub.store.counters.leased(grant, today) == 30
    resets = (today + dt.timedelta(days=1)).isoformat()
    assert (
        refusals[-1] == f"grant {grant} has used its daily quota of 30 calls (30 used); it resets at {resets} 00:00 UTC"
    )


def test_a_killed_process_gives_its_leased_block_back(hub_a: RunningHub, postgres_url: str, tmp_path: Path) -> None:
    a = hub_a
    world = make_world(a)
    grant = serve_lookup(world, tmp_path, quota=1000, rate=10_000)
    today = dt.datetime.now(dt.UTC).date()
    counters = a.hub.store.counters
    with _hub_b(a, postgres_url, tmp_path / "b.log") as (b_address, b):
        assert _answered(_stub(a, world, b_address), lookup()) == ""  # B leases a block of 20 and uses 1
        assert counters.leased(grant, today) == 20
        _until(lambda: counters.parked() == 19)  # B's heartbeat parked its 19 unused calls
        assert counters.live_holders() == 2
        b.send_signal(signal.SIGKILL)
        b.wait(timeout=10)
        killed = time.monotonic()
        _until(lambda: counters.leased(grant, today) == 1)  # A's heartbeat returned them once B's record expired
        back = time.monotonic() - killed
    assert counters.parked() == 0 and counters.live_holders() == 1
    assert _answered(_stub(a, world, a.settings.hub_address), lookup()) == ""  # A leases from the pool
    assert counters.leased(grant, today) == 21
    print(f"a killed process's parked calls were back {back:.1f}s after SIGKILL (heartbeat {HEARTBEAT}s)")
