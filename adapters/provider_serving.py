"""The provider kit's server: ProviderService over mutual TLS with the department system's identity.

``serve`` presents the system's certificate, requires a client certificate signed by the
identity's CA (the servicer then admits only the hub's), bounds message sizes and, given a
tracer, wraps every call in a span joined to the hub's trace.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.trace import Tracer

from adapters.provider_registry import Provider
from adapters.provider_service import ProviderServicer
from adapters.provider_tracing import ProviderTracing
from exchange import pki
from exchange.errors import ConfigError
from exchange.v1 import provider_pb2_grpc

MAX_MESSAGE = 16 << 20


def serve(
    provider: Provider, listen: str, identity: Path, max_workers: int = 16, *, tracer: Tracer | None = None
) -> tuple[grpc.Server, int]:
    """Starts serving ``provider`` on ``listen`` with the system's identity directory; returns the server and port.

    The server presents the system's certificate, requires a client certificate signed by the
    identity's CA, and answers only the hub. With a ``tracer`` (``exchange.tracing.open_tracing``, the
    department's own exporter) each call gets a span joined to the hub's trace.
    """
    credentials = _credentials(identity)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        # gRPC shares a port between servers by default (SO_REUSEPORT): a second provider started on a port in
        # use (an old version still running) would silently take half the hub's calls. It is refused instead.
        ("grpc.so_reuseport", 0),
    ]
    traced: list[grpc.ServerInterceptor[Any, Any]] = [ProviderTracing(tracer)] if tracer is not None else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options, interceptors=traced)
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(ProviderServicer(provider), server)
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"the provider cannot listen on {listen}")
    server.start()
    return server, port


def _credentials(identity: Path) -> grpc.ServerCredentials:
    """Server credentials from the identity directory: its key and certificate, and its CA for client certificates."""
    files = pki.IdentityFiles(identity)
    try:
        key, cert, ca = files.key.read_bytes(), files.cert.read_bytes(), files.ca.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the provider's identity in {identity}: {e.strerror}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
