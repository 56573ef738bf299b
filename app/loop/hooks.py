"""Lifecycle hooks: called around each LLM call and tool call; the defaults do nothing.

Subclass `LifecycleHooks` and override what you need (metrics, policy, approvals, pre/post
tool hooks). A hook that raises fails the run, like any other error of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.providers.base import Completion, LLMRequest, ProviderError, ToolCallOut
from app.tools.base import ToolResult


@dataclass(frozen=True)
class ToolDenial:
    """`before_tool_call`'s answer for a call that must not run: the model gets an error
    result and clients a `tool.denied` event."""

    reason: str
    by: Literal["policy", "hook", "approval", "rate_limit"] = "hook"


@dataclass(frozen=True)
class NeedsApproval:
    """`before_tool_call`'s answer for a call a person must approve first: the turn then
    waits (`AwaitInput` of kind `approve_tool_calls`)."""

    reason: str | None = None
    call: ToolCallOut | None = None
    """The call as it is to be approved, when a hook changed its arguments."""


ToolDecision = ToolCallOut | ToolDenial | NeedsApproval


class LifecycleHooks:
    """No-op hooks: the loop's default."""

    async def on_llm_start(self, turn: int, request: LLMRequest) -> None:
        """Before each attempt of an LLM call."""

    async def on_llm_end(self, turn: int, request: LLMRequest,
                         result: Completion | ProviderError, seconds: float) -> None:
        """After each attempt that answered or failed with a provider error."""

    async def before_tool_call(self, turn: int, call: ToolCallOut) -> ToolDecision:
        """Decide on a call before it runs: return it (possibly with other arguments, same
        id) to run it, a `ToolDenial`, or `NeedsApproval`."""
        return call

    async def should_park(self) -> bool:
        """At a turn boundary, before steering input is taken: whether the run parks here
        (the runtime pauses)."""
        return False

    async def compact(self, history: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """At a turn boundary, after steering input: the history (request shape) to go on
        with when the session's history was compacted; None to keep `history`."""
        return None

    async def take_input(self) -> list[dict[str, Any]]:
        """At a turn boundary: steering input to deliver now, as stored messages (the
        caller has stored them and recorded `run.input`)."""
        return []

    async def on_tool_start(self, turn: int, call: ToolCallOut) -> None:
        """After `tool.started`, just before the tool runs."""

    async def after_tool_call(self, turn: int, call: ToolCallOut,
                              result: ToolResult) -> ToolResult:
        """The result to store for a call that ran (it may replace the tool's)."""
        return result

    async def on_tool_end(self, turn: int, call: ToolCallOut, result: ToolResult,
                          seconds: float) -> None:
        """After the tool returned, before its result is stored."""
