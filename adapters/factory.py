"""From a resource's binding to a backend: checking the options, and opening the connector.

Each adapter module offers ``check(options, context)`` (the violations of its options, as a
person would fix them) and ``open(name, binding, context)`` (a ready ``Backend``). The hub checks
a binding when it is set and opens one backend per binding version, reused across calls.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from adapters.hosts import HostPolicy
from exchange.backend import Backend, Lane
from exchange.errors import FieldViolation
from exchange.models import BackendKind, Binding


@dataclass(frozen=True)
class ClientTls:
    """The hub's own certificate and key, presented to providers, and the CA that signs theirs."""

    key: bytes
    certificate: bytes
    ca: bytes


@dataclass(frozen=True)
class BackendContext:
    """What connectors need from the hub's configuration."""

    tls: ClientTls | None = None
    # Directories under which file backends may serve documents.
    document_roots: tuple[Path, ...] = ()
    default_timeout: float = 10.0
    # URLs backends may not use (the hub's own database).
    forbidden_urls: tuple[str, ...] = field(default_factory=tuple)
    # The hosts backends may reach; None: no restriction (connector tests on loopback).
    hosts: HostPolicy | None = None
    # Whether SQLite files may be bound (a path reads any file the hub can: test benches and the demo).
    allow_sqlite: bool = True
    # The worker threads of the owning department, for adapters that block (SQL, files): see ``OnThreads``.
    lane: Lane = field(default_factory=Lane)

    def host_problems(self, host: str) -> list[str]:
        return self.hosts.problems(host) if self.hosts is not None else []


class _Module(Protocol):
    def check(self, options: Mapping[str, object], context: BackendContext) -> list[FieldViolation]: ...

    def open(self, name: str, binding: Binding, context: BackendContext) -> Backend: ...


_MODULES = {
    BackendKind.SQL: "adapters.sql_backend",
    BackendKind.GRPC: "adapters.grpc_backend",
    BackendKind.HTTP: "adapters.http",
    BackendKind.FILES: "adapters.files",
}


def _module(kind: BackendKind) -> _Module:
    """The adapter module of a backend kind, imported on first use (a hub loads only what it binds)."""
    module: _Module = importlib.import_module(_MODULES[kind])
    return module


def check(binding: Binding, context: BackendContext) -> list[FieldViolation]:
    """The problems with a binding's options; empty when it can be opened."""
    return _module(binding.kind).check(binding.options, context)


def open_backend(provider: str, binding: Binding, context: BackendContext) -> Backend:
    """The backend of ``binding``; ``provider`` (the owning department) names it in every error."""
    return _module(binding.kind).open(provider, binding, context)


Opener = Callable[[str, Binding], Backend]
