"""`exchange serve --workers N`: workers on one port, one audit log, a supervisor that restarts and stops them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from audit.note import Verifier
from audit.records import parse_entry_line
from audit.verify import verify_export
from exchange import pki
from exchange.auditlog.export import export_lines
from exchange.bootstrap import OperatorSeed, initialize
from exchange.cli.main import main
from exchange.config import Settings
from exchange.errors import ConfigError
from exchange.server.workers import check, worker_settings
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import exchange_pb2_grpc
from tests.exchange_world import lookup, make_world, serve_lookup
from tests.harness import AUTHORITY, RunningHub, base_settings, running_hub

PROJECT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"worker (\d+) serving on port \d+ \(pid (\d+)\)")
STOP_LIMIT = 40.0  # seconds SIGTERM may take to stop the supervisor and every worker (grace 10 s, then margin)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _two_free_ports() -> int:
    """A port whose next one is free too (worker i serves metrics on the base port + i)."""
    while True:
        port = _free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def _ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
        return bool(answer.status == 200)


def _serving(log: Path) -> dict[int, int]:
    """The pid each worker slot last reported serving with, from the supervisor's JSON log."""
    pids: dict[int, int] = {}
    for line in log.read_text().splitlines():
        try:
            message = str(json.loads(line).get("message", ""))
        except json.JSONDecodeError:
            continue
        if found := SERVING.search(message):
            pids[int(found[1])] = int(found[2])
    return pids


