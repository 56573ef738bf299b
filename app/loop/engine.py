"""The agent loop: LLM call → tool calls → LLM call … until the model answers.

Each step is one turn and returns what comes next (`app.loop.steps`); the driver (`run`,
`resume`) takes steps until one is not `Continue`. Pure orchestration: the loop talks to a
provider and to its ports (tools, event sink, history store, hooks) and imports neither
FastAPI nor SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.loop.config import LoopConfig
from app.loop.hooks import ToolDenial
from app.loop.ports import LoopPorts
from app.loop.steps import Approval, AwaitInput, Continue, Failed, Final, Parked, Step, Stop
from app.loop.tool_calls import complete_call, deny_call, run_tool_calls
from app.providers.base import (
    Completion,
    LLMRequest,
    Provider,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    ToolCallOut,
    Usage,
)
from app.tools.base import ToolResult

MAX_NUDGES = 2
NUDGE = {"role": "user", "content": "Continue exactly where you stopped."}


def _never() -> bool:
    return False


@dataclass
class Outcome:
    """How a run's loop ended, as the run manager reports it (cancellation and timeouts
    are the manager's to report)."""

    status: str
    turns: int
    stop_reason: str | None = None
    output: str | None = None
    error: dict[str, str] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    awaiting: AwaitInput | None = None
    """For `requires_action`: what the run waits for."""

    @classmethod
    def of(cls, step: Stop, turns: int, usage: dict[str, int]) -> Outcome:
        """The outcome of a run whose last step was `step`."""
        if isinstance(step, Final):
            return cls("completed", turns, stop_reason=step.stop_reason, output=step.output,
                       usage=usage)
        if isinstance(step, AwaitInput):
            return cls("requires_action", turns, usage=usage, awaiting=step)
        if isinstance(step, Parked):
            return cls("paused", turns, usage=usage)
        return cls("failed", turns, error={"code": step.code, "detail": step.detail},
                   usage=usage)


