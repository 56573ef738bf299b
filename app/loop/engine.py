"""The agent loop: LLM call → tool calls → LLM call … until the model answers.

Pure orchestration: it talks to a provider, a tool runner and a host (events, messages,
counters) through protocols, and imports neither FastAPI nor SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.providers.base import (
    Completion,
    LLMRequest,
    Provider,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    ToolDef,
    Usage,
)
from app.tools.base import ToolContext, ToolResult

MAX_NUDGES = 2
NUDGE = {"role": "user", "content": "Continue exactly where you stopped."}


class LoopHost(Protocol):
    """What the loop needs from the run that hosts it."""

    async def emit(self, type_: str, data: dict[str, Any]) -> None: ...

    async def append_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def next_call_index(self) -> int: ...

    def add_usage(self, usage: Usage) -> None: ...

    def tool_context(self, tool_call_id: str) -> ToolContext: ...

    def observe_llm_call(self, seconds: float, outcome: str) -> None: ...

    def observe_tool_call(self, name: str, seconds: float, is_error: bool) -> None: ...


class Tools(Protocol):
    def definitions(self) -> list[ToolDef]: ...

    async def run(
        self, name: str, arguments_json: str, context: ToolContext, timeout_s: float = 60
    ) -> ToolResult: ...


@dataclass
class LoopConfig:
    model: str
    instructions: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    provider_options: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 16
    max_parallel: int = 8
    tool_timeout_s: float = 60
    max_attempts: int = 4
    retry_base_s: float = 0.5
    retry_max_s: float = 30


@dataclass
class Outcome:
    """How the loop ended (cancellation and timeouts are the host's to report)."""

    status: str
    turns: int
    stop_reason: str | None = None
    output: str | None = None
    error: dict[str, str] | None = None
    usage: dict[str, int] = field(default_factory=dict)


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


def tool_message(call_id: str, name: str, result: ToolResult) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": result.output}


class AgentLoop:
    """Runs turns against `provider` with `tools`, reporting through `host`."""

    def __init__(self, config: LoopConfig, provider: Provider, tools: Tools, host: LoopHost):
        self.config = config
        self.provider = provider
        self.tools = tools
        self.host = host
        self.turns = 0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                      "llm_calls": 0}

    async def run(self, history: list[dict[str, Any]]) -> Outcome:
        """Drive the loop from `history` (stored messages, oldest first)."""
        history = [to_openai(m) for m in history]
        last_text: str | None = None
        try:
            while True:
                if self.turns >= self.config.max_turns:
                    return self._done("max_turns", last_text)
                self.turns += 1
                turn = self.turns
                await self.host.emit("turn.started", {"turn": turn})
                completion, stop = await self._answer(turn, history)
                last_text = completion.text if completion.text is not None else last_text
                if completion.tool_calls:
                    await self._run_tools(turn, completion, history)
                await self.host.emit("turn.completed", {"turn": turn})
                if stop is not None:
                    return self._done(stop, last_text)
        except LoopFailed as failure:
            return Outcome("failed", self.turns, error={"code": failure.code,
                                                        "detail": failure.detail},
                           usage=self.usage)

    def _done(self, stop_reason: str, output: str | None) -> Outcome:
        return Outcome("completed", self.turns, stop_reason=stop_reason, output=output,
                       usage=self.usage)

    async def _answer(
        self, turn: int, history: list[dict[str, Any]]
    ) -> tuple[Completion, str | None]:
        """One turn's answer, with up to two "continue" nudges after a `length` finish.

        Returns the completion and the stop reason when the run should end after this turn.
        """
        nudges = 0
        extra: list[dict[str, Any]] = []
        while True:
            completion = await self._call(turn, history + extra)
            message: dict[str, Any] = {"role": "assistant", "content": completion.text}
            if completion.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}}
                    for c in completion.tool_calls
                ]
            self._count_usage(completion.usage)  # stored with the message
            stored = await self.host.append_messages([message])
            history.append(message)
            await self.host.emit("message.completed", {
                "turn": turn, "message": stored[0], "finish_reason": completion.finish_reason})
            usage = completion.usage
            await self.host.emit("usage", {
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
        self.host.add_usage(usage)

    def _request(self, messages: list[dict[str, Any]], call_index: int) -> LLMRequest:
        system = ([{"role": "system", "content": self.config.instructions}]
                  if self.config.instructions else [])
        return LLMRequest(
            model=self.config.model, messages=system + messages,
            tools=self.tools.definitions(), sampling=self.config.sampling,
            provider_options=self.config.provider_options, call_index=call_index,
        )

    async def _call(self, turn: int, messages: list[dict[str, Any]]) -> Completion:
        """One LLM call, retried on transient errors with an `llm.retry` event each time."""
        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            self.usage["llm_calls"] += 1
            request = self._request(messages, self.host.next_call_index())
            started = time.monotonic()
            try:
                completion = await self._stream(turn, request)
                self.host.observe_llm_call(time.monotonic() - started, "ok")
                return completion
            except ProviderError as error:
                self.host.observe_llm_call(time.monotonic() - started, "error")
                if not error.retryable or attempt == attempts:
                    prefix = f"after {attempt} attempts: " if error.retryable else ""
                    raise LoopFailed("provider_error", prefix + error.message) from error
                wait_s = self._backoff(attempt, error.retry_after_s)
                await self.host.emit("llm.retry", {
                    "attempt": attempt, "max_attempts": attempts, "error": error.message,
                    "wait_ms": round(wait_s * 1000)})
                await asyncio.sleep(wait_s)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.config.retry_max_s)
        base = self.config.retry_base_s * 2 ** (attempt - 1)
        return min(base * (0.5 + random.random()), self.config.retry_max_s)

    async def _stream(self, turn: int, request: LLMRequest) -> Completion:
        async with contextlib.aclosing(self.provider.stream(request)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, TextDelta):
                    if chunk.text:
                        await self.host.emit("message.delta", {"turn": turn, "text": chunk.text})
                elif isinstance(chunk, ReasoningDelta):
                    if chunk.text:
                        await self.host.emit("reasoning.delta",
                                             {"turn": turn, "text": chunk.text})
                elif isinstance(chunk, Completion):
                    return chunk
        raise ProviderError("the provider stream ended without a completion", retryable=True)

    async def _run_tools(
        self, turn: int, completion: Completion, history: list[dict[str, Any]]
    ) -> None:
        """Run the turn's tool calls concurrently (bounded); results go to the history."""
        semaphore = asyncio.Semaphore(self.config.max_parallel)
        calls = completion.tool_calls

        async def one(index: int) -> dict[str, Any]:
            call = calls[index]
            async with semaphore:
                return await run_tool_call(self.host, self.tools, turn, call.id, call.name,
                                           call.arguments, self.config.tool_timeout_s)

        messages = await asyncio.gather(*(one(i) for i in range(len(calls))))
        history.extend(to_openai(m) for m in messages)


async def run_tool_call(
    host: LoopHost, tools: Tools, turn: int, call_id: str, name: str, arguments: str,
    timeout_s: float,
) -> dict[str, Any]:
    """Run one tool call with its events; the result message is stored as soon as it exists."""
    await host.emit("tool.started", {"turn": turn, "tool_call_id": call_id, "name": name,
                                     "arguments": _parsed(arguments)})
    started = time.monotonic()
    result = await tools.run(name, arguments, host.tool_context(call_id), timeout_s)
    host.observe_tool_call(name, time.monotonic() - started, result.is_error)
    message = tool_message(call_id, name, result)
    await host.append_messages([message])
    await host.emit("tool.completed", {
        "turn": turn, "tool_call_id": call_id, "name": name, "output": result.output,
        "is_error": result.is_error, "duration_ms": round((time.monotonic() - started) * 1000)})
    return message


def _parsed(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
