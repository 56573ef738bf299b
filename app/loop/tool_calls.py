"""The tool calls of one turn, run concurrently in a task group.

Each call that finishes stores exactly one result message, as soon as it exists. When one
call raises (its result cannot be stored, a hook fails), its siblings are cancelled and
waited for before the error propagates: a cancelled call stores nothing and emits nothing,
and nothing of the turn runs on after it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from app.loop.hooks import ToolDenial
from app.loop.ports import LoopPorts
from app.providers.base import ToolCallOut
from app.tools.base import ToolResult


def tool_message(call_id: str, name: str, result: ToolResult) -> dict[str, Any]:
    """The `tool` message holding a call's result."""
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": result.output}


async def run_tool_calls(
    ports: LoopPorts, turn: int, calls: Sequence[ToolCallOut], *, max_parallel: int,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Run `calls`, at most `max_parallel` at a time; their result messages in call order.

    Raises the first error of a call that fails, once the others are cancelled.
    """
    semaphore = asyncio.Semaphore(max_parallel)

    async def bounded(call: ToolCallOut) -> dict[str, Any]:
        async with semaphore:
            return await run_tool_call(ports, turn, call, timeout_s)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(bounded(call)) for call in calls]
    except BaseExceptionGroup as failure:
        # The first error stands for the turn: callers tell errors apart by type (a storage
        # failure is not a crash), and siblings usually fail for the same reason.
        raise failure.exceptions[0] from None
    return [task.result() for task in tasks]


async def run_tool_call(
    ports: LoopPorts, turn: int, call: ToolCallOut, timeout_s: float,
) -> dict[str, Any]:
    """Run one call with its events and hooks; returns its result message (stored)."""
    decision = await ports.hooks.before_tool_call(turn, call)
    if isinstance(decision, ToolDenial):
        return await _deny(ports, turn, call, decision)
    call = decision
    await ports.sink.emit("tool.started", {"turn": turn, "tool_call_id": call.id,
                                           "name": call.name,
                                           "arguments": _parsed(call.arguments)})
    await ports.hooks.on_tool_start(turn, call)
    started = time.monotonic()
    result = await ports.tools.run(call.name, call.arguments, ports.contexts(call.id),
                                   timeout_s)
    await ports.hooks.on_tool_end(turn, call, result, time.monotonic() - started)
    message = tool_message(call.id, call.name, result)
    await ports.history.append_messages([message])
    await ports.sink.emit("tool.completed", {
        "turn": turn, "tool_call_id": call.id, "name": call.name, "output": result.output,
        "is_error": result.is_error, "duration_ms": round((time.monotonic() - started) * 1000)})
    return message


async def _deny(
    ports: LoopPorts, turn: int, call: ToolCallOut, denial: ToolDenial,
) -> dict[str, Any]:
    message = tool_message(call.id, call.name,
                           ToolResult(f"<denied: {denial.reason}>", is_error=True))
    await ports.history.append_messages([message])
    await ports.sink.emit("tool.denied", {"turn": turn, "tool_call_id": call.id,
                                          "name": call.name, "by": denial.by,
                                          "reason": denial.reason})
    return message


def _parsed(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
