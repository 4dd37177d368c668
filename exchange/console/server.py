"""The console's HTTPS server: uvicorn inside the hub's event loop, with optional client certificates.

A browser may present the person's hub certificate (mutual TLS, verified against the hub's trust bundle);
it is handed to the application as the ASGI TLS extension's ``client_cert_chain``, which the HTTP server
does not fill in itself. Without a certificate the connection is still accepted: the person then signs
in with a one-time link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Generator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from exchange import pki
from exchange.errors import ConfigError

log = logging.getLogger(__name__)
ASGIApp = Any
# The most a request line and its headers may take (bodies are bounded by the application).
HEADER_BYTES = 64 * 1024


def _with_client_cert(app: ASGIApp, pem: str) -> ASGIApp:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [pem]}
        await app(scope, receive, send)

    return wrapped


class CertificateProtocol(H11Protocol):
    """HTTP/1.1 over TLS that passes the verified client certificate, if any, to the application."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = transport.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if der:
            self.app = _with_client_cert(self.app, ssl.DER_cert_to_PEM_cert(der))


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the hub handles its own signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def tls_context(files: pki.HubFiles) -> ssl.SSLContext:
    """The console's TLS: the hub's server certificate, client certificates asked for but optional."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.server_cert), str(files.server_key))
    context.load_verify_locations(cadata=files.trusted_pem().decode())
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class ConsoleServer:
    """Serves the console app on ``listen`` (host:port) in the running event loop."""

    def __init__(self, app: ASGIApp, listen: str, files: pki.HubFiles) -> None:
        host, _, port = listen.rpartition(":")
        context = tls_context(files)
        self.config = uvicorn.Config(
            app,
            host=host.strip("[]"),
            port=int(port),
            http=CertificateProtocol,
            ssl_context_factory=lambda _config, _default: context,
            lifespan="off",
            log_config=None,
            access_log=False,  # sign-in links carry their secret in the path; the console logs what it does
            server_header=False,
            h11_max_incomplete_event_size=HEADER_BYTES,
            timeout_graceful_shutdown=2,
        )
        self.server = _Server(self.config)
        self.port = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Binds and starts serving; the bound port."""
        self._task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                error = self._task.exception()
                raise ConfigError(f"cannot serve the console on {self.config.host}:{self.config.port}: {error}")
            await asyncio.sleep(0.01)
        sockets = [s for server in self.server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.config.port
        return self.port

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=10)
