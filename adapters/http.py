"""The HTTP/JSON adapter: looks records up at a department's JSON endpoint with a GET, on the event loop.

Binding options: ``url``; ``fields`` (data item -> JSON key, default the same name);
``records_key`` (the key of the list of records in the body; empty: the body is the list);
``parameters`` (filter -> query parameter, default the same name).

Filters are sent as URL-encoded query parameters, with ``limit`` and ``offset`` so that an endpoint
may page. Each adapter holds one ``httpx`` client, so calls reuse connections. The whole call, from
resolving and connecting to the last byte, is bounded by the request's timeout (``httpx``'s own
timeouts bound each phase, not the call), so a provider that accepts and never answers, or drips its
answer, cannot hold the hub. Under a host policy the adapter connects to the address it vetted, never
to a second lookup of the name, while ``Host`` and TLS (name indication and verification) keep the
name. Redirects are not followed, the body is capped as it arrives, and JSON values are read strictly
as the declared types (numbers as ``Decimal``, never as binary floats). Errors name the provider and
what was wrong, never the provider's own text.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import SplitResult, urlencode, urlsplit

import httpx

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
from adapters.json_values import READERS, no_constant, query_text
from exchange import tracing
from exchange.backend import Backend, Batch, ChangeBatch, ChangeRequest
from exchange.errors import FieldViolation, InvalidArgument
from exchange.models import Binding, FieldType
from exchange.values import EXPECTED

MAX_BODY_BYTES = 32 * 1024 * 1024
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
        self._hosts = hosts
        # No proxy, certificate file or netrc from the environment: a proxy would connect past the host policy.
        self._client = httpx.AsyncClient(
            verify=tls or ssl.create_default_context(), follow_redirects=False, trust_env=False
        )

    async def fetch(self, request: FetchRequest) -> list[Row]:
        """At most ``request.limit`` rows after ``request.offset``; the page is always cut here.

        The endpoint is asked for the first offset + limit records (``limit``, ``offset=0``), so one that
        honours paging sends no more than needed and one that ignores it sends everything; either way
        the same page results, and no page repeats another.
        """
        checked_filters(request)
        body = await self._get(self._target(request, paging=True), request.timeout_seconds)
        start, end = request.offset, request.offset + request.limit
        records = self._records(body)[start:end]
        return checked_rows(self.name, request.resource, request.fields, self._rows(records, request, start))

    async def stream(self, request: FetchRequest, batch_size: int) -> AsyncGenerator[Batch, None]:
        """Every record of one call, in batches; filters are checked, and the call made, on the first batch."""
        checked_filters(request)
        body = await self._get(self._target(request, paging=False), request.timeout_seconds)
        # All records are read before the first batch, so a bad record lets nothing of the answer through.
        rows = checked_rows(self.name, request.resource, request.fields, self._rows(self._records(body), request))
        size = max(1, batch_size)
        for start in range(0, len(rows), size):
            yield rows[start : start + size]

    async def document(self, request: FetchRequest) -> Document:
        raise Unsupported(self.name, "documents")

    async def changes(self, request: ChangeRequest) -> ChangeBatch:
        """An HTTP/JSON endpoint has no way to say what changed: its resources cannot be subscribed to."""
        raise Unsupported(self.name, "changes")

    async def aclose(self) -> None:
        """Closes the pooled connections."""
        await self._client.aclose()

    def _headers(self) -> dict[str, str]:
        """Every header sent to the provider, built here and only here (trace context belongs here too).

        ``identity``: the body is capped as it arrives, and a compressed one would grow past the cap unseen.
        """
        return {"accept": "application/json", "accept-encoding": "identity", **tracing.outgoing_headers()}

    def _target(self, request: FetchRequest, *, paging: bool) -> str:
        """The URL of the GET: the binding's, with its own query, the filters, and the paging wanted."""
        pairs = [(self.binding.parameter(k), query_text(v)) for k, v in request.filters.items()]
        clash = sorted(name for name, _ in pairs if name in PAGING_PARAMETERS)
        if clash:
            raise ProviderContractError(
                self.name, f"a filter would be sent as {', '.join(clash)}; map it to another name"
            )
        if paging:
            pairs += [("limit", str(request.offset + request.limit)), ("offset", "0")]
        query = "&".join(q for q in (self._url.query, urlencode(pairs)) if q)
        return f"{self._url.scheme}://{self._url.netloc}{self._url.path or '/'}?{query}"

    async def _get(self, url: str, timeout: float) -> bytes | None:
        """The body of a 2xx answer, None for 404; the whole call, vetting the host included, ends by the timeout."""
        try:
            async with asyncio.timeout(timeout):
                # httpx's own timeouts (each phase) never end the call before the whole-call deadline does.
                request = self._client.build_request("GET", url, headers=self._headers(), timeout=timeout)
                return await self._exchange(request)
        except (TimeoutError, httpx.TimeoutException):
            raise ProviderTimeout(self.name) from None
        except (OSError, httpx.HTTPError):  # refused, reset, TLS not verified, a host the policy forbids
            raise ProviderUnavailable(self.name) from None

    async def _exchange(self, request: httpx.Request) -> bytes | None:
        response = await self._send(request)
        try:
            if response.status_code == 404:
                return None
            if not 200 <= response.status_code < 300:  # 3xx too: redirects are not followed
                raise ProviderUnavailable(self.name)
            return await self._body(response)
        finally:
            await response.aclose()  # a body not read to its end closes the connection instead of reusing it

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The answer's head, from an address the host policy allows (the first of them that answers)."""
        if self._hosts is None:
            return await self._client.send(request, stream=True)
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        addresses = await asyncio.to_thread(self._hosts.vetted, host, port)  # resolving blocks
        # The connection goes to the vetted address; Host (set from the name when the request was built)
        # and TLS's name indication and certificate check keep the name.
        request.extensions["sni_hostname"] = host
        failed: httpx.ConnectError | None = None
        for _, address in addresses:
            request.url = request.url.copy_with(host=str(address))
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError as e:
                failed = e
        raise failed or OSError(f"{host} resolves to no address")

    async def _body(self, response: httpx.Response) -> bytes:
        """The body as sent (not decoded), read as it arrives and refused as soon as it passes the cap."""
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ProviderContractError(self.name, "the answer holds too much data")
        body = bytearray()
        async for chunk in response.aiter_raw():
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
            data = json.loads(body, parse_float=Decimal, parse_constant=no_constant)
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
                row[name] = None if value is None else READERS[kind](value)
            except ValueError:
                raise ProviderContractError(self.name, f"record {n}: {name} is not {EXPECTED[kind]}") from None
        return row


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
