"""Resolve `provider:model` references to providers (§8), and probe providers' health."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from typing import Any
from urllib.parse import urlsplit

import openai

from app.clock import rfc3339, utcnow
from app.config import DEFAULT_OPENAI_BASE_URL, Settings
from app.providers.base import Provider, ProviderError
from app.providers.openai_compat import OpenAIProvider
from app.providers.scripted import ScriptedProvider

SCRIPTED = "scripted"
OPENAI = "openai"
PROBE_TTL_S = 30.0
PROBE_TIMEOUT_S = 5.0


def split_model_ref(model_ref: str) -> tuple[str, str]:
    """Split `provider:model` at the first colon (`local:llama3:8b` → `local`, `llama3:8b`)."""
    name, colon, model = model_ref.partition(":")
    if not colon or not name or not model:
        raise ProviderError(
            f"model {model_ref!r} is not of the form `provider:model`", retryable=False)
    return name, model


def missing_api_key(settings: Settings, name: str) -> str | None:
    """The setting to set before models of provider `name` can be called, or None.

    `openai` needs `OPENAI_API_KEY`, and a `LOOMD_PROVIDERS` entry with `api_key_env` the
    variable it names. A provider whose base URL is on loopback needs none (a local server
    rarely checks keys), nor does an entry without `api_key_env`, nor `scripted`.
    """
    configured = settings.providers.get(name)
    if configured is not None:
        if configured.api_key_env is None or os.environ.get(configured.api_key_env):
            return None
        setting, base_url = configured.api_key_env, configured.base_url
    elif name == OPENAI:
        if settings.openai_api_key is not None:
            return None
        setting, base_url = "OPENAI_API_KEY", settings.openai_base_url
    else:
        return None
    return None if _on_loopback(base_url) else setting


def _on_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe_status(exc: Exception) -> str:
    """The probe status a failed `GET /models` stands for."""
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return "unauthorized"
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return "unreachable"
    return "unknown"


class ProviderRegistry:
    """One provider object per configured name, made on first use and shared afterwards."""

    def __init__(self, settings: Settings, probe_timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._settings = settings
        self._probe_timeout_s = probe_timeout_s
        self._scripted = ScriptedProvider()
        self._openai_compatible: dict[str, OpenAIProvider] = {}
        self._probes: dict[str, tuple[float, dict[str, Any]]] = {}

    def names(self) -> list[str]:
        """Every provider name a model reference may use."""
        return self._settings.provider_names()

    def get(self, model_ref: str) -> tuple[Provider, str]:
        """The provider and the provider's own model name for `provider:model`.

        Raises a non-retryable `ProviderError` for a malformed reference or an unknown provider.
        """
        name, model = split_model_ref(model_ref)
        if name == SCRIPTED:
            return self._scripted, model
        return self._openai_provider(name), model

    def _openai_provider(self, name: str) -> OpenAIProvider:
        provider = self._openai_compatible.get(name)
        if provider is not None:
            return provider
        settings = self._settings
        configured = settings.providers.get(name)
        if configured is not None:
            key = os.environ.get(configured.api_key_env) if configured.api_key_env else None
            base_url = configured.base_url
        elif name == OPENAI:
            key, base_url = settings.openai_api_key, settings.openai_base_url
        else:
            known = ", ".join(self.names())
            raise ProviderError(f"unknown provider {name!r} (known: {known})", retryable=False)
        provider = OpenAIProvider(
            base_url, key, connect_timeout_s=settings.llm_connect_timeout_s,
            read_timeout_s=settings.llm_read_timeout_s,
        )
        self._openai_compatible[name] = provider
        return provider

    def is_configured(self, name: str) -> bool:
        """Whether the operator set the provider up, so probing it was asked for.

        `scripted` and the `LOOMD_PROVIDERS` entries always are; `openai` only with
        `OPENAI_API_KEY` or a base URL other than the public endpoint, so a fresh install
        never reaches the internet on its own.
        """
        if name != OPENAI or name in self._settings.providers:
            return True
        settings = self._settings
        return (settings.openai_api_key is not None
                or settings.openai_base_url != DEFAULT_OPENAI_BASE_URL)

    async def probe(self, name: str, refresh: bool = False) -> dict[str, Any]:
        """Health of one provider via `GET {base_url}/models`, cached for 30 s.

        Returns `{"name", "kind", "base_url", "status", "models", "latency_ms", "checked_at"}`
        with status `ok`, `unreachable`, `unauthorized` or `unknown`; a provider that is not
        configured (see `is_configured`) is `unknown` without any request. Raises a
        non-retryable `ProviderError` for an unknown name.
        """
        cached = self._probes.get(name)
        if cached is not None and not refresh and time.monotonic() - cached[0] < PROBE_TTL_S:
            return dict(cached[1])
        result = await self._probe_now(name)
        self._probes[name] = (time.monotonic(), result)
        return dict(result)

    async def probe_all(self, refresh: bool = False) -> list[dict[str, Any]]:
        """`probe` of every known provider, concurrently, in name order."""
        return list(await asyncio.gather(*(self.probe(name, refresh) for name in self.names())))

    async def _probe_now(self, name: str) -> dict[str, Any]:
        if name == SCRIPTED:
            return {"name": name, "kind": "scripted", "base_url": None, "status": "ok",
                    "models": ["*"], "latency_ms": 0, "checked_at": rfc3339(utcnow())}
        provider = self._openai_provider(name)
        if not self.is_configured(name):
            return {"name": name, "kind": "openai-compatible", "base_url": provider.base_url,
                    "status": "unknown", "models": [], "latency_ms": 0,
                    "checked_at": rfc3339(utcnow())}
        started = time.monotonic()
        models: list[str] = []
        try:
            models = await provider.list_models(self._probe_timeout_s)
            status = "ok"
        except Exception as exc:
            status = probe_status(exc)
        return {
            "name": name, "kind": "openai-compatible", "base_url": provider.base_url,
            "status": status, "models": models,
            "latency_ms": round((time.monotonic() - started) * 1000),
            "checked_at": rfc3339(utcnow()),
        }

    async def aclose(self) -> None:
        """Close every SDK client the registry made."""
        providers = list(self._openai_compatible.values())
        self._openai_compatible.clear()
        for provider in providers:
            await provider.aclose()
