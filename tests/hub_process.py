"""Real `exchange serve` processes for fault tests: started on a fixed port over a home, waited for, killed.

A hub process started again on the same port and home takes over where the killed one stopped (same store,
same keys), so a client that reconnects to the address reaches the new process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

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
