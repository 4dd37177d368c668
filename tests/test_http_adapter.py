"""The HTTP/JSON adapter against a real HTTP server on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ParamSpec
from urllib.parse import parse_qs, urlsplit

import pytest

from adapters import http as http_adapter
from adapters.base import (
    FetchRequest,
    ProviderContractError,
    ProviderTimeout,
    ProviderUnavailable,
    Row,
    Unsupported,
)
from adapters.factory import BackendContext, ClientTls
from adapters.http import HttpAdapter, HttpBinding, check
from exchange import models as m
from exchange import pki
from exchange.errors import InvalidArgument
from tests.harness import identity_spec

SPEC = identity_spec(
    data_items=(
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),
        m.DataItem("as_of", "统计日期", m.FieldType.DATE, filterable=True),
        m.DataItem("active", "是否有效", m.FieldType.BOOLEAN, filterable=True),
        m.DataItem("birth_date", "出生日期", m.FieldType.DATE),
        m.DataItem("household", "户号", m.FieldType.INTEGER),
        m.DataItem("income", "年收入", m.FieldType.DECIMAL),
        m.DataItem("verified", "已核验", m.FieldType.BOOLEAN),
        m.DataItem("updated_at", "更新时间", m.FieldType.TIMESTAMP),
        m.DataItem("photo", "照片", m.FieldType.BYTES),
    )
)
FIELDS = {"name": "xm", "birth_date": "csrq", "household": "hh", "income": "sr", "updated_at": "gxsj", "photo": "zp"}
ALL = ("name", "birth_date", "household", "income", "verified", "updated_at", "photo")

Answer = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Endpoint:
    """A JSON endpoint whose answer each test sets, recording every request it receives."""

    url: str = ""
    answer: Answer = field(default=lambda h: send(h, 200, b"[]"))
    paths: list[str] = field(default_factory=list)
    accepts: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)  # the Host header of each request
    peers: list[object] = field(default_factory=list)  # the client's address of each request
    release: threading.Event = field(default_factory=threading.Event)
    keep_alive: bool = False  # HTTP/1.1, keeping connections open between requests

    def queries(self) -> list[dict[str, list[str]]]:
        return [parse_qs(urlsplit(p).query, keep_blank_values=True) for p in self.paths]


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", headers.pop("length", str(len(body))))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def answer_json(body: object, status: int = 200) -> Answer:
    return lambda h: send(h, status, json.dumps(body, ensure_ascii=False).encode())


def answer_raw(body: bytes, status: int = 200) -> Answer:
    return lambda h: send(h, status, body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up early (as the adapter does on purpose) is no error here."""


def _handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if endpoint.keep_alive else "HTTP/1.0"

        def do_GET(self) -> None:
            endpoint.paths.append(self.path)
            endpoint.accepts.append(self.headers.get("Accept", ""))
            endpoint.hosts.append(self.headers.get("Host", ""))
            endpoint.peers.append(self.client_address)
            endpoint.answer(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serving(
    ep: Endpoint, tls: ssl.SSLContext | None = None, address: tuple[str, int] = ("127.0.0.1", 0), name: str = ""
) -> Iterator[Endpoint]:
    """Serves ``ep`` on a loopback address (over TLS when ``tls`` is given) until the block ends.

    Its URL names the host ``name`` when one is given, else the address.
    """
    server = _QuietServer(address, _handler(ep))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="json-endpoint", daemon=True)
    thread.start()
    ep.url = f"{'https' if tls else 'http'}://{name or address[0]}:{server.server_address[1]}/api/rk"
    try:
        yield ep
    finally:
        ep.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with serving(Endpoint()) as ep:
        yield ep


P = ParamSpec("P")


