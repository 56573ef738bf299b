"""HTTP tools and `http_fetch` in runs, through the public API, against receivers on
loopback: signatures checked with `standardwebhooks`, and the network guard end to end."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from tests.conftest import make_settings
from tests.runs.helpers import Api, assert_problem, calls, of_type, step
from tests.tools.receivers import Receiver, Reply, answer, redirect, tool_endpoint

FETCH = {"type": "builtin", "name": "http_fetch"}


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Of the private addresses, only 127.0.0.1 may be reached (127.0.0.2 may not)."""
    return make_settings(database_url, llm_retry_base_s=0.01, allow_private_urls="127.0.0.1")


def tool_results(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


async def secret_of(api: Api) -> str:
    response = await api.client.post("/v1/tool-secret")
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


def lookup_tool(url: str) -> dict[str, Any]:
    return {"type": "http", "name": "lookup_order", "url": url, "timeout_ms": 5000,
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}},
                           "required": ["id"]}}


class TestHttpTools:
    async def test_a_signed_call_reaches_the_receiver_and_its_answer_the_model(
        self, alice: Api,
    ):
        secret = await secret_of(alice)
        reply = tool_endpoint(secret, lambda payload: Reply.json(
            {"output": f"order {payload['arguments']['id']} shipped"}))
        async with Receiver(reply) as receiver:
            await alice.agent("shop", [calls(("lookup_order", {"id": "o-7"})), step("ok")],
                              tools=[lookup_tool(receiver.url("/orders"))])
            session_id = await alice.session("shop")
            run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        assert tool_results(await alice.messages(session_id)) == ["order o-7 shipped"]
        (request,) = receiver.requests
        payload = request.json()
        assert payload["run_id"] == run["id"] and payload["session_id"] == session_id
        assert payload["arguments"] == {"id": "o-7"}
        started = of_type(await alice.events(run["id"]), "tool.started")[0]["data"]
        assert payload["tool_call_id"] == started["tool_call_id"]

    async def test_a_rotated_secret_signs_the_next_calls(self, alice: Api):
        old = await secret_of(alice)
        new = await secret_of(alice)
        assert old != new
        async with Receiver(tool_endpoint(new, lambda _p: Reply.text("fresh"))) as receiver:
            await alice.agent("shop", [calls(("lookup_order", {"id": "1"})), step("ok")],
                              tools=[lookup_tool(receiver.url())])
            session_id = await alice.session("shop")
            await alice.wait((await alice.start(session_id))["id"])
        assert tool_results(await alice.messages(session_id)) == ["fresh"]

    async def test_without_a_secret_nothing_is_sent(self, alice: Api):
        async with Receiver(answer(Reply.text("never"))) as receiver:
            await alice.agent("shop", [calls(("lookup_order", {"id": "1"})), step("ok")],
                              tools=[lookup_tool(receiver.url())])
            session_id = await alice.session("shop")
            await alice.wait((await alice.start(session_id))["id"])
        (result,) = tool_results(await alice.messages(session_id))
        assert "/v1/tool-secret" in result
        assert receiver.requests == []

    async def test_a_failing_receiver_is_an_error_result(self, alice: Api):
        await secret_of(alice)
        async with Receiver(answer(Reply.text("down", status=503))) as receiver:
            await alice.agent("shop", [calls(("lookup_order", {"id": "1"})), step("ok")],
                              tools=[lookup_tool(receiver.url())])
            session_id = await alice.session("shop")
            run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        completed = of_type(await alice.events(run["id"]), "tool.completed")[0]["data"]
        assert completed["is_error"] and "503" in completed["output"]

    async def test_a_private_tool_url_is_refused_when_the_agent_is_saved(self, alice: Api):
        response = await alice.client.post("/v1/agents", json={
            "name": "shop", "model": "scripted:test",
            "tools": [lookup_tool("http://127.0.0.2:9/orders")]})
        assert_problem(response, 422, "validation_error")


class TestTheGuard:
    """With only 127.0.0.1 allowed, a receiver on 127.0.0.2 is never reached."""

    fetches = 0

    async def fetch(self, alice: Api, url: str, **run: Any) -> tuple[str, dict[str, Any]]:
        self.fetches += 1
        name = f"fetcher{self.fetches}"
        await alice.agent(name, [calls(("http_fetch", {"url": url})), step("ok")],
                          tools=[FETCH])
        session_id = await alice.session(name)
        ended = await alice.wait((await alice.start(session_id, **run))["id"])
        assert ended["status"] == "completed"
        (result,) = tool_results(await alice.messages(session_id))
        completed = of_type(await alice.events(ended["id"]), "tool.completed")[0]["data"]
        return result, completed

    async def test_an_allowed_receiver_is_fetched(self, alice: Api):
        async with Receiver(answer(Reply.text("hello from loopback"))) as allowed:
            result, completed = await self.fetch(alice, allowed.url("/page"))
        assert "hello from loopback" in result and not completed["is_error"]

    async def test_a_forbidden_receiver_addressed_directly_is_never_reached(self, alice: Api):
        async with Receiver(answer(Reply.text("secret")), host="127.0.0.2") as forbidden:
            result, completed = await self.fetch(alice, forbidden.url("/x"))
        assert completed["is_error"] and "127.0.0.2" in result
        assert forbidden.connections == 0

    async def test_a_redirect_to_a_forbidden_receiver_is_not_followed(self, alice: Api):
        async with (Receiver(answer(Reply.text("secret")), host="127.0.0.2") as forbidden,
                    Receiver(redirect(forbidden.url("/x"))) as allowed):
            result, completed = await self.fetch(alice, allowed.url("/go"))
        assert completed["is_error"] and "127.0.0.2" in result
        assert len(allowed.requests) == 1
        assert forbidden.connections == 0

    async def test_allowed_hosts_narrow_the_run(self, alice: Api):
        async with Receiver(answer(Reply.text("hi"))) as allowed:
            result, completed = await self.fetch(alice, allowed.url(),
                                                 overrides={"allowed_hosts": ["example.com"]})
            assert completed["is_error"] and "example.com" in result
            result, completed = await self.fetch(alice, allowed.url(),
                                                 overrides={"allowed_hosts": []})
            assert completed["is_error"] and "network" in result
        assert allowed.connections == 0
