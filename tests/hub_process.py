"""Real `exchange serve` processes for fault tests: started on a fixed port over a home, waited for, killed.

A hub process started again on the same port and home takes over where the killed one stopped (same store,
same keys), so a client that reconnects to the address reaches the new process.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest

from audit.note import Verifier
from audit.records import parse_entry_line
from audit.verify import Report, verify_export
from exchange import pki
from exchange.auditlog.export import export_lines
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.store import Store
from exchange.v1 import registry_pb2 as rpb

PROJECT = Path(__file__).resolve().parent.parent
START_LIMIT = 60.0  # seconds a hub process may take to answer after it was started (2 busy cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class HubProcess:
    """One hub serving ``settings.home`` on ``port`` in its own process; ``env`` are its EXCHANGE_* settings."""

    settings: Settings
    port: int
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def client_settings(self) -> Settings:
        return replace(self.settings, hub_address=self.address)

    def start(self, identity: Path) -> None:
        """Starts the process and returns once it answers ``identity`` (any member's identity directory)."""
        env = {
            **os.environ,
            "EXCHANGE_HOME": str(self.settings.home),
            "EXCHANGE_LISTEN": f"127.0.0.1:{self.port}",
            "EXCHANGE_METRICS_LISTEN": "",
            **self.env,
        }
        with self.log.open("ab") as sink:  # a file, not a pipe: a full pipe would block the hub
            command = [sys.executable, "-m", "exchange.cli.main", "serve"]
            self.process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=sink, stderr=sink)
        self._wait(identity)

    def _wait(self, identity: Path) -> None:
        deadline = time.monotonic() + START_LIMIT
        with HubClient(self.client_settings, identity) as client:
            while True:
                try:
                    client.call(client.registry.WhoAmI, rpb.WhoAmIRequest())
                    return
                except grpc.RpcError:
                    assert self.process is not None and self.process.poll() is None, self.log.read_text()
                    assert time.monotonic() < deadline, f"the hub did not start: {self.log.read_text()[-2000:]}"
                    time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the process ends where it stands, nothing finished or given back."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, as an operator stops a hub (drains and gives its leases back)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


@contextmanager
def hub_process(
    settings: Settings, identity: Path, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[HubProcess]:
    """A hub process over ``settings.home`` on a free port, started and stopped (killed if it hangs) after."""
    hub = HubProcess(settings, free_port(), log, dict(env or {}))
    hub.start(identity)
    try:
        yield hub
    finally:
        try:
            hub.stop()
        except subprocess.TimeoutExpired:
            hub.kill()


def verified_log(settings: Settings) -> tuple[Report, list[dict[str, object]]]:
    """The audit log read straight from the store of a stopped hub (a clean stop integrated and signed every
    staged record), verified offline against the log's key: the report and the records."""
    verifier = Verifier.parse(pki.HubFiles(settings.home).audit_verifier.read_text())
    store = Store(settings.effective_database_url)
    try:
        lines = list(export_lines(store.audit, verifier))
    finally:
        store.close()
    report = verify_export(lines, verifier)
    records = [json.loads(r) for r in (parse_entry_line(x)[2] for x in lines[1:] if x.startswith("E\t")) if r]
    return report, records


class PrivateCluster:
    """A PostgreSQL cluster of this test's own (initdb, pg_ctl), on a free port, to stop and start at will.

    initdb refuses to run as root, so as root the cluster is made and run as the ``postgres`` user.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def unavailable() -> str:
        """Why no private cluster can be made here ("" when one can)."""
        if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
            return "initdb and pg_ctl are not installed"
        if os.geteuid() == 0 and (shutil.which("runuser") is None or not _user_exists("postgres")):
            return "running as root without a postgres user to run initdb as"
        return ""

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"

    def create(self) -> None:
        self.directory.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-o", options, "-l", str(self.directory / "log"),
                  "-w", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", mode, "-w", "stop")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A private cluster in a new directory (its owner must reach it: not under the tests' root-only temp dir)."""
    reason = PrivateCluster.unavailable()
    if reason:
        pytest.skip(f"no private PostgreSQL cluster: {reason}")
    parent = Path(tempfile.mkdtemp(prefix="exchange-pg-"))
    parent.chmod(0o755)
    cluster = PrivateCluster(parent / "cluster")
    try:
        cluster.create()
        yield cluster
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            cluster.stop("immediate")
        shutil.rmtree(parent, ignore_errors=True)
