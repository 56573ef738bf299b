"""Outbound HTTP for tools and hooks: the allowed hosts and the private-address guard.

Every request goes through `GuardedTransport`, which for each request (each redirect hop
too) refuses a host outside the run's allowed hosts before resolving anything, resolves
the name, checks every address it resolved to, and connects to one of the addresses it
checked: a name that resolves elsewhere a moment later (DNS rebinding) never gets a
connection. Loopback, private, link-local, unique-local, shared, multicast, unspecified
and reserved addresses are refused unless `LOOMD_ALLOW_PRIVATE_URLS` allows the host or
the address; cloud metadata addresses and names are refused whatever it says.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2

from app import __version__
from app.config import IPAddress, PrivateUrls, Settings, normalize_host

MAX_REDIRECTS = 5
MAX_BODY_BYTES = 1024 * 1024
RESOLVE_TIMEOUT_S = 5.0
REGISTRATION_RESOLVE_TIMEOUT_S = 2.0
MAX_ADDRESSES_TRIED = 3
MCP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
USER_AGENT = f"loomd/{__version__}"

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(address) for address in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle, Hetzner …
    "169.254.170.2",  # AWS ECS task metadata
    "169.254.170.23",  # AWS EKS pod identity
    "169.254.0.23",  # Tencent Cloud
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud (legacy)
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "fd00:ec2::23",  # AWS EKS pod identity over IPv6
))
METADATA_NAMES = (
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.tencentyun.com",
)
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""`(host, port) -> addresses`: what a name resolves to, as address strings."""
TransportFactory = Callable[[], httpx2.AsyncBaseTransport]
"""Makes the transport that really connects (one per host name)."""


class BlockedUrl(Exception):
    """The URL's host or an address it resolves to may not be reached."""


