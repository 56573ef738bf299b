"""What one executing run gives the loop: numbered events, stored messages, counters."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from app.clock import utcnow
from app.events.types import envelope, is_terminal
from app.events.writer import EventWriter
from app.loop.engine import AgentLoop
from app.metrics import Metrics
from app.providers.base import Usage
from app.runs.store import RunStore, Tally
from app.tools.base import ToolContext

T = TypeVar("T")


class RunEvents:
    """Numbers a run's events (seq without gaps) and hands them to the writer."""

    def __init__(self, writer: EventWriter, run_id: str, session_id: str, last_seq: int):
        self.writer = writer
        self.run_id = run_id
        self.session_id = session_id
        self.seq = last_seq

    def _next(self, type_: str, data: dict[str, Any], ts: datetime) -> dict[str, Any]:
        self.seq += 1
        return envelope(type_, self.seq, self.run_id, self.session_id, ts, data)

    async def emit(self, type_: str, data: dict[str, Any]) -> None:
        """Queue a non-terminal event (terminal ones go through `end`)."""
        ts = utcnow()
        event = self._next(type_, data, ts)
        if is_terminal(event):
            raise ValueError(f"{type_} ends a run: use RunEvents.end")
        self.writer.write(event, ts)

    async def end(
        self, type_: str, data: dict[str, Any],
        commit: Callable[[dict[str, Any]], Awaitable[T]],
    ) -> T:
        """Store the terminal event with the run's end in one transaction (`commit`), then
        publish it.

        Earlier events are flushed first, so whoever sees the run finished also finds all
        of its events, the terminal one last.
        """
        event = self._next(type_, data, utcnow())
        with contextlib.suppress(Exception):  # the writer logged it; the run must still end
            await self.writer.flush()
        result = await commit(event)
        self.writer.published(event)
        return result


class RunHost:
    """The loop's host for one run (see `app.loop.engine.LoopHost`)."""

    def __init__(self, store: RunStore, events: RunEvents, run_id: str, session_id: str,
                 owner: str, llm_calls: int = 0) -> None:
        self.store = store
        self.tally = Tally(llm_calls)
        self.events = events
        self.run_id = run_id
        self.session_id = session_id
        self.owner = owner
        self.loop: AgentLoop | None = None
        self.metrics: Metrics | None = None
        self.started = time.monotonic()
        self.provider_name = ""
        self.agent = ""

    def progress(self) -> tuple[int, dict[str, int]]:
        """Turns and usage so far (zero before the loop started)."""
        if self.loop is None:
            return 0, {}
        return self.loop.turns, dict(self.loop.usage)

    async def emit(self, type_: str, data: dict[str, Any]) -> None:
        await self.events.emit(type_, data)

    async def append_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        stored = await self.store.append_messages(self.session_id, self.run_id, messages,
                                                  self.tally)
        return [_json_message(m) for m in stored]

    def next_call_index(self) -> int:
        """Number the next LLM call of the session (stored with the run's next write)."""
        self.tally.llm_calls += 1
        return self.tally.llm_calls - 1

    def add_usage(self, usage: Usage) -> None:
        self.tally.add(usage)

    def observe_llm_call(self, seconds: float, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.llm_seconds.labels(self.provider_name, outcome).observe(seconds)

    def observe_tool_call(self, name: str, seconds: float, is_error: bool) -> None:
        if self.metrics is not None:
            self.metrics.tool_seconds.labels(name, "true" if is_error else "false").observe(
                seconds)

    def tool_context(self, tool_call_id: str) -> ToolContext:
        return ToolContext(run_id=self.run_id, session_id=self.session_id, owner=self.owner,
                           tool_call_id=tool_call_id)


def _json_message(message: dict[str, Any]) -> dict[str, Any]:
    from app.schemas.messages import Message

    return Message.model_validate(message).model_dump(mode="json")
