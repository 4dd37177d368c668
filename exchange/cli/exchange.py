"""The data-plane verbs of the ``exchange`` command: query, stream, fetch documents, verify provenance, bind.

Records saved with ``--out`` are written as their canonical lines (one JSON object per line, keys
sorted), which are exactly the bytes whose SHA-256 a provenance statement signs: verifying a saved
answer is checking the statement's signature and the file's digest, for records and documents alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from audit import provenance
from exchange import values
from exchange.cli import tables, userfiles
from exchange.cli.audit import read_verifier
from exchange.cli.bindings import show_binding
from exchange.cli.client import HubClient
from exchange.cli.commands import ask
from exchange.config import Settings
from exchange.errors import FieldViolation, InvalidArgument
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as pb


def _pairs(items: Iterable[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidArgument.of([FieldViolation(flag, f"{item[:40]!r} is not name=value")])
        out[name] = value
    return out


def _request(args: argparse.Namespace) -> pb.QueryRequest:
    return pb.QueryRequest(
        resource_code=args.resource,
        purpose=args.purpose,
        filters=_pairs(args.filter, "--filter"),
        fields=args.field or [],
        page_size=getattr(args, "page_size", 0),
        page_token=getattr(args, "page_token", ""),
        provenance=bool(args.provenance),
        batch_size=getattr(args, "batch_size", 0),
    )


def _show_rows(fields: list[str], rows: list[dict[str, object]], masks: dict[str, str]) -> None:
    headers = [f"{f} (masked: {masks[f]})" if f in masks else f for f in fields]
    print(tables.render(headers, [["" if r.get(f) is None else str(r.get(f)) for f in fields] for r in rows]))


def _save(args: argparse.Namespace, rows: list[dict[str, object]], note: str) -> None:
    if args.out:
        args.out.write_bytes(b"".join(values.canonical_row(r) for r in rows))
        print(f"records written to {args.out} (canonical lines)", file=sys.stderr)
    if args.provenance:
        args.provenance.write_text(note)
        print(f"provenance statement written to {args.provenance}", file=sys.stderr)


def _check_outputs(args: argparse.Namespace) -> None:
    """The files to save to can be written: checked before the exchange, which the audit log records."""
    if getattr(args, "out", None) is not None:
        userfiles.check_writable(args.out, "the output file")
    if args.provenance is not None:
        userfiles.check_writable(args.provenance, "the provenance statement")


def query(args: argparse.Namespace, settings: Settings) -> int:
    _check_outputs(args)
    answer = ask(args, settings, lambda hub: hub.exchange.Query, _request(args))
    rows = [values.record_from_wire(r) for r in answer.records]
    if args.json:
        print(json_format.MessageToJson(answer, ensure_ascii=False))
    else:
        _show_rows(list(answer.disclosure.fields), rows, dict(answer.disclosure.masks))
        print(f"exchange {answer.exchange_id}, grant {answer.disclosure.grant_id}, {len(rows)} record(s)")
        if answer.next_page_token:
            print(f"(more: add --page-token {answer.next_page_token})")
    _save(args, rows, answer.provenance.note)
    return 0


def stream(args: argparse.Namespace, settings: Settings) -> int:
    rows: list[dict[str, object]] = []
    fields: list[str] = []
    masks: dict[str, str] = {}
    exchange_id, note = "", ""
    _check_outputs(args)
    with HubClient(settings, args.identity) as hub:
        for batch in hub.exchange.StreamQuery(_request(args), timeout=hub.timeout):
            exchange_id = batch.exchange_id
            if batch.HasField("disclosure"):
                fields, masks = list(batch.disclosure.fields), dict(batch.disclosure.masks)
            rows += [values.record_from_wire(r) for r in batch.records]
            note = batch.provenance.note or note
    if args.json:
        shown = {"exchange_id": exchange_id, "fields": fields, "masks": masks, "count": len(rows)}
        print(json.dumps({**shown, "records": [] if args.out else rows}, ensure_ascii=False, indent=2, default=str))
    else:
        if not args.out:
            _show_rows(fields, rows[:20], masks)
        print(f"exchange {exchange_id}: {len(rows)} record(s)")
    _save(args, rows, note)
    return 0


def document(args: argparse.Namespace, settings: Settings) -> int:
    request = pb.FetchDocumentRequest(
        resource_code=args.resource,
        purpose=args.purpose,
        filters=_pairs(args.filter, "--filter"),
        provenance=bool(args.provenance),
    )
    _check_outputs(args)
    digest = hashlib.sha256()
    info: Any = None
    last: Any = None
    with HubClient(settings, args.identity) as hub, args.out.open("wb") as out:
        for chunk in hub.exchange.FetchDocument(request, timeout=hub.timeout):
            if chunk.HasField("info"):
                info = chunk.info
            out.write(chunk.data)
            digest.update(chunk.data)
            last = chunk
    if last is None or not last.last or digest.digest() != last.sha256:
        raise InvalidArgument(f"the document in {args.out} is incomplete or does not match its SHA-256")
    if args.json:
        shown = {"exchange_id": last.exchange_id, "name": info.name, "media_type": info.media_type}
        print(json.dumps({**shown, "bytes": last.total_bytes, "sha256": digest.hexdigest()}, ensure_ascii=False))
    else:
        print(
            f"exchange {last.exchange_id}: {info.name} ({info.media_type}), {last.total_bytes} bytes, "
            f"sha256 {digest.hexdigest()}"
        )
    if args.provenance:
        args.provenance.write_text(last.provenance.note)
    return 0


def verify(args: argparse.Namespace, settings: Settings) -> int:
    """Checks a provenance statement offline with the hub's public key, and the data it speaks of."""
    verifier = read_verifier(args.key)
    note = userfiles.read_text(args.note, "the provenance statement")
    data = userfiles.read_bytes(args.data, "the data") if args.data else None
    sha256 = hashlib.sha256(data).hexdigest() if data is not None else None
    try:
        statement = provenance.verify(note, verifier, sha256)
    except provenance.ProvenanceError as e:
        if args.json:
            print(json.dumps({"verified": False, "problem": str(e)}, ensure_ascii=False))
        print(f"error: NOT VERIFIED: the statement {args.note}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {"verified": True, "data_checked": sha256 is not None, **dataclasses.asdict(statement)}, default=str
            )
        )
        return 0
    print(
        f"verified: exchange {statement.exchange} at {statement.time}: {statement.count} "
        f"{'record(s)' if statement.kind == 'records' else 'bytes'} of {statement.resource} "
        f"(owner {statement.owner}) to {statement.consumer} ({statement.consumer_department})"
        + ("; the data matches" if sha256 else "; no data file given, so only the signature was checked")
    )
    return 0


