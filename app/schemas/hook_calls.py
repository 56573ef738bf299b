"""The requests loomd sends to hooks (§6) and the answers a gating hook may give; declared
under `webhooks` in the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.events import Event


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class HookToolCall(_Body):
    id: str
    name: str
    arguments: Any = Field(description="the call's arguments (as the model wrote them)")


class PreToolRequest(_Body):
    """Sent before a matching tool call runs. Answer 204 (or 200 `{"decision": "allow"}`)
    to let it run."""

    type: Literal["pre_tool"]
    hook_id: str
    run_id: str
    session_id: str
    agent: str
    owner: str
    turn: int
    tool_call: HookToolCall


class HookToolResult(_Body):
    output: str
    is_error: bool


class PostToolRequest(PreToolRequest):
    """Sent after a matching tool call ran, before its result is stored."""

    type: Literal["post_tool"]  # type: ignore[assignment]
    result: HookToolResult


class EventDelivery(_Body):
    """One event of a run (or a `run.state` change), delivered at least once; dedupe on
    the `webhook-id` header."""

    type: Literal["event"]
    hook_id: str
    event: Event | dict[str, Any] = Field(
        description="an Event, or `{type: \"run.state\", run_id, session_id, agent, status, "
        "stop_reason, ts}`")


class Ping(_Body):
    """Sent by `POST /v1/hooks/{hook_id}/test`."""

    type: Literal["ping"]
    hook_id: str
    owner: str


class Allow(_Body):
    decision: Literal["allow"]


class Deny(_Body):
    decision: Literal["deny"]
    reason: str | None = None


class Modify(_Body):
    decision: Literal["modify"]
    arguments: dict[str, Any]


class Ask(_Body):
    decision: Literal["ask"]


PreToolAnswer = Annotated[Allow | Deny | Modify | Ask, Field(discriminator="decision")]


class ModifyOutput(_Body):
    decision: Literal["modify"]
    output: str


PostToolAnswer = Annotated[Allow | ModifyOutput, Field(discriminator="decision")]
