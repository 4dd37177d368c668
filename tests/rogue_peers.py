"""A misbehaving peer hub for the federation's bad cases against served hubs (tests/test_federation_bad_peers.py).

The rogue is a hub of the test's own, running in the test process, with real credentials of its own: its own
CA, a hub certificate issued for its code, its own log key. Served hubs' operators register it as they would
any peer (``served_hubs.peer_pair``). The test then makes it misbehave: sign statements with another key or
alter them, send them twice, route them in a loop, change an answer it relays, show a fork of its log. Calls
made by hand go over a channel of its own that presents its hub certificate, so the test sees the status and
message the served hub answers with, as a peer would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc

from audit import forwarded
from audit.forwarded import Forwarded
from audit.note import Signer
from exchange import pki
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import forwarding_pb2 as fwpb
from exchange.v1 import forwarding_pb2_grpc as fwpb_grpc
from tests.federation_support import Node, Peerable, settings_for
from tests.harness import running_hub


@contextmanager
def rogue_hub(root: Path, level: str, code: str, name: str) -> Iterator[Node]:
    """A hub of ``level`` named ``code`` and ``name``, initialized in ``root``/rogue-``code`` and running in this
    process until the block ends (its sync rounds run only when the test or a peering wakes them)."""
    settings = replace(
        settings_for(root / f"rogue-{code}", level),
        hub_code=code,
        hub_name=name,
        audit_origin=f"{code}.hub.example/audit",
    )
    with running_hub(settings) as running:
        yield Node(level, running)


@contextmanager
def channel_as(rogue: Node, to: Peerable) -> Iterator[grpc.Channel]:
    """A channel to ``to``'s federation listener presenting ``rogue``'s hub certificate, trusting ``to``'s CA."""
    files = pki.HubFiles(rogue.running.settings.home)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=to.running.ca_pem,
        private_key=files.hub_key.read_bytes(),
        certificate_chain=files.hub_cert.read_bytes(),
    )
    with grpc.secure_channel(to.address, credentials) as channel:
        yield channel


def query_bytes(resource: str, purpose: str, filters: dict[str, str], fields: list[str]) -> bytes:
    """A consumer's QueryRequest as a hub forwards it (its serialized bytes, which a statement's digest covers)."""
    request = xpb.QueryRequest(resource_code=resource, purpose=purpose, filters=filters, fields=fields)
    return request.SerializeToString()


def statement(rogue: Node, to: Peerable, raw: bytes, *, home: str, department: str, system: str) -> Forwarded:
    """The statement ``rogue`` would honestly sign to forward ``raw`` (a query) to ``to``, as the origin hub."""
    request = xpb.QueryRequest.FromString(raw)
    return Forwarded(
        sender=rogue.code,
        receiver=to.code,
        home=home,
        resource=request.resource_code,
        call="query",
        department=department,
        system=system,
        purpose=request.purpose,
        path=(rogue.code,),
        exchanges=(f"EX{rogue.code}rogue",),
        hops_left=4,
        request=forwarded.request_digest(raw),
    )


def signed(said: Forwarded, signer: Signer) -> str:
    """``said`` signed now by ``signer`` (the rogue's own log key, or another)."""
    return forwarded.issue(signer, said, dt.datetime.now(dt.UTC))


def forward(rogue: Node, to: Peerable, note: str, raw: bytes) -> fwpb.ForwardQueryResponse:
    """``rogue`` calls ``to``'s ForwardQuery by hand; a refusal raises grpc.RpcError with ``to``'s status."""
    with channel_as(rogue, to) as channel:
        stub = fwpb_grpc.ForwardingServiceStub(channel)
        answer: fwpb.ForwardQueryResponse = stub.ForwardQuery(
            fwpb.ForwardQueryRequest(statement=note, request=raw), timeout=30
        )
        return answer
