"""The HTTP/JSON adapter: looks records up at a department's JSON endpoint with a GET.

Binding options: ``url``; ``fields`` (data item -> JSON key, default the same name);
``records_key`` (the key of the list of records in the body; empty: the body is the list);
``parameters`` (filter -> query parameter, default the same name).

Filters are sent as URL-encoded query parameters, with ``limit`` and ``offset`` so that an endpoint
may page. The whole call, from connecting to the last byte, is bounded by the request's timeout: a
watchdog shuts the socket down when the deadline passes, so a provider that accepts and never
answers, or drips its answer, cannot hold the hub. Redirects are not followed, the body is capped,
and JSON values are read strictly as the declared types (numbers as ``Decimal``, never as binary
floats). Errors name the provider and what was wrong, never the provider's own text.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import http.client
import json
import re
import socket
import ssl
import threading
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from urllib.parse import SplitResult, urlencode, urlsplit

from adapters import options as opt
from adapters.base import (
    Document,
    FetchRequest,
    ProviderContractError,
    ProviderTimeout,
    ProviderUnavailable,
    Row,
    Unsupported,
    checked_filters,
    checked_rows,
)
from adapters.factory import BackendContext
from adapters.hosts import HostPolicy
from exchange.backend import Backend
from exchange.errors import FieldViolation, InvalidArgument
from exchange.models import Binding, FieldType
from exchange.values import EXPECTED

MAX_BODY_BYTES = 32 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
PAGING_PARAMETERS = ("limit", "offset")
# Most JSON objects an answer may hold (a rough count of "{"): bounds the memory a parsed body takes.
MAX_OBJECTS = 1_000_000
OPTIONS = ("url", "fields", "records_key", "parameters")


@dataclass(frozen=True)
class HttpBinding:
    """Where a resource's records are looked up: the endpoint, and how items map to JSON and query names."""

    url: str
    fields: Mapping[str, str] = field(default_factory=dict)  # data item -> JSON key; default: same name
    records_key: str = ""  # key of the list of records; empty: the body is the list
    parameters: Mapping[str, str] = field(default_factory=dict)  # filter -> query parameter; default: same name

    def key(self, item: str) -> str:
        return self.fields.get(item, item)

    def parameter(self, item: str) -> str:
        return self.parameters.get(item, item)


