"""What one executing run gives the loop: numbered events, stored messages, counters."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from app.clock import utcnow
from app.errors import AppError
from app.events.types import TERMINAL_EVENTS, envelope
from app.hooks.gating import HookGate
from app.loop.config import RunConfig
from app.loop.engine import AgentLoop, to_openai
from app.loop.hooks import LifecycleHooks, NeedsApproval, ToolDecision, ToolDenial
from app.loop.ports import LoopPorts, Tools
from app.metrics import Metrics
from app.providers.base import Completion, LLMRequest, ProviderError, ToolCallOut, Usage
from app.runs import compaction
from app.runs.store import RunStore, Tally
from app.store.writer import Writer
from app.tools.base import ToolContext, ToolResult
from app.tools.net import HostPolicy
from app.tools.policy import ToolGate
from app.tools.todos import TODOS

T = TypeVar("T")


class RunEvents:
    """Numbers a run's events (seq without gaps) and queues them on the writer."""

    def __init__(self, writer: Writer, run_id: str, session_id: str, last_seq: int):
        self.writer = writer
        self.run_id = run_id
        self.session_id = session_id
        self.seq = last_seq

    async def emit(self, type_: str, data: dict[str, Any]) -> None:
        """Queue a non-terminal event (a run's end goes through `RunStore.finish`)."""
        if type_ in TERMINAL_EVENTS:
            raise ValueError(f"{type_} ends a run: use RunStore.finish")
        ts = utcnow()
        self.seq += 1
        await self.writer.emit(envelope(type_, self.seq, self.run_id, self.session_id, ts, data),
                               ts)


