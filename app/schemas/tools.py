"""Tool specs (§7.1) and the tool policy (§7.3) of an agent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import AnyHttpUrl, Field, StringConstraints, field_validator, model_validator

from app.schemas.common import Name, RequestModel

BUILTIN_TOOLS = ("calculator", "current_time", "http_fetch", "sleep", "todo_write")

ToolName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$"),
    Field(description="the function name the model sees: letters, digits, `_`, `-` (1..64)"),
]
ToolGlob = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_*-]{1,64}$"),
    Field(description="a tool name, or a prefix ending in `*`"),
]
Description = Annotated[str, Field(max_length=4096)]


def _check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type", "object") != "object":
        raise ValueError("must be a JSON Schema of type `object`")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"is not a valid JSON Schema: {exc.message}") from exc
    return schema


Parameters = Annotated[
    dict[str, Any],
    Field(description="JSON Schema (type `object`) of the arguments",
          examples=[{"type": "object", "properties": {"q": {"type": "string"}}}]),
]


class BuiltinTool(RequestModel):
    type: Literal["builtin"]
    name: Literal["calculator", "current_time", "http_fetch", "sleep", "todo_write"]


class HttpTool(RequestModel):
    type: Literal["http"]
    name: ToolName
    description: Description | None = None
    parameters: Parameters = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: AnyHttpUrl
    timeout_ms: int = Field(default=10_000, ge=100, le=600_000)

    _schema = field_validator("parameters")(_check_json_schema)


class ClientTool(RequestModel):
    type: Literal["client"]
    name: ToolName
    description: Description | None = None
    parameters: Parameters = Field(default_factory=lambda: {"type": "object", "properties": {}})

    _schema = field_validator("parameters")(_check_json_schema)


class McpTool(RequestModel):
    type: Literal["mcp"]
    server_url: AnyHttpUrl
    allowed_tools: list[ToolName] | None = Field(
        default=None, description="offer only these of the server's tools; null = all")
    headers: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=32)
    timeout_ms: int = Field(default=60_000, ge=100, le=600_000)


class AgentTool(RequestModel):
    type: Literal["agent"]
    name: ToolName
    agent: Name = Field(description="the agent (of the same owner) that runs as a subagent")
    description: Description | None = None


ToolSpec = Annotated[
    BuiltinTool | HttpTool | ClientTool | McpTool | AgentTool,
    Field(discriminator="type"),
]


def tool_names(tools: list[Any]) -> list[str]:
    """The names the model sees (MCP tools are named by their server, so not known here)."""
    return [tool.name for tool in tools if not isinstance(tool, McpTool)]


class RateLimit(RequestModel):
    per_minute: int = Field(ge=1, le=100_000)


class PolicyRule(RequestModel):
    tool: ToolGlob
    argument: Annotated[str, Field(min_length=1, max_length=128)]
    equals: Any
    action: Literal["deny", "require_approval"]
    reason: Annotated[str, Field(max_length=1024)] | None = None


class ToolPolicy(RequestModel):
    allow: list[ToolGlob] = Field(default_factory=lambda: ["*"], max_length=256)
    deny: list[ToolGlob] = Field(default_factory=list, max_length=256)
    require_approval: list[ToolGlob] = Field(default_factory=list, max_length=256)
    rate_limits: dict[ToolName, RateLimit] = Field(default_factory=dict, max_length=256)
    max_parallel: int = Field(default=8, ge=1, le=64)
    rules: list[PolicyRule] = Field(default_factory=list, max_length=256)
    approval_default: Literal["deny", "approve"] = "deny"


def check_unique_tool_names(tools: list[Any]) -> list[Any]:
    """Two tools with one name would be ambiguous to the model."""
    seen: set[str] = set()
    for index, name in enumerate(tool_names(tools)):
        if name in seen:
            raise ValueError(f"tool name {name!r} is used twice (tools[{index}])")
        seen.add(name)
    return tools


class ScriptToolCall(RequestModel):
    name: ToolName
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptError(RequestModel):
    status: int = Field(ge=400, le=599)
    message: str = "scripted error"


class ScriptStep(RequestModel):
    """One answer of the `scripted` provider (§8)."""

    text: str | None = None
    tool_calls: list[ScriptToolCall] | None = None
    reasoning: str | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None
    error: ScriptError | None = None
    delay_ms: int | None = Field(default=None, ge=0, le=600_000)

    @model_validator(mode="after")
    def _not_empty(self) -> ScriptStep:
        if self.error is None and self.text is None and not self.tool_calls:
            raise ValueError("a step needs `text`, `tool_calls` or `error`")
        return self


class ScriptSummary(RequestModel):
    """The `scripted` provider's answer to summary calls (compaction, §10); they take no
    step of the script. Without `text` or `error` it answers a deterministic summary."""

    text: str | None = Field(default=None, description="the summary (an empty one fails)")
    error: ScriptError | None = None
    delay_ms: int | None = Field(default=None, ge=0, le=600_000)


class ScriptedOptions(RequestModel):
    """`provider_options` of a `scripted:*` model."""

    script: list[ScriptStep] = Field(default_factory=list, max_length=10_000)
    chunk_delay_ms: int = Field(default=0, ge=0, le=60_000)
    summary: ScriptSummary | None = None