class HttpAdapter:
    """A backend reading records from one JSON endpoint; each call is one GET."""

    def __init__(
        self, name: str, binding: HttpBinding, tls: ssl.SSLContext | None = None, hosts: HostPolicy | None = None
    ) -> None:
        self.name = name
        self.binding = binding
        self._url: SplitResult = urlsplit(binding.url)
        self._tls = tls or ssl.create_default_context()
        self._hosts = hosts

    def fetch(self, request: FetchRequest) -> list[Row]:
        """At most ``request.limit`` rows after ``request.offset``; the page is always cut here.

        The endpoint is asked for the first offset + limit records (``limit``, ``offset=0``), so one that
        honours paging sends no more than needed and one that ignores it sends everything; either way
        the same page results, and no page repeats another.
        """
        checked_filters(request)
        body = self._get(self._target(request, paging=True), request.timeout_seconds)
        start, end = request.offset, request.offset + request.limit
        records = self._records(body)[start:end]
        return checked_rows(self.name, request.resource, request.fields, self._rows(records, request, start))

    def stream(self, request: FetchRequest, batch_size: int) -> Generator[list[Row], None, None]:
        """Every record of one call, in batches; filters are checked now, the call made on the first batch."""
        checked_filters(request)
        return self._batches(request, max(1, batch_size))

    def document(self, request: FetchRequest) -> Document:
        raise Unsupported(self.name, "documents")

    def close(self) -> None:
        """Nothing is held between calls: each call opens and closes its own connection."""

    def _batches(self, request: FetchRequest, batch_size: int) -> Generator[list[Row], None, None]:
        body = self._get(self._target(request, paging=False), request.timeout_seconds)
        # All records are read before the first batch, so a bad record lets nothing of the answer through.
        rows = checked_rows(self.name, request.resource, request.fields, self._rows(self._records(body), request))
        for start in range(0, len(rows), batch_size):
            yield rows[start : start + batch_size]

    def _target(self, request: FetchRequest, *, paging: bool) -> str:
        """The path and query of the GET: the URL's own query, the filters, and the paging wanted."""
        pairs = [(self.binding.parameter(k), _query_text(v)) for k, v in request.filters.items()]
        clash = sorted(name for name, _ in pairs if name in PAGING_PARAMETERS)
        if clash:
            raise ProviderContractError(
                self.name, f"a filter would be sent as {', '.join(clash)}; map it to another name"
            )
        if paging:
            pairs += [("limit", str(request.offset + request.limit)), ("offset", "0")]
        query = "&".join(q for q in (self._url.query, urlencode(pairs)) if q)
        return f"{self._url.path or '/'}?{query}"

    def _get(self, target: str, timeout: float) -> bytes | None:
        """The body of a 2xx answer, None for 404; the whole call ends by the timeout."""
        connection = self._connection(timeout)
        watchdog = _Watchdog(connection, timeout)
        try:
            with watchdog:
                body = self._exchange(connection, watchdog, target)
        except TimeoutError:
            raise ProviderTimeout(self.name) from None
        except (OSError, http.client.HTTPException):
            raise (ProviderTimeout if watchdog.expired else ProviderUnavailable)(self.name) from None
        finally:
            connection.close()
        if watchdog.expired:  # the body may have been cut short
            raise ProviderTimeout(self.name)
        return body

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        host = self._url.hostname or ""
        port = self._url.port or (443 if self._url.scheme == "https" else 80)  # "[::1]" alone would parse badly
        connection: http.client.HTTPConnection
        if self._url.scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        if self._hosts is not None:
            # Connect to an address checked against the host policy; TLS still verifies the name.
            hosts = self._hosts
            connection._create_connection = lambda address, wait=None, source=None: hosts.connect(  # type: ignore[attr-defined]
                host, port, wait if isinstance(wait, int | float) else timeout
            )
        return connection

    def _exchange(self, connection: http.client.HTTPConnection, watchdog: _Watchdog, target: str) -> bytes | None:
        connection.connect()
        if connection.sock is not None:
            watchdog.watch(connection.sock)
        connection.request("GET", target, headers={"Accept": "application/json"})
        with connection.getresponse() as response:
            if response.status == 404:
                return None
            if not 200 <= response.status < 300:  # 3xx too: redirects are not followed
                raise ProviderUnavailable(self.name)
            return self._body(response)

    def _body(self, response: http.client.HTTPResponse) -> bytes:
        """The body, read in chunks and refused as soon as it passes the cap."""
        length = response.getheader("Content-Length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ProviderContractError(self.name, "the answer holds too much data")
        body = bytearray()
        while chunk := response.read1(READ_CHUNK_BYTES):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise ProviderContractError(self.name, "the answer holds too much data")
        return bytes(body)

    def _records(self, body: bytes | None) -> list[dict[str, object]]:
        """The list of record objects in the body (none for a 404)."""
        if body is None:
            return []
        if body.count(b"{") > MAX_OBJECTS:  # parsed, each object costs far more than its bytes
            raise ProviderContractError(self.name, f"the answer holds more than {MAX_OBJECTS} objects: too much data")
        try:
            data = json.loads(body, parse_float=Decimal, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise ProviderContractError(self.name, "the answer is not JSON") from None
        key = self.binding.records_key
        records = data if not key else data.get(key) if isinstance(data, dict) else None
        if not isinstance(records, list):
            where = f"under {key!r}" if key else "as the body"
            raise ProviderContractError(self.name, f"the answer has no list of records {where}")
        for n, record in enumerate(records):
            if not isinstance(record, dict):
                raise ProviderContractError(self.name, f"record {n} is not an object")
        return records

    def _rows(self, records: list[dict[str, object]], request: FetchRequest, first: int = 0) -> list[Row]:
        """The records as rows; ``first`` is the index of the first one in the answer, for error messages."""
        types = {i.name: i.type for i in request.resource.data_items}
        return [self._row(n, record, request.fields, types) for n, record in enumerate(records, first)]

    def _row(self, n: int, record: dict[str, object], fields: tuple[str, ...], types: dict[str, FieldType]) -> Row:
        """One record as a row of the fields asked for; only their mapped keys are read."""
        row: Row = {}
        for name in fields:
            kind = types.get(name)
            if kind is None:
                raise ProviderContractError(self.name, f"{name} is not a declared field")
            value = record.get(self.binding.key(name))
            try:
                row[name] = None if value is None else _READERS[kind](value)
            except ValueError:
                raise ProviderContractError(self.name, f"record {n}: {name} is not {EXPECTED[kind]}") from None
        return row


class _Watchdog:
    """Shuts a connection's socket down when the deadline passes, ending any read or write in progress.

    Once connected it holds its own duplicate of the socket, which stays open until the watchdog is
    done: ``http.client`` may close its socket early (handing it to the response), and the timer
    must never act on a descriptor number the process has since reused.
    """

    def __init__(self, connection: http.client.HTTPConnection, seconds: float) -> None:
        self._connection = connection
        self._sock: socket.socket | None = None
        self._fired = threading.Event()
        self._timer = threading.Timer(max(0.0, seconds), self._cut)
        self._timer.daemon = True

    @property
    def expired(self) -> bool:
        return self._fired.is_set()

    def watch(self, sock: socket.socket) -> None:
        """Watches the connected (and, for HTTPS, handshaken) socket from now on."""
        self._sock = socket.fromfd(sock.fileno(), sock.family, sock.type)
        if self.expired:
            _shut(self._sock)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._timer.cancel()
        self._timer.join()
        if self._sock is not None:
            self._sock.close()

    def _cut(self) -> None:
        self._fired.set()
        # Before ``watch``, the socket being connected or handshaken is the connection's own.
        sock = self._sock or self._connection.sock
        if sock is not None:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Ends both directions of the connection; a TLS socket gets EOF underneath its TLS layer."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _query_text(value: object) -> str:
    """A filter's text form in a query: ISO dates, RFC 3339 UTC times, true/false, base64 bytes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        utc = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return utc.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError


def _integer(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError


def _decimal(value: object) -> Decimal:
    """A JSON number (parsed as Decimal) or a numeric string; never through a binary float."""
    if isinstance(value, Decimal) and value.is_finite():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return Decimal(value)
    raise ValueError


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError


def _date(value: object) -> dt.date:
    if isinstance(value, str) and _DATE.fullmatch(value):
        return dt.date.fromisoformat(value)
    raise ValueError


def _timestamp(value: object) -> dt.datetime:
    """An RFC 3339 time with its offset, as an aware UTC datetime (fractions past microseconds are dropped)."""
    if isinstance(value, str) and _TIMESTAMP.fullmatch(value):
        return dt.datetime.fromisoformat(value.upper()).astimezone(dt.UTC)
    raise ValueError


def _bytes(value: object) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError from None
    raise ValueError


_READERS: dict[FieldType, Callable[[object], object]] = {
    FieldType.STRING: _string,
    FieldType.INTEGER: _integer,
    FieldType.DECIMAL: _decimal,
    FieldType.BOOLEAN: _boolean,
    FieldType.DATE: _date,
    FieldType.TIMESTAMP: _timestamp,
    FieldType.BYTES: _bytes,
}


def check(options: Mapping[str, object], context: BackendContext) -> list[FieldViolation]:
    """The problems with HTTP binding options, each with its path."""
    out: list[FieldViolation] = []
    out += [FieldViolation(f"binding.{k}", "is not an option of an HTTP backend") for k in options if k not in OPTIONS]
    url = opt.text(options, "url", out)
    opt.text(options, "records_key", out, required=False)
    for key in ("fields", "parameters"):
        names = opt.mapping(options, key, out)
        if any(not k.strip() or not v.strip() for k, v in names.items()):
            out.append(FieldViolation(f"binding.{key}", "names must not be empty"))
    paging = sorted(set(opt.mapping(options, "parameters", []).values()).intersection(PAGING_PARAMETERS))
    if paging:
        out.append(FieldViolation("binding.parameters", f"{', '.join(paging)} is sent for paging; use another name"))
    if url.strip():
        problems = _url_problems(url)
        if not problems:
            problems = _policy_problems(urlsplit(url), context)
        out += [FieldViolation("binding.url", d) for d in problems]
    return out


def _policy_problems(parts: SplitResult, context: BackendContext) -> list[str]:
    """What the operator's host policy says about a well-formed URL."""
    if context.hosts is None:
        return []
    problems = context.host_problems(parts.hostname or "")
    if parts.scheme == "http" and not context.hosts.allow_plain_http:
        problems.append("must be https:// (plain http is off: setting allow_plain_http)")
    return problems


def _url_problems(url: str) -> list[str]:
    """Why ``url`` cannot be an endpoint: scheme, host, port, credentials, characters."""
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        return ["must be ASCII without spaces (percent-encode other characters)"]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return ["is not a valid URL"]
    problems = []
    if parts.scheme not in ("http", "https"):
        problems.append("must be an http:// or https:// URL")
    if not parts.hostname:
        problems.append("must name a host")
    if parts.username is not None or parts.password is not None:
        problems.append("must not hold credentials")
    return problems


def open(name: str, binding: Binding, context: BackendContext) -> Backend:
    """The adapter for ``binding``; its options are checked again, as they may predate this hub's rules."""
    violations = check(binding.options, context)
    if violations:
        raise InvalidArgument.of(violations)
    o = binding.options
    http_binding = HttpBinding(
        url=str(o["url"]),
        fields=opt.mapping(o, "fields", []),
        records_key=str(o.get("records_key") or ""),
        parameters=opt.mapping(o, "parameters", []),
    )
    return HttpAdapter(name, http_binding, _tls(context), context.hosts)


def _tls(context: BackendContext) -> ssl.SSLContext:
    """The system's trusted CAs, and the hub's provider CA when one is configured."""
    tls = ssl.create_default_context()
    if context.tls is not None and context.tls.ca:
        tls.load_verify_locations(cadata=context.tls.ca.decode("ascii", "replace"))
    return tls
