"""A resource's binding as a table: where the hub fetches the resource from, field by field."""

from __future__ import annotations

import argparse

from google.protobuf import json_format
from google.protobuf.message import Message

from exchange.cli import tables
from exchange.v1 import catalog_pb2 as cpb


def _value(value: object) -> str:
    """A backend field for the table: maps as ``key=value`` pairs, the rest as text."""
    if hasattr(value, "items"):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    return str(value) if value != "" else "-"


def binding_rows(b: cpb.Binding) -> list[tuple[str, str]]:
    """The binding's fields, the chosen backend's own fields under it (snake_case, as a bind file names them)."""
    kind = b.WhichOneof("backend") or "none"
    rows = [("resource", b.resource_code), ("backend", kind)]
    if kind != "none":
        backend: Message = getattr(b, kind)
        for field in backend.DESCRIPTOR.fields:
            rows.append((f"  {kind}.{field.name}", _value(getattr(backend, field.name))))
    rows += [
        ("timeout", f"{b.timeout_seconds:g} s" if b.timeout_seconds else "the hub's call timeout"),
        ("max rows", str(b.max_rows) if b.max_rows else "1000 (default)"),
        ("version", str(b.version)),
    ]
    return rows


def show_binding(args: argparse.Namespace, b: cpb.Binding) -> None:
    """A table by default; the message as JSON with ``--json``."""
    if args.json:
        print(json_format.MessageToJson(b, ensure_ascii=False))
    else:
        print(tables.render(["field", "value"], binding_rows(b), max_column=100))
