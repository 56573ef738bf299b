"""Resolving `provider:model` references, and probing providers with `GET /models`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.config import Settings
from app.providers.base import ProviderError
from app.providers.openai_compat import PLACEHOLDER_API_KEY, OpenAIProvider
from app.providers.registry import ProviderRegistry, split_model_ref
from app.providers.scripted import ScriptedProvider
from tests.providers.mock_servers import MockServer, free_port, llmock_script

MakeRegistry = Callable[..., ProviderRegistry]


@pytest.fixture
async def make_registry() -> AsyncIterator[MakeRegistry]:
    """Registries over explicit settings (no `.env`), closed after the test."""
    made: list[ProviderRegistry] = []

    def make(providers: dict[str, Any] | None = None, **fields: Any) -> ProviderRegistry:
        settings = Settings(_env_file=None, providers=providers or {}, **fields)  # type: ignore[call-arg]
        registry = ProviderRegistry(settings, probe_timeout_s=1.0)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.aclose()


def test_split_at_the_first_colon() -> None:
    assert split_model_ref("local:llama3:8b") == ("local", "llama3:8b")
    assert split_model_ref("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    for malformed in ("no-colon", ":model", "provider:"):
        with pytest.raises(ProviderError) as caught:
            split_model_ref(malformed)
        assert caught.value.retryable is False


def test_named_providers_resolve_with_their_base_url_and_key(
    make_registry: MakeRegistry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_KEY", "secret-local")
    registry = make_registry(
        {"local": {"base_url": "http://127.0.0.1:1/v1", "api_key_env": "LOCAL_KEY"}},
        llm_connect_timeout_s=3, llm_read_timeout_s=7,
    )

    provider, model = registry.get("local:llama3:8b")
    assert model == "llama3:8b"
    assert isinstance(provider, OpenAIProvider)
    assert provider.base_url == "http://127.0.0.1:1/v1"
    assert provider.client.api_key == "secret-local"
    assert provider.client.timeout.connect == 3  # type: ignore[union-attr]
    assert provider.client.timeout.read == 7  # type: ignore[union-attr]
    assert provider.client.max_retries == 0
    assert registry.get("local:other")[0] is provider


def test_openai_reads_the_sdk_environment_variables(
    make_registry: MakeRegistry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    provider, model = make_registry().get("openai:gpt-4o-mini")
    assert model == "gpt-4o-mini"
    assert isinstance(provider, OpenAIProvider)
    assert provider.base_url == "http://127.0.0.1:9/v1"
    assert provider.client.api_key == "sk-test"


def test_openai_without_a_key_still_resolves(
    make_registry: MakeRegistry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    provider, _ = make_registry().get("openai:gpt-4o")
    assert isinstance(provider, OpenAIProvider)
    assert provider.base_url == "https://api.openai.com/v1"
    assert provider.client.api_key == PLACEHOLDER_API_KEY


def test_scripted_is_one_shared_provider(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    first, model = registry.get("scripted:demo")
    second, _ = registry.get("scripted:other:thing")
    assert isinstance(first, ScriptedProvider)
    assert first is second
    assert model == "demo"


def test_unknown_provider_is_a_permanent_error(make_registry: MakeRegistry) -> None:
    with pytest.raises(ProviderError) as caught:
        make_registry().get("nowhere:model")
    assert caught.value.retryable is False
    assert "nowhere" in caught.value.message


async def test_probe_lists_models(make_registry: MakeRegistry, chaos: MockServer) -> None:
    registry = make_registry({"mock": {"base_url": chaos.api_url}})
    probe = await registry.probe("mock")
    assert probe["name"] == "mock"
    assert probe["kind"] == "openai-compatible"
    assert probe["base_url"] == chaos.api_url
    assert probe["status"] == "ok"
    assert "gpt-4o-mini" in probe["models"]
    assert isinstance(probe["latency_ms"], int)
    assert probe["checked_at"].endswith("Z")


async def test_probe_is_cached_until_refreshed(
    make_registry: MakeRegistry, chaos: MockServer,
) -> None:
    registry = make_registry({"mock": {"base_url": chaos.api_url}})
    first = await registry.probe("mock")
    llmock_script(chaos, {"type": "fail", "status": 401})
    assert await registry.probe("mock") == first
    refreshed = await registry.probe("mock", refresh=True)
    assert refreshed["status"] == "unauthorized"
    assert refreshed["models"] == []


async def test_probe_of_a_server_without_a_models_listing_is_unknown(
    make_registry: MakeRegistry, fakellm: MockServer,
) -> None:
    # fakellm serves chat completions only: GET /v1/models is a 404.
    registry = make_registry({"fake": {"base_url": fakellm.api_url}})
    probe = await registry.probe("fake")
    assert probe["status"] == "unknown"
    assert probe["models"] == []


async def test_probe_of_a_closed_port_is_unreachable(make_registry: MakeRegistry) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    probe = await make_registry({"gone": {"base_url": base_url}}).probe("gone")
    assert probe["status"] == "unreachable"
    assert probe["base_url"] == base_url


async def test_probe_of_scripted_is_always_ok(make_registry: MakeRegistry) -> None:
    probe = await make_registry().probe("scripted")
    assert probe["kind"] == "scripted"
    assert probe["status"] == "ok"
    assert probe["models"] == ["*"]


async def test_probe_all_covers_every_provider_in_name_order(
    make_registry: MakeRegistry, chaos: MockServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", chaos.api_url)
    registry = make_registry({"mock": {"base_url": chaos.api_url}})
    probes = await registry.probe_all()
    assert [probe["name"] for probe in probes] == ["mock", "openai", "scripted"]
    assert {probe["status"] for probe in probes} == {"ok"}


async def test_probe_of_an_unknown_provider_raises(make_registry: MakeRegistry) -> None:
    with pytest.raises(ProviderError):
        await make_registry().probe("nowhere")
