"""Two hubs' logs for the witnessing and receipt tests: real stores, real running logs, a real witness server.

A ``HubLog`` is one hub's audit log (its store, key and running AuditLog); ``serving`` serves a witness
on a loopback port from a grpc.aio server on its own event loop, as the federation listener would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from audit.cosignature import WitnessKey
from audit.note import Signer
from audit.records import AuditRecord
from exchange.auditlog.log import AuditLog
from exchange.server.witness import add_witness
from exchange.services.witness import Witness
from exchange.store import Store


def record(n: int, **changes: str) -> AuditRecord:
    """An exchange record, distinct for each ``n``; fields as ``changes`` (e.g. peer_exchange_id)."""
    fields: dict[str, str] = {
        "kind": "exchange",
        "action": "query",
        "time": f"2026-12-04T08:00:{n % 60:02d}.000000Z",
        "actor": "system/bdc-djxt",
        "actor_department": "11350200MB0023456P",
        "outcome": "ok",
        "resource": "10101/350200000001",
        "exchange_id": f"EX-{n}",
        **changes,
    }
    return AuditRecord(**fields)  # type: ignore[arg-type]


@dataclass
class HubLog:
    """One hub's audit log: its store, its signing key (named by its origin) and the running log."""

    store: Store
    signer: Signer
    log: AuditLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = AuditLog(self.store.audit, self.signer, self.signer.name, checkpoint_seconds=3600)

    @property
    def origin(self) -> str:
        return self.signer.name

    def add(self, *records: AuditRecord) -> int:
        """Logs ``records`` and signs a checkpoint over them; the new size."""
        self.store.audit.stage(list(records))
        return self.log.flush()

    def latest_note(self) -> str:
        latest = self.store.audit.latest_checkpoint()
        assert latest is not None
        return latest[1]


def hub_log(url: str, signer: Signer) -> HubLog:
    store = Store(url)
    store.db.migrate()
    return HubLog(store, signer)


def witness_of(store: Store, key: WitnessKey, *logs: HubLog) -> Witness:
    """A witness over ``store`` that witnesses ``logs``."""
    return Witness(store.witness, key, {h.origin: h.signer.verifier() for h in logs})


@contextmanager
def serving(witness: Witness) -> Iterator[grpc.Channel]:
    """A channel to ``witness`` served by a real grpc.aio server on a loopback port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="witness-loop", daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        add_witness(server, witness)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(grace=1), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