class NameNotResolved(httpx2.ConnectError):
    """The host name did not resolve (or not in time)."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `getaddrinfo` gives for `host`, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 or 6to4 IPv6 address reaches, if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def is_public(address: IPAddress) -> bool:
    """Whether `address` is a global unicast address (not loopback, private, reserved …)."""
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
        or address.is_loopback or address.is_link_local or address.is_private)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _name_in(host: str, names: Iterable[str]) -> bool:
    return any(host == name or host.endswith("." + name) for name in names)


def host_matches(host: str, entry: str) -> bool:
    """Suffix match of an allowed-hosts entry: `example.com` admits `api.example.com`.

    Addresses match only themselves.
    """
    host_address, entry_address = _literal(host), _literal(entry)
    if host_address is not None or entry_address is not None:
        return host_address is not None and host_address == entry_address
    return bool(entry) and (host == entry or host.endswith("." + entry))


def _normalized_entries(entries: Iterable[str]) -> tuple[str, ...]:
    hosts = (normalize_host(entry.strip().removeprefix("*.").removeprefix("."))
             for entry in entries)
    return tuple(dict.fromkeys(host for host in hosts if host))


def _intersection(operator: Sequence[str], run: Sequence[str]) -> tuple[str, ...]:
    """The entries admitting exactly the hosts both lists admit."""
    narrowest = []
    for ours in operator:
        for theirs in run:
            if host_matches(theirs, ours):
                narrowest.append(theirs)
            elif host_matches(ours, theirs):
                narrowest.append(ours)
    return tuple(dict.fromkeys(narrowest))


@dataclass(frozen=True)
class HostPolicy:
    """Where a run's tools may connect.

    `hosts` are allowed-hosts entries (suffix match); None admits any host, `()` none.
    `private` is what `LOOMD_ALLOW_PRIVATE_URLS` lets through of the private addresses.
    """

    hosts: tuple[str, ...] | None = None
    private: PrivateUrls = field(default_factory=PrivateUrls)

    @classmethod
    def of(cls, settings: Settings, override: Sequence[str] | None) -> HostPolicy:
        """The policy of a run with `overrides.allowed_hosts` = `override` (§7.2).

        None: the operator's `LOOMD_ALLOWED_HOSTS` (empty: any public host); `[]`: no
        network; a list: its intersection with the operator's list.
        """
        operator = settings.allowed_hosts or None
        if override is None:
            hosts = operator
        else:
            run = _normalized_entries(override)
            hosts = run if operator is None else _intersection(operator, run)
        return cls(hosts=hosts, private=settings.allow_private_urls)

    @classmethod
    def any_public(cls, settings: Settings) -> HostPolicy:
        """Any host, with the private-address guard: for hooks, which no run narrows."""
        return cls(hosts=None, private=settings.allow_private_urls)

    def admits_host(self, host: str) -> bool:
        """Whether the allowed hosts admit `host` (the private guard aside)."""
        return self.hosts is None or any(host_matches(host, entry) for entry in self.hosts)

    def host_refusal(self, host: str) -> str | None:
        """Why `host` is refused before it is resolved, or None."""
        if not host:
            return "the URL has no host"
        if not self.admits_host(host):
            if not self.hosts:
                return "this run may not use the network (its allowed_hosts is empty)"
            listed = ", ".join(self.hosts[:10]) + (", …" if len(self.hosts) > 10 else "")
            return f"{host} is not among the hosts this run may reach ({listed})"
        if _name_in(host, METADATA_NAMES):
            return f"{host} is a cloud metadata service, which is never reachable"
        is_local = _name_in(host, LOCAL_NAMES) or host.endswith(".localhost")
        if is_local and not self.private.admits(host):
            return f"{host} is a local name (not allowed by LOOMD_ALLOW_PRIVATE_URLS)"
        return None

    def address_refusal(self, host: str, address: IPAddress) -> str | None:
        """Why connecting to `address` (which `host` resolved to) is refused, or None."""
        reached = embedded_ipv4(address) or address
        shown = f"{address} (that is {reached})" if reached != address else str(address)
        named = f"{host} resolves to {shown}" if _literal(host) is None else shown
        if address in METADATA_ADDRESSES or reached in METADATA_ADDRESSES:
            return f"{named}, a cloud metadata address, which is never reachable"
        if is_public(reached):
            return None
        if self.private.admits(host, address) or self.private.admits(host, reached):
            return None
        return f"{named}, a private address (not allowed by LOOMD_ALLOW_PRIVATE_URLS)"

    async def addresses(
        self, host: str, port: int, resolve: Resolver, timeout_s: float = RESOLVE_TIMEOUT_S,
    ) -> list[IPAddress]:
        """Every address `host` resolves to, each checked; raises `BlockedUrl` when the host
        or any of its addresses is refused, `NameNotResolved` when it does not resolve."""
        host = normalize_host(host)
        refusal = self.host_refusal(host)
        if refusal is not None:
            raise BlockedUrl(refusal)
        literal = _literal(host)
        found = [literal] if literal is not None else await _resolve(host, port, resolve,
                                                                     timeout_s)
        for address in found:
            refusal = self.address_refusal(host, address)
            if refusal is not None:
                raise BlockedUrl(refusal)
        return found


async def _resolve(host: str, port: int, resolve: Resolver, timeout_s: float) -> list[IPAddress]:
    try:
        async with asyncio.timeout(timeout_s):
            answers = await resolve(host, port)
    except TimeoutError:
        raise NameNotResolved(f"resolving {host} took longer than {timeout_s:g} s") from None
    except OSError as exc:
        raise NameNotResolved(f"could not resolve {host} ({exc.strerror or exc})") from None
    found: list[IPAddress] = []
    for answer in answers:
        try:
            address = ipaddress.ip_address(answer.split("%", 1)[0])
        except ValueError:
            raise NameNotResolved(f"{host} resolved to {answer!r}, not an address") from None
        if address not in found:
            found.append(address)
    if not found:
        raise NameNotResolved(f"could not resolve {host} (no addresses)")
    return found


def _default_port(url: httpx2.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every outbound connection: building one reads the
    system's certificates, which costs tens of milliseconds."""
    return httpx2.create_ssl_context()


def _transport() -> httpx2.AsyncBaseTransport:
    return httpx2.AsyncHTTPTransport(verify=_ssl_context())


class GuardedTransport(httpx2.AsyncBaseTransport):
    """Sends each request to an address `policy` checked, with the original Host and SNI.

    Connections are pooled per host name, so one host's TLS connection never carries
    another host's request although both resolve to the same address.
    """

    def __init__(
        self, policy: HostPolicy, *, resolver: Resolver | None = None,
        connect: TransportFactory | None = None,
    ) -> None:
        self.policy = policy
        self._resolve = resolver or system_resolver
        self._connect = connect or _transport
        self._transports: dict[str, httpx2.AsyncBaseTransport] = {}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(
                f"only http and https URLs can be fetched, not {url.scheme}:", request=request)
        host = normalize_host(url.raw_host.decode("ascii"))
        timeout = request.extensions.get("timeout", {}).get("connect") or RESOLVE_TIMEOUT_S
        try:
            addresses = await self.policy.addresses(host, _default_port(url), self._resolve,
                                                    min(timeout, RESOLVE_TIMEOUT_S))
        except NameNotResolved as exc:
            raise NameNotResolved(str(exc), request=request) from None
        transport = self._transports.get(host)
        if transport is None:
            transport = self._transports[host] = self._connect()
        failure: httpx2.ConnectError | None = None
        for address in addresses[:MAX_ADDRESSES_TRIED]:
            try:
                return await transport.handle_async_request(_to(request, host, address))
            except httpx2.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()


