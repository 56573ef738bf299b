"""Stand-ins for tools the server does not run itself, or does not run yet.

Each implements the Tool protocol, so a real implementation (HTTP, MCP, subagent) replaces
its stub in `app.tools.runner` without the runner changing.
"""

from __future__ import annotations

from typing import Any

from app.tools.base import ToolContext, ToolResult

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
AGENT_TOOL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "the task for the subagent"}},
    "required": ["input"],
    "additionalProperties": False,
}


class ClientSideTool:
    """A tool the API client runs: the loop stops in `requires_action` instead of calling it."""

    def __init__(self, name: str, description: str, parameters: dict[str, Any]) -> None:
        self.name = name
        self.description = description
        self.parameters = parameters

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """Never meant to be called here; says so instead of pretending to run."""
        return ToolResult(
            f"tool {self.name!r} runs on the client; its output must be submitted by the client",
            is_error=True)


class UnavailableTool:
    """A tool the model may see but that this version cannot run (e.g. `http`, `agent`)."""

    def __init__(
        self, name: str, description: str, parameters: dict[str, Any], reason: str,
    ) -> None:
        self.name = name
        self.description = description
        self.parameters = parameters
        self.reason = reason

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """Always an error result that gives the reason."""
        return ToolResult(self.reason, is_error=True)
