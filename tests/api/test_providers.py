"""`GET /v1/providers` probes only the providers the operator configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from app.config import Settings
from app.main import create_app
from app.providers.openai_compat import OpenAIProvider
from tests.conftest import ADMIN_TOKEN, client_for, lifespan_of, make_settings
from tests.problems import assert_problem


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The base URL of every `GET /models` the service tries; none leaves the machine."""
    made: list[str] = []

    async def recorded(self: OpenAIProvider, timeout_s: float) -> list[str]:
        made.append(self.base_url)
        raise openai.APIConnectionError(request=httpx.Request("GET", f"{self.base_url}/models"))

    monkeypatch.setattr(OpenAIProvider, "list_models", recorded)
    return made


@pytest.fixture
def fresh_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """No `OPENAI_*` variables, as on a machine where nobody set the provider up."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@asynccontextmanager
async def admin_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(settings)
    async with lifespan_of(application), client_for(application, ADMIN_TOKEN) as client:
        yield client


async def providers(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/v1/providers", params={"refresh": "true"})
    assert response.status_code == 200, response.text
    return {item["name"]: item for item in response.json()["items"]}


async def test_a_fresh_install_reaches_no_provider(
    database_url: str, fresh_install: None, probes: list[str],
):
    async with admin_for(make_settings(database_url)) as admin:
        listed = await providers(admin)
    assert probes == []
    openai = listed["openai"]
    assert openai["status"] == "unknown"
    assert openai["models"] == [] and openai["latency_ms"] == 0
    assert openai["base_url"] == "https://api.openai.com/v1"
    assert listed["scripted"]["status"] == "ok"


@pytest.mark.parametrize(("variable", "value"), [
    ("OPENAI_API_KEY", "sk-test"), ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")])
async def test_openai_is_probed_once_configured(
    database_url: str, fresh_install: None, probes: list[str], variable: str, value: str,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv(variable, value)
    async with admin_for(make_settings(database_url)) as admin:
        listed = await providers(admin)
    assert len(probes) == 1
    assert listed["openai"]["base_url"] == probes[0]
    assert listed["openai"]["status"] == "unreachable"


async def test_named_providers_are_always_probed(
    database_url: str, fresh_install: None, probes: list[str],
):
    base_url = "http://127.0.0.1:9/v1"
    settings = make_settings(database_url, providers={"local": {"base_url": base_url}})
    async with admin_for(settings) as admin:
        listed = await providers(admin)
    assert probes == [base_url]
    assert listed["local"]["status"] == "unreachable"
    assert listed["openai"]["status"] == "unknown"


async def test_a_nul_in_the_query_is_a_documented_bad_request(admin: httpx.AsyncClient):
    response = await admin.get("/v1/providers", params={"refresh": "\x00"})
    assert_problem(response, 400, "bad_request")
    document = (await admin.get("/openapi.json")).json()
    assert "400" in document["paths"]["/v1/providers"]["get"]["responses"]
