"""MCP tools (§7.1 `mcp`): the tools an MCP server lists, called on it over streamable HTTP.

`McpClients` (one per process) lists a server's tools, caches the listing for `ttl_s`, and
keeps one connected MCP client per server, headers and HTTP client factory, reused by every
call. Each connected client is entered and exited by a task of its own, because the SDK's
context managers hold anyio task groups that must stay in one task; callers only send
requests through it. A client the server no longer knows (its session expired, or the server
restarted) is replaced and the request sent once more.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types as types
from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from app.schemas.tools import McpTool
from app.tools.base import Tool, ToolContext, ToolResult

logger = logging.getLogger(__name__)

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SESSION_IDLE_S = 300.0
"""A connected client unused this long is closed (the next call connects again)."""
CLOSE_TIMEOUT_S = 2.0
MAX_LIST_PAGES = 100
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
"""Per HTTP operation; a call's own deadline is the spec's `timeout_ms`."""

_T = TypeVar("_T")
_ListingKey = tuple[str, tuple[tuple[str, str], ...]]
_ConnectionKey = tuple[str, tuple[tuple[str, str], ...], "HttpClientFactory"]


class HttpClientFactory(Protocol):
    """Makes the HTTP client of one MCP connection (the SDK's `McpHttpClientFactory`)."""

    def __call__(
        self, headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient: ...


def default_client_factory(
    headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers=headers, timeout=timeout or HTTP_TIMEOUT, auth=auth)


class McpUnavailable(Exception):
    """The tools of an MCP server cannot be offered; `message` says which server and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class McpDuplicateTool(McpUnavailable):
    """The server lists two tools of one name, so a call to it would be ambiguous."""


def server_label(url: str) -> str:
    """The server's URL as error texts name it: without credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _seconds(timeout_ms: int) -> str:
    return f"{timeout_ms / 1000:g} s"


class McpServerTool:
    """One tool of an MCP server, as the model sees it; `call` forwards to the server."""

    def __init__(self, clients: McpClients, spec: McpTool, listed: types.Tool,
                 parameters: dict[str, Any], factory: HttpClientFactory) -> None:
        self.name = listed.name
        self.description = listed.description or listed.title or ""
        self.parameters = parameters
        self._clients, self._spec, self._factory = clients, spec, factory

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        return await self._clients.call(self._spec, self.name, arguments, self._factory)


def offered_tools(spec: McpTool, listed: Iterable[types.Tool],
                  make: Callable[[types.Tool, dict[str, Any]], Tool]) -> list[Tool]:
    """The listed tools `spec` offers the model, in the server's order.

    `allowed_tools` (None: all) filters; a tool whose name is no valid function name, or
    whose input schema is no valid JSON Schema of an object, is skipped. Raises
    `McpDuplicateTool` when two offered tools share a name.
    """
    allowed = None if spec.allowed_tools is None else set(spec.allowed_tools)
    label = server_label(str(spec.server_url))
    offered: list[Tool] = []
    seen: set[str] = set()
    for tool in listed:
        if allowed is not None and tool.name not in allowed:
            continue
        if not FUNCTION_NAME.fullmatch(tool.name):
            logger.info("MCP server %s: tool %r skipped: not a valid function name", label,
                        tool.name)
            continue
        parameters = _parameters(tool.input_schema)
        if parameters is None:
            logger.warning("MCP server %s: tool %r skipped: its input schema is invalid", label,
                           tool.name)
            continue
        if tool.name in seen:
            raise McpDuplicateTool(f"MCP server {label} lists the tool {tool.name!r} twice")
        seen.add(tool.name)
        offered.append(make(tool, parameters))
    return offered


def _parameters(schema: dict[str, Any]) -> dict[str, Any] | None:
    parameters = {"type": "object", **schema}
    if parameters["type"] != "object":
        return None
    try:
        validator_for(parameters, default=Draft202012Validator).check_schema(parameters)
    except SchemaError:
        return None
    return parameters


def result_text(result: types.CallToolResult) -> ToolResult:
    """A call's result as the model reads it.

    Text blocks are joined by newlines; without any, the structured content as JSON text;
    images, audio and binary resources are described by type and size.
    """
    parts: list[str] = []
    has_text = False
    for block in result.content:
        text = _block_text(block)
        has_text = has_text or isinstance(block, types.TextContent) or (
            isinstance(block, types.EmbeddedResource)
            and isinstance(block.resource, types.TextResourceContents))
        parts.append(text)
    if not has_text and result.structured_content is not None:
        parts.insert(0, json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    if not text:
        text = "(the tool reported an error without a message)" if result.is_error else ""
    return ToolResult(text, is_error=bool(result.is_error))


def _block_text(block: types.ContentBlock) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        return f"[{block.type}: {block.mime_type}, {_decoded_size(block.data)} bytes]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link: {block.uri}" + (f" ({block.name})]" if block.name else "]")
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return f"[resource: {resource.uri}]\n{resource.text}"
        mime = f"{resource.mime_type}, " if resource.mime_type else ""
        return f"[resource: {resource.uri}, {mime}{_decoded_size(resource.blob)} bytes]"
    return f"[{getattr(block, 'type', 'unknown')} content]"


def _decoded_size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=False))
    except ValueError:
        return len(data)


class _Connection:
    """One connected MCP client to one server, entered and exited by its own task."""

    def __init__(self, url: str, headers: dict[str, str], factory: HttpClientFactory) -> None:
        self.url, self.label = url, server_label(url)
        self._headers, self._factory = headers, factory
        self.client: Client | None = None
        self.failure: Exception | None = None
        self.in_use = 0
        self.last_used = anyio.current_time()
        self._last_error_status: int | None = None
        self._ready, self._ended, self._stop = anyio.Event(), anyio.Event(), anyio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._own(), name=f"mcp {self.label}")

    async def ready(self) -> Client:
        """The connected client, once connected (initialized, or discovered on servers of
        the stateless protocol revision); raises `McpUnavailable` if it could not connect."""
        await self._ready.wait()
        if self.client is None:
            raise McpUnavailable(self._failure_text())
        return self.client

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task])

    async def lost(self, exc: MCPError) -> bool:
        """Whether `exc` says the server no longer has this session, so a new one may retry.

        That is a "session not found" answer (HTTP 404 for the session id), or the connection
        ending because it could not reach the server at all (the request was not sent).
        """
        if "session" in exc.message.lower() and exc.code in (types.INVALID_REQUEST, -32001):
            return True
        if exc.code != types.CONNECTION_CLOSED:
            return False
        with anyio.move_on_after(CLOSE_TIMEOUT_S):
            await self._ended.wait()
        return self.failure is not None and _not_sent(self.failure)

    def explained(self, exc: MCPError) -> Exception:
        """`exc`, or for a connection that ended under it, why the connection ended."""
        if exc.code == types.CONNECTION_CLOSED and self.failure is not None:
            return McpUnavailable(f"MCP server {self.label}: the connection ended: "
                                  f"{_cause(self.failure)}")
        return exc

    async def _own(self) -> None:
        try:
            with anyio.CancelScope() as scope:
                http = self._factory(headers=dict(self._headers), timeout=HTTP_TIMEOUT)
                http.event_hooks["response"].append(self._note_status)
                async with http, Client(streamable_http_client(self.url, http_client=http),
                                        cache=None) as client:
                    self.client = client
                    self._ready.set()
                    await self._stop.wait()
                    # Ending a session sends a DELETE; a server that does not answer it must
                    # not hold up the close.
                    scope.deadline = anyio.current_time() + CLOSE_TIMEOUT_S
        except Exception as exc:
            self.failure = exc
            if self.client is not None:
                logger.info("MCP connection to %s ended: %s", self.label, _cause(exc))
        finally:
            self.client = None
            self._ready.set()
            self._ended.set()

    async def _note_status(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self._last_error_status = response.status_code

    def _failure_text(self) -> str:
        reason = _cause(self.failure) if self.failure is not None else "the connection ended"
        if self._last_error_status is not None and self.failure is not None and isinstance(
                _leaves(self.failure)[0], MCPError):
            reason += f" (HTTP {self._last_error_status})"
        return f"MCP server {self.label} is unavailable: {reason}"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


def _not_sent(exc: BaseException) -> bool:
    return all(isinstance(leaf, _NOT_SENT) for leaf in _leaves(exc))


def _cause(exc: BaseException) -> str:
    leaf = _leaves(exc)[0]
    message = str(leaf) or type(leaf).__name__
    return message if isinstance(leaf, MCPError) else f"{type(leaf).__name__}: {message}"


@dataclass
class _Listing:
    tools: list[types.Tool]
    fetched_at: float


class McpClients:
    """The MCP connections and tool listings of the process; `aclose` ends them."""

    def __init__(self, ttl_s: float = 30.0,
                 client_factory: HttpClientFactory | None = None) -> None:
        self._ttl_s = ttl_s
        self._factory: HttpClientFactory = client_factory or default_client_factory
        self._listings: dict[_ListingKey, _Listing] = {}
        self._listing_locks: dict[_ListingKey, asyncio.Lock] = {}
        self._connections: dict[_ConnectionKey, _Connection] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def tools(self, spec: McpTool,
                    client_factory: HttpClientFactory | None = None) -> list[Tool]:
        """The server's tools that `spec` offers; raises `McpUnavailable` if none can be listed.

        A listing younger than `ttl_s` is served from the cache; when the server cannot be
        listed, an older listing is served instead of failing.
        """
        factory = client_factory or self._factory

        def make(listed: types.Tool, parameters: dict[str, Any]) -> Tool:
            return McpServerTool(self, spec, listed, parameters, factory)

        return offered_tools(spec, await self._listing(spec, factory), make)

    async def call(self, spec: McpTool, name: str, arguments: dict[str, Any],
                   client_factory: HttpClientFactory | None = None) -> ToolResult:
        """Call the server's tool `name`; every failure is an error result naming the server."""
        factory = client_factory or self._factory
        label = server_label(str(spec.server_url))

        async def call_tool(client: Client) -> types.CallToolResult:
            return await client.call_tool(name, arguments)

        try:
            with anyio.fail_after(spec.timeout_ms / 1000):
                return result_text(await self._on_connection(spec, factory, call_tool))
        except TimeoutError:
            return ToolResult(f"MCP server {label} did not answer {name!r} within "
                              f"{_seconds(spec.timeout_ms)}", is_error=True)
        except McpUnavailable as exc:
            return ToolResult(exc.message, is_error=True)
        except MCPError as exc:
            return ToolResult(f"MCP server {label} refused {name!r}: {exc.message} "
                              f"(error {exc.code})", is_error=True)
        except Exception as exc:
            logger.warning("MCP call %s on %s failed", name, label, exc_info=exc)
            return ToolResult(f"MCP server {label}: calling {name!r} failed: {_cause(exc)}",
                              is_error=True)

    async def aclose(self) -> None:
        """Close every connection (and wait for them); later calls answer with errors."""
        self._closed = True
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(connection.close() for connection in connections),
                             *self._closing)

    async def _listing(self, spec: McpTool, factory: HttpClientFactory) -> list[types.Tool]:
        key = (str(spec.server_url), tuple(sorted(spec.headers.items())))
        cached = self._listings.get(key)
        if cached is not None and anyio.current_time() - cached.fetched_at < self._ttl_s:
            return cached.tools
        label = server_label(key[0])
        try:
            with anyio.fail_after(spec.timeout_ms / 1000):
                async with self._listing_locks.setdefault(key, asyncio.Lock()):
                    cached = self._listings.get(key)
                    if cached is not None and (anyio.current_time() - cached.fetched_at
                                               < self._ttl_s):
                        return cached.tools
                    listed = await self._on_connection(spec, factory, _list_all)
        except TimeoutError:
            reason = f"MCP server {label} did not list its tools within {_seconds(spec.timeout_ms)}"
        except McpUnavailable as exc:
            reason = exc.message
        except Exception as exc:
            reason = f"MCP server {label} could not list its tools: {_cause(exc)}"
        else:
            self._listings[key] = _Listing(listed, anyio.current_time())
            return listed
        if cached is not None:
            logger.warning("%s; serving its listing of %.0f s ago", reason,
                           anyio.current_time() - cached.fetched_at)
            return cached.tools
        raise McpUnavailable(reason)

    async def _on_connection(self, spec: McpTool, factory: HttpClientFactory,
                             operation: Callable[[Client], Awaitable[_T]]) -> _T:
        """Run `operation` on the server's connection; once more on a new one if it was lost."""
        connection = await self._connection(spec, factory)
        try:
            return await self._use(connection, operation)
        except MCPError as exc:
            if not await connection.lost(exc):
                raise connection.explained(exc) from exc
            logger.info("MCP server %s: %s; connecting again",
                        connection.label, exc.message)
        self._discard(spec, factory, connection)
        connection = await self._connection(spec, factory)
        try:
            return await self._use(connection, operation)
        except MCPError as exc:
            raise connection.explained(exc) from exc

    async def _use(self, connection: _Connection,
                   operation: Callable[[Client], Awaitable[_T]]) -> _T:
        connection.in_use += 1
        try:
            return await operation(await connection.ready())
        finally:
            connection.in_use -= 1
            connection.last_used = anyio.current_time()

    async def _connection(self, spec: McpTool, factory: HttpClientFactory) -> _Connection:
        """The connection for `spec`, opened (or still opening) by its own task."""
        if self._closed:
            raise McpUnavailable(f"MCP server {server_label(str(spec.server_url))} is "
                                 "unavailable: the service is shutting down")
        self._close_idle()
        key = self._connection_key(spec, factory)
        connection = self._connections.get(key)
        if connection is None or connection.ended:
            connection = _Connection(str(spec.server_url), dict(spec.headers), factory)
            connection.start()
            self._connections[key] = connection
        return connection

    def _connection_key(self, spec: McpTool, factory: HttpClientFactory) -> _ConnectionKey:
        return str(spec.server_url), tuple(sorted(spec.headers.items())), factory

    def _discard(self, spec: McpTool, factory: HttpClientFactory,
                 connection: _Connection) -> None:
        key = self._connection_key(spec, factory)
        if self._connections.get(key) is connection:
            del self._connections[key]
        self._close_later(connection)

    def _close_idle(self) -> None:
        now = anyio.current_time()
        for key, connection in list(self._connections.items()):
            if connection.in_use == 0 and now - connection.last_used > SESSION_IDLE_S:
                del self._connections[key]
                self._close_later(connection)

    def _close_later(self, connection: _Connection) -> None:
        task = asyncio.create_task(connection.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _list_all(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools
