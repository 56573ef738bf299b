"""The builtin tools (§7.1) an agent enables with `{"type": "builtin", "name": …}`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.clock import utcnow
from app.tools.arithmetic import MAX_EXPRESSION_LENGTH, CalculationError, calculate, format_number
from app.tools.base import Tool, ToolContext, ToolResult

MAX_SLEEP_S = 60


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


BUILTINS: dict[str, Callable[[], Tool]] = {
    Calculator.name: Calculator,
    CurrentTime.name: CurrentTime,
    Sleep.name: Sleep,
}
"""Builtin tools by name; `http_fetch` and `todo_write` are not implemented yet."""
