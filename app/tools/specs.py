"""A tool spec (§7.1) as the tool it stands for (MCP servers list theirs: `app.tools.mcp`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter

from app.schemas.tools import AgentTool, BuiltinTool, ClientTool, HttpTool, McpTool, ToolSpec
from app.tools.agent_tool import SubagentTool, Subruns
from app.tools.base import Tool
from app.tools.builtins import BUILTINS
from app.tools.client_tool import ClientSideTool
from app.tools.http_tool import http_tool

_SPEC = TypeAdapter[Any](ToolSpec)

Spec = BuiltinTool | HttpTool | ClientTool | McpTool | AgentTool


def parse_spec(raw: Mapping[str, Any]) -> Spec:
    """A stored spec, typed; raises `ValueError` (pydantic's) when it is malformed."""
    spec: Spec = _SPEC.validate_python(raw)
    return spec


def tool_of(spec: BuiltinTool | HttpTool | ClientTool | AgentTool, *,
            secret: str | None = None, subruns: Subruns | None = None) -> Tool:
    """The tool of `spec`. An `http` tool signs with `secret` (without one, each call is an
    error result saying so); an `agent` tool starts its subruns with `subruns`."""
    if isinstance(spec, BuiltinTool):
        return BUILTINS[spec.name]()
    if isinstance(spec, ClientTool):
        return ClientSideTool(spec.name, spec.description or "", spec.parameters)
    if isinstance(spec, HttpTool):
        return http_tool(spec, secret)
    return SubagentTool(spec, subruns)
