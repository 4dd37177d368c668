"""One output convention: every verb prints a table by default and JSON with ``--json``; proofs with their hashes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from exchange import models as m
from exchange.cli.main import main
from tests.harness import AUTHORITY, POLICE, RunningHub, identity_spec


def _run(hub: RunningHub, identity: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(["--hub", hub.settings.hub_address, "--identity", str(identity), *argv]) == 0
    return capsys.readouterr().out


def _json(hub: RunningHub, identity: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    data = json.loads(_run(hub, identity, capsys, "--json", *argv))
    assert isinstance(data, dict)
    return data


def _hexes(value: object) -> list[bytes]:
    assert isinstance(value, list)
    return [bytes.fromhex(str(h)) for h in value]


@pytest.fixture
def auditor(hub: RunningHub) -> Path:
    hub.add_department(POLICE)
    auditor = hub.add_person("au-chen", AUTHORITY.code, m.Role.AUDITOR)
    hub.hub.audit.flush()
    for name in ("ga-steward", "zj-steward", "ga-clerk"):
        hub.add_person(name, POLICE.code, m.Role.OWNER_STEWARD)
    hub.hub.audit.flush()
    return auditor


def test_checkpoint_and_proofs_print_their_hashes_in_a_table_and_as_json(
    hub: RunningHub, auditor: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(hub.files.audit_verifier)
    head = _json(hub, auditor, capsys, "audit", "checkpoint")
    size, root = int(str(head["size"])), bytes.fromhex(str(head["root_hash"]))
    assert size >= 4 and "exchange.local/audit" in str(head["note"])
    table = _run(hub, auditor, capsys, "audit", "checkpoint")
    assert f"root hash     {root.hex()}" in table and "signed note:" in table

    proof = _json(hub, auditor, capsys, "audit", "proof", "1", "--key", key)
    hashes = _hexes(proof["hashes"])
    assert proof["verified"] is True and proof["tree_size"] == size and hashes
    # The printed hashes are the proof: another tool can check it from them alone.
    verify_inclusion(bytes.fromhex(str(proof["leaf_hash"])), 1, size, hashes, root)
    table = _run(hub, auditor, capsys, "audit", "proof", "1", "--key", key)
    assert all(f"proof[{i}]" in table and h.hex() in table for i, h in enumerate(hashes))
    assert f"leaf hash  {proof['leaf_hash']}" in table

    first = hub.hub.audit.store.checkpoints(1, 10**9)[0][0]
    consistency = _json(hub, auditor, capsys, "audit", "consistency", str(first), "--key", key)
    old_root = bytes.fromhex(str(consistency["from_root_hash"]))
    verify_consistency(first, size, _hexes(consistency["hashes"]), old_root, root)
    table = _run(hub, auditor, capsys, "audit", "consistency", str(first), "--key", key)
    assert (
        f"extends that of {first} (nothing removed or changed)" in table and str(consistency["to_root_hash"]) in table
    )

    found = _json(hub, auditor, capsys, "audit", "search", "--actor", "person/op-admin", "--key", key)
    entries = found["entries"]
    assert isinstance(entries, list) and entries and found["checked"] is True
    hit = entries[0]
    assert leaf_hash(str(hit["record"]).encode()).hex() == hit["leaf_hash"]


def test_binding_is_a_table_and_catalog_get_shows_what_is_filterable(
    hub: RunningHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_department(POLICE)
    steward = hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD)
    spec = identity_spec()
    items = tuple(m.DataItem(**{**vars(i), "filterable": i.name == "id_number"}) for i in spec.data_items)
    hub.publish(steward, identity_spec(data_items=items))
    url = f"sqlite:///{tmp_path / 'ga.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE rk (xm TEXT, sfzh TEXT, dz TEXT)"))
    engine.dispose()
    file = tmp_path / "binding.yaml"
    file.write_text(
        f"resource_code: 10101/350200000001\nsql: {{url: '{url}', table: rk, columns: {{name: xm}}}}\n",
        encoding="utf-8",
    )
    table = _run(hub, steward, capsys, "bind", str(file), "--reason", "接入前置库")
    assert "sql.table" in table and "name=xm" in table and "{" not in table
    table = _run(hub, steward, capsys, "binding", "10101/350200000001")
    lines = table.splitlines()
    assert lines[0].split() == ["field", "value"] and any(line.split() == ["backend", "sql"] for line in lines)
    shown = _json(hub, steward, capsys, "binding", "10101/350200000001")
    assert shown["sql"] == {"url": url, "table": "rk", "columns": {"name": "xm"}}

    entry = _run(hub, steward, capsys, "catalog", "get", "10101/350200000001")
    assert any(line.split() == ["filterable", "id_number"] for line in entry.splitlines())
    rows = {line.split()[0]: line for line in entry.splitlines() if line.startswith("  ")}
    assert rows["id_number"].endswith("personal, filterable)") and "filterable" not in rows["name"]


def test_export_names_the_key_to_verify_it_with(
    hub: RunningHub, auditor: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "log.jsonl"
    # The identity was issued into the hub's home (HOME/identities/NAME): its log.pub is the one to name.
    out = _run(hub, auditor, capsys, "audit", "export", "--out", str(export))
    assert f"--key {hub.files.audit_verifier}`" in out
    assert main(["audit", "verify", str(export), "--key", str(hub.files.audit_verifier)]) == 0
    # An identity kept elsewhere, no home here: the hint says what the key is, not a path that is not it.
    elsewhere = tmp_path / "a" / "b"
    shutil.copytree(auditor, elsewhere)
    out = _run(hub, elsewhere, capsys, "--home", str(tmp_path / "nohub"), "audit", "export", "--out", str(export))
    assert "--key LOG_PUB`" in out and "audit/log.pub in the hub's home" in out


def test_the_verbs_on_the_hubs_host_answer_in_json_too(
    hub: RunningHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXCHANGE_DATABASE_URL", raising=False)
    home = ["--home", str(hub.settings.home), "--json"]

    def local(*argv: str) -> dict[str, object]:
        capsys.readouterr()
        assert main([*home, *argv]) == 0, capsys.readouterr().err
        data = json.loads(capsys.readouterr().out)
        assert isinstance(data, dict)
        return data

    status = local("ca", "status")
    cas = status["cas"]
    assert isinstance(cas, list) and cas[0]["signing"] is True and len(cas[0]["fingerprint"]) == 64
    assert local("audit", "check-index")["differences"] == 0
    archive = tmp_path / "store.tar"
    assert local("backup", "--out", str(archive))["written_to"] == str(archive) and archive.is_file()
    assert local("prune-audit")["pruned"] == 0
    assert local("migrate") == {"schema": "current"}
    capsys.readouterr()
    assert main(["--home", str(hub.settings.home), "ca", "status"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["fingerprint", "role", "until", "key", "subject"]
