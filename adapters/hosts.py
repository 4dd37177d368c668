"""Which hosts the hub may reach for a department's backend: a guard against server-side request forgery.

A steward names the backend's address in a binding; without a guard, one could point the hub at the
hub's own machine, a cloud metadata address or another department's internal service. The operator
lists the backend hosts (``backend_hosts``): names (``api.tax.example``), name suffixes (``.gov.cn``),
addresses and networks (``10.20.0.0/16``). With no list, any host may be named except the hub's own
machine (loopback), link-local addresses (cloud metadata) and unspecified or multicast ones.

Names are checked when a binding is set, and again when connecting, against every address the name
resolves to; the REST adapter then connects to the address it checked, so a name that resolves
differently the second time (DNS rebinding) reaches nothing it was not allowed to.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(pattern: str) -> Network | None:
    try:
        return ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return None


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# Cloud metadata services outside the link-local range: in the shared address space (100.100.100.200
# on some clouds) and on IPv6 (fd00:ec2::254).
_METADATA: tuple[Network, ...] = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd00:ec2::254/128"))


def _internal(address: Address) -> bool:
    """Addresses no binding reaches unless the operator lists them: this machine, metadata, no-one."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    checked = mapped or address
    if checked.is_loopback or checked.is_link_local or checked.is_unspecified or checked.is_multicast:
        return True
    return any(checked.version == n.version and checked in n for n in _METADATA)


@dataclass(frozen=True)
class HostPolicy:
    """The operator's list of backend hosts (empty: any but internal ones), and whether plain http is allowed."""

    patterns: tuple[str, ...] = ()
    allow_plain_http: bool = False

    @property
    def _names(self) -> tuple[str, ...]:
        return tuple(p.lower().rstrip(".") for p in self.patterns if _network(p) is None)

    @property
    def _networks(self) -> tuple[Network, ...]:
        return tuple(n for p in self.patterns if (n := _network(p)) is not None)

    def _listed_name(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return any(name == p or (p.startswith(".") and name.endswith(p)) for p in self._names)

    def _allowed_address(self, address: Address, *, listed_name: bool) -> bool:
        if any(address in n for n in self._networks):
            return True
        if _internal(address):
            return False
        return listed_name or not self.patterns

    def problems(self, host: str) -> list[str]:
        """Why a binding may not name ``host`` (by its name alone; addresses are checked on connecting)."""
        address = _address(host)
        if address is not None:
            if self._allowed_address(address, listed_name=False):
                return []
            return [f"{host} is not among the hosts the hub may reach (setting backend_hosts)"]
        if self.patterns and not self._listed_name(host):
            return [f"{host} is not among the hosts the hub may reach (setting backend_hosts)"]
        return []

    def vetted(self, host: str, port: int) -> list[tuple[socket.AddressFamily, Address]]:
        """The addresses ``host`` resolves to now, each allowed; raises PermissionError otherwise."""
        if self.problems(host):
            raise PermissionError(self.problems(host)[0])
        listed = self._listed_name(host)
        found: list[tuple[socket.AddressFamily, Address]] = []
        for family, _, _, _, sockaddr in socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM):
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if not self._allowed_address(address, listed_name=listed):
                raise PermissionError(f"{host} resolves to {address}, which the hub may not reach (backend_hosts)")
            found.append((family, address))
        return found
