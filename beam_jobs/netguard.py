"""SSRF guard: refuse connections to private, loopback, link-local and reserved addresses.

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

import httpcore
import httpx
from httpcore._backends.sync import SyncBackend

LOG = logging.getLogger(__name__)


class BlockedAddress(Exception):
    """A request would connect to an address the source is not allowed to reach."""


def address_policy(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    """Why an address is refused, or None when it may be contacted.

    Link-local (169.254.0.0/16, fe80::/10: where cloud metadata servers live), multicast,
    unspecified and reserved addresses are always refused. Loopback and private ranges are
    refused unless ``allow_private`` (tests on 127.0.0.1, intranet sites).

    Args:
        ip: the resolved address.
        allow_private: whether the source permits loopback and private networks.

    Returns:
        A short reason ("link-local", "private", ...) or None.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast or ip.is_unspecified:
        return "reserved"
    if ip.is_loopback:  # before is_reserved: ::1 lies inside the reserved ::/8
        return None if allow_private else "loopback"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or not ip.is_global:
        return None if allow_private else "private"
    return None


def resolve_allowed(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Resolve a host name and keep the addresses that may be contacted.

    Args:
        host: a DNS name or an IP literal.
        port: the TCP port.
        allow_private: see :func:`address_policy`.

    Returns:
        The allowed addresses, in resolver order.

    Raises:
        BlockedAddress: the name resolves only to refused addresses (one refused address among
            allowed ones also refuses the name: a site mixing them is not one to trust).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        reason = address_policy(ip, allow_private=allow_private)
        if reason is not None:
            raise BlockedAddress(f"{host} resolves to {ip} ({reason}); refused by the address guard")
        if str(ip) not in addresses:
            addresses.append(str(ip))
    if not addresses:
        raise httpcore.ConnectError(f"{host} resolves to no address")
    return addresses


class _GuardedBackend(SyncBackend):
    """httpcore's socket backend with the address check in front of every TCP connect."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        last_error: Exception | None = None
        for address in resolve_allowed(host, port, allow_private=self.allow_private):
            try:  # connect to the vetted address itself; TLS still verifies the host name
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error  # type: ignore[misc]


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose every connection passes the address guard; no proxies."""

    def __init__(self, *, allow_private: bool, max_connections: int = 4):
        super().__init__(trust_env=False)
        # httpx builds its pool without a way to pass a network backend; rebuild it with ours.
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(allow_private),
        )
