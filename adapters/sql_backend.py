"""The SQL adapter as a binding: options {url, table, columns}, and for a change source
{change_column, change_key, change_settle_seconds} (see ``adapters.sql_changes``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from adapters import options as opt
from adapters.base import OnThreads, ProviderUnavailable
from adapters.factory import BackendContext
from adapters.sql import DEFAULT_MAX_ROWS, SqlAdapter, SqlBinding
from adapters.sql_changes import ChangeColumns
from exchange.backend import Backend
from exchange.errors import FieldViolation, InvalidArgument
from exchange.models import Binding

log = logging.getLogger(__name__)


# libpq parameters that would name another server than the URL's host: refused in a binding.
_ADDRESSING = frozenset({"host", "hostaddr", "service", "port", "sslkey", "sslcert", "passfile"})


def check(options: Mapping[str, object], context: BackendContext) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    url = opt.text(options, "url", out)
    opt.text(options, "table", out)
    opt.mapping(options, "columns", out)
    out += _change_problems(options)
    if url and not url.startswith(("sqlite", "postgresql")):
        out.append(FieldViolation("binding.url", "must be a sqlite:// or postgresql+psycopg:// URL"))
    if url and _is_hubs_own(url, context):
        out.append(FieldViolation("binding.url", "is the hub's own database, which no resource may be read from"))
    if url.startswith("postgresql"):
        out += [FieldViolation("binding.url", d) for d in _postgres_problems(url, context)]
    if url.startswith("sqlite") and not context.allow_sqlite:
        out.append(
            FieldViolation(
                "binding.url",
                "SQLite files are for test benches and the demo (setting allow_sqlite_backends): bind PostgreSQL",
            )
        )
    return out


# A column name a change option may give: a letter or '_' first, then letters, digits, '_' or '$'.
_COLUMN = re.compile(r"^[^\W\d]\w{0,62}$")
MAX_SETTLE_SECONDS = 86_400.0


def _change_problems(options: Mapping[str, object]) -> list[FieldViolation]:
    """The change options: a column name, a key only with a column, a settle delay of 0 s to a day."""
    out: list[FieldViolation] = []
    column = opt.text(options, "change_column", out, required=False)
    key = opt.text(options, "change_key", out, required=False)
    for name, value in (("change_column", column), ("change_key", key)):
        if value and not _COLUMN.match(value):
            out.append(FieldViolation(f"binding.{name}", f"{value[:80]!r} is not a column name"))
    has_settle = options.get("change_settle_seconds") is not None
    if (key or has_settle) and not column:
        out.append(FieldViolation("binding.change_column", "is required with change_key or change_settle_seconds"))
    if has_settle and _settle(options) is None:
        limit = f"must be a number of seconds from 0 to {MAX_SETTLE_SECONDS:g}"
        out.append(FieldViolation("binding.change_settle_seconds", limit))
    return out


def _settle(options: Mapping[str, object]) -> float | None:
    """The settle delay given (a number, or a number as text), if it is one from 0 s to a day."""
    given = options.get("change_settle_seconds")
    if isinstance(given, bool) or not isinstance(given, int | float | str):
        return None
    try:
        seconds = float(given)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_SETTLE_SECONDS else None


def changes_of(options: Mapping[str, object]) -> ChangeColumns | None:
    """The checked change options as ``ChangeColumns``; None when the binding names no change column."""
    column = str(options.get("change_column") or "")
    if not column:
        return None
    return ChangeColumns(column, str(options.get("change_key") or ""), _settle(options))


def _postgres_problems(url: str, context: BackendContext) -> list[str]:
    """A PostgreSQL URL must name exactly one server by its host, and that host must be allowed."""
    try:
        parts = make_url(url)
    except ArgumentError:
        return ["is not a valid database URL"]
    if not parts.host or "," in parts.host or parts.host.startswith("/"):
        return ["must name one server by host name or address (no socket path, no host list)"]
    named = sorted(k for k in parts.query if k.lower() in _ADDRESSING)
    if named:
        return [f"must not set {', '.join(named)}: the server is the URL's host and port"]
    return context.host_problems(parts.host)


def _is_hubs_own(url: str, context: BackendContext) -> bool:
    """The hub's database, however the URL spells it (a SQLite file compares by its resolved path)."""
    if url in context.forbidden_urls:
        return True
    mine = {_sqlite_file(u) for u in context.forbidden_urls} - {None}
    return _sqlite_file(url) in mine


def _sqlite_file(url: str) -> Path | None:
    try:
        parts = make_url(url)
    except ArgumentError:
        return None
    if not parts.drivername.startswith("sqlite") or not parts.database:
        return None
    return Path(parts.database).resolve()


def open(name: str, binding: Binding, context: BackendContext) -> Backend:
    """The adapter for ``binding``, its options checked again; a PostgreSQL host is resolved and vetted once."""
    violations = check(binding.options, context)
    if violations:
        raise InvalidArgument.of(violations)
    o = binding.options
    url = str(o["url"])
    address = _vetted_address(name, url, context) if url.startswith("postgresql") else ""
    max_rows = binding.max_rows or DEFAULT_MAX_ROWS
    columns = dict(o.get("columns") or {})  # type: ignore[call-overload]
    sql = SqlBinding(url, str(o["table"]), columns, max_rows, address, changes_of(o))
    return OnThreads(SqlAdapter(name, sql), context.lane)


def _vetted_address(name: str, url: str, context: BackendContext) -> str:
    """The address the host resolves to now, checked against the host policy (connections go there only)."""
    if context.hosts is None:
        return ""
    parts = make_url(url)
    try:
        return str(context.hosts.vetted(parts.host or "", parts.port or 5432)[0][1])
    except (OSError, IndexError):  # refused by the policy (PermissionError) or not resolvable
        log.warning("the database host of %s is not reachable under the host policy", name)
        raise ProviderUnavailable(name) from None