def _until(limit: float, what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {limit}s"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@contextmanager
def _workers(
    a: RunningHub, postgres_url: str, log: Path, port: int, metrics: int = 0
) -> Iterator[subprocess.Popen[str]]:
    """`exchange serve --workers 2` on ``port``, sharing hub A's home and PostgreSQL store; stopped after."""
    env = {
        **os.environ,
        "EXCHANGE_HOME": str(a.settings.home),
        "EXCHANGE_ALLOW_SQLITE_BACKENDS": "true",
        "EXCHANGE_DATABASE_URL": postgres_url,
        "EXCHANGE_METRICS_LISTEN": f"127.0.0.1:{metrics}",
        "EXCHANGE_LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "exchange.cli.main", "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}"]
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would block the supervisor
        supervisor = subprocess.Popen(command, cwd=PROJECT, env=env, stderr=sink, text=True)
        try:
            _until(60, "both workers serving", lambda: supervisor.poll() is None and len(_serving(log)) == 2)
            yield supervisor
        finally:
            if supervisor.poll() is None:
                supervisor.kill()
                supervisor.wait(timeout=30)


def _query_fresh(settings: Settings, identity: Path, ask: xpb.QueryRequest) -> str:
    """One Query over a new connection (a channel with its own subchannels): the kernel picks its worker."""
    files = pki.IdentityFiles(identity)
    credentials = grpc.ssl_channel_credentials(files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes())
    with grpc.secure_channel(settings.hub_address, credentials, [("grpc.use_local_subchannel_pool", 1)]) as channel:
        answer = exchange_pb2_grpc.ExchangeServiceStub(channel).Query(ask, timeout=20)
    assert len(answer.records) == 1
    return str(answer.exchange_id)


def _exchange_records(a: RunningHub) -> list[dict[str, object]]:
    """Every exchange record of the log, after checking the whole export against the log's key."""
    a.hub.audit.flush()
    verifier = Verifier.parse(a.files.audit_verifier.read_text())
    lines = list(export_lines(a.hub.store.audit, verifier))
    verify_export(lines, verifier)  # one gap-free, signed sequence, whichever process wrote each record
    records = [json.loads(r) for r in (parse_entry_line(x)[2] for x in lines[1:] if x.startswith("E\t")) if r]
    return [r for r in records if r["kind"] == "exchange"]


def test_two_workers_share_the_port_and_one_log_and_are_replaced_and_stopped(tmp_path: Path, postgres_url: str) -> None:
    port = _free_port()
    log = tmp_path / "supervisor.log"
    with running_hub(base_settings(tmp_path / "hub", postgres_url)) as a:
        world = make_world(a)
        serve_lookup(world, tmp_path, quota=1_000_000, rate=10_000)
        on_workers = replace(a.settings, hub_address=f"localhost:{port}")
        metrics = _two_free_ports()
        with _workers(a, postgres_url, log, port, metrics) as supervisor:
            first = _serving(log)
            assert _ready(metrics) and _ready(metrics + 1)  # each worker's own /readyz, on the base port + i
            answered = [_query_fresh(on_workers, world.consumer_system, lookup()) for _ in range(40)]

            os.kill(first[1], signal.SIGKILL)  # a worker dies: the supervisor starts another in its slot
            _until(30, "worker 1 replaced", lambda: _serving(log).get(1, first[1]) != first[1])
            replaced = _serving(log)[1]
            assert not _alive(first[1]) and _alive(replaced) and _serving(log)[0] == first[0]
            answered += [_query_fresh(on_workers, world.consumer_system, lookup()) for _ in range(20)]

            started = time.monotonic()
            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(timeout=STOP_LIMIT) == 0, log.read_text()
            assert time.monotonic() - started < STOP_LIMIT
            assert not any(_alive(pid) for pid in (first[0], replaced)), "a worker outlived its supervisor"
        records = _exchange_records(a)
    logged = {str(r["exchange_id"]) for r in records if r["outcome"] == "ok"}
    assert [x for x in answered if x not in logged] == []
    hubs = {str(r["hub"]).rpartition(":")[2] for r in records}
    assert {str(first[0]), str(first[1])} <= hubs, f"calls reached only {hubs}"  # both workers answered
    stopped = log.read_text()
    assert "exited with signal 9" in stopped and stopped.count("stopped (status 0)") == 2


def test_several_workers_refuse_sqlite_and_port_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "hub"
    assert main(["--home", str(home), "serve", "--workers", "2", "--listen", "127.0.0.1:17443"]) == 2
    assert "needs a PostgreSQL store" in capsys.readouterr().err
    postgres = Settings(home=home, database_url="postgresql+psycopg://h/db", workers=3, listen="127.0.0.1:0")
    with pytest.raises(ConfigError, match="listen needs a fixed one"):
        check(postgres)
    with pytest.raises(ConfigError, match="past 65535"):
        check(replace(postgres, listen="127.0.0.1:7443", metrics_listen="127.0.0.1:65534"))
    with pytest.raises(ConfigError, match="federation listener's port too"):
        check(replace(postgres, listen="127.0.0.1:7443", federation_listen="127.0.0.1:0"))
    check(replace(postgres, listen="127.0.0.1:7443", federation_listen="127.0.0.1:7445"))
    check(replace(postgres, listen="127.0.0.1:7443"))
    check(Settings(home=home, listen="127.0.0.1:0"))  # one worker: anything that served before still does


def test_worker_settings_spread_metrics_and_keep_the_console_on_worker_0() -> None:
    base = Settings(metrics_listen="0.0.0.0:9464", console_listen="0.0.0.0:7444", workers=4)
    assert [worker_settings(base, i).metrics_listen for i in range(3)] == [
        "0.0.0.0:9464",
        "0.0.0.0:9465",
        "0.0.0.0:9466",
    ]
    assert [worker_settings(base, i).console_listen for i in range(2)] == ["0.0.0.0:7444", ""]
    assert worker_settings(replace(base, metrics_listen="127.0.0.1:0"), 3).metrics_listen == "127.0.0.1:0"


def test_supervisor_gives_up_with_the_workers_error_when_they_cannot_start(tmp_path: Path, postgres_url: str) -> None:
    settings = base_settings(tmp_path / "hub", postgres_url)
    initialize(settings, OperatorSeed(AUTHORITY, "op-admin", "王运维"))
    env = {
        **os.environ,
        "EXCHANGE_HOME": str(settings.home),
        "EXCHANGE_DATABASE_URL": postgres_url,
        "EXCHANGE_METRICS_LISTEN": "",
        "EXCHANGE_WORKERS": "2",
    }
    with socket.socket() as taken:  # another program holds the port (without SO_REUSEPORT)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "exchange.cli.main", "serve", "--listen", listen],
            check=False,
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker") and "could not start (3 tries)" in last and "cannot listen on" in last


def test_workers_stop_themselves_when_their_supervisor_is_killed(tmp_path: Path, postgres_url: str) -> None:
    port = _free_port()
    log = tmp_path / "supervisor.log"
    with running_hub(base_settings(tmp_path / "hub", postgres_url)) as a, _workers(a, postgres_url, log, port) as s:
        pids = list(_serving(log).values())
        s.send_signal(signal.SIGKILL)
        s.wait(timeout=10)
        _until(STOP_LIMIT, "the orphaned workers stopped", lambda: not any(_alive(pid) for pid in pids))
    assert log.read_text().count("hub stopped") == 2  # each drained and finished, as on SIGTERM
