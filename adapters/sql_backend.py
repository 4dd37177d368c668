"""The SQL adapter as a binding: options {url, table, columns}."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from adapters import options as opt
from adapters.factory import BackendContext
from adapters.sql import DEFAULT_MAX_ROWS, SqlAdapter, SqlBinding
from exchange.backend import Backend
from exchange.errors import FieldViolation
from exchange.models import Binding


def check(options: Mapping[str, object], context: BackendContext) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    url = opt.text(options, "url", out)
    opt.text(options, "table", out)
    opt.mapping(options, "columns", out)
    if url and not url.startswith(("sqlite", "postgresql")):
        out.append(FieldViolation("binding.url", "must be a sqlite:// or postgresql+psycopg:// URL"))
    if url and url in context.forbidden_urls:
        out.append(FieldViolation("binding.url", "is the hub's own database, which no resource may be read from"))
    if url.startswith("postgresql"):
        out += [FieldViolation("binding.url", d) for d in context.host_problems(_host_of(url))]
    return out


def _host_of(url: str) -> str:
    """The host a PostgreSQL URL names ("" for a local socket, which the host policy leaves to the operator)."""
    try:
        return make_url(url).host or ""
    except ArgumentError:
        return "?"


def open(name: str, binding: Binding, context: BackendContext) -> Backend:
    o = binding.options
    sql = SqlBinding(str(o["url"]), str(o["table"]), dict(o.get("columns") or {}), binding.max_rows or DEFAULT_MAX_ROWS)  # type: ignore[call-overload]
    return SqlAdapter(name, sql)
