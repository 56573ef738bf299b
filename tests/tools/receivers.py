"""HTTP receivers on loopback sockets for tests of outbound requests (tools, hooks).

A `Receiver` listens on a free port of a loopback address (127.0.0.1 unless told, e.g.
127.0.0.2), records every connection and request, and answers with its handler:

    async with Receiver(answer(Reply.json({"output": "42"}))) as receiver:
        ...  # point a tool at receiver.url("/lookup")
    assert receiver.requests[0].json()["arguments"] == {...}

Handlers: `answer(reply)`, `redirect(url)`, `hang()` (never answers: timeouts),
`raw(bytes)` (not HTTP: junk), `tool_endpoint(secret, respond)` (verifies the Standard
Webhooks signature, then answers `respond(payload)`), or any
`async def handler(request: Received) -> Reply | bytes`. Each connection serves one
request and is closed. Leaving the `async with` stops the receiver and cancels requests
still being answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_HEAD_BYTES = 64 * 1024


@dataclass
class Received:
    """One request as it arrived; header names in lower case."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8",
             ) -> Reply:
        return cls(status, text.encode(content_type.partition("charset=")[2] or "utf-8"),
                   {"Content-Type": content_type})

    def encode(self) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        headers = {"Content-Length": str(len(self.body)), "Connection": "close", **self.headers}
        head = f"HTTP/1.1 {self.status} {reason}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items())
        return head.encode("latin-1") + b"\r\n" + self.body


Handler = Callable[[Received], Awaitable[Reply | bytes]]


def answer(reply: Reply) -> Handler:
    """Answer every request with `reply`."""

    async def handle(_request: Received) -> Reply:
        return reply

    return handle


def redirect(location: str, status: int = 302) -> Handler:
    return answer(Reply(status, b"", {"Location": location}))


def hang() -> Handler:
    """Never answer (until the receiver stops)."""

    async def handle(_request: Received) -> Reply:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return handle


def raw(data: bytes) -> Handler:
    """Write `data` as the whole answer, HTTP or not."""

    async def handle(_request: Received) -> bytes:
        return data

    return handle


def tool_endpoint(secret: str, respond: Callable[[Any], Reply]) -> Handler:
    """An `http` tool's endpoint: 401 unless the request is signed with `secret`, else
    `respond(payload)` with the verified JSON body."""

    async def handle(request: Received) -> Reply:
        try:
            payload = Webhook(secret).verify(request.body, request.headers)
        except WebhookVerificationError as exc:
            return Reply.text(f"bad signature: {exc}", status=401)
        return respond(payload)

    return handle


class Receiver:
    """An HTTP/1.1 server on `host` (a loopback address) and a free port."""

    def __init__(self, handler: Handler | None = None, host: str = "127.0.0.1") -> None:
        self.handler = handler or answer(Reply.text("ok"))
        self.host = host
        self.connections = 0
        self.requests: list[Received] = []
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self._port is not None, "the receiver is not started"
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await _read_request(reader)
            if request is not None:
                self.requests.append(request)
                reply = await self.handler(request)
                writer.write(reply if isinstance(reply, bytes) else reply.encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Stopped by `__aexit__`: end normally, or asyncio's stream callback logs the
            # cancellation as an error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    if len(head) > MAX_HEAD_BYTES:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method, target, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)