def bind(args: argparse.Namespace, settings: Settings) -> int:
    """Sets a resource's backend from a YAML file shaped like the Binding message."""
    text = userfiles.read_text(args.file, "the binding file")
    try:
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise json_format.ParseError("the top level must be a mapping with resource_code and one backend")
        binding = json_format.ParseDict(data, cpb.Binding())
    except (yaml.YAMLError, json_format.ParseError) as e:
        raise InvalidArgument(f"{args.file} is not a binding: {e}") from None
    shown = ask(
        args, settings, lambda hub: hub.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason=args.reason)
    )
    show_binding(args, shown)
    return 0


def binding(args: argparse.Namespace, settings: Settings) -> int:
    shown = ask(args, settings, lambda hub: hub.catalog.GetBinding, cpb.GetBindingRequest(resource_code=args.resource))
    show_binding(args, shown)
    return 0


def add_verbs(top: Any, verb: Any) -> None:
    """The data-plane verbs, added to the top-level parser with the CLI's ``_verb`` helper."""

    def asking(p: argparse.ArgumentParser, *, fields: bool = True) -> None:
        p.add_argument("resource", help="resource code, e.g. 10101/350200000001")
        p.add_argument("--purpose", required=True, help="the matter, as granted")
        p.add_argument("--filter", action="append", metavar="NAME=VALUE", help="a declared filter (repeatable)")
        if fields:
            p.add_argument("--field", action="append", metavar="NAME", help="a field wanted (repeatable)")
        p.add_argument("--provenance", type=Path, metavar="FILE", help="ask for a signed statement and save it")

    p = verb(top, "query", query, "look up records of a resource (systems)")
    asking(p)
    p.add_argument("--page-size", type=int, default=0, help="records per page (default 50, at most 1000)")
    p.add_argument("--page-token", default="", help="token printed at the end of the previous page")
    p.add_argument("--out", type=Path, help="save the records as canonical lines")
    p = verb(top, "stream", stream, "stream all matching records of a resource (systems)")
    asking(p)
    p.add_argument("--batch-size", type=int, default=0, help="records per batch (default 500, at most 5000)")
    p.add_argument("--out", type=Path, help="save the records as canonical lines")
    p = verb(top, "document", document, "download a document (电子证照) of a resource (systems)")
    asking(p, fields=False)
    p.add_argument("--out", type=Path, required=True, help="the file to write the document to")
    p = verb(top, "verify-provenance", verify, "check a provenance statement, and the saved data, offline")
    p.add_argument("note", type=Path, help="the statement saved with --provenance")
    p.add_argument("--key", type=Path, required=True, help="the hub's public key file (log.pub)")
    p.add_argument("--data", type=Path, help="the records (--out) or document the statement speaks of")
    p = verb(top, "bind", bind, "set where the hub fetches a resource from (owner steward)")
    p.add_argument("file", type=Path, help="YAML: resource_code and one of sql, grpc, http, files")
    p.add_argument("--reason", default="", help="recorded in the catalog's history and the audit log")
    p = verb(top, "binding", binding, "show a resource's binding (owner steward)")
    p.add_argument("resource", help="resource code, e.g. 10101/350200000001")
