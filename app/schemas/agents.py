"""Agents (§2): a named, versioned configuration."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from app.schemas.common import (
    DEPTH_RULE,
    Metadata,
    Name,
    Omittable,
    Page,
    RequestModel,
    ResponseModel,
    Timestamp,
)
from app.schemas.tools import ToolPolicy, ToolSpec, check_unique_tool_names

MODEL_REF_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}:\S.{0,254}$"
_MODEL_REF = re.compile(MODEL_REF_PATTERN)


def _check_model_ref(value: str) -> str:
    if not _MODEL_REF.fullmatch(value):
        raise PydanticCustomError(
            "model_ref", "expected provider:model, e.g. openai:gpt-4o-mini or scripted:demo")
    return value


ModelRef = Annotated[
    str,
    AfterValidator(_check_model_ref),
    WithJsonSchema({"type": "string", "pattern": MODEL_REF_PATTERN, "maxLength": 320}),
    Field(description="`provider:model`, split at the first colon", examples=["scripted:demo"]),
]
Instructions = Annotated[str, Field(max_length=256 * 1024, description="the system prompt")]
AgentDescription = Annotated[str, Field(max_length=4096)]


class Sampling(RequestModel):
    """Sampling parameters; `null` leaves a parameter to the provider's default."""

    temperature: float | None = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    seed: int | None = None
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, description="a stop sequence or up to 4 of them")

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: Any) -> Any:
        if isinstance(value, list) and not 1 <= len(value) <= 4:
            raise ValueError("give 1 to 4 stop sequences")
        return value


class Compaction(RequestModel):
    enabled: bool = True
    threshold_tokens: int = Field(default=24_000, ge=256, le=10_000_000)
    keep_last: int = Field(default=6, ge=0, le=10_000)


MaxTurns = Annotated[int, Field(ge=1, le=1000)]
TimeoutS = Annotated[int, Field(ge=1, le=86_400)]
Tools = Annotated[list[ToolSpec], Field(max_length=128)]
PROVIDER_OPTIONS: dict[str, Any] = {
    "type": "object", "title": "ProviderOptions", "additionalProperties": True}
"""Stands for `#/components/schemas/ProviderOptions`, which `app.openapi` adds."""
ProviderOptions = Annotated[
    dict[str, Any],
    WithJsonSchema(PROVIDER_OPTIONS),
    Field(description="options of the model's provider, e.g. the `scripted` provider's "
                      f"`script` ({DEPTH_RULE})"),
]
"""Free-form for validation (each provider reads its own); the document types the
`scripted` provider's options (see `app.openapi`)."""


class AgentSpec(RequestModel):
    """Every configurable field of an agent, with its default."""

    description: AgentDescription | None = None
    model: ModelRef
    instructions: Instructions | None = None
    tools: Tools = Field(default_factory=list)
    tool_policy: ToolPolicy = Field(default_factory=ToolPolicy)
    sampling: Sampling = Field(default_factory=Sampling)
    max_turns: MaxTurns = 16
    timeout_s: TimeoutS = 600
    compaction: Compaction = Field(default_factory=Compaction)
    provider_options: ProviderOptions = Field(default_factory=dict)
    metadata: Metadata = Field(default_factory=dict)

    _unique_tools = field_validator("tools")(check_unique_tool_names)


class AgentCreate(AgentSpec):
    name: Name


class AgentUpdate(RequestModel):
    """A partial update: a field present replaces the whole value.

    `null` clears `description` or `instructions`; every other field holds a value, so its
    `null` is a 422 (send `{}` to reset `tool_policy`, `metadata` or `provider_options`).
    """

    description: AgentDescription | None = Field(default=None, description="null clears it")
    model: Omittable[ModelRef] = None
    instructions: Instructions | None = Field(
        default=None, description="the system prompt; null clears it")
    tools: Omittable[Tools] = None
    tool_policy: Omittable[ToolPolicy] = None
    sampling: Omittable[Sampling] = None
    max_turns: Omittable[MaxTurns] = None
    timeout_s: Omittable[TimeoutS] = None
    compaction: Omittable[Compaction] = None
    provider_options: Omittable[ProviderOptions] = None
    metadata: Omittable[Metadata] = None

    _unique_tools = field_validator("tools")(
        lambda value: value if value is None else check_unique_tool_names(value)
    )


class Agent(ResponseModel):
    name: str
    description: str | None
    model: str
    instructions: str | None
    tools: list[ToolSpec]
    tool_policy: ToolPolicy
    sampling: Sampling
    max_turns: int
    timeout_s: int
    compaction: Compaction
    provider_options: ProviderOptions
    metadata: dict[str, Any]
    version: int
    owner: str
    created_at: Timestamp
    updated_at: Timestamp


class AgentPage(Page[Agent]):
    """A page of agents (or of an agent's versions)."""
