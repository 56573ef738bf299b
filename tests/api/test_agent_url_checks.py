"""Tool URLs are resolved before an agent is locked, so a slow DNS answer stalls no writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from app.services import agents as agent_service
from tests.conftest import Users

HTTP_TOOL = {"type": "http", "name": "lookup", "url": "https://tools.example/lookup"}


class SlowResolver:
    """Stands in for `check_public_url`: every call waits until `release()`."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._released = asyncio.Event()

    async def __call__(self, url: str, allowed: object = None) -> None:
        self.entered.set()
        await self._released.wait()

    def release(self) -> None:
        self._released.set()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowResolver]:
    slow = SlowResolver()
    monkeypatch.setattr(agent_service, "check_public_url", slow)
    yield slow
    slow.release()


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_other_writes_go_on_while_a_tool_url_resolves(
    users: Users, resolver: SlowResolver, method: str,
):
    alice = await users.client("alice")
    created = await alice.post("/v1/agents", json={"name": "support", "model": "scripted:x"})
    assert created.status_code == 201, created.text
    if method == "POST":
        slow = asyncio.create_task(alice.post("/v1/agents", json={
            "name": "fetcher", "model": "scripted:x", "tools": [HTTP_TOOL]}))
    else:
        slow = asyncio.create_task(alice.patch("/v1/agents/support", json={"tools": [HTTP_TOOL]}))
    await asyncio.wait_for(resolver.entered.wait(), 5)

    # The same agent, and another table: neither waits for the resolving request.
    described = await asyncio.wait_for(
        alice.patch("/v1/agents/support", json={"description": "meanwhile"}), 5)
    session = await asyncio.wait_for(
        alice.post("/v1/sessions", json={"agent": "support"}), 5)

    assert described.status_code == 200, described.text
    assert session.status_code == 201, session.text
    assert not slow.done()
    resolver.release()
    finished = await asyncio.wait_for(slow, 5)
    assert finished.status_code in (200, 201), finished.text
    assert finished.json()["tools"][0]["url"] == HTTP_TOOL["url"]
    assert (await alice.get("/v1/agents/support")).json()["description"] == "meanwhile"
