"""What one step of the loop (one turn: an LLM call and its tool calls) leads to.

A step returns one of these; the driver calls the next step on `Continue` and hands any
other one back to its caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.providers.base import ToolCallOut


@dataclass(frozen=True)
class Continue:
    """The turn ended with tool results the model has not seen yet: call it again."""

    turn: int


@dataclass(frozen=True)
class Final:
    """The run is done: the model answered, or a limit was reached."""

    stop_reason: str
    """`end_turn`, `max_turns` or `max_tokens`."""
    output: str | None
    """The last assistant text of the run, if any."""


@dataclass(frozen=True)
class AwaitInput:
    """The turn waits for the API client: outputs of client tools, or approvals.

    The turn is still open (no `turn.completed` yet); `AgentLoop.resume` closes it once
    the results are there.
    """

    kind: Literal["submit_tool_outputs", "approve_tool_calls"]
    tool_calls: tuple[ToolCallOut, ...]
    turn: int
    deferred: tuple[ToolCallOut, ...] = ()
    """While approvals are awaited: the turn's client-tool calls, asked for once the
    approvals are decided."""


@dataclass(frozen=True)
class Approval:
    """A person's decision on a call that waited for approval."""

    approve: bool
    reason: str | None = None
    arguments: str | None = None
    """Arguments (JSON text) replacing the model's, for an approved call."""


@dataclass(frozen=True)
class Failed:
    """The run cannot go on (e.g. the provider kept failing)."""

    code: str
    detail: str


@dataclass(frozen=True)
class Parked:
    """The runtime pauses: the run stops at this turn boundary, its history complete (no
    tool call open). `AgentLoop.run` on the stored history goes on from here."""

    turn: int
    """The last turn completed."""


Step = Continue | Final | AwaitInput | Failed | Parked
Stop = Final | AwaitInput | Failed | Parked
"""A step the driver returns to its caller."""
