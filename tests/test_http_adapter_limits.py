"""The REST adapter's refusals on the wire: the whole-call deadline, the body cap, redirects, the host policy.

Real HTTP(S) servers on loopback addresses; only name resolution is replaced, where a test needs a name
that resolves to a chosen address (DNS rebinding).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from adapters import http as http_adapter
from adapters.base import ProviderContractError, ProviderTimeout, ProviderUnavailable
from adapters.factory import BackendContext
from adapters.hosts import HostPolicy
from adapters.http import HttpAdapter, HttpBinding
from exchange import models as m
from tests.test_http_adapter import (
    FIELDS,
    Endpoint,
    _request,
    _tls_server,
    answer_json,
    on_loop,
    send,
    serving,
)

NAME = "api.tax.example"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with serving(Endpoint()) as ep:
        yield ep


def _adapter(url: str, hosts: HostPolicy | None = None) -> HttpAdapter:
    return HttpAdapter("税务接口", HttpBinding(url, FIELDS, "data", {"id_number": "sfzh"}), hosts=hosts)


@on_loop
async def test_headers_dripped_past_the_deadline_time_out(endpoint: Endpoint) -> None:
    """Each byte comes well within httpx's per-read timeout; the call as a whole does not."""

    def drip(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(60):  # 3 s of headers, then none: without a whole-call deadline the call ends late
            if endpoint.release.wait(0.05):
                return
            h.wfile.write(b"X-Slow: 1\r\n")
            h.wfile.flush()

    endpoint.answer = drip
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match="税务接口"):
        await _adapter(endpoint.url).fetch(_request(timeout_seconds=0.5))
    assert 0.4 < time.monotonic() - started < 1.5


@on_loop
async def test_a_body_past_the_cap_is_refused_without_reading_the_rest(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_adapter, "MAX_BODY_BYTES", 64 * 1024)
    chunk, chunks = b" " * 65536, 1024  # 64 MiB offered, no Content-Length: the cap is met while reading
    written: list[int] = []
    cut = threading.Event()

    def flood(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.end_headers()
        try:
            for n in range(chunks):
                h.wfile.write(chunk)
                written.append(n)
        except OSError:
            cut.set()  # the adapter closed the connection
        h.close_connection = True

    endpoint.answer = flood
    with pytest.raises(ProviderContractError, match="too much data"):
        await _adapter(endpoint.url).fetch(_request())
    assert cut.wait(5), "the server was allowed to send the whole body"
    assert len(written) < chunks // 4


@on_loop
async def test_an_announced_body_past_the_cap_is_refused_from_its_headers(endpoint: Endpoint) -> None:
    sent = threading.Event()

    def announce(h: BaseHTTPRequestHandler) -> None:
        send(h, 200, b"", length=str(http_adapter.MAX_BODY_BYTES + 1))
        sent.set()
        endpoint.release.wait(10)  # the body never comes: the adapter must not wait for it

    endpoint.answer = announce
    started = time.monotonic()
    with pytest.raises(ProviderContractError, match="too much data"):
        await _adapter(endpoint.url).fetch(_request(timeout_seconds=5.0))
    took = time.monotonic() - started
    assert took < 1.0, took
    assert sent.wait(5)  # the server's thread may set it just after the adapter has already refused


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@on_loop
async def test_a_redirect_is_refused_and_its_target_never_contacted(endpoint: Endpoint, status: int) -> None:
    with serving(Endpoint(answer=answer_json({"data": [{"hh": 1}]}))) as target:
        endpoint.answer = lambda h: send(h, status, b"", Location=target.url)
        with pytest.raises(ProviderUnavailable, match="税务接口"):
            await _adapter(endpoint.url).fetch(_request())
    assert len(endpoint.paths) == 1
    assert target.paths == []


@pytest.mark.parametrize(
    ("host", "policy"),
    [
        ("localhost", HostPolicy(("localhost",), True)),  # a listed name that resolves to this machine
        ("127.0.0.1", HostPolicy((NAME,), True)),  # an address not on the list
        ("127.0.0.1", HostPolicy((), True)),  # no list: loopback is still out of reach
    ],
)
@on_loop
async def test_a_host_the_policy_forbids_is_never_connected_to(host: str, policy: HostPolicy) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://{host}:{listener.getsockname()[1]}/api"
        with pytest.raises(ProviderUnavailable, match="税务接口"):
            await _adapter(url, policy).fetch(_request())
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # no connection is waiting to be accepted
            listener.accept()


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``NAME`` resolves to 127.0.0.2 on the first lookup and to 127.0.0.3 on every later one."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def lookup(host: object, port: object, *args: object, **kwargs: object) -> object:
        if host != NAME:
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        address = "127.0.0.2" if not lookups else "127.0.0.3"
        lookups.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(str(port))))]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    return lookups


@pytest.mark.parametrize("tls", [False, True])
@on_loop
async def test_the_adapter_connects_to_the_address_it_vetted(tmp_path: Path, rebinding: list[str], tls: bool) -> None:
    """Rebinding: the second answer (127.0.0.3, not allowed) is never asked for; Host and TLS keep the name."""
    server_tls, client_tls = _tls_server(tmp_path, (NAME,))
    names: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, context: names.append(name)
    good = Endpoint(answer=answer_json({"data": [{"hh": 7}]}))
    with serving(good, server_tls if tls else None, ("127.0.0.2", 0), NAME):
        port = int(good.url.split(":")[2].split("/")[0])
        with serving(Endpoint(), None, ("127.0.0.3", port), NAME) as evil:
            binding = m.Binding("R1", m.BackendKind.HTTP, {"url": good.url, "fields": FIELDS, "records_key": "data"})
            context = BackendContext(tls=client_tls, hosts=HostPolicy((NAME, "127.0.0.2/32"), allow_plain_http=True))
            adapter = http_adapter.open("税务接口", binding, context)
            try:
                assert await adapter.fetch(_request(fields=("household",))) == [{"household": 7}]
            finally:
                await adapter.aclose()
    assert rebinding == ["127.0.0.2"]  # one lookup, by the policy; none by the client
    assert good.hosts == [f"{NAME}:{port}"] and evil.paths == []
    assert names == ([NAME] if tls else [])


@on_loop
async def test_tls_at_the_vetted_address_still_checks_the_name(tmp_path: Path, rebinding: list[str]) -> None:
    """A certificate for the address but not for the name is refused: verification is by name."""
    server_tls, client_tls = _tls_server(tmp_path, ("127.0.0.2", "other.example"))
    with serving(Endpoint(answer=answer_json({"data": []})), server_tls, ("127.0.0.2", 0), NAME) as ep:
        binding = m.Binding("R1", m.BackendKind.HTTP, {"url": ep.url, "records_key": "data"})
        context = BackendContext(tls=client_tls, hosts=HostPolicy((NAME, "127.0.0.2/32")))
        adapter = http_adapter.open("税务接口", binding, context)
        with pytest.raises(ProviderUnavailable):
            await adapter.fetch(_request())
        await adapter.aclose()
    assert ep.paths == []


@on_loop
async def test_calls_reuse_the_adapters_connection() -> None:
    with serving(Endpoint(answer=answer_json({"data": [{"hh": 1}]}), keep_alive=True)) as ep:
        adapter = _adapter(ep.url, HostPolicy(("127.0.0.1",), True))
        for _ in range(3):
            assert await adapter.fetch(_request(fields=("household",))) == [{"household": 1}]
        await adapter.aclose()
    assert len(ep.paths) == 3 and len(set(ep.peers)) == 1
