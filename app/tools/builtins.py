"""The builtin tools (§7.1) an agent enables with `{"type": "builtin", "name": …}`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx2

from app.clock import utcnow
from app.tools import net
from app.tools.arithmetic import MAX_EXPRESSION_LENGTH, CalculationError, calculate, format_number
from app.tools.base import Tool, ToolContext, ToolResult
from app.tools.todos import TodoWrite

MAX_SLEEP_S = 60
FETCH_TIMEOUT_S = 30.0
MAX_URL_LENGTH = 2048
ERROR_EXCERPT_CHARS = 2000


class Calculator:
    """Bounded arithmetic on numbers, evaluated without `eval`."""

    name = "calculator"
    description = (
        "Evaluate an arithmetic expression exactly as written: numbers, + - * / ** %, "
        "unary minus and parentheses. Returns the result as text, e.g. `2+3` gives `5`."
    )

    def __init__(self) -> None:
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "description": "e.g. `(1.5 + 2) * 3 ** 2 % 7`",
                    "maxLength": MAX_EXPRESSION_LENGTH,
                },
            },
            "required": ["expression"],
            "additionalProperties": False,
        }

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """Evaluate `arguments["expression"]`; any failure is an error result, not a raise."""
        try:
            return ToolResult(calculate(arguments["expression"]))
        except CalculationError as exc:
            return ToolResult(str(exc), is_error=True)


class CurrentTime:
    """The current time in UTC or an IANA time zone."""

    name = "current_time"
    description = "The current date and time (RFC 3339), in UTC or in the given time zone."

    def __init__(self) -> None:
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "an IANA time zone name such as `Europe/Paris`; default UTC",
                    "maxLength": 64,
                },
            },
            "additionalProperties": False,
        }

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """Now, as `2026-01-02T04:05:06+01:00` (`…Z` for UTC)."""
        name = arguments.get("timezone")
        zone: tzinfo = UTC
        if name is not None:
            try:
                zone = ZoneInfo(name)
            # ZoneInfo refuses odd keys (absolute paths, `..`, non-TZif files) with ValueError.
            except (ZoneInfoNotFoundError, ValueError, OSError):
                return ToolResult(
                    f"unknown time zone {name!r}; use an IANA name such as `Europe/Paris`",
                    is_error=True)
        moment = utcnow().astimezone(zone).isoformat(timespec="seconds")
        return ToolResult(moment.replace("+00:00", "Z") if zone is UTC else moment)


class Sleep:
    """A cancellable wait, for agents that poll or pace themselves."""

    name = "sleep"
    description = f"Wait for the given number of seconds (at most {MAX_SLEEP_S})."

    def __init__(self) -> None:
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {
                "seconds": {"type": "number", "minimum": 0, "maximum": MAX_SLEEP_S},
            },
            "required": ["seconds"],
            "additionalProperties": False,
        }

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """Sleep; cancellation interrupts it at once (CancelledError propagates)."""
        seconds = arguments["seconds"]
        await asyncio.sleep(seconds)
        return ToolResult(f"slept {format_number(seconds)} s")


class HttpFetch:
    """GET a URL within the run's allowed hosts, through the private-address guard."""

    name = "http_fetch"
    description = (
        "Fetch a web page or API response with an HTTP GET and return its status, content "
        "type and body as text (at most the first 1 MiB). Redirects are followed (up to 5)."
    )

    def __init__(
        self, timeout_s: float = FETCH_TIMEOUT_S, resolver: net.Resolver | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self._resolver = resolver
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "an absolute http:// or https:// URL",
                        "maxLength": MAX_URL_LENGTH},
            },
            "required": ["url"],
            "additionalProperties": False,
        }

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """The response as `HTTP <status> <reason>`, headers of note, a blank line, the body;
        a refused host, DNS failure, timeout or non-2xx status is an error result."""
        url = arguments["url"]
        if context.hosts is None:
            return ToolResult(f"cannot fetch {url}: this run may not use the network",
                              is_error=True)
        if not url.lower().startswith(("http://", "https://")):
            return ToolResult(f"cannot fetch {url!r}: only http:// and https:// URLs",
                              is_error=True)
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                net.client(context.hosts, self.timeout_s, resolver=self._resolver) as client,
                client.stream("GET", url) as response,
            ):
                body, truncated = await net.read_capped(response)
        except (net.BlockedUrl, httpx2.HTTPError, httpx2.InvalidURL, TimeoutError) as exc:
            return ToolResult(f"cannot fetch {url}: {net.failure_text(exc, self.timeout_s)}",
                              is_error=True)
        return _fetched(response, body, truncated)


def _fetched(response: httpx2.Response, body: bytes, truncated: bool) -> ToolResult:
    lines = [f"HTTP {response.status_code} {response.reason_phrase}".rstrip()]
    if response.history:
        lines.append(f"URL: {response.url}")
    if "content-type" in response.headers:
        lines.append(f"Content-Type: {response.headers['content-type']}")
    if b"\x00" in body[:8192]:
        text = f"[{len(body)}{'+' if truncated else ''} bytes of binary content, not shown]"
    else:
        text = net.body_text(body, response)
    if not response.is_success:
        excerpt = text[:ERROR_EXCERPT_CHARS]
        return ToolResult("\n".join(lines) + "\n\n" + excerpt, is_error=True)
    if truncated:
        text += "\n\n[truncated: the body is larger than 1 MiB; only its first 1 MiB is shown]"
    return ToolResult("\n".join(lines) + "\n\n" + text)


BUILTINS: dict[str, Callable[[], Tool]] = {
    Calculator.name: Calculator,
    CurrentTime.name: CurrentTime,
    HttpFetch.name: HttpFetch,
    Sleep.name: Sleep,
    TodoWrite.name: TodoWrite,
}
"""Builtin tools by name."""
