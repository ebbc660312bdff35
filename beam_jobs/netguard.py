"""SSRF guard: public addresses, plus exactly the networks a source names; never link-local or metadata.

The check runs at connect time inside the HTTP transport, on the addresses the name actually
resolved to, and the socket connects to the address that was checked. Redirects, sitemap
entries, feed links and DNS names that resolve to an internal address are therefore all refused
the same way, and a name cannot resolve to a public address for the check and a private one for
the connection (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

import httpcore
import httpx
from httpcore._backends.sync import SyncBackend

LOG = logging.getLogger(__name__)


class BlockedAddress(Exception):
    """A request would connect to an address the source is not allowed to reach."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services: refused whatever a source allows (AWS/GCP/Azure, AWS IPv6, ECS, Alibaba).
METADATA = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")))
# Networks no source may allow: link-local (where metadata lives), multicast, "this network",
# reserved and unspecified addresses.
NEVER = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "fe80::/10", "224.0.0.0/4", "ff00::/8", "0.0.0.0/8", "240.0.0.0/4", "::/128", "100.100.100.200/32", "fd00:ec2::254/128")
)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def allowed_network(value: str) -> IPNetwork:
    """Parse one ``allow_networks`` entry ("127.0.0.0/8", "10.1.2.3"), refusing what is never allowed.

    Raises:
        ValueError: not an address or network (host bits set included), or one overlapping a
            network in :data:`NEVER`.
    """
    try:
        network = ipaddress.ip_network(str(value).strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP network such as 127.0.0.0/8 or 10.1.2.3 ({exc})") from None
    for never in NEVER:
        if network.version == never.version and network.overlaps(never):
            raise ValueError(f"{network} overlaps {never}, which is never allowed (link-local, cloud metadata, multicast or reserved)")
    return network


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), else the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses one source may connect to: public ones, plus exactly the networks it names.

    Args:
        allowed: networks a source allows beyond the public internet (``allow_networks``);
            never one of :data:`NEVER` (see :func:`allowed_network`).
    """

    allowed: tuple[IPNetwork, ...] = ()

    def refusal(self, ip: IPAddress) -> str | None:
        """Why an address is refused, or None when it may be contacted.

        Cloud metadata, link-local (169.254.0.0/16, fe80::/10), multicast, unspecified and
        reserved addresses are always refused; loopback and private addresses unless they lie in
        a network of ``allowed``; public addresses are allowed.
        """
        ip = _unwrap(ip)
        if ip in METADATA:
            return "cloud metadata"
        if ip.is_link_local:
            return "link-local"
        if ip.is_multicast or ip.is_unspecified:
            return "reserved"
        if any(ip in network for network in self.allowed if network.version == ip.version):
            return None
        if ip.is_loopback:  # before is_reserved: ::1 lies inside the reserved ::/8
            return "loopback"
        if ip.is_reserved:
            return "reserved"
        if ip.is_private or not ip.is_global:
            return "private"
        return None


def resolve_allowed(host: str, port: int, *, policy: AddressPolicy) -> list[str]:
    """Resolve a host name and keep the addresses that may be contacted.

    Args:
        host: a DNS name or an IP literal.
        port: the TCP port.
        policy: the source's :class:`AddressPolicy`.

    Returns:
        The allowed addresses, in resolver order.

    Raises:
        BlockedAddress: the name resolves to a refused address (one refused address among
            allowed ones also refuses the name: a site mixing them is not one to trust).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        reason = policy.refusal(ip)
        if reason is not None:
            allowed = ", ".join(map(str, policy.allowed)) or "none"
            raise BlockedAddress(f"{host} resolves to {ip} ({reason}); refused by the address guard (allow_networks: {allowed})")
        if str(ip) not in addresses:
            addresses.append(str(ip))
    if not addresses:
        raise httpcore.ConnectError(f"{host} resolves to no address")
    return addresses


class _GuardedBackend(SyncBackend):
    """httpcore's socket backend with the address check in front of every TCP connect."""

    def __init__(self, policy: AddressPolicy):
        self.policy = policy

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        last_error: Exception | None = None
        for address in resolve_allowed(host, port, policy=self.policy):
            try:  # connect to the vetted address itself; TLS still verifies the host name
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error  # type: ignore[misc]


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose every connection passes the address guard; no proxies."""

    def __init__(self, *, policy: AddressPolicy, max_connections: int = 4):
        super().__init__(trust_env=False)
        # httpx builds its pool without a way to pass a network backend; rebuild it with ours.
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(policy),
        )
