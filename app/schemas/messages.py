"""Messages of a session, in the OpenAI Chat Completions shape."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.schemas.common import (
    JsonObject,
    RequestModel,
    ResponseModel,
    Timestamp,
    documented_as,
)
from app.schemas.tools import ToolName

ToolCallId = Annotated[str, Field(min_length=1, max_length=128)]
Role = Literal["system", "user", "assistant", "tool"]
MAX_TEXT = 1024 * 1024


class ContentPart(BaseModel):
    """An OpenAI-style content part, e.g. `{"type": "text", "text": "…"}`."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: Annotated[str, Field(max_length=MAX_TEXT)] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a `text` part needs `text`")
        extra = self.model_extra or {}
        if self.type == "image_url" and not isinstance(extra.get("image_url"), dict):
            raise ValueError("an `image_url` part needs an `image_url` object with `url`")
        return self


Content = Annotated[str, Field(max_length=MAX_TEXT)] | Annotated[
    list[ContentPart], Field(max_length=256)
]


class FunctionCallIn(RequestModel):
    name: ToolName
    arguments: Annotated[str, Field(max_length=MAX_TEXT, description="a JSON object, as text")]

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ValueError("must be a JSON object encoded as a string") from exc
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object encoded as a string")
        return value


class ToolCallIn(RequestModel):
    """A tool call of an imported assistant message."""

    id: ToolCallId
    type: Literal["function"] = "function"
    function: FunctionCallIn


class FunctionCall(ResponseModel):
    name: str
    arguments: str = Field(description="the arguments as the model gave them: JSON text")


class ToolCall(ResponseModel):
    """A tool call of an assistant message, in the OpenAI shape."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class MessageIn(RequestModel):
    """A message to import; tool messages must answer open tool calls."""

    role: Role
    content: Content | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(min_length=1, max_length=128)] | None = None
    tool_call_id: ToolCallId | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @model_validator(mode="after")
    def _role_rules(self) -> MessageIn:
        if self.role == "tool":
            if self.tool_call_id is None or self.content is None:
                raise ValueError("a tool message needs `tool_call_id` and `content`")
        elif self.tool_call_id is not None:
            raise ValueError("only tool messages carry `tool_call_id`")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry `tool_calls`")
        if self.role in ("user", "system") and self.content is None:
            raise ValueError(f"a {self.role} message needs `content`")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs `content` or `tool_calls`")
        return self


class MessagesAppend(RequestModel):
    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=1000)]


class Message(ResponseModel):
    seq: int
    role: Role
    content: str | list[Annotated[JsonObject, documented_as("ContentPart")]] | None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    run_id: str | None = None
    state: Literal["active", "compacted"]
    created_at: Timestamp
