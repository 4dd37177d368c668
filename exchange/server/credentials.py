"""The hub's TLS and CA material, re-read when its files change (``exchange.watched``), so renewal and
rotation need no restart.

gRPC asks ``TlsFiles.fetch`` before every new connection's handshake; it
answers from memory unless a file's (inode, size, mtime) changed, and keeps
the material it has when the new files do not make a consistent set (a
rotation half done): the next connection tries again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exchange import ca, pki
from exchange.errors import ConfigError, ExchangeError
from exchange.watched import Watched

log = logging.getLogger(__name__)


def _server_material(files: pki.HubFiles) -> tuple[bytes, bytes, bytes]:
    """(server key, server certificate, trust bundle), checked to be a usable set."""
    key, cert, trust = files.server_key.read_bytes(), files.server_cert.read_bytes(), files.trusted_pem()
    private = serialization.load_pem_private_key(key, password=None)
    if private.public_key() != x509.load_pem_x509_certificate(cert).public_key():
        raise ValueError(f"{files.server_key} does not belong to {files.server_cert}")
    if not pki.split_pems(trust):
        raise ValueError(f"{files.trust_bundle} holds no CA certificate")
    return key, cert, trust


class TlsFiles:
    """The server's mutual-TLS configuration and the signing CA, both following their files."""

    def __init__(self, files: pki.HubFiles) -> None:
        self._files = files
        for path in (files.ca_key, files.ca_cert, files.server_key, files.server_cert):
            if not path.exists():
                raise ConfigError(f"{path} is missing: run `exchange init` first (home is {files.home})")
        try:
            self.server = Watched(
                lambda: (files.server_key, files.server_cert, files.trust_bundle, files.ca_cert),
                lambda: _server_material(files),
                "server certificate and trust bundle",
            )
            self.authority = Watched(
                lambda: (files.ca_key, files.ca_cert), lambda: ca.load_authority(files), "signing CA"
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        except ExchangeError as e:
            raise ConfigError(e.message) from None

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        key, cert, trust = self.server.value
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=trust)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's question before a handshake: a new configuration, or None to keep the current one."""
        try:
            return self._configuration() if self.server.refresh() else None
        except Exception:  # an exception must not cross into gRPC's core; the current configuration stays
            log.exception("reloading the server's TLS files failed")
            return None

    def credentials(self) -> grpc.ServerCredentials:
        # The stubs say the fetcher must return a configuration; gRPC documents None as "no change".
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    def expiries(self) -> list[tuple[str, dt.datetime]]:
        """The hub's own certificates and when they expire: its server certificate and each trusted CA."""
        self.server.refresh()
        _, cert, trust = self.server.value
        out = [("hub/server", x509.load_pem_x509_certificate(cert).not_valid_after_utc)]
        out += [(f"hub/ca/{pki.fingerprint(c)[:16]}", c.not_valid_after_utc) for c in pki.split_pems(trust)]
        # A federating hub's certificate for its peers (docs/federation.md); none when the hub does not federate
        # (an unreadable one the federation listener reports at start).
        with contextlib.suppress(OSError, ValueError):
            out.append(("hub/federation", pki.load_cert(self._files.hub_cert).not_valid_after_utc))
        return out

    def trust_pem(self) -> bytes:
        self.server.refresh()
        return self.server.value[2]

    def current_authority(self) -> ca.Authority:
        self.authority.refresh()
        return self.authority.value
