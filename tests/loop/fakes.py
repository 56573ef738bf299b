"""In-memory ports for the loop: an event sink, a history store, tools made of functions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from app.loop.config import LoopConfig, RunConfig
from app.loop.engine import AgentLoop
from app.loop.hooks import LifecycleHooks
from app.loop.ports import LoopPorts
from app.providers.base import Usage
from app.providers.function import AnswerFunction, FunctionProvider
from app.tools.base import Tool, ToolContext, ToolResult
from app.tools.builtins import Calculator
from app.tools.runner import ToolRunner

NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class StoreRefused(Exception):
    """The history store could not store a message."""


class MemorySink:
    """Keeps the events in emission order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, type_: str, data: dict[str, Any]) -> None:
        self.events.append((type_, data))

    def types(self) -> list[str]:
        return [type_ for type_, _ in self.events]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [data for kind, data in self.events if kind == type_]


class MemoryHistory:
    """Keeps the messages; `refuse(message)` true makes a store fail as a database would."""

    def __init__(self, refuse: Callable[[dict[str, Any]], bool] = lambda _m: False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.calls = 0
        self.tokens = 0
        self.refuse = refuse

    async def append_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await asyncio.sleep(0)  # a real store gives the event loop a turn
        if any(self.refuse(message) for message in messages):
            raise StoreRefused("the database is gone")
        stored = [{**message, "seq": len(self.messages) + i + 1}
                  for i, message in enumerate(messages)]
        self.messages += stored
        return stored

    def next_call_index(self) -> int:
        self.calls += 1
        return self.calls - 1

    def add_usage(self, usage: Usage) -> None:
        self.tokens += usage.total_tokens

    def results(self, tool_call_id: str) -> list[str]:
        """The contents of the tool messages answering `tool_call_id`."""
        return [m["content"] for m in self.messages
                if m["role"] == "tool" and m["tool_call_id"] == tool_call_id]


class FunctionTool:
    """A tool whose call is an async function of the arguments."""

    def __init__(self, name: str,
                 function: Callable[[dict[str, Any]], Awaitable[str | ToolResult]]) -> None:
        self.name = name
        self.description = f"the {name} tool"
        self.parameters = NO_PARAMETERS
        self.function = function

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str | ToolResult:
        return await self.function(arguments)


def context_for(tool_call_id: str) -> ToolContext:
    return ToolContext(run_id="run_test", session_id="ses_test", owner="tester",
                       tool_call_id=tool_call_id)


class Harness:
    """A loop over a function provider and in-memory ports."""

    def __init__(
        self, answer: AnswerFunction, tools: Sequence[Tool] = (), *,
        hooks: LifecycleHooks | None = None,
        refuse: Callable[[dict[str, Any]], bool] = lambda _m: False,
        max_attempts: int = 3, tool_timeout_s: float = 5, **config: Any,
    ) -> None:
        self.sink = MemorySink()
        self.store = MemoryHistory(refuse)
        extra = {"hooks": hooks} if hooks is not None else {}
        self.ports = LoopPorts(tools=ToolRunner([Calculator(), *tools]), contexts=context_for,
                               sink=self.sink, history=self.store, **extra)
        run = RunConfig.parse({"model": "function:test", **config})
        self.loop = AgentLoop(
            LoopConfig(run=run, model="test", tool_timeout_s=tool_timeout_s,
                       max_attempts=max_attempts, retry_base_s=0.001),
            FunctionProvider(answer), self.ports)

    async def run(self, text: str = "hi") -> Any:
        """Store `text` as the user's message, then run the loop from the history."""
        await self.store.append_messages([{"role": "user", "content": text}])
        return await self.loop.run(list(self.store.messages))
