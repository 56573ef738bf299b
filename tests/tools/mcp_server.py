"""A real MCP server (streamable HTTP) on a loopback port that a test starts, stops and restarts.

It serves a few tools (`add`, `echo`, `whoami`, `fail`, `slow`, `picture`, `search.web`) and
records every HTTP request it receives: its method, its headers, and the JSON-RPC method of a
POST body. `legacy=True` makes it answer like a server of a 2025 protocol revision (the
`initialize` handshake and `Mcp-Session-Id` sessions only), so that clients fall back to the
handshake and hold a session the server forgets when it restarts. With `token`, a request
without `Authorization: Bearer <token>` is answered 401.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def build_server() -> MCPServer:
    """The MCP server's tools; a fresh instance per start, as a restarted process would have."""
    server = MCPServer("loomd-test", log_level="WARNING")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        return text

    @server.tool(description="The Authorization header of the request.")
    def whoami(ctx: Context) -> str:
        headers = ctx.headers or {}
        return headers.get("authorization", "(none)")

    @server.tool(description="Always fails with the message.")
    def fail(message: str) -> str:
        raise ToolError(message)

    @server.tool(description="Answer after `seconds`.")
    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool(description="A tiny PNG and a caption.", structured_output=False)
    def picture() -> list[Any]:
        return ["a caption", Image(data=PNG_BYTES, format="png")]

    @server.tool(name="search.web", description="A name that is no valid function name.")
    def search_web(q: str) -> str:
        return q

    return server


@dataclass(frozen=True)
class Received:
    """One HTTP request the server received."""

    method: str
    headers: dict[str, str]
    rpc_method: str | None


class _Recorder:
    """ASGI middleware: records requests; in legacy mode refuses the 2026 per-request wire."""

    def __init__(self, app: ASGIApp, log: list[Received], legacy: bool,
                 token: str | None) -> None:
        self.app, self.log, self.legacy, self.token = app, log, legacy, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = b""
        if scope["method"] == "POST":
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
        self.log.append(Received(scope["method"], headers, _rpc_method(body)))
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        version = headers.get("mcp-protocol-version")
        if self.legacy and version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            await _reject_version(send, version)
            return
        await self.app(scope, _replay(body, receive), send)


def _rpc_method(body: bytes) -> str | None:
    try:
        message = json.loads(body)
    except ValueError:
        return None
    method = message.get("method") if isinstance(message, dict) else None
    return method if isinstance(method, str) else None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _reject_version(send: Send, version: str) -> None:
    """What a 2025-era server answers to a request of a protocol version it does not know."""
    error = {"code": -32600, "message": f"Bad Request: Unsupported protocol version: {version}"}
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class McpTestServer:
    """The test MCP server on `http://127.0.0.1:<port>/mcp`; the port stays across restarts."""

    def __init__(self, *, legacy: bool = False, token: str | None = None) -> None:
        self.legacy, self.token = legacy, token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.received: list[Received] = []
        self._uvicorn: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def calls_of(self, rpc_method: str) -> int:
        """How many requests of this JSON-RPC method the server received (over all its starts)."""
        return sum(1 for request in self.received if request.rpc_method == rpc_method)

    async def start(self) -> None:
        app = _Recorder(build_server().streamable_http_app(), self.received, self.legacy,
                        self.token)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1)
        self._uvicorn = uvicorn.Server(config)
        self._task = asyncio.create_task(self._uvicorn.serve())
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the MCP test server did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._uvicorn is None or self._task is None:
            return
        self._uvicorn.should_exit = True
        await self._task
        self._uvicorn = self._task = None

    async def restart(self) -> None:
        """Stop and start again on the same port: every session the server had is gone."""
        await self.stop()
        await self.start()
