"""`agent` tools (§7.1): the call's `input` is the task of a subrun of another agent."""

from __future__ import annotations

from typing import Any, Protocol

from app.schemas.tools import AgentTool
from app.tools.base import ToolContext, ToolResult

AGENT_TOOL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "the task for the subagent"}},
    "required": ["input"],
    "additionalProperties": False,
}


class Subruns(Protocol):
    """Runs subagents for one parent run (`app.runs.subruns.Subruns`)."""

    async def run(self, agent: str, task: str) -> ToolResult: ...


class SubagentTool:
    """An `agent` tool: its `input` is the task of a subrun of `spec.agent`."""

    def __init__(self, spec: AgentTool, subruns: Subruns | None = None) -> None:
        self.name = spec.name
        self.agent = spec.agent
        self.description = spec.description or f"Delegate a task to the agent {spec.agent!r}."
        self.parameters = AGENT_TOOL_PARAMETERS
        self.subruns = subruns

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        if self.subruns is None:
            return ToolResult(f"the subagent {self.agent!r} cannot run here", is_error=True)
        return await self.subruns.run(self.agent, arguments["input"])
