"""The tool calls of one turn, run concurrently in a task group.

Each call is first decided on (`before_tool_call`): it runs, is denied, or waits for an
approval. A call of a client tool is not run here: it waits for the client's output. Each
call that finishes stores exactly one result message, as soon as it exists. When one call
raises (its result cannot be stored, a hook fails), its siblings are cancelled and waited for
before the error propagates: a cancelled call stores nothing and emits nothing, and nothing of
the turn runs on after it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.loop.hooks import NeedsApproval, ToolDenial
from app.loop.ports import LoopPorts
from app.providers.base import ToolCallOut
from app.tools.base import ToolResult


def tool_message(call_id: str, name: str, result: ToolResult) -> dict[str, Any]:
    """The `tool` message holding a call's result."""
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": result.output}


@dataclass
class TurnCalls:
    """What became of a turn's tool calls: stored results, and the calls still open."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    """The result messages stored, in call order."""
    asks: list[ToolCallOut] = field(default_factory=list)
    """Calls that wait for an approval."""
    client: list[ToolCallOut] = field(default_factory=list)
    """Calls of client tools, whose outputs the client is to submit."""


async def run_tool_calls(
    ports: LoopPorts, turn: int, calls: Sequence[ToolCallOut], *, max_parallel: int,
    timeout_s: float, decide: bool = True,
) -> TurnCalls:
    """Run `calls`, at most `max_parallel` at a time. With `decide` (not for calls a person
    approved), each call is decided on first.

    Raises the first error of a call that fails, once the others are cancelled.
    """
    semaphore = asyncio.Semaphore(max_parallel)

    async def bounded(call: ToolCallOut) -> dict[str, Any] | NeedsApproval | ToolCallOut:
        async with semaphore:
            return await _one(ports, turn, call, timeout_s, decide)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(bounded(call)) for call in calls]
    except BaseExceptionGroup as failure:
        # The first error stands for the turn: callers tell errors apart by type (a storage
        # failure is not a crash), and siblings usually fail for the same reason.
        raise failure.exceptions[0] from None
    outcome = TurnCalls()
    for call, task in zip(calls, tasks, strict=True):
        result = task.result()
        if isinstance(result, NeedsApproval):
            outcome.asks.append(result.call or call)
        elif isinstance(result, ToolCallOut):
            outcome.client.append(result)
        else:
            outcome.messages.append(result)
    return outcome


async def _one(
    ports: LoopPorts, turn: int, call: ToolCallOut, timeout_s: float, decide: bool,
) -> dict[str, Any] | NeedsApproval | ToolCallOut:
    if decide:
        decision = await ports.hooks.before_tool_call(turn, call)
        if isinstance(decision, ToolDenial):
            return await deny_call(ports, turn, call, decision)
        if isinstance(decision, NeedsApproval):
            return decision
        call = decision
    if ports.tools.is_client_tool(call.name):
        await _started(ports, turn, call)  # the client is asked to run it now
        problem = ports.tools.check_arguments(call.name, call.arguments)
        if problem is None:
            return call
        return await _store(ports, turn, call, problem, time.monotonic())
    return await run_tool_call(ports, turn, call, timeout_s)


async def run_tool_call(
    ports: LoopPorts, turn: int, call: ToolCallOut, timeout_s: float,
) -> dict[str, Any]:
    """Run one call with its events and hooks; returns its result message (stored)."""
    await _started(ports, turn, call)
    await ports.hooks.on_tool_start(turn, call)
    started = time.monotonic()
    result = await ports.tools.run(call.name, call.arguments, ports.contexts(call.id),
                                   timeout_s)
    await ports.hooks.on_tool_end(turn, call, result, time.monotonic() - started)
    result = await ports.hooks.after_tool_call(turn, call, result)
    return await _store(ports, turn, call, result, started)


async def complete_call(
    ports: LoopPorts, turn: int, call: ToolCallOut, result: ToolResult,
) -> dict[str, Any]:
    """Store the result of a call that ran elsewhere (a client tool), with its event."""
    return await _store(ports, turn, call, result, time.monotonic())


async def _started(ports: LoopPorts, turn: int, call: ToolCallOut) -> None:
    await ports.sink.emit("tool.started", {"turn": turn, "tool_call_id": call.id,
                                           "name": call.name,
                                           "arguments": _parsed(call.arguments)})


async def _store(
    ports: LoopPorts, turn: int, call: ToolCallOut, result: ToolResult, started: float,
) -> dict[str, Any]:
    message = tool_message(call.id, call.name, result)
    await ports.history.append_messages([message])
    await ports.sink.emit("tool.completed", {
        "turn": turn, "tool_call_id": call.id, "name": call.name, "output": result.output,
        "is_error": result.is_error, "duration_ms": round((time.monotonic() - started) * 1000)})
    return message


async def deny_call(
    ports: LoopPorts, turn: int, call: ToolCallOut, denial: ToolDenial,
) -> dict[str, Any]:
    """Store a denied call's error result, with its `tool.denied` event."""
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