def _to(request: httpx2.Request, host: str, address: IPAddress) -> httpx2.Request:
    """`request` addressed to `address`; the Host header stays, TLS verifies `host`."""
    extensions = dict(request.extensions)
    if request.url.scheme == "https":
        extensions["sni_hostname"] = host
    return httpx2.Request(
        request.method, request.url.copy_with(host=str(address)), headers=request.headers,
        stream=request.stream, extensions=extensions)


def client(
    policy: HostPolicy, timeout_s: float | httpx2.Timeout, *, resolver: Resolver | None = None,
    connect: TransportFactory | None = None, **kwargs: Any,
) -> httpx2.AsyncClient:
    """An HTTP client whose every request (and redirect, up to 5) passes `policy`.

    Proxy settings from the environment are ignored: a proxy would resolve names itself.
    `kwargs` go to `httpx2.AsyncClient` (e.g. `follow_redirects=False`, `headers`).
    """
    options: dict[str, Any] = {"follow_redirects": True, "max_redirects": MAX_REDIRECTS,
                               **kwargs}
    headers = httpx2.Headers({"User-Agent": USER_AGENT})
    headers.update(options.pop("headers", None) or {})
    return httpx2.AsyncClient(
        transport=GuardedTransport(policy, resolver=resolver, connect=connect),
        timeout=timeout_s, trust_env=False, headers=headers, **options)


@functools.lru_cache(maxsize=1024)
def mcp_client_factory(
    policy: HostPolicy, *, resolver: Resolver | None = None,
) -> Callable[..., httpx2.AsyncClient]:
    """An `httpx_client_factory` for the `mcp` SDK's transports, guarded by `policy`; the
    same one for equal policies, so runs with the same reach share MCP connections.

    `mcp.client.streamable_http.streamable_http_client(url, http_client=factory(headers))`,
    or `mcp.client.sse.sse_client(url, httpx_client_factory=factory)`. Timeouts default to
    the SDK's (30 s, 300 s to read a stream).
    """

    def factory(
        headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        extra: dict[str, Any] = {} if auth is None else {"auth": auth}
        return client(policy, timeout or MCP_TIMEOUT, resolver=resolver, headers=headers,
                      follow_redirects=False, **extra)

    return factory


async def check_url(policy: HostPolicy, url: str, *, resolver: Resolver | None = None) -> None:
    """Raise `BlockedUrl` when `url` may not be reached under `policy` (at registration).

    A name that does not resolve now (within 2 s) passes: the connect-time check sees it
    again. With every private address allowed, names are not resolved at all: only a
    metadata address could be refused, and the connect-time check refuses those.
    """
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL as exc:
        raise BlockedUrl(f"not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise BlockedUrl(f"only http and https URLs are allowed, not {parsed.scheme or '-'}:")
    host = normalize_host(parsed.raw_host.decode("ascii"))
    if policy.private.everything and _literal(host) is None:
        refusal = policy.host_refusal(host)
        if refusal is not None:
            raise BlockedUrl(refusal)
        return
    try:
        await policy.addresses(host, _default_port(parsed), resolver or system_resolver,
                               REGISTRATION_RESOLVE_TIMEOUT_S)
    except NameNotResolved:
        return


async def read_capped(response: httpx2.Response, limit: int = MAX_BODY_BYTES) -> tuple[bytes, bool]:
    """At most `limit` bytes of the (decompressed) body, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    body = b"".join(chunks)
    return body[:limit], size > limit


def media_type(response: httpx2.Response) -> str:
    """The response's media type in lower case (`text/html`), or `""`."""
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(response: httpx2.Response) -> bool:
    kind = media_type(response)
    return kind == "application/json" or kind.endswith("+json")


def body_text(body: bytes, response: httpx2.Response) -> str:
    """`body` decoded by the response's charset (UTF-8 when absent or unknown)."""
    encoding = response.charset_encoding or "utf-8"
    try:
        return body.decode(encoding, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def failure_text(exc: Exception, timeout_s: float) -> str:
    """What went wrong with a request, in words for the model (and the tool's owner)."""
    if isinstance(exc, BlockedUrl):
        return f"refused: {exc}"
    if isinstance(exc, NameNotResolved):
        return f"DNS lookup failed: {exc}"
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, httpx2.TooManyRedirects):
        return f"more than {MAX_REDIRECTS} redirects"
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx2.ConnectError):
        return f"could not connect ({detail})"
    if isinstance(exc, httpx2.ProtocolError | httpx2.DecodingError):
        return f"the answer is not valid HTTP ({detail})"
    if isinstance(exc, httpx2.InvalidURL):
        return f"invalid URL ({detail})"
    return f"the request failed ({detail})"
