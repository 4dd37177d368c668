"""The ``exchange`` command against a real hub: verbs, files, the demo, and serve with SIGTERM."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from sqlalchemy import update

from exchange import models as m
from exchange.cli import demo_subscriptions
from exchange.cli.demo import sample_id_number
from exchange.cli.main import main
from exchange.store import Database
from exchange.store.schema import AuditEntryRow
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import registry_pb2_grpc
from tests.harness import POLICE, RunningHub, base_settings, identity_spec, running_hub

PROJECT = Path(__file__).resolve().parent.parent


def _run(hub: RunningHub, identity: Path, *argv: str) -> int:
    return main(["--hub", hub.settings.hub_address, "--identity", str(identity), *argv])


def test_registry_verbs(hub: RunningHub, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    op = hub.operator
    args = [
        "dept",
        "create",
        "--code",
        POLICE.code,
        "--name",
        POLICE.name,
        "--division-code",
        "350200",
        "--level",
        "city",
    ]
    assert _run(hub, op, *args) == 0
    assert (
        _run(
            hub, op, "system", "create", "--code", "ga-rkxx", "--name", "人口信息管理系统", "--department", POLICE.code
        )
        == 0
    )
    assert (
        _run(
            hub,
            op,
            "person",
            "create",
            "--username",
            "ga-steward",
            "--name",
            "张警官",
            "--department",
            POLICE.code,
            "--id-number",
            sample_id_number("ga-steward"),
            "--role",
            "owner_steward",
        )
        == 0
    )
    steward = tmp_path / "ga-steward"
    assert _run(hub, op, "cert", "issue", "--person", "ga-steward", "--out", str(steward)) == 0
    out = tmp_path / "ga-rkxx"
    # A system is certified by its own department, not by the operator.
    assert _run(hub, op, "cert", "issue", "--system", "ga-rkxx", "--out", str(out)) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err and not out.exists()
    assert _run(hub, steward, "cert", "issue", "--system", "ga-rkxx", "--out", str(out)) == 0
    capsys.readouterr()
    assert _run(hub, out, "--json", "whoami") == 0
    me = json.loads(capsys.readouterr().out)
    assert me["principal"] == {"kind": "PRINCIPAL_KIND_SYSTEM", "code": "ga-rkxx"}
    assert _run(hub, op, "dept", "list", "--level", "city") == 0
    assert _run(hub, op, "person", "list", "--role", "owner_steward") == 0
    assert _run(hub, op, "cert", "list", "--system", "ga-rkxx") == 0
    printed = capsys.readouterr().out
    assert "厦门市公安局" in printed and "ga-steward" in printed and "system/ga-rkxx" in printed
    fingerprint = me["certificateFingerprintSha256"]
    assert _run(hub, op, "cert", "revoke", fingerprint, "--reason", "系统下线") == 0
    assert _run(hub, out, "whoami") == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_refusals_are_explained_with_exit_codes(hub: RunningHub, capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(
        hub,
        hub.operator,
        "dept",
        "create",
        "--code",
        "11350200MB0023456X",
        "--name",
        "x",
        "--division-code",
        "350200",
        "--level",
        "city",
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "department.code" in err
    assert main(["--identity", "/nonexistent", "whoami"]) == 2
    assert "the identity directory /nonexistent does not exist" in capsys.readouterr().err


CATALOG = """
resources:
  - code: 10101/350200000001
    name: 居民身份信息
    department: {police}
    share_type: conditional
    share_conditions: 按事项申请
    legal_basis: 《中华人民共和国居民身份证法》
    share_method: query
    update_cycle: real_time
    data_items:
      - {{name: name, title: 姓名, type: string, sensitivity: important, personal: true}}
      - {{name: id_number, title: 公民身份号码, type: string, sensitivity: important, personal: true}}
