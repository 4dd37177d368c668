"""The ``exchange peer`` verbs: this hub's federation identity, and its peerings with other hubs (operators)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exchange.cli import report
from exchange.cli.commands import ask, show_list
from exchange.config import HUB_LEVELS, Settings
from exchange.errors import FieldViolation, InvalidArgument
from exchange.federation.model import PeerRelation, PeerState
from exchange.server.federation_wire import RELATION, STATE
from exchange.v1 import federation_pb2 as pb

HEADERS = ["code", "name", "level", "relation", "address", "state", "CA (SHA-256)", "offers to", "last sync"]


def rows(peers: list[pb.Peer]) -> list[list[str]]:
    return [
        [
            p.code,
            p.name,
            p.level,
            RELATION.label(p.relation),
            p.address,
            STATE.label(p.state),
            p.ca_fingerprint_sha256[:16] + "…",
            str(p.offer_sequence),
            f"{p.synced_at.ToDatetime():%Y-%m-%d %H:%M:%S}" if p.HasField("synced_at") else "-",
        ]
        for p in peers
    ]


def _show(args: argparse.Namespace, response: Any, peer: pb.Peer) -> int:
    show_list(args, response, HEADERS, rows([peer]))
    if not args.json:
        if peer.reason:
            print(f"why: {peer.reason}")
        if peer.sync_problem:
            print(f"last problem: {peer.sync_problem}")
        if hasattr(response, "peer_told") and not response.peer_told:
            print("the peer hub could not be told now; this hub refuses its calls all the same")
    return 0


def peer_identity(args: argparse.Namespace, settings: Settings) -> int:
    found = ask(args, settings, lambda hub: hub.federation.GetHubIdentity, pb.GetHubIdentityRequest())
    if args.ca_out:
        args.ca_out.write_text(found.ca_certificate_pem)
    report.emit(
        args,
        {
            "code": found.code,
            "name": found.name,
            "level": found.level,
            "address": found.federation_address,
            "ca_fingerprint_sha256": found.ca_fingerprint_sha256,
        },
        f"hub {found.code} {found.name} ({found.level}); federation listener {found.federation_address}",
        f"CA certificate SHA-256 {found.ca_fingerprint_sha256}"
        + (f", written to {args.ca_out}" if args.ca_out else ""),
        "give these to the other hub's operator (check the fingerprint with them by another channel)",
    )
    return 0


def peer_register(args: argparse.Namespace, settings: Settings) -> int:
    try:
        ca_pem = Path(args.ca_file).read_text()
    except (OSError, UnicodeError) as e:
        raise InvalidArgument.of([FieldViolation("--ca-file", f"cannot be read: {e}")]) from None
    peer = pb.Peer(
        code=args.code,
        name=args.name,
        level=args.level,
        relation=RELATION.wire(PeerRelation(args.relation)),
        address=args.address,
        ca_certificate_pem=ca_pem,
    )
    request = pb.RegisterPeerRequest(peer=peer, reason=args.reason)
    response = ask(args, settings, lambda hub: hub.federation.RegisterPeer, request)
    return _show(args, response, response.peer)


def peer_list(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.ListPeersRequest(state=STATE.optional(PeerState(args.state) if args.state else None))
    response = ask(args, settings, lambda hub: hub.federation.ListPeers, request)
    show_list(args, response, HEADERS, rows(list(response.peers)))
    return 0


def peer_show(args: argparse.Namespace, settings: Settings) -> int:
    response = ask(args, settings, lambda hub: hub.federation.GetPeer, pb.GetPeerRequest(code=args.code))
    return _show(args, response, response.peer)


def peer_suspend(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.SuspendPeerRequest(code=args.code, reason=args.reason)
    response = ask(args, settings, lambda hub: hub.federation.SuspendPeer, request)
    return _show(args, response, response.peer)


def peer_resume(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.ResumePeerRequest(code=args.code, reason=args.reason)
    response = ask(args, settings, lambda hub: hub.federation.ResumePeer, request)
    return _show(args, response, response.peer)


def peer_end(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.EndPeerRequest(code=args.code, reason=args.reason)
    response = ask(args, settings, lambda hub: hub.federation.EndPeer, request)
    return _show(args, response, response.peer)


def add_verbs(top: Any, verb: Any) -> None:
    """``exchange peer ...``, with the CLI's ``_verb`` helper."""
    sub = top.add_parser("peer", help="peerings with other hubs (federation)").add_subparsers(
        dest="verb", required=True
    )
    p = verb(sub, "identity", peer_identity, "this hub's code, level, federation address and CA, for its peers")
    p.add_argument("--ca-out", type=Path, help="write this hub's CA certificate (PEM) here")
    p = verb(sub, "register", peer_register, "register another hub as a peer (active once it registers this one)")
    p.add_argument("--code", required=True, help="its six-digit administrative division code, e.g. 350000")
    p.add_argument("--name", required=True, help="its name, e.g. 福建省政务数据共享平台")
    p.add_argument("--level", required=True, choices=HUB_LEVELS, help="its level")
    p.add_argument("--relation", required=True, choices=[r.value for r in PeerRelation], help="what it is to this hub")
    p.add_argument("--address", required=True, help="host:port of its federation listener")
    p.add_argument("--ca-file", required=True, help="its CA certificate (PEM), as its operator handed it over")
    p.add_argument("--reason", default="", help="why (e.g. the agreement it rests on)")
    p = verb(sub, "list", peer_list, "list the peer hubs")
    p.add_argument("--state", choices=[s.value for s in PeerState], help="only in this state")
    verb(sub, "show", peer_show, "show a peer hub").add_argument("code", help="its division code")
    for name, fn, text in (
        ("suspend", peer_suspend, "suspend a peering (only this hub resumes it)"),
        ("resume", peer_resume, "resume a peering this hub suspended"),
        ("end", peer_end, "end a peering (final; both hubs must register again to peer anew)"),
    ):
        p = verb(sub, name, fn, text)
        p.add_argument("code", help="the peer's division code")
        p.add_argument("--reason", required=True, help="why, for both hubs' audit logs")