def on_loop(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Runs an async test on an event loop of its own (the adapter is used on the hub's loop)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


async def streamed(adapter: HttpAdapter, request: FetchRequest, batch_size: int) -> list[list[Row]]:
    """Every batch of a stream."""
    out: list[list[Row]] = []
    async for batch in adapter.stream(request, batch_size):
        assert isinstance(batch, list)
        out.append(batch)
    return out


def _request(**changes: object) -> FetchRequest:
    base = FetchRequest(SPEC, {"id_number": "350203198001012345"}, ("name", "household"), 10, 5.0)
    return replace(base, **changes)  # type: ignore[arg-type]


def _adapter(endpoint: Endpoint, **changes: object) -> HttpAdapter:
    binding = replace(HttpBinding(endpoint.url, FIELDS, "data", {"id_number": "sfzh"}), **changes)  # type: ignore[arg-type]
    return HttpAdapter("人社接口", binding)


@on_loop
async def test_declared_filters_are_sent_as_encoded_query_parameters(endpoint: Endpoint) -> None:
    endpoint.answer = answer_json({"data": []})
    hostile = "' OR '1'='1&limit=999#frag 张"
    filters = {"id_number": hostile, "as_of": dt.date(2024, 1, 2), "active": True}
    adapter = _adapter(endpoint, url=endpoint.url + "?app=hub")
    assert await adapter.fetch(_request(filters=filters, limit=3, offset=6)) == []
    (path,) = endpoint.paths
    assert path.startswith("/api/rk?app=hub&")
    assert "&limit=999" not in path and "#" not in path and " " not in path
    assert endpoint.queries() == [
        {
            "app": ["hub"],
            "sfzh": [hostile],
            "as_of": ["2024-01-02"],
            "active": ["true"],
            "limit": ["9"],  # the first offset + limit records: the page is cut here
            "offset": ["0"],
        }
    ]
    assert endpoint.accepts == ["application/json"]


@on_loop
async def test_json_values_become_the_declared_types(endpoint: Endpoint) -> None:
    photo = base64.b64encode(b"\x89PNG\x00\xff").decode()
    records = (
        '{"data": [{"xm": "张三", "csrq": "1980-01-01", "hh": 7, "sr": 12345678901234567890.123456789,'
        ' "verified": true, "gxsj": "2024-01-02T03:04:05.5+08:00", "zp": "' + photo + '", "other": [1, 2]},'
        ' {"xm": null, "sr": "0.30", "gxsj": "2024-01-02t00:00:00z"}, {"sr": 0.1}]}'
    )
    endpoint.answer = answer_raw(records.encode())
    rows = await _adapter(endpoint).fetch(_request(fields=ALL))
    assert rows[0] == {
        "name": "张三",
        "birth_date": dt.date(1980, 1, 1),
        "household": 7,
        "income": Decimal("12345678901234567890.123456789"),
        "verified": True,
        "updated_at": dt.datetime(2024, 1, 1, 19, 4, 5, 500000, tzinfo=dt.UTC),
        "photo": b"\x89PNG\x00\xff",
    }
    assert rows[1]["name"] is None and rows[1]["household"] is None  # null and missing alike
    assert rows[1]["income"] == Decimal("0.30") and str(rows[1]["income"]) == "0.30"
    assert rows[1]["updated_at"] == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert type(rows[2]["income"]) is Decimal and str(rows[2]["income"]) == "0.1"  # no binary float on the way


@pytest.mark.parametrize(
    ("item", "key", "value", "expected"),
    [
        ("household", "hh", '"SECRET-7"', "a whole number"),
        ("household", "hh", "true", "a whole number"),
        ("household", "hh", "7.0", "a whole number"),
        ("name", "xm", "12", "a string"),
        ("verified", "verified", '"true"', "true or false"),
        ("income", "sr", '"12,5"', "a decimal number"),
        ("income", "sr", "[1]", "a decimal number"),
        ("birth_date", "csrq", '"1980/01/01"', "a date"),
        ("birth_date", "csrq", '"1980-02-30"', "a date"),
        ("updated_at", "gxsj", '"2024-01-02T03:04:05"', "a time"),
        ("photo", "zp", '"not base64!"', "base64"),
    ],
)
@on_loop
async def test_a_value_of_the_wrong_type_is_caught(
    endpoint: Endpoint, item: str, key: str, value: str, expected: str
) -> None:
    endpoint.answer = answer_raw(f'{{"data": [{{}}, {{"{key}": {value}}}]}}'.encode())
    with pytest.raises(ProviderContractError, match=f"record 1: {item} is not {expected}") as caught:
        await _adapter(endpoint).fetch(_request(fields=(item,)))
    assert "SECRET" not in caught.value.message and value not in caught.value.message


@pytest.mark.parametrize(
    ("records_key", "body", "match"),
    [
        ("data", b"<html>Internal error ORA-00942</html>", "not JSON"),
        ("data", b'{"data": [{"hh": NaN}]}', "not JSON"),
        ("data", b"\xff\xfe\x00garbage", "not JSON"),
        ("data", b"[" * 100_000, "not JSON"),
        ("data", b'{"data": {"hh": 1}}', "no list of records under 'data'"),
        ("data", b'[{"hh": 1}]', "no list of records"),
        ("", b'{"data": []}', "no list of records as the body"),
        ("", b'[{"hh": 1}, "x"]', "record 1 is not an object"),
    ],
)
@on_loop
async def test_an_answer_that_is_not_a_list_of_records_is_refused(
    endpoint: Endpoint, records_key: str, body: bytes, match: str
) -> None:
    endpoint.answer = answer_raw(body)
    with pytest.raises(ProviderContractError, match=match) as caught:
        await _adapter(endpoint, records_key=records_key).fetch(_request())
    assert "ORA" not in caught.value.message


@on_loop
async def test_a_body_without_records_key_is_the_list(endpoint: Endpoint) -> None:
    endpoint.answer = answer_json([{"xm": "张三", "hh": 7}])
    assert await _adapter(endpoint, records_key="").fetch(_request()) == [{"name": "张三", "household": 7}]


@on_loop
async def test_too_much_data_is_refused(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint.answer = lambda h: send(h, 200, b"", length=str(http_adapter.MAX_BODY_BYTES + 1))
    with pytest.raises(ProviderContractError, match="too much data"):
        await _adapter(endpoint).fetch(_request())

    def unannounced(h: BaseHTTPRequestHandler) -> None:  # no Content-Length: read until the cap
        h.send_response(200)
        h.end_headers()
        h.wfile.write(b'{"data": [' + b'{"xm": "x"},' * 1000 + b"{}]}")
        h.close_connection = True

    monkeypatch.setattr(http_adapter, "MAX_BODY_BYTES", 4096)
    endpoint.answer = unannounced
    with pytest.raises(ProviderContractError, match="too much data"):
        await _adapter(endpoint).fetch(_request())


@pytest.mark.parametrize("status", [500, 503, 400, 403, 302])
@on_loop
async def test_provider_failures_are_unavailable_without_their_text(endpoint: Endpoint, status: int) -> None:
    endpoint.answer = lambda h: send(h, status, b"ORA-00942: table RK_SECRET does not exist", Location="/elsewhere")
    with pytest.raises(ProviderUnavailable, match="人社接口") as caught:
        await _adapter(endpoint).fetch(_request())
    assert "ORA" not in caught.value.message and "SECRET" not in caught.value.message
    assert len(endpoint.paths) == 1  # a redirect is not followed


@on_loop
async def test_not_found_is_no_records(endpoint: Endpoint) -> None:
    endpoint.answer = answer_raw(b"<html>no such person</html>", status=404)
    assert await _adapter(endpoint).fetch(_request()) == []
    assert await streamed(_adapter(endpoint), _request(), 10) == []


@on_loop
async def test_a_hanging_endpoint_times_out_quickly(endpoint: Endpoint) -> None:
    def hang(h: BaseHTTPRequestHandler) -> None:
        endpoint.release.wait(10)

    endpoint.answer = hang
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match="人社接口"):
        await _adapter(endpoint).fetch(_request(timeout_seconds=0.5))
    assert time.monotonic() - started < 1.5


@on_loop
async def test_a_dripping_endpoint_is_bounded_as_a_whole(endpoint: Endpoint) -> None:
    def drip(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.flush()
        while not endpoint.release.wait(0.05):
            h.wfile.write(b" ")
            h.wfile.flush()

    endpoint.answer = drip
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await _adapter(endpoint).fetch(_request(timeout_seconds=0.5))
    assert time.monotonic() - started < 1.5


@on_loop
async def test_a_refused_connection_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = HttpAdapter("人社接口", HttpBinding(f"http://127.0.0.1:{port}/api"))
    with pytest.raises(ProviderUnavailable, match="人社接口"):
        await adapter.fetch(_request(timeout_seconds=2.0))


@on_loop
async def test_undeclared_filters_are_refused_before_any_request(endpoint: Endpoint) -> None:
    adapter = _adapter(endpoint)
    with pytest.raises(InvalidArgument, match="name cannot be filtered on"):
        await adapter.fetch(_request(filters={"name": "张三"}))
    with pytest.raises(InvalidArgument, match="at least one filter"):
        await anext(adapter.stream(_request(filters={}), 10))
    assert endpoint.paths == []


@on_loop
async def test_stream_yields_batches_of_one_call(endpoint: Endpoint) -> None:
    endpoint.answer = answer_json({"data": [{"xm": f"人{i}", "hh": i} for i in range(5)]})
    batches = await streamed(_adapter(endpoint), _request(limit=2), 2)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [r["household"] for b in batches for r in b] == [0, 1, 2, 3, 4]
    assert len(endpoint.paths) == 1
    assert "limit" not in endpoint.queries()[0] and "offset" not in endpoint.queries()[0]


@on_loop
async def test_stream_lets_nothing_through_when_a_record_is_bad(endpoint: Endpoint) -> None:
    endpoint.answer = answer_json({"data": [{"hh": 1}, {"hh": 2}, {"hh": "3"}]})
    with pytest.raises(ProviderContractError, match="record 2: household"):
        await anext(_adapter(endpoint).stream(_request(), 1))


@on_loop
async def test_an_endpoint_that_does_not_page_is_paged_here(endpoint: Endpoint) -> None:
    endpoint.answer = answer_json({"data": [{"hh": i} for i in range(5)]})
    adapter = _adapter(endpoint)
    assert await adapter.fetch(_request(fields=("household",), limit=2)) == [{"household": 0}, {"household": 1}]
    assert await adapter.fetch(_request(fields=("household",), limit=2, offset=2)) == [
        {"household": 2},
        {"household": 3},
    ]
    endpoint.answer = answer_json({"data": [{"hh": i} for i in range(3)] + [{"hh": "x"}]})
    with pytest.raises(ProviderContractError, match="record 3: household"):  # numbered as in the answer
        await adapter.fetch(_request(fields=("household",), limit=2, offset=2))
    endpoint.answer = answer_json({"data": [{"hh": i} for i in range(3)]})  # ignores paging, limit + 1 records
    pages = [await adapter.fetch(_request(fields=("household",), limit=2, offset=o)) for o in (0, 2, 4)]
    assert pages == [[{"household": 0}, {"household": 1}], [{"household": 2}], []]  # no page repeats another


@on_loop
async def test_documents_are_not_served(endpoint: Endpoint) -> None:
    with pytest.raises(Unsupported, match="documents"):
        await _adapter(endpoint).document(_request())


CONTEXT = BackendContext()


@pytest.mark.parametrize(
    ("options", "path", "match"),
    [
        ({}, "binding.url", "is required"),
        ({"url": "ftp://example.org/x"}, "binding.url", "http:// or https://"),
        ({"url": "file:///etc/passwd"}, "binding.url", "http:// or https://"),
        ({"url": "http:///rk"}, "binding.url", "must name a host"),
        ({"url": "http://user:pw@example.org/rk"}, "binding.url", "credentials"),
        ({"url": "http://example.org:99999/rk"}, "binding.url", "not a valid URL"),
        ({"url": "http://example.org/人口"}, "binding.url", "ASCII"),
        ({"url": "http://example.org/a b"}, "binding.url", "ASCII"),
        ({"url": 7}, "binding.url", "must be text"),
        ({"url": "https://example.org", "fields": ["a"]}, "binding.fields", "must map names"),
        ({"url": "https://example.org", "fields": {"a": ""}}, "binding.fields", "must not be empty"),
        ({"url": "https://example.org", "parameters": {"a": 1}}, "binding.parameters", "must map names"),
        ({"url": "https://example.org", "parameters": {"a": "limit"}}, "binding.parameters", "paging"),
        ({"url": "https://example.org", "records_key": ["x"]}, "binding.records_key", "must be text"),
        ({"url": "https://example.org", "record_key": "x"}, "binding.record_key", "not an option"),
    ],
)
def test_check_reports_bad_options(options: dict[str, object], path: str, match: str) -> None:
    violations = check(options, CONTEXT)
    assert any(v.field == path and match in v.description for v in violations), violations


def test_check_accepts_good_options_and_open_refuses_bad_ones() -> None:
    good: dict[str, object] = {
        "url": "https://[::1]:8443/api/rk?app=hub",
        "fields": {"name": "xm"},
        "records_key": "data",
        "parameters": {"id_number": "sfzh"},
    }
    assert check(good, CONTEXT) == []
    assert check({"url": "http://rk.example.gov.cn/api"}, CONTEXT) == []
    backend = http_adapter.open("人社接口", m.Binding("R1", m.BackendKind.HTTP, good), CONTEXT)
    assert isinstance(backend, HttpAdapter)
    assert backend.binding == HttpBinding(
        "https://[::1]:8443/api/rk?app=hub", {"name": "xm"}, "data", {"id_number": "sfzh"}
    )
    with pytest.raises(InvalidArgument, match=r"binding\.url"):
        http_adapter.open("人社接口", m.Binding("R1", m.BackendKind.HTTP, {"url": "gopher://x"}), CONTEXT)


def _tls_server(tmp_path: Path, hostnames: tuple[str, ...] = ("127.0.0.1",)) -> tuple[ssl.SSLContext, ClientTls]:
    """A server context with a certificate for ``hostnames``, and the hub's TLS settings that trust its CA."""
    ca_key, ca = pki.create_ca("部门测试 CA")
    key, cert = pki.issue_server_certificate(ca_key, ca, hostnames)
    (tmp_path / "server.pem").write_bytes(pki.cert_pem(cert))
    (tmp_path / "server.key").write_bytes(pki.key_pem(key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    return server, ClientTls(pki.key_pem(key), pki.cert_pem(cert), pki.cert_pem(ca))


@on_loop
async def test_https_endpoints_are_verified(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_server(tmp_path)
    with serving(Endpoint(answer=answer_json({"data": [{"xm": "张三"}]})), server_tls) as ep:
        binding = m.Binding("R1", m.BackendKind.HTTP, {"url": ep.url, "fields": FIELDS, "records_key": "data"})
        trusted = http_adapter.open("人社接口", binding, BackendContext(tls=client_tls))
        assert await trusted.fetch(_request(fields=("name",))) == [{"name": "张三"}]
        untrusted = http_adapter.open("人社接口", binding, BackendContext())
        with pytest.raises(ProviderUnavailable):
            await untrusted.fetch(_request(fields=("name",)))
    assert len(ep.paths) == 1


@pytest.mark.parametrize("scheme", ["http", "https"])
@on_loop
async def test_a_server_that_accepts_and_never_answers_times_out(scheme: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes connections; nobody reads or answers
        url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/api"
        started = time.monotonic()
        with pytest.raises(ProviderTimeout):
            await HttpAdapter("人社接口", HttpBinding(url)).fetch(_request(timeout_seconds=0.5))
        assert time.monotonic() - started < 1.5


@on_loop
async def test_an_answer_of_too_many_objects_is_refused_before_it_is_parsed(endpoint: Endpoint) -> None:
    endpoint.answer = answer_raw(b'{"data": [' + b"{}," * 1_000_001 + b"{}]}")
    with pytest.raises(ProviderContractError, match="too much data"):
        await _adapter(endpoint).fetch(_request())
