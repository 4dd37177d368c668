"""Operating the hub: the metrics of a hub that served exchanges, and health that follows the store and audit log."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from audit.records import AuditRecord
from exchange.errors import Unavailable
from exchange.logs import JsonFormatter
from tests.exchange_world import PERSON_ID, World, fails, lookup, make_world, query, serve_lookup
from tests.harness import POLICE, RunningHub, base_settings, running_hub

IDENTITY = "10101/350200000001"


def _get(hub: RunningHub, path: str) -> tuple[int, str]:
    server = hub.hub.metrics_server
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(name="served")
def served_fixture(hub: RunningHub, tmp_path: Path) -> World:
    return served(hub, tmp_path)


def served(hub: RunningHub, tmp_path: Path) -> World:
    """A hub that has answered and refused exchanges."""
    world = make_world(hub)
    serve_lookup(world, tmp_path)
    stub = world.exchange()
    for _ in range(3):
        stub.Query(lookup(), timeout=20)
    fails(grpc.StatusCode.PERMISSION_DENIED, stub.Query, lookup("1", purpose="x"))
    hub.hub.audit.flush()
    return world


def _samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def test_the_exposition_of_a_hub_that_served_exchanges(served: World) -> None:
    status, body = _get(served.hub, "/metrics")
    assert status == 200
    samples = _samples(body)
    ok = (("consumer_department", "11350200MB00456789"), ("method", "query"), ("outcome", "ok"), ("resource", IDENTITY))
    assert samples[("exchange_exchanges_total", ok)] == 3
    denied = tuple((k, "denied" if k == "outcome" else v) for k, v in ok)
    assert samples[("exchange_exchanges_total", denied)] == 1
    assert samples[("exchange_decision_duration_seconds_count", ())] == 4
    assert samples[("exchange_provider_call_duration_seconds_count", (("provider", POLICE.code),))] == 3
    assert samples[("exchange_audit_records_appended_total", ())] >= 4
    assert samples[("exchange_grants", (("state", "active"),))] == 1
    assert ("exchange_certificate_expiry_timestamp_seconds", (("principal", "system/bdc-djxt"),)) in samples
    own = {
        dict(labels)["principal"] for name, labels in samples if name == "exchange_certificate_expiry_timestamp_seconds"
    }
    assert "hub/server" in own and any(p.startswith("hub/ca/") for p in own)  # the hub's own certificates too
    assert 0 <= samples[("exchange_audit_checkpoint_age_seconds", ())] < 60
    assert samples[("exchange_ready", ())] == 1
    names = {name for name, _ in samples}
    assert {"exchange_share_requests_pending", "exchange_share_requests_overdue"} <= names


def _series(exposition: str, name: str) -> set[tuple[tuple[str, str], ...]]:
    return {labels for sample, labels in _samples(exposition) if sample == name}


def test_codes_a_caller_makes_up_add_no_series(served: World) -> None:
    """Made-up codes, well formed or not (one of 5,000 characters), share one ``unknown`` label; real ones stay."""
    before = _get(served.hub, "/metrics")[1]
    stub = served.exchange()
    junk = [f"99999/35020000{i:04d}" for i in range(20)] + [f"junk-{i}" for i in range(20)] + ["x" * 5000]
    for code in junk:
        fails(
            grpc.StatusCode.NOT_FOUND if code[0] == "9" else grpc.StatusCode.INVALID_ARGUMENT,
            stub.Query,
            query(code, {"id_number": PERSON_ID}, ["name"]),
        )
    stub.Query(lookup(), timeout=20)
    served.hub.hub.audit.flush()
    after = _get(served.hub, "/metrics")[1]
    names = ("exchange_exchanges_total", "exchange_exchange_duration_seconds_count", "exchange_streamed_bytes_total")
    for name in names:
        added = _series(after, name) - _series(before, name)
        assert len(added) <= 2, f"{name} grew by {len(added)} series"  # the unknown code, denied and failed at most
        assert all(dict(labels).get("resource", "unknown") == "unknown" for labels in added), added
    unknown = {
        dict(labels)["outcome"]: value
        for (name, labels), value in _samples(after).items()
        if name == "exchange_exchanges_total" and dict(labels)["resource"] == "unknown"
    }
    assert unknown == {"denied": len(junk)}
    ok = (("consumer_department", "11350200MB00456789"), ("method", "query"), ("outcome", "ok"), ("resource", IDENTITY))
    assert _samples(after)[("exchange_exchanges_total", ok)] == 4  # the real code is labelled as before
    assert not any(code in after for code in junk)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_accepts_the_exposition(served: World) -> None:
    _, body = _get(served.hub, "/metrics")
    checked = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[RunningHub]:
    with running_hub(base_settings(tmp_path / "hub", health_check_seconds=0.2)) as h:
        yield h


def _grpc_health(hub: RunningHub) -> int:
    with hub.client() as c:
        stub = health_pb2_grpc.HealthStub(c.channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


def _until(condition: object, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def test_health_follows_whether_the_store_can_be_written(watched: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _get(watched, "/healthz")[0] == 200 and _get(watched, "/readyz")[0] == 200
    assert _grpc_health(watched) == health_pb2.HealthCheckResponse.SERVING

    def broken() -> None:
        raise Unavailable("the database is down")

    monkeypatch.setattr(watched.hub.store.db, "check_writable", broken)
    assert _until(lambda: _get(watched, "/readyz")[0] == 503)
    assert _grpc_health(watched) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _get(watched, "/healthz")[0] == 200  # alive, not ready
    monkeypatch.undo()
    assert _until(lambda: _get(watched, "/readyz")[0] == 200)
    assert _grpc_health(watched) == health_pb2.HealthCheckResponse.SERVING


def test_health_comes_back_after_a_failed_audit_commit_without_traffic(
    watched: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed group commit turns the hub NOT_SERVING; with no call to commit again (a load balancer has taken
    it out), the health check probes the audit log itself and turns it SERVING once it can be written."""
    committer, audit = watched.hub.committer, watched.hub.store.audit
    assert committer is not None

    def disk_full(*_: object) -> None:
        raise Unavailable("database or disk is full")

    monkeypatch.setattr(audit, "stage", disk_full)
    monkeypatch.setattr(audit, "probe", disk_full)
    with pytest.raises(Unavailable):
        committer.append(AuditRecord("registry", "probe", "2026-11-22T00:00:00.000000Z", "person/x", "", "ok"))
    assert _until(lambda: _get(watched, "/readyz")[0] == 503)
    monkeypatch.undo()  # the disk has room again; no call comes in
    assert _until(lambda: _get(watched, "/readyz")[0] == 200)
    assert _grpc_health(watched) == health_pb2.HealthCheckResponse.SERVING


def test_one_json_line_per_exchange_and_change_without_data(
    hub: RunningHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        served(hub, tmp_path)
    lines = [JsonFormatter().format(r) for r in caplog.records]
    events = [json.loads(line) for line in lines]
    exchanges = [e for e in events if e.get("kind") == "exchange"]
    assert [e["outcome"] for e in exchanges] == ["ok", "ok", "ok", "denied"]
    assert all(e["exchange_id"].startswith("EX") and e["actor"] == "system/bdc-djxt" for e in exchanges)
    changes = {(e["kind"], e["action"]) for e in events if e.get("kind") in {"catalog", "rights", "registry"}}
    assert ("catalog", "bind:sql") in changes and ("rights", "issue_grant") in changes
    assert not any("350203198001012345" in line or "张三" in line for line in lines)
