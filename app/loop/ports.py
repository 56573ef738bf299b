"""What the loop talks to besides the provider: tools, an event sink, a history store, hooks.

Protocols only, so the loop runs against the service's run host as well as against fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.loop.hooks import LifecycleHooks
from app.providers.base import ToolDef, Usage
from app.tools.base import ToolContext, ToolResult

ToolContextFactory = Callable[[str], ToolContext]
"""Makes the context of one tool call from its id."""


class Tools(Protocol):
    """The tools of a run (`app.tools.runner.ToolRunner`)."""

    def definitions(self) -> list[ToolDef]: ...

    def is_client_tool(self, name: str) -> bool:
        """Whether the API client, not the server, runs `name`."""
        ...

    def check_arguments(self, name: str, arguments_json: str) -> ToolResult | None:
        """The error result for arguments `name` does not take; None when they are fine."""
        ...

    async def run(
        self, name: str, arguments_json: str, context: ToolContext, timeout_s: float = 60
    ) -> ToolResult: ...


class EventSink(Protocol):
    """Where the run's events go (numbered, stored and published by the sink)."""

    async def emit(self, type_: str, data: dict[str, Any]) -> None: ...


class HistoryStore(Protocol):
    """The session's messages and the counters stored with them."""

    async def append_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store `messages` after the session's last one; returns them as stored."""
        ...

    def next_call_index(self) -> int:
        """Number one LLM call (attempt) of the session: 0, 1, 2 …"""
        ...

    def add_usage(self, usage: Usage) -> None:
        """Count the tokens of one LLM answer."""
        ...


@dataclass(frozen=True)
class LoopPorts:
    """Everything outside the loop it talks to, except the provider."""

    tools: Tools
    contexts: ToolContextFactory
    sink: EventSink
    history: HistoryStore
    hooks: LifecycleHooks = field(default_factory=LifecycleHooks)
