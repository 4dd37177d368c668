"""Who trusts what across hubs: the federation listener's client roots, and channels to peer hubs.

The federation listener trusts, as client roots, only the CAs of registered peers that are not ended;
the set is handed to gRPC again (before the next handshake) whenever it changes. With no peer at all it
trusts a CA made in memory whose key is thrown away: no certificate anyone holds verifies against it.
A channel to a peer presents this hub's hub certificate and trusts the peer's registered CA only.

The hub certificate follows its files (``exchange.watched``, as the main port's server certificate does):
re-issued with ``exchange ca hub-cert``, it is presented from the listener's next handshake on, and by the
channels made after it changed. A pair that does not load, or names another hub, is logged and the one
before it kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exchange import pki
from exchange.errors import ConfigError
from exchange.federation.model import TRUSTED_STATES, Peer
from exchange.watched import Watched

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
    try:
        certificate = x509.load_pem_x509_certificate(cert)
        private = serialization.load_pem_private_key(key, password=None)
    except ValueError as e:
        raise ConfigError(f"{files.hub_cert} or {files.hub_key} does not load: {e}") from None
    if private.public_key() != certificate.public_key():
        raise ConfigError(f"{files.hub_key} does not belong to {files.hub_cert}: run `exchange ca hub-cert`")
    named = pki.hub_code_of(certificate)
    if named != hub_code:
        raise ConfigError(
            f"{files.hub_cert} names hub {named!r}, not hub_code {hub_code!r}: run `exchange ca hub-cert`"
        )
    return HubCertificate(key, cert, hub_code)


def watch_hub_certificate(files: pki.HubFiles, hub_code: str) -> Watched[HubCertificate]:
    """The hub certificate, loaded now (its errors stop the hub) and again whenever its files change."""
    return Watched(
        lambda: (files.hub_key, files.hub_cert), lambda: load_hub_certificate(files, hub_code), "hub certificate"
    )


def _nobody() -> bytes:
    """A CA certificate whose key is discarded: trusting only it trusts no one."""
    _, cert = pki.create_ca("Exchange federation: no peer registered", days=3650)
    return pki.cert_pem(cert)


class PeerTrust:
    """The federation listener's TLS configuration: this hub's certificate, and its peers' CAs as client roots."""

    def __init__(self, hub: Watched[HubCertificate]) -> None:
        self._hub = hub
        self._lock = threading.Lock()
        self._trusted: tuple[str, ...] = ()
        self._roots = _nobody()
        self._served = hub.value  # the hub certificate in the configuration gRPC holds
        self._changed = False

    @property
    def hub(self) -> HubCertificate:
        """The hub certificate to present now (its files looked at first: a re-issued one is taken)."""
        self._hub.refresh()
        return self._hub.value

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
        self._served = hub = self._hub.value
        return grpc.ssl_server_certificate_configuration([(hub.key, hub.cert)], self._roots)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's question before a handshake: a new configuration (the peers' CAs or the hub certificate
        changed), or None to keep the current one."""
        try:
            renewed = self.hub is not self._served
            with self._lock:
                if not (self._changed or renewed):
                    return None
                self._changed = False
                return self._configuration()
        except Exception:  # an exception must not cross into gRPC's core; the current configuration stays
            log.exception("federation listener: reloading its TLS configuration failed")
            return None

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
