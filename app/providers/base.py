"""The provider protocol: one streamed chat completion per call, no retries of its own."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class ToolDef:
    """A function the model may call."""

    name: str
    description: str | None
    parameters: dict[str, Any]


@dataclass
class LLMRequest:
    """One chat completion request, already in the OpenAI message shape."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[ToolDef] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    provider_options: dict[str, Any] = field(default_factory=dict)
    call_index: int = 0
    """The session's LLM call counter (every attempt counts); the scripted provider uses it."""
    purpose: Literal["turn", "summary"] = "turn"
    """`summary`: the call summarises a session's older messages (compaction), not a turn;
    the scripted provider answers it from `provider_options.summary`."""


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallOut:
    id: str
    name: str
    arguments: str
    """The arguments as the model wrote them: JSON text, possibly invalid."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """The assembled answer; always the last item of a stream."""

    text: str | None
    tool_calls: list[ToolCallOut]
    finish_reason: str
    reasoning: str | None = None
    usage: Usage = Usage()


Chunk = TextDelta | ReasoningDelta | Completion


class ProviderError(Exception):
    """A failed call. `retryable` errors (429, 5xx, timeouts, broken streams) are retried."""

    def __init__(
        self, message: str, *, retryable: bool, status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s


class Provider(Protocol):
    """Streams one completion: deltas as they come, then exactly one `Completion`.

    Raises `ProviderError` on failure; never retries by itself.
    """

    def stream(self, request: LLMRequest) -> AsyncGenerator[Chunk, None]: ...
