"""Refuse URLs that reach loopback, private, link-local or cloud-metadata addresses.

Checked when a hook or tool is registered and again when it is called (a name can be made to
resolve elsewhere later), unless the operator sets `LOOMD_ALLOW_PRIVATE_URLS=true`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

RESOLVE_TIMEOUT_S = 2.0
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "metadata", "metadata.google.internal")


class PrivateUrl(ValueError):
    """The URL points at an address the service must not reach."""


def _is_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


async def check_public_url(url: str) -> None:
    """Raise `PrivateUrl` when `url`'s host is, or resolves to, a non-public address.

    A name that does not resolve now is let through: the call-time check sees it again.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise PrivateUrl("the URL has no host")
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        raise PrivateUrl(f"{host} is a local address")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if _is_private(literal):
            raise PrivateUrl(f"{host} is not a public address")
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM),
            RESOLVE_TIMEOUT_S,
        )
    except (OSError, TimeoutError):
        return
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if _is_private(address):
            raise PrivateUrl(f"{host} resolves to {address}, which is not a public address")
