"""Lifecycle hooks: called around each LLM call and tool call; the defaults do nothing.

Subclass `LifecycleHooks` and override what you need (metrics, policy, approvals, pre/post
tool hooks). A hook that raises fails the run, like any other error of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.providers.base import Completion, LLMRequest, ProviderError, ToolCallOut
from app.tools.base import ToolResult


@dataclass(frozen=True)
class ToolDenial:
    """`before_tool_call`'s answer for a call that must not run: the model gets an error
    result and clients a `tool.denied` event."""

    reason: str
    by: Literal["policy", "hook", "approval", "rate_limit"] = "hook"


class LifecycleHooks:
    """No-op hooks: the loop's default."""

    async def on_llm_start(self, turn: int, request: LLMRequest) -> None:
        """Before each attempt of an LLM call."""

    async def on_llm_end(self, turn: int, request: LLMRequest,
                         result: Completion | ProviderError, seconds: float) -> None:
        """After each attempt that answered or failed with a provider error."""

    async def before_tool_call(self, turn: int, call: ToolCallOut) -> ToolCallOut | ToolDenial:
        """Decide on a call before it runs: return it (possibly with other arguments, same
        id) to run it, or a `ToolDenial`."""
        return call

    async def on_tool_start(self, turn: int, call: ToolCallOut) -> None:
        """After `tool.started`, just before the tool runs."""

    async def on_tool_end(self, turn: int, call: ToolCallOut, result: ToolResult,
                          seconds: float) -> None:
        """After the tool returned, before its result is stored."""
