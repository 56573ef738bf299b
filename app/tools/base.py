"""The tool protocol: a named function with a JSON Schema, called with parsed arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.tools.net import HostPolicy


@dataclass(frozen=True)
class ToolResult:
    output: str
    is_error: bool = False


@dataclass
class ToolContext:
    """What a tool may know about the call it serves."""

    run_id: str
    session_id: str
    owner: str
    tool_call_id: str
    state: dict[str, Any] = field(default_factory=dict)
    """Per-session state a tool may read and replace (e.g. `todos`); persisted by the caller."""
    hosts: HostPolicy | None = None
    """Where the run's tools may connect (`overrides.allowed_hosts` within the operator's
    `LOOMD_ALLOWED_HOSTS`, and the private-address guard); None: nowhere."""


class Tool(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult: ...