class RunHost(LifecycleHooks):
    """What the loop of one run talks to: its event sink, its history store (messages and
    counters), its lifecycle hooks (metrics) and its tool contexts."""

    def __init__(self, store: RunStore, events: RunEvents, run_id: str, session_id: str,
                 owner: str, llm_calls: int = 0) -> None:
        self.store = store
        self.tally = Tally(llm_calls)
        self.events = events
        self.run_id = run_id
        self.session_id = session_id
        self.owner = owner
        self.config: RunConfig | None = None
        self.loop: AgentLoop | None = None
        self.metrics: Metrics | None = None
        self.started = time.monotonic()
        self.provider_name = ""
        self.agent = ""
        self.gate: ToolGate | None = None
        self.hooks_gate: HookGate | None = None
        self.steered: Callable[[], bool] = lambda: False
        """Whether steering input may be waiting (asked at each turn boundary)."""
        self.parking: Callable[[], bool] = lambda: False
        """Whether the runtime pauses (asked at each turn boundary)."""
        self.hosts: HostPolicy | None = None
        self._contexts: dict[str, ToolContext] = {}
        self.input_after_wait: list[dict[str, Any]] = []
        """The run's own input, when turn 0 waits for people before it can be stored."""
        self.active_ms_before = 0
        """Running time of the run before this stretch (it may have waited for people)."""
        self.answered: set[str] = set()
        """Ids of the tool calls whose result message was handed to the store (a write a
        cancellation interrupted may still land), so the run's end leaves them alone."""
        self.compacted_at_turn: int | None = None
        """The turn boundary (turns so far) compaction was last tried at: once per boundary."""
        self.tools_started: dict[str, float] = {}
        """When each tool call of this stretch started (`time.monotonic()`), by call id."""

    def configure(self, stored: Mapping[str, Any]) -> RunConfig:
        """The run's typed configuration, parsed from its stored `config` the first time."""
        if self.config is None:
            self.config = RunConfig.parse(stored)
        return self.config

    def ports(self, tools: Tools) -> LoopPorts:
        """The loop's ports, all served by this host but the tools."""
        return LoopPorts(tools=tools, contexts=self.tool_context, sink=self, history=self,
                         hooks=self)

    def progress(self) -> tuple[int, dict[str, int]]:
        """Turns and usage so far (zero before the loop started)."""
        if self.loop is None:
            return 0, {}
        return self.loop.turns, dict(self.loop.usage)

    # event sink

    async def emit(self, type_: str, data: dict[str, Any]) -> None:
        if type_ == "tool.started":
            self.tools_started[data["tool_call_id"]] = time.monotonic()
        await self.events.emit(type_, data)

    def tool_ms(self, call_id: str) -> int:
        """How long the call has run so far (0 for one that never started here)."""
        started = self.tools_started.get(call_id)
        return 0 if started is None else round((time.monotonic() - started) * 1000)

    # history store

    async def append_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answers = {m["tool_call_id"] for m in messages if m.get("role") == "tool"}
        self.answered |= answers
        # A tool's new session state (the todo list) is stored with its result.
        changes: dict[str, Any] = {}
        for call_id in answers:
            context = self._contexts.pop(call_id, None)
            if context is not None and TODOS in context.state:
                changes["todos"] = context.state[TODOS]
        try:
            stored = await self.store.append_messages(self.session_id, self.run_id, messages,
                                                      self.tally, changes)
        except Exception:
            self.answered -= answers  # refused: nothing of it was stored
            raise
        return [_json_message(m) for m in stored]

    def next_call_index(self) -> int:
        """Number the next LLM call of the session (stored with the run's next write)."""
        self.tally.llm_calls += 1
        return self.tally.llm_calls - 1

    def add_usage(self, usage: Usage) -> None:
        self.tally.add(usage)

    # lifecycle hooks

    async def on_llm_end(self, turn: int, request: LLMRequest,
                         result: Completion | ProviderError, seconds: float) -> None:
        if self.metrics is not None:
            outcome = "error" if isinstance(result, ProviderError) else "ok"
            self.metrics.llm_seconds.labels(self.provider_name, outcome).observe(seconds)

    async def before_tool_call(self, turn: int, call: ToolCallOut) -> ToolDecision:
        """The policy first (a denied call reaches no hook), then the pre hooks."""
        decision = call if self.gate is None else self.gate.decide(call)
        if isinstance(decision, ToolDenial) or not self.hooks_gate:
            return decision
        hooked = await self.hooks_gate.before(turn, call)
        if isinstance(hooked, ToolDenial):
            return hooked
        if isinstance(decision, NeedsApproval):
            return NeedsApproval(decision.reason, hooked.call if isinstance(
                hooked, NeedsApproval) else hooked)
        return hooked

    async def after_tool_call(self, turn: int, call: ToolCallOut,
                              result: ToolResult) -> ToolResult:
        if not self.hooks_gate:
            return result
        return await self.hooks_gate.after(turn, call, result)

    async def should_park(self) -> bool:
        return self.parking()

    async def compact(self, history: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Compact the session when its history is estimated above the threshold (§10)."""
        config, loop = self.config, self.loop
        if config is None or loop is None or not config.compaction.enabled:
            return None
        before = compaction.estimate_tokens(history)
        if before <= config.compaction.threshold_tokens or self.compacted_at_turn == loop.turns:
            return None
        self.compacted_at_turn = loop.turns
        messages = await self.store.history(self.session_id)
        if not messages:
            return None
        # At a turn boundary every tool call has its result, so no call is open.
        plan = compaction.plan_fold(messages, config.compaction.keep_last, messages[-1]["seq"])
        if plan is None:
            return None
        request = compaction.summary_request(config, loop.config.model, plan.folded,
                                             self.next_call_index())
        loop.usage["llm_calls"] += 1
        try:
            answer = await compaction.summarise(loop.provider, request)
        except compaction.SummaryFailed as failure:
            await self._not_compacted(before, compaction.SUMMARY_ERROR_CODE,
                                      f"the summary call failed: {failure.detail}")
            return None
        for name, tokens in (("prompt_tokens", answer.usage.prompt_tokens),
                             ("completion_tokens", answer.usage.completion_tokens),
                             ("total_tokens", answer.usage.total_tokens)):
            loop.usage[name] += tokens
        self.add_usage(answer.usage)
        summary = compaction.summary_message(answer)
        try:
            stored = await compaction.store_for_run(self.store, self.session_id, self.run_id,
                                                    plan, summary)
        except AppError as refused:
            await self._not_compacted(before, refused.code, refused.detail)
            return None
        outcome = compaction.outcome_of(plan, summary, before, stored)
        await self.emit("compaction.completed", outcome.data())
        return [to_openai(m) for m in stored]

    async def _not_compacted(self, before: int, code: str, detail: str) -> None:
        outcome = compaction.Outcome(False, before, before, 0,
                                     error={"code": code, "detail": detail})
        await self.emit("compaction.completed", outcome.data())

    async def take_input(self) -> list[dict[str, Any]]:
        if not self.steered():
            return []
        taken = await self.store.take_input(self.run_id, self.session_id, self.events.seq + 1,
                                            self.tally)
        if taken is None:
            return []
        messages, event = taken
        self.events.seq += 1
        self.events.writer.publish(event)
        return messages

    async def on_tool_end(self, turn: int, call: ToolCallOut, result: ToolResult,
                          seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.tool_seconds.labels(
                call.name, "true" if result.is_error else "false").observe(seconds)

    # tools

    def tool_context(self, tool_call_id: str) -> ToolContext:
        """The context of one tool call of this run."""
        context = ToolContext(run_id=self.run_id, session_id=self.session_id,
                              owner=self.owner, tool_call_id=tool_call_id, hosts=self.hosts)
        self._contexts[tool_call_id] = context
        return context


def _json_message(message: dict[str, Any]) -> dict[str, Any]:
    from app.schemas.messages import Message

    return Message.model_validate(message).model_dump(mode="json")