class LoopFailed(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def to_openai(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message in the Chat Completions request shape."""
    out: dict[str, Any] = {"role": message["role"], "content": message.get("content")}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    if message.get("name") and message["role"] != "tool":
        out["name"] = message["name"]
    return out


class AgentLoop:
    """Runs turns against `provider`, reporting through `ports`."""

    def __init__(self, config: LoopConfig, provider: Provider, ports: LoopPorts) -> None:
        self.config = config
        self.provider = provider
        self.ports = ports
        self.turns = 0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                      "llm_calls": 0}
        self.output: str | None = None
        """The last assistant text so far."""
        self.history: list[dict[str, Any]] = []
        """The conversation in the request shape, without the instructions."""

    # the driver

    async def run(
        self, history: list[dict[str, Any]], should_stop: Callable[[], bool] = _never,
    ) -> Stop:
        """Take steps from `history` (stored messages, oldest first) until one is not
        `Continue`, and return it.

        `should_stop` is asked between steps; when it says so, this raises
        `asyncio.CancelledError` as if the task had been cancelled.
        """
        self.history = [to_openai(m) for m in history]
        return await self._drive(should_stop)

    async def resume(
        self, awaited: AwaitInput, results: Mapping[str, ToolResult] | None = None,
        approvals: Mapping[str, Approval] | None = None, *,
        history: list[dict[str, Any]] | None = None,
        should_stop: Callable[[], bool] = _never,
    ) -> Stop:
        """Close the turn `awaited` and drive on: with `results` (by tool call id) for
        `submit_tool_outputs`, with `approvals` for `approve_tool_calls` (approved calls run
        then, denied ones get an error result; the turn may then wait for client outputs).

        `history` is needed by a loop other than the one that returned `awaited` (after a
        restart: the stored messages, the awaited calls' assistant message included).
        Raises `ValueError`, storing nothing, when an answer is missing.
        """
        answers: Mapping[str, object] = (results if awaited.kind == "submit_tool_outputs"
                                         else approvals) or {}
        missing = [call.id for call in awaited.tool_calls if call.id not in answers]
        if missing:
            raise ValueError(f"no answer for tool calls {', '.join(missing)}")
        if history is not None:
            self.history = [to_openai(m) for m in history]
        self.turns = max(self.turns, awaited.turn)
        turn = awaited.turn
        if awaited.kind == "submit_tool_outputs":
            assert results is not None
            for call in awaited.tool_calls:
                message = await complete_call(self.ports, turn, call, results[call.id])
                self.history.append(to_openai(message))
        else:
            assert approvals is not None
            approved: list[ToolCallOut] = []
            for call in awaited.tool_calls:
                decision = approvals[call.id]
                if decision.approve:
                    approved.append(replace(call, arguments=decision.arguments)
                                    if decision.arguments is not None else call)
                    continue
                denial = ToolDenial(decision.reason or "not approved", by="approval")
                self.history.append(to_openai(await deny_call(self.ports, turn, call, denial)))
            waiting = await self._run_calls(turn, approved, decide=False,
                                            deferred=awaited.deferred)
            if waiting is not None:
                return waiting
        if turn > 0:
            await self.ports.sink.emit("turn.completed", {"turn": turn})
        return await self._drive(should_stop)

    async def _drive(self, should_stop: Callable[[], bool]) -> Stop:
        while True:
            if should_stop():
                raise asyncio.CancelledError("the run was asked to stop")
            if await self.ports.hooks.should_park():
                return Parked(self.turns)
            await self._take_input()
            compacted = await self.ports.hooks.compact(self.history)
            if compacted is not None:
                self.history = compacted
            step = await self.step()
            if isinstance(step, Final) and step.stop_reason == "end_turn" and (
                    await self._take_input()):
                continue  # input came with the final answer: one more turn
            if not isinstance(step, Continue):
                return step

    async def _take_input(self) -> bool:
        """Deliver steering input at a turn boundary; whether there was any."""
        messages = await self.ports.hooks.take_input()
        self.history.extend(to_openai(m) for m in messages)
        return bool(messages)

    # one step

    async def step(self) -> Step:
        """One turn: the model's answer, then its tool calls."""
        if self.turns >= self.config.run.max_turns:
            return Final("max_turns", self.output)
        self.turns += 1
        turn = self.turns
        await self.ports.sink.emit("turn.started", {"turn": turn})
        try:
            completion, stop_reason = await self._answer(turn)
        except LoopFailed as failure:
            return Failed(failure.code, failure.detail)
        if completion.text is not None:
            self.output = completion.text
        if completion.tool_calls:
            waiting = await self._run_calls(turn, completion.tool_calls)
            if waiting is not None:
                return waiting
        await self.ports.sink.emit("turn.completed", {"turn": turn})
        if stop_reason is None:
            return Continue(turn)
        return Final(stop_reason, self.output)

    async def run_tool_calls(self, turn: int, calls: list[ToolCallOut]) -> AwaitInput | None:
        """Run tool calls outside a step (turn 0: calls left open by an earlier run); what
        the turn then waits for, if anything."""
        return await self._run_calls(turn, calls)

    async def _run_calls(
        self, turn: int, calls: Sequence[ToolCallOut], *, decide: bool = True,
        deferred: tuple[ToolCallOut, ...] = (),
    ) -> AwaitInput | None:
        """Run a turn's calls; the `AwaitInput` of the calls left open, if any."""
        outcome = await run_tool_calls(self.ports, turn, calls,
                                       max_parallel=self.config.run.max_parallel,
                                       timeout_s=self.config.tool_timeout_s, decide=decide)
        self.history.extend(to_openai(m) for m in outcome.messages)
        client = (*deferred, *outcome.client)
        if outcome.asks:
            return AwaitInput("approve_tool_calls", tuple(outcome.asks), turn, deferred=client)
        if client:
            return AwaitInput("submit_tool_outputs", client, turn)
        return None

    async def _answer(self, turn: int) -> tuple[Completion, str | None]:
        """One turn's answer, with up to two "continue" nudges after a `length` finish.

        Returns the completion and the stop reason when the run should end after this turn.
        """
        nudges = 0
        extra: list[dict[str, Any]] = []
        while True:
            completion = await self._call(turn, self.history + extra)
            message: dict[str, Any] = {"role": "assistant", "content": completion.text}
            if completion.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}}
                    for c in completion.tool_calls
                ]
            self._count_usage(completion.usage)  # stored with the message
            stored = await self.ports.history.append_messages([message])
            self.history.append(message)
            await self.ports.sink.emit("message.completed", {
                "turn": turn, "message": stored[0], "finish_reason": completion.finish_reason})
            usage = completion.usage
            await self.ports.sink.emit("usage", {
                "turn": turn, "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens})
            if completion.tool_calls:
                return completion, None
            if completion.finish_reason != "length":
                return completion, "end_turn"
            if nudges == MAX_NUDGES:
                return completion, "max_tokens"
            nudges += 1
            extra = [NUDGE]

    def _count_usage(self, usage: Usage) -> None:
        self.usage["prompt_tokens"] += usage.prompt_tokens
        self.usage["completion_tokens"] += usage.completion_tokens
        self.usage["total_tokens"] += usage.total_tokens
        self.ports.history.add_usage(usage)

    def _request(self, messages: list[dict[str, Any]], call_index: int) -> LLMRequest:
        run = self.config.run
        system = [{"role": "system", "content": run.instructions}] if run.instructions else []
        return LLMRequest(
            model=self.config.model, messages=system + messages,
            tools=self.ports.tools.definitions(), sampling=run.sampling_options,
            provider_options=run.provider_options, call_index=call_index,
        )

    async def _call(self, turn: int, messages: list[dict[str, Any]]) -> Completion:
        """One LLM call, retried on transient errors with an `llm.retry` event each time."""
        attempts = self.config.max_attempts
        hooks = self.ports.hooks
        for attempt in range(1, attempts + 1):
            self.usage["llm_calls"] += 1
            request = self._request(messages, self.ports.history.next_call_index())
            await hooks.on_llm_start(turn, request)
            started = time.monotonic()
            try:
                completion = await self._stream(turn, request)
            except ProviderError as error:
                await hooks.on_llm_end(turn, request, error, time.monotonic() - started)
                if not error.retryable or attempt == attempts:
                    prefix = f"after {attempt} attempts: " if error.retryable else ""
                    raise LoopFailed("provider_error", prefix + error.message) from error
                wait_s = self._backoff(attempt, error.retry_after_s)
                await self.ports.sink.emit("llm.retry", {
                    "attempt": attempt, "max_attempts": attempts, "error": error.message,
                    "wait_ms": round(wait_s * 1000)})
                await asyncio.sleep(wait_s)
                continue
            await hooks.on_llm_end(turn, request, completion, time.monotonic() - started)
            return completion
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.config.retry_max_s)
        base = self.config.retry_base_s * 2 ** (attempt - 1)
        return min(base * (0.5 + random.random()), self.config.retry_max_s)

    async def _stream(self, turn: int, request: LLMRequest) -> Completion:
        emit = self.ports.sink.emit
        async with contextlib.aclosing(self.provider.stream(request)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, TextDelta):
                    if chunk.text:
                        await emit("message.delta", {"turn": turn, "text": chunk.text})
                elif isinstance(chunk, ReasoningDelta):
                    if chunk.text:
                        await emit("reasoning.delta", {"turn": turn, "text": chunk.text})
                elif isinstance(chunk, Completion):
                    return chunk
        raise ProviderError("the provider stream ended without a completion", retryable=True)