"""


def test_catalog_load_is_idempotent_and_updates(
    hub: RunningHub, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hub.add_department(POLICE)
    steward = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    file = tmp_path / "catalog.yaml"
    file.write_text(CATALOG.format(police=POLICE.code), encoding="utf-8")
    assert _run(hub, steward, "catalog", "load", str(file), "--reason", "首次编目") == 0
    assert _run(hub, steward, "catalog", "load", str(file)) == 0  # unchanged: no new version
    file.write_text(
        CATALOG.format(police=POLICE.code).replace("按事项申请", "按事项申请，身份号码脱敏"), encoding="utf-8"
    )
    assert _run(hub, steward, "catalog", "load", str(file), "--reason", "补充条件") == 0
    capsys.readouterr()
    assert _run(hub, steward, "--json", "catalog", "history", "10101/350200000001") == 0
    history = json.loads(capsys.readouterr().out)["versions"]
    assert [(v["version"], v["reason"]) for v in history] == [("1", "首次编目"), ("2", "补充条件")]
    assert _run(hub, steward, "catalog", "suspend", "10101/350200000001", "--reason", "维护") == 0
    assert _run(hub, steward, "catalog", "list", "--field", "id_number", "--status", "suspended") == 0
    assert "居民身份信息" in capsys.readouterr().out


def test_catalog_file_errors_name_every_place(
    hub: RunningHub, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    file = tmp_path / "bad.yaml"
    bad = (
        CATALOG.format(police=POLICE.code)
        .replace("type: string, sensitivity: important, personal: true}\n", "type: text}\n", 1)
        .replace("share_method: query", "share_method: fax")
    )
    file.write_text(bad, encoding="utf-8")
    assert _run(hub, hub.operator, "catalog", "load", str(file)) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: resources[0].data_items[0].type: 'text' is not one of string" in err
    assert "resources[0].share_method: 'fax'" in err
    file.write_text("resources: [", encoding="utf-8")
    assert _run(hub, hub.operator, "catalog", "load", str(file)) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_demo_runs_its_tour(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "demo"
    for _ in range(2):  # the demo rebuilds its home each time
        assert (
            main(
                [
                    "--home",
                    str(home),
                    "demo",
                    "--once",
                    "--listen",
                    "127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--console-listen",
                    "127.0.0.1:0",
                ]
            )
            == 0
        )
    out, err = capsys.readouterr()
    # The hub's log goes to a file, not into the tour's text; each refusal is told once, each violation once.
    assert "INFO" not in err and "refused denied" not in err and (home / "hub.log").is_file()
    assert "refused denied:SuspendResource" in (home / "hub.log").read_text(encoding="utf-8")
    assert out.count("resource.legal_basis: is required for a conditional resource") == 2  # two runs
    for expected in (
        "厦门市不动产登记中心",
        "不动产交易完税信息",
        "PERMISSION_DENIED",
        "ALREADY_EXISTS",
        "系统升级，暂停共享",
        "/signin/link/",
        "answered by person/sw-steward: corrected, effective ",
        "received (on time/late/corrected)",
    ):
        assert expected in out
    # The objection to the tax amount, answered "corrected"; the report counts it for the tax bureau.
    assert re.search(r"^OB-\d{8}-[0-9a-f]{8}\s+20501/350200000001\s+EX\w+\s+amount\s.*answered\s+corrected$", out, re.M)
    tax_bureau = next(line for line in reversed(out.splitlines()) if line.startswith("11350200MB00567892 "))
    assert "1 (1/0/1)" in tax_bureau, "one objection received, answered on time, corrected"
    _assert_subscriptions_toured(out.split("== 1. ")[-1])  # the second run's tour
    _assert_federation_toured(out.split("== 1. ")[-1])
    (tmp_path / "precious").mkdir()
    assert (
        main(
            [
                "--home",
                str(tmp_path / "precious"),
                "demo",
                "--once",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ]
        )
        == 2
    )


def _assert_federation_toured(out: str) -> None:
    """The demo's federation steps: the county hub peered with the city, the city's entries in the county's
    catalog, the county's application granted at the city, its query through both hubs masked at the city, and
    the cross-hub receipt verified offline."""
    federation = out.split("== 17. ")[1].split("== 23. ", maxsplit=1)[0]
    assert "hub 350203 registers 350200 厦门市政务数据共享平台 as its parent" in federation
    assert re.search(r"hub 350200 registers 350203 \S+ as its child .*: active$", federation, re.M)
    catalog = federation.split("== 18. ")[1].split("== 19. ")[0]
    assert re.search(r"^10101/350200000001\s+居民身份信息\s", catalog, re.M)
    applied = federation.split("== 20. ")[1].split("== 21. ")[0]
    granted = re.search(r"at the county: (SR-\S+) granted, grant (GR-\S+), masks \['name'\]", applied)
    assert granted is not None, applied
    assert re.search(rf"at the city: SR-\S+ for 11350203MB0011002L@350203, .* granted {granted[2]}$", applied, re.M)
    queried = federation.split("== 21. ")[1].split("== 22. ")[0]
    assert "name 林**, id_number 350203198507154313" in queried and "masked at the city: name (name)" in queried
    receipt = federation.split("== 22. ")[1]
    assert "the receipt verifies: one exchange, recorded and witnessed at each hub it crossed" in receipt
    assert re.search(
        r"^  siming\.exchange\.local/audit: exchange EX\w+, .*witnessed by exchange\.local/audit/witness", receipt, re.M
    )
    assert re.search(
        r"^  exchange\.local/audit: exchange EX\w+, .*witnessed by siming\.exchange\.local/audit/witness", receipt, re.M
    )


def _assert_subscriptions_toured(out: str) -> None:
    """The demo's subscription steps: changes received as each grant masks them, the owners' view, the audit."""
    followed = out.split("== 13. ")[1].split("== 14. ", maxsplit=1)[0]
    tax, certificates, registry = followed.split(" <- ")[1:]
    assert tax.startswith("10201/350200000003 (税源登记)") and "2 change(s)" in tax
    for company in demo_subscriptions.NEW_COMPANIES:
        number = str(company["fddbrzjhm"])
        assert f"{number[:6]}********{number[-4:]}" in tax and number not in out  # masked as the grant says
        assert str(company["qymc"]) in tax and str(company["qymc"]) in registry
    assert str(demo_subscriptions.OLD_COMPANY["qymc"]) not in followed, "a subscription starts now"
    assert "representative_id_number (id_number mask)" in tax and "representative_id_number" not in registry
    assert certificates.startswith("20302/350200000002 (税源登记)") and "350203********4313" in certificates
    assert re.search(
        r"^1\s+upsert\s+DJ\d{13}\s+闽\(\d{4}\)厦门市不动产权第0012345号\s+转移登记\s+林志强", certificates, re.M
    )
    assert registry.startswith("10201/350200000003 (不动产转移登记)") and "2 change(s)" in registry
    owners = out.split("== 14. ")[1].split("== 15. ", maxsplit=1)[0]
    # The late registration waits for both subscribers of market regulation's resource; its steward sees them.
    for consumer in ("11350200MB00567892/sw-zgxt\\s+税源登记", "11350200MB00456789/bdc-djxt\\s+不动产转移登记"):
        assert re.search(rf"^SB-\S+\s+10201/350200000003\s+{consumer}\s+active\s+2\s+3\s+1\s", owners, re.M)
    assert re.search(
        r"^SB-\S+\s+20302/350200000002\s+11350200MB00567892/sw-zgxt\s+税源登记\s+active\s+2\s+2\s+0", owners, re.M
    )
    assert "the batches in the audit log (3 records)" in owners
    assert re.search(
        r"system/sw-zgxt\s+subscription\s+20302/350200000002\s+税源登记\s+owner_id_number=id_number\s+2\s", owners
    )


def test_insecure_development_mode_names_callers_by_metadata(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (
        running_hub(base_settings(tmp_path / "hub", insecure_dev=True)) as hub,
        grpc.insecure_channel(hub.settings.hub_address) as channel,
    ):
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        me = stub.WhoAmI(rpb.WhoAmIRequest(), metadata=(("x-exchange-dev-principal", "person/op-admin"),), timeout=5)
        assert me.principal.code == "op-admin"
        with pytest.raises(grpc.RpcError) as info:
            stub.WhoAmI(rpb.WhoAmIRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stranger = (("x-exchange-dev-principal", "person/nobody"),)
        with pytest.raises(grpc.RpcError) as info:
            stub.WhoAmI(rpb.WhoAmIRequest(), metadata=stranger, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert any("INSECURE DEVELOPMENT MODE" in r.message and r.levelname == "WARNING" for r in caplog.records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_stops_gracefully_on_sigterm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "hub"
    assert (
        main(
            [
                "--home",
                str(home),
                "init",
                "--department-code",
                "11350200MB0012345Y",
                "--department-name",
                "厦门市大数据管理局",
                "--division-code",
                "350200",
                "--operator",
                "op-admin",
            ]
        )
        == 0
    )
    identity = home / "identities" / "person-op-admin"
    port = _free_port()
    env = {
        **os.environ,
        "EXCHANGE_HOME": str(home),
        "EXCHANGE_ALLOW_SQLITE_BACKENDS": "true",
        "EXCHANGE_LISTEN": f"127.0.0.1:{port}",
        "EXCHANGE_METRICS_LISTEN": "127.0.0.1:0",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "exchange.cli.main", "serve"], cwd=PROJECT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while main(["--hub", f"localhost:{port}", "--identity", str(identity), "whoami"]) != 0:
            assert time.monotonic() < deadline, "the hub did not start"
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 0, err
    assert "shutdown requested" in err and "hub stopped" in err


def test_serve_refuses_a_store_that_is_not_migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "hub"
    init = ["--home", str(home), "init", "--department-code", "11350200MB0012345Y", "--department-name", "大数据局"]
    assert main([*init, "--division-code", "350200"]) == 0
    monkeypatch.setenv("EXCHANGE_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["--home", str(home), "serve", "--listen", "127.0.0.1:0"]) == 2
    assert "run `exchange migrate`" in capsys.readouterr().err
    assert main(["--home", str(home), "migrate"]) == 0


def test_rights_verbs(hub: RunningHub, capsys: pytest.CaptureFixture[str]) -> None:
    registry = m.Department("11350200MB00456789", "厦门市不动产登记中心", "350200", m.AdministrativeLevel.CITY)
    hub.add_department(POLICE)
    hub.add_department(registry)
    owner = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    clerk = hub.add_person("bdc-clerk", registry.code, m.Role.CONSUMER)
    manager = hub.add_person("sm-lin", POLICE.code, m.Role.SHARE_MANAGER)
    hub.add_system("bdc-djxt", registry.code)
    hub.publish(owner, identity_spec())
    apply = [
        "request",
        "apply",
        "--resource",
        "10101/350200000001",
        "--purpose",
        "不动产转移登记",
        "--legal-basis",
        "细则第十一条",
        "--field",
        "name",
        "--field",
        "id_number",
        "--system",
        "bdc-djxt",
    ]
    assert _run(hub, clerk, "--json", *apply) == 0
    request_id = json.loads(capsys.readouterr().out)["id"]
    assert _run(hub, owner, "request", "list", "--view", "for-me") == 0
    assert request_id in capsys.readouterr().out
    approve = ["request", "approve", request_id, "--mask", "id_number=id_number", "--reason", "同意"]
    assert _run(hub, owner, *approve, "--verify-masked", "id_number") == 0
    assert "approved" in capsys.readouterr().out
    assert _run(hub, manager, "--json", "grant", "issue", request_id, "--daily-quota", "50") == 0
    grant = json.loads(capsys.readouterr().out)
    assert grant["dailyQuota"] == "50" and grant["masks"] == [{"field": "id_number", "mask": "MASK_KIND_ID_NUMBER"}]
    assert grant["verifyMasked"] == ["id_number"]
    assert _run(hub, owner, "grant", "get", grant["id"]) == 0
    shown = capsys.readouterr().out
    assert "masked items that may be filtered on (verification): id_number" in shown
    assert "0 lookups, 0 found nothing (allowance 5 a day), 0 refused" in shown  # the owner sees today's use
    assert _run(hub, owner, "grant", "suspend", grant["id"], "--reason", "核查") == 0
    assert _run(hub, clerk, "grant", "list") == 0
    assert "suspended" in capsys.readouterr().out
    assert _run(hub, clerk, "request", "approve", request_id) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert _run(hub, owner, "request", "approve", request_id, "--mask", "id_number=blur") == 2
    assert "--mask" in capsys.readouterr().err


def test_audit_verbs(hub: RunningHub, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    hub.add_department(POLICE)
    auditor = hub.add_person("au-chen", "11350200MB0012345Y", m.Role.AUDITOR)
    steward = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    hub.publish(steward, identity_spec())
    hub.hub.audit.flush()
    key = str(hub.files.audit_verifier)
    assert _run(hub, auditor, "audit", "checkpoint") == 0
    assert "exchange.local/audit" in capsys.readouterr().out
    assert _run(hub, auditor, "audit", "search", "--actor", "person/op-admin") == 0
    assert "create_department" in capsys.readouterr().out
    assert _run(hub, steward, "audit", "search") == 0  # the owner sees the records on its resources
    own = capsys.readouterr().out
    assert "10101/350200000001" in own and "create_department" not in own
    assert _run(hub, hub.operator, "audit", "search") == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err

    export = tmp_path / "log.jsonl"
    assert _run(hub, auditor, "audit", "export", "--out", str(export)) == 0
    assert main(["audit", "verify", str(export), "--key", key]) == 0
    assert "the log verifies" in capsys.readouterr().out
    text = export.read_text(encoding="utf-8")
    export.write_text(text.replace("create_department", "delete_department", 1), encoding="utf-8")
    assert main(["audit", "verify", str(export), "--key", key]) == 1
    assert "its record does not hash to its leaf" in capsys.readouterr().err

    tail = tmp_path / "tail.jsonl"
    assert _run(hub, auditor, "audit", "export", "--out", str(tail), "--from", "3") == 0
    assert main(["audit", "verify", str(tail), "--key", key]) == 0
    assert _run(hub, auditor, "audit", "export", "--out", str(tail), "--from", "999") == 1

    receipt = tmp_path / "receipt.json"
    assert _run(hub, auditor, "audit", "receipt", "2", "--out", str(receipt)) == 0
    assert main(["audit", "verify-receipt", str(receipt), "--key", key]) == 0
    forged = json.loads(receipt.read_text(encoding="utf-8"))
    forged["record"] = forged["record"].replace('"ok"', '"failed"')
    receipt.write_text(json.dumps(forged), encoding="utf-8")
    assert main(["audit", "verify-receipt", str(receipt), "--key", key]) == 1
    assert _run(hub, auditor, "audit", "proof", "1", "--key", key) == 0
    first = hub.hub.audit.store.checkpoints(1, 10**9)[0][0]
    hub.add_person("zj-steward", POLICE.code, m.Role.OWNER_STEWARD)
    hub.hub.audit.flush()
    assert _run(hub, auditor, "audit", "consistency", str(first), "--key", key) == 0
    assert "extends that of" in capsys.readouterr().out


def test_prune_audit_signs_its_statement_and_verify_says_what_it_proved(
    hub: RunningHub, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXCHANGE_DATABASE_URL", raising=False)
    hub.add_department(POLICE)
    auditor = hub.add_person("au-chen", "11350200MB0012345Y", m.Role.AUDITOR)
    hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    hub.hub.audit.flush()
    key, home = str(hub.files.audit_verifier), str(hub.settings.home)
    # The first three entries made to look 200 days old in the store (their hashed records keep their time).
    db = Database(hub.settings.effective_database_url)
    try:
        with db.write() as s:
            old = dt.datetime.now(dt.UTC) - dt.timedelta(days=200)
            s.execute(update(AuditEntryRow).where(AuditEntryRow.seq < 3).values(time=old))
    finally:
        db.dispose()
    capsys.readouterr()
    assert main(["--home", home, "prune-audit"]) == 0
    out = capsys.readouterr().out
    assert "pruned the detail of 3 audit entries" in out and "entries before 3 pruned" in out

    held, export = tmp_path / "held.note", tmp_path / "log.jsonl"
    assert _run(hub, auditor, "audit", "checkpoint", "--out", str(held)) == 0
    assert _run(hub, auditor, "audit", "export", "--out", str(export)) == 0
    size = hub.hub.audit.store.size()
    capsys.readouterr()
    assert main(["audit", "verify", str(export), "--key", key, "--checkpoint", str(held)]) == 0
    out = capsys.readouterr().out
    assert f"entries 0 to {size - 1} verified: the whole log, from its first entry (entry 0)" in out
    assert "3 of them pruned (entries 0 to 2) under 1 signed pruning statements" in out
    assert f"consistent with the held checkpoint of size {size}" in out
    assert main(["--json", "audit", "verify", str(export), "--key", key]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["verified"], report["start"], report["end"], report["pruned"]) == (True, 0, size, 3)
    assert report["pruning"]["up_to"] == 3 and report["pruning"]["retention_days"] == 180

    # A record blanked in the file, beyond what the statement covers.
    lines = export.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("E\t3\t"))
    lines[at] = "\t".join(lines[at].split("\t")[:3]) + "\t"
    blanked = tmp_path / "blanked.jsonl"
    blanked.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["audit", "verify", str(blanked), "--key", key]) == 1
    assert "entry 3: its record is missing and no signed pruning statement covers it" in capsys.readouterr().err

    # The log grows; the old export stops short of the checkpoint the auditor now holds.
    hub.add_person("zj-steward", POLICE.code, m.Role.OWNER_STEWARD)
    hub.hub.audit.flush()
    assert _run(hub, auditor, "audit", "checkpoint", "--out", str(held)) == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(export), "--key", key, "--checkpoint", str(held)]) == 1
    assert f"stops short of the held checkpoint: it ends at entry {size}" in capsys.readouterr().err

    tail = tmp_path / "tail.jsonl"
    assert _run(hub, auditor, "audit", "export", "--out", str(tail), "--from", "5") == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(tail), "--key", key, "--checkpoint", str(held)]) == 0
    out = capsys.readouterr().out
    assert "entries 5 to " in out and "entries 0 to 4 are represented only by the header's prefix hashes" in out
