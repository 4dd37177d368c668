"""Console sign-in links over gRPC and the console's CLI verbs, against a real hub on a loopback port.

A person asks with their certificate and gets a one-time link under the console's address; only the
link secret's hash is stored. A system is refused (recorded in the audit log), and a hub with no
console says how to serve one. ``cert export`` writes the identity as PKCS#12 a browser imports.
The console's web server is not started here: the links are built and stored, never opened.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import select

from exchange import models as m
from exchange import pki
from exchange.cli.main import main
from exchange.config import Settings
from exchange.server.console import console_base_url
from exchange.store import Store
from exchange.store.schema import ConsoleLinkRow
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import console_pb2 as pb
from tests.harness import AUTHORITY, POLICE, RunningHub, base_settings, exchange_id_of, reason_of, running_hub

# Nothing listens here: the address only names the console in the links.
CONSOLE = "127.0.0.1:1"
BASE = f"https://{CONSOLE}"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with running_hub(base_settings(tmp_path_factory.mktemp("hub"), console_listen=CONSOLE)) as running:
        running.add_department(POLICE)
        yield running


@pytest.fixture(scope="module")
def person(hub: RunningHub) -> Path:
    return hub.add_person("ga-console", POLICE.code, m.Role.CONSUMER)


@pytest.fixture(scope="module")
def system(hub: RunningHub) -> Path:
    return hub.add_system("ga-console-sys", POLICE.code)


def _link(hub: RunningHub, identity: Path) -> pb.SignInLink:
    with hub.client(identity) as c:
        return c.call(c.console.CreateSignInLink, pb.CreateSignInLinkRequest())


def _links(hub: RunningHub) -> list[ConsoleLinkRow]:
    store = Store(hub.settings.effective_database_url)
    try:
        with store.db.read() as s:
            return list(s.scalars(select(ConsoleLinkRow)))
    finally:
        store.close()


def _run(hub: RunningHub, identity: Path, *argv: str) -> int:
    return main(["--hub", hub.settings.hub_address, "--identity", str(identity), *argv])


def test_a_person_gets_a_link_under_the_console_address_and_only_its_hash_is_stored(
    hub: RunningHub, person: Path
) -> None:
    before = dt.datetime.now(dt.UTC)
    link = _link(hub, person)
    assert link.url.startswith(BASE + "/signin/link/")
    secret = link.url.removeprefix(BASE + "/signin/link/")
    assert len(secret) >= 32 and "/" not in secret
    expires = link.expire_time.ToDatetime(tzinfo=dt.UTC)
    minutes = hub.settings.console_link_minutes
    assert (
        before + dt.timedelta(minutes=minutes - 1) < expires <= dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
    )
    rows = {r.secret_hash: r for r in _links(hub)}
    row = rows[hashlib.sha256(secret.encode()).hexdigest()]
    assert row.username == "ga-console" and row.used_at is None
    assert row.fingerprint == pki.fingerprint_of_pem(pki.IdentityFiles(person).cert.read_bytes())
    assert all(secret not in (r.secret_hash, r.username, r.fingerprint) for r in rows.values())
    assert _link(hub, person).url != link.url  # each call makes a new link


def test_a_system_is_refused_and_the_refusal_is_in_the_audit_log(hub: RunningHub, system: Path) -> None:
    links = len(_links(hub))
    with pytest.raises(grpc.RpcError) as info:
        _link(hub, system)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "SYSTEM_SIGN_IN_DENIED"
    assert "systems call the hub over gRPC" in (error.details() or "")
    assert len(_links(hub)) == links
    exchange_id = exchange_id_of(error)
    assert exchange_id.startswith("EX")
    auditor = hub.add_person("console-auditor", AUTHORITY.code, m.Role.AUDITOR)
    hub.hub.audit.flush()
    with hub.client(auditor) as c:
        found = c.call(c.audit.SearchRecords, apb.SearchRecordsRequest(page_size=10, exchange_id=exchange_id))
    (record,) = [json.loads(e.record) for e in found.entries]
    assert record["actor"] == "system/ga-console-sys" and record["outcome"] == "denied"
    assert (record["kind"], record["action"]) == ("console", "denied:CreateSignInLink")
    assert record["reason"] == "SYSTEM_SIGN_IN_DENIED"


def test_a_hub_without_a_console_says_how_to_serve_one(tmp_path: Path) -> None:
    with running_hub(base_settings(tmp_path)) as bare, pytest.raises(grpc.RpcError) as info:
        _link(bare, bare.operator)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "this hub serves no web console: set console_listen"


def test_the_console_address_is_its_url_setting_else_its_listen_address(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert console_base_url(settings) == ""
    assert console_base_url(Settings(home=tmp_path, console_listen=CONSOLE)) == BASE
    named = Settings(home=tmp_path, console_listen=CONSOLE, console_url="https://hub.example:8443/")
    assert console_base_url(named) == "https://hub.example:8443"


def test_console_login_prints_a_link_and_its_expiry(
    hub: RunningHub, person: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(hub, person, "console", "login") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(BASE + "/signin/link/")
    assert "once" in lines[1] and "expires" in lines[1]
    assert _run(hub, person, "--json", "console", "login") == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == {"url", "expires"} and shown["url"].startswith(BASE + "/signin/link/")
    assert dt.datetime.fromisoformat(shown["expires"]) > dt.datetime.now(dt.UTC)


def test_console_login_as_a_system_ends_in_a_clear_refusal(
    hub: RunningHub, system: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(hub, system, "console", "login") == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]  # the hub's own log shares stderr here
    assert line.startswith("error: PERMISSION_DENIED:") and "the console is for people" in line
    assert "Traceback" not in err


def _password_file(tmp_path: Path, text: str = PASSWORD) -> Path:
    path = tmp_path / "password.txt"
    path.write_text(text + "\n")
    return path


def _load(path: Path, password: str = PASSWORD) -> Any:
    return pkcs12.load_pkcs12(path.read_bytes(), password.encode())


def test_cert_export_writes_a_pkcs12_a_browser_can_import(
    hub: RunningHub, person: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "me.p12"
    argv = ["cert", "export", "--out", str(out), "--password-file", str(_password_file(tmp_path))]
    assert _run(hub, person, *argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    loaded = _load(out)
    files = pki.IdentityFiles(person)
    assert loaded.cert is not None and loaded.key is not None
    assert pki.fingerprint(loaded.cert.certificate) == pki.fingerprint(pki.load_cert(files.cert))
    assert loaded.key.public_key() == pki.load_cert(files.cert).public_key()
    assert [c.certificate for c in loaded.additional_certs] == pki.split_pems(files.ca.read_bytes())
    with pytest.raises(ValueError):
        _load(out, "not the password")


def test_cert_export_never_overwrites_unless_forced(
    hub: RunningHub, person: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "me.p12"
    out.write_bytes(b"kept")
    argv = ["cert", "export", "--out", str(out), "--password-file", str(_password_file(tmp_path))]
    assert _run(hub, person, *argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert out.read_bytes() == b"kept"
    assert _run(hub, person, *argv, "--force") == 0
    assert _load(out).cert is not None
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_cert_export_refuses_a_short_password_or_two_that_differ(
    hub: RunningHub, person: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "me.p12"
    short = _password_file(tmp_path, "short")
    assert _run(hub, person, "cert", "export", "--out", str(out), "--password-file", str(short)) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    typed = iter([PASSWORD, PASSWORD + "!"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    assert _run(hub, person, "cert", "export", "--out", str(out)) == 2
    assert "the two passwords differ" in capsys.readouterr().err
    assert not out.exists()


def test_cert_export_of_a_system_notes_that_systems_cannot_sign_in(
    hub: RunningHub, system: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "system.p12"
    argv = ["cert", "export", "--out", str(out), "--password-file", str(_password_file(tmp_path))]
    assert _run(hub, system, *argv) == 0
    assert "systems cannot sign in to the web console" in capsys.readouterr().out
    assert _load(out).cert is not None


def test_cert_export_without_an_identity_is_a_clean_error(tmp_path: Path) -> None:
    missing = tmp_path / "nobody"
    out = tmp_path / "me.p12"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "exchange.cli.main", "--identity", str(missing), "cert", "export", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: identity file") and "is missing" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
