"""`client` tools (§7.1): the API client runs them; the run waits for their outputs."""

from __future__ import annotations

from typing import Any

from app.tools.base import ToolContext, ToolResult


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
