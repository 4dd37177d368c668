"""Hubs of three levels on loopback, each with its own home and CA, and the steps that peer them.

思明区 (county, 350203) ← 厦门市 (city, 350200) ← 福建省 (province, 350000). Each hub serves its main port
and its federation listener; tests drive the sync rounds themselves (``sync``) rather than wait for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import select

from exchange import models as m
from exchange import pki
from exchange.bootstrap import load_witness_key
from exchange.cli.main import main
from exchange.config import Settings
from exchange.federation.model import Peer, PeerState
from exchange.server.federation import Federation
from exchange.store.schema import AuditEntryRow, AuditStagedRow
from exchange.v1 import federation_pb2 as fpb
from exchange.validation import uscc_check_character
from tests.harness import RunningHub, base_settings, running_hub


def department(division: str, serial: str, name: str, level: m.AdministrativeLevel) -> m.Department:
    """A department registered in ``division`` (its unified social credit code carries the division)."""
    first17 = f"11{division}MB{serial}"
    return m.Department(first17 + uscc_check_character(first17), name, division, level)


SIMING_MARKET = department("350203", "0011223", "思明区市场监督管理局", m.AdministrativeLevel.COUNTY)
PROVINCE_MARKET = department("350000", "0044556", "福建省市场监督管理局", m.AdministrativeLevel.PROVINCE)
HUBS = {
    "county": ("350203", "思明区政务数据共享平台"),
    "city": ("350200", "厦门市政务数据共享平台"),
    "province": ("350000", "福建省政务数据共享平台"),
}


class Peerable(Protocol):
    """A hub another hub's operator can register as a peer: in this process (``Node``) or served (``Served``)."""

    level: str
    running: RunningHub

    @property
    def code(self) -> str: ...

    @property
    def address(self) -> str: ...


@dataclass
class Node:
    """A running hub of the federation, by its level."""

    level: str
    running: RunningHub

    @property
    def code(self) -> str:
        return self.running.settings.hub_code

    @property
    def federation(self) -> Federation:
        found = self.running.hub.federation
        assert found is not None
        return found

    @property
    def address(self) -> str:
        return f"localhost:{self.federation.port}"

    def sync(self) -> None:
        """One sync round, run on the hub's own loop: introductions waiting, then each active peer's offers."""
        self.federation.run(self.federation.sync_once())

    def peer(self, code: str) -> Peer:
        return self.running.hub.store.peers.get(code)

    def state_of(self, code: str) -> PeerState:
        return self.peer(code).state

    def register(self, other: Peerable, relation: fpb.PeerRelation.ValueType) -> fpb.Peer:
        """This hub's operator registers ``other`` (the CA certificate as ``other``'s operator handed it over)."""
        return register_peer(self.running, other, relation)

    def federation_records(self) -> list[str]:
        """The audit records of peering changes, staged or integrated, as their text."""
        return self.federation_records_of("federation")

    def federation_records_of(self, kind: str) -> list[str]:
        """The audit records of one kind, staged or integrated, as their text."""
        with self.running.hub.store.db.read() as s:
            texts = [*s.scalars(select(AuditStagedRow.record)), *s.scalars(select(AuditEntryRow.record))]
        return [t for t in texts if t and f'"kind":"{kind}"' in t.replace(" ", "")]


def register_peer(at: RunningHub, other: Peerable, relation: fpb.PeerRelation.ValueType) -> fpb.Peer:
    """The operator of the hub ``at`` registers ``other``, with the CA certificate ``other``'s operator handed over."""
    peer = fpb.Peer(
        code=other.code,
        name=other.running.settings.hub_name,
        level=other.level,
        relation=relation,
        address=other.address,
        ca_certificate_pem=other.running.ca_pem.decode(),
    )
    with at.client() as hub:
        request = fpb.RegisterPeerRequest(peer=peer, reason="协议 2026-12")
        return hub.call(hub.federation.RegisterPeer, request).peer


def settings_for(root: Path, level: str, **changes: object) -> Settings:
    code, name = HUBS[level]
    return base_settings(
        root / level,
        "",
        hub_code=code,
        hub_name=name,
        hub_level=level,
        audit_origin=f"{code}.hub.example/audit",  # each hub's log has its own origin, as witnessing needs
        federation_listen="127.0.0.1:0",
        federation_sync_seconds=3600.0,  # the tests run each round themselves
        federation_call_seconds=5.0,
        **changes,
    )


@contextmanager
def hubs(root: Path, *levels: str, console: bool = False) -> Iterator[dict[str, Node]]:
    """The hubs of ``levels``, running until the block ends (each serving its web console too if ``console``)."""
    changes = {"console_listen": "127.0.0.1:0"} if console else {}
    with ExitStack() as stack:
        out = {}
        for level in levels:
            running = stack.enter_context(running_hub(settings_for(root, level, **changes)))
            out[level] = Node(level, running)
        yield out


def peer_pair(child: Node, parent: Node) -> None:
    """Both operators register the peering (the child's parent, the parent's child): it is active."""
    child.register(parent, fpb.PEER_RELATION_PARENT)
    parent.register(child, fpb.PEER_RELATION_CHILD)
    assert child.state_of(parent.code) is PeerState.ACTIVE
    assert parent.state_of(child.code) is PeerState.ACTIVE
    # The parent's introduction woke the child's sync loop, which pulls the parent's offers on its own: let that
    # round end, so that a test's own rounds do not race it.
    # A woken round may also have run before the other side held the peering active (the introduction's answer
    # is confirmed there after this side woke): it failed, and nothing wakes it again before the next round, so
    # the test runs that round itself.
    until = time.monotonic() + 30
    while not (child.federation.idle and parent.federation.idle):
        assert time.monotonic() < until, "the sync rounds woken by the peering did not end"
        for node, other in ((child, parent), (parent, child)):
            held = node.peer(other.code)
            if held.synced_at is None and held.sync_problem:
                node.sync()
        time.sleep(0.02)
    if child.peer(parent.code).synced_at is None:
        child.sync()


def hub_identity(node: Node, into: Path) -> Path:
    """An identity directory holding the hub's own hub certificate (to show where it is refused)."""
    files = pki.HubFiles(node.running.settings.home)
    into.mkdir(parents=True)
    (into / "key.pem").write_bytes(files.hub_key.read_bytes())
    (into / "key.pem").chmod(0o600)
    (into / "cert.pem").write_bytes(files.hub_cert.read_bytes())
    (into / "ca.pem").write_bytes(node.running.ca_pem)
    return into


def trust_file(tmp_path: Path, nodes: list[Node]) -> Path:
    """An auditor's trusted keys for ``verify-receipt --trust``: each hub's log key and its witness key."""
    lines = [n.running.hub.audit.signer.verifier().encode() for n in nodes]
    lines += [
        f"{load_witness_key(n.running.settings).verifier().encode()} {n.running.settings.audit_origin}" for n in nodes
    ]
    path = tmp_path / "trusted.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cross_receipt(node: Node, auditor: Path, exchange_id: str, out: Path) -> int:
    """``exchange audit cross-receipt`` at ``node`` as ``auditor``: the CLI's exit code."""
    argv = ["--hub", node.running.settings.hub_address, "--identity", str(auditor)]
    return main([*argv, "audit", "cross-receipt", exchange_id, "--out", str(out)])
