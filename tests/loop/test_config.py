"""A run's stored configuration, typed once, with the agent's defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.loop.config import RunConfig
from app.schemas.agents import AgentCreate, AgentSpec, Sampling
from app.schemas.tools import ToolPolicy


class TestRunConfig:
    def test_missing_fields_take_the_agent_defaults(self):
        config = RunConfig.parse({"model": "scripted:test"})
        spec = AgentSpec(model="scripted:test")

        assert config.max_turns == spec.max_turns
        assert config.timeout_s == spec.timeout_s
        assert config.max_parallel == ToolPolicy().max_parallel
        assert config.instructions is None and config.tools == []
        assert config.compaction == spec.compaction
        assert config.only_tools is None and config.allowed_hosts is None
        assert config.provider == "scripted"

    def test_a_stored_agent_config_with_overrides_parses(self):
        stored = AgentCreate(
            name="calc", model="local:llama3:8b", instructions="Be brief.",
            tools=[{"type": "builtin", "name": "calculator"}],
            tool_policy={"max_parallel": 3}, sampling={"temperature": 0.5, "seed": 7},
        ).model_dump(mode="json", exclude={"name"})
        stored |= {"max_turns": 4, "only_tools": ["calculator"], "allowed_hosts": []}

        config = RunConfig.parse(stored)

        assert config.provider == "local"
        assert (config.max_turns, config.max_parallel) == (4, 3)
        assert config.tools == [{"type": "builtin", "name": "calculator"}]
        assert config.only_tools == ["calculator"] and config.allowed_hosts == []
        assert config.sampling_options == {"temperature": 0.5, "seed": 7}

    def test_sampling_sends_only_the_values_set(self):
        stored = {"model": "scripted:test", "sampling": {"top_p": 0.9, "max_tokens": None}}
        assert RunConfig.parse(stored).sampling_options == {"top_p": 0.9}
        everything = Sampling().model_dump(mode="json")
        assert RunConfig.parse({"model": "scripted:test", "sampling": everything}
                               ).sampling_options == {"temperature": everything["temperature"]}

    @pytest.mark.parametrize("field", ["max_turns", "timeout_s", "sampling", "model"])
    def test_null_where_a_value_is_required_is_refused(self, field: str):
        with pytest.raises(ValidationError):
            RunConfig.parse({"model": "scripted:test", field: None})

    def test_the_config_is_frozen(self):
        config = RunConfig.parse({"model": "scripted:test"})
        with pytest.raises(ValidationError):
            config.max_turns = 3  # type: ignore[misc]
