"""Who trusts what across hubs: the federation listener's client roots, and channels to peer hubs.

The federation listener trusts, as client roots, only the CAs of registered peers that are not ended;
the set is handed to gRPC again (before the next handshake) whenever it changes. With no peer at all it
trusts a CA made in memory whose key is thrown away: no certificate anyone holds verifies against it.
A channel to a peer presents this hub's hub certificate and trusts the peer's registered CA only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from cryptography import x509

from exchange import pki
from exchange.errors import ConfigError
from exchange.federation.model import TRUSTED_STATES, Peer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubCertificate:
    """This hub's hub certificate and key (PEM), and the code it names."""

    key: bytes
    cert: bytes
    code: str


def load_hub_certificate(files: pki.HubFiles, hub_code: str) -> HubCertificate:
    """The hub certificate from the home; it must name ``hub_code`` (after a change of code, issue a new one)."""
    if not files.hub_cert.exists() or not files.hub_key.exists():
        raise ConfigError(
            f"{files.hub_cert} is missing: issue this hub's certificate with `exchange ca hub-cert` (home {files.home})"
        )
    pki.check_private(files.hub_key)
    key, cert = files.hub_key.read_bytes(), files.hub_cert.read_bytes()
    named = pki.hub_code_of(x509.load_pem_x509_certificate(cert))
    if named != hub_code:
        raise ConfigError(
            f"{files.hub_cert} names hub {named!r}, not hub_code {hub_code!r}: run `exchange ca hub-cert`"
        )
    return HubCertificate(key, cert, hub_code)


def _nobody() -> bytes:
    """A CA certificate whose key is discarded: trusting only it trusts no one."""
    _, cert = pki.create_ca("Exchange federation: no peer registered", days=3650)
    return pki.cert_pem(cert)


class PeerTrust:
    """The federation listener's TLS configuration: this hub's certificate, and its peers' CAs as client roots."""

    def __init__(self, hub: HubCertificate) -> None:
        self._hub = hub
        self._lock = threading.Lock()
        self._trusted: tuple[str, ...] = ()
        self._roots = _nobody()
        self._changed = False

    def update(self, peers: Iterable[Peer]) -> None:
        """Takes the CAs of the peers that are registered and not ended (before the next handshake)."""
        trusted = tuple(sorted({p.ca_pem for p in peers if p.state in TRUSTED_STATES}))
        with self._lock:
            if trusted == self._trusted:
                return
            self._trusted = trusted
            self._roots = "".join(trusted).encode() if trusted else _nobody()
            self._changed = True
            log.info("federation listener: now trusting the CAs of %d peer(s)", len(trusted))

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self._hub.key, self._hub.cert)], self._roots)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            if not self._changed:
                return None
            self._changed = False
            return self._configuration()

    def credentials(self) -> grpc.ServerCredentials:
        with self._lock:
            self._changed = False
            first = self._configuration()
        # As in exchange.server.credentials: gRPC documents None from the fetcher as "no change".
        return grpc.dynamic_ssl_server_credentials(first, self.fetch, require_client_authentication=True)  # type: ignore[arg-type]


def channel_to(peer: Peer, hub: HubCertificate, options: list[tuple[str, int]] | None = None) -> grpc.aio.Channel:
    """A mutual-TLS channel to a peer's federation listener: this hub's certificate, the peer's CA only."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=peer.ca_pem.encode(), private_key=hub.key, certificate_chain=hub.cert
    )
    return grpc.aio.secure_channel(peer.address, credentials, options=[("grpc.enable_retries", 0), *(options or [])])
