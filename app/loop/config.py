"""A run's configuration, parsed once: the agent's fields with the run's overrides applied.

The defaults are those of `AgentSpec`, so a field missing from a stored configuration means
what it means for an agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.agents import (
    AgentSpec,
    Compaction,
    Instructions,
    MaxTurns,
    ModelRef,
    Sampling,
    TimeoutS,
)
from app.schemas.tools import ToolPolicy

MAX_RETRY_WAIT_S = 30.0


def _agent_default(field: str) -> Any:
    return AgentSpec.model_fields[field].get_default(call_default_factory=True)


class RunConfig(BaseModel):
    """The stored `config` of a run, typed. Unknown keys (`description`, `metadata`) are
    ignored; a value that breaks its field's rule raises `pydantic.ValidationError`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: ModelRef
    instructions: Instructions | None = _agent_default("instructions")
    sampling: Sampling = Field(default_factory=lambda: _agent_default("sampling"))
    provider_options: dict[str, Any] = Field(
        default_factory=lambda: _agent_default("provider_options"))
    max_turns: MaxTurns = _agent_default("max_turns")
    timeout_s: TimeoutS = _agent_default("timeout_s")
    tools: list[dict[str, Any]] = Field(default_factory=lambda: _agent_default("tools"))
    """The tool specs as stored; `ToolRunner.from_specs` checks them."""
    tool_policy: ToolPolicy = Field(default_factory=lambda: _agent_default("tool_policy"))
    compaction: Compaction = Field(default_factory=lambda: _agent_default("compaction"))
    only_tools: list[str] | None = None
    """`overrides.tools`: the names of the agent's tools this run may use."""
    allowed_hosts: list[str] | None = None
    """`overrides.allowed_hosts`; None leaves the operator's list."""

    @classmethod
    def parse(cls, stored: Mapping[str, Any]) -> RunConfig:
        """Type a run's stored `config` dict."""
        return cls.model_validate(stored)

    @property
    def provider(self) -> str:
        """The provider part of `model` (before the first colon)."""
        return self.model.split(":", 1)[0]

    @property
    def max_parallel(self) -> int:
        """How many tool calls of one turn may run at once."""
        return self.tool_policy.max_parallel

    @property
    def sampling_options(self) -> dict[str, Any]:
        """The sampling parameters set for the run, for the provider request."""
        return self.sampling.model_dump(exclude_unset=True, exclude_none=True)


@dataclass(frozen=True)
class LoopConfig:
    """What one loop runs with: the run's configuration and the service's limits."""

    run: RunConfig
    model: str
    """The model name at the provider (`model` without the provider part)."""
    tool_timeout_s: float
    max_attempts: int
    """LLM call attempts per turn (the first one and its retries)."""
    retry_base_s: float
    retry_max_s: float = MAX_RETRY_WAIT_S
