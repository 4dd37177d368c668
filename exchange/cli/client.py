"""A client of the hub for the command line (and the demo): channel, stubs, readable errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from exchange import pki
from exchange.config import Settings
from exchange.errors import ConfigError
from exchange.v1 import (
    audit_pb2_grpc,
    catalog_pb2_grpc,
    console_pb2_grpc,
    exchange_pb2_grpc,
    federation_pb2_grpc,
    objection_pb2_grpc,
    registry_pb2_grpc,
    rights_pb2_grpc,
    subscription_pb2_grpc,
)

T = TypeVar("T")


class HubClient:
    """Stubs for every hub service over one mutual-TLS channel, with the configured deadline."""

    def __init__(self, settings: Settings, identity: Path | None = None) -> None:
        directory = identity or settings.identity
        if directory is None:
            raise ConfigError(
                "no identity to call the hub with: pass --identity DIR (a directory with key.pem, cert.pem "
                "and ca.pem, as `exchange cert issue` writes) or set EXCHANGE_IDENTITY"
            )
        self.identity = directory
        files = pki.IdentityFiles(directory)
        _check_identity(files)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=files.ca.read_bytes(),
            private_key=files.key.read_bytes(),
            certificate_chain=files.cert.read_bytes(),
        )
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        self.channel = grpc.secure_channel(settings.hub_address, credentials, options=options)
        self.timeout = settings.call_timeout_seconds
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self.channel)
        self.rights = rights_pb2_grpc.RightsServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.exchange = exchange_pb2_grpc.ExchangeServiceStub(self.channel)
        self.console = console_pb2_grpc.ConsoleServiceStub(self.channel)
        self.objections = objection_pb2_grpc.ObjectionServiceStub(self.channel)
        self.subscriptions = subscription_pb2_grpc.SubscriptionServiceStub(self.channel)
        self.federation = federation_pb2_grpc.FederationServiceStub(self.channel)

    def call(self, method: Callable[..., T], request: Any) -> T:
        return method(request, timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _check_identity(files: pki.IdentityFiles) -> None:
    """The identity directory holds a key, its certificate and the hub's CA, readable: said plainly here, where
    gRPC would only fail to connect."""
    if not files.directory.exists():
        raise ConfigError(f"the identity directory {files.directory} does not exist (`exchange cert issue` writes one)")
    if not files.directory.is_dir():
        raise ConfigError(f"the identity {files.directory} is not a directory (one with key.pem, cert.pem, ca.pem)")
    for path in (files.key, files.cert, files.ca):
        if not path.exists():
            raise ConfigError(f"identity file {path} is missing")
    try:
        pki.load_key(files.key)
        pki.load_cert(files.cert)
        if not pki.split_pems(files.ca.read_bytes()):
            raise ValueError("no CA certificate")
    except OSError as e:
        raise ConfigError(f"cannot read the identity in {files.directory}: {e.strerror}") from None
    except ValueError:
        raise ConfigError(
            f"the identity in {files.directory} cannot be read: key.pem must hold an EC private key, cert.pem "
            "and ca.pem PEM certificates (as `exchange cert issue` writes them)"
        ) from None


def describe(error: grpc.RpcError) -> str:
    """A person-readable account of a failed call: the field violations the hub sent, and the exchange id to quote.

    The hub's message already lists the violations on one line; they are printed once, one a line.
    """
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = error.details() if isinstance(error, grpc.Call) else str(error)
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    details: list[Any] = list(status.details) if status else []
    violations: list[str] = []
    notes: list[str] = []
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad: error_details_pb2.BadRequest = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [f"{v.field}: {v.description}" for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            info: error_details_pb2.RequestInfo = error_details_pb2.RequestInfo()
            detail.Unpack(info)
            notes.append(f"  exchange id: {info.request_id} (quote it: the audit log holds this refusal under it)")
    summary = "; ".join(violations)
    if violations and message and message.endswith(summary) and len(message) > len(summary):
        message = message[: -len(summary)].rstrip()
    return "\n".join([f"{code.name}: {message}", *(f"  - {v}" for v in violations), *notes])
