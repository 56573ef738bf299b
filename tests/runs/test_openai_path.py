"""Runs through the real `openai` SDK path, against independent OpenAI-compatible servers.

fakellm scripts the tool call and the answer; llmock injects the faults a provider shows in
production. Every run goes through loomd's public API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.conftest import client_for
from tests.providers.mock_servers import (
    MockServer,
    fakellm_reset,
    llmock_requests,
    llmock_reset,
    llmock_script,
    running,
    start_fakellm,
    start_llmock,
)
from tests.runs.conftest import running_app
from tests.runs.helpers import Api

CALCULATOR = [{"type": "builtin", "name": "calculator"}]
RULES = """\
version: 1
defaults: {fallback: deterministic_echo}
rules:
  - name: answer
    when: {tools_include: calculator, previous_message_role: assistant}
    respond: {content: "It is 5."}
  - name: call
    when: {tools_include: calculator}
    respond: {tool_calls: [{name: calculator, arguments: {expression: "2+3"}}]}
"""


@pytest.fixture(scope="module")
def fakellm_server() -> Iterator[MockServer]:
    with running(start_fakellm, RULES) as server:
        yield server


@pytest.fixture(scope="module")
def llmock_server() -> Iterator[MockServer]:
    with running(start_llmock) as server:
        yield server


async def _api(database_url: str, base_url: str, **settings: Any) -> AsyncIterator[Api]:
    async with running_app(database_url, allow_private_urls=True,
                           providers={"mock": {"base_url": base_url}},
                           llm_max_attempts=4, **settings) as app, \
            client_for(app, "test-admin-token") as client:
        yield Api(client)


@pytest.fixture
async def via_fakellm(database_url: str, fakellm_server: MockServer) -> AsyncIterator[Api]:
    fakellm_reset(fakellm_server)
    async for api in _api(database_url, fakellm_server.api_url):
        yield api


@pytest.fixture
async def via_llmock(database_url: str, llmock_server: MockServer) -> AsyncIterator[Api]:
    llmock_reset(llmock_server)
    async for api in _api(database_url, llmock_server.api_url, llm_read_timeout_s=1.0):
        yield api


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


class TestFakellmToolCall:
    async def test_calculator_call_then_answer_with_events_in_order(self, via_fakellm: Api):
        await via_fakellm.agent("calc", [], tools=CALCULATOR, model="mock:gpt-test")
        session_id = await via_fakellm.session("calc")
        run = await via_fakellm.wait((await via_fakellm.start(session_id, "2+3?"))["id"])

        assert run["status"] == "completed", run
        assert (run["output"], run["turns"], run["stop_reason"]) == ("It is 5.", 2, "end_turn")
        events = await via_fakellm.events(run["id"])
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        types = [t for t in _types(events) if t != "message.delta"]
        assert types == [
            "run.created", "run.started",
            "turn.started", "message.completed", "usage", "tool.started", "tool.completed",
            "turn.completed",
            "turn.started", "message.completed", "usage", "turn.completed",
            "run.completed",
        ]
        deltas = "".join(e["data"]["text"] for e in events if e["type"] == "message.delta")
        assert deltas == "It is 5."
        tool_done = next(e for e in events if e["type"] == "tool.completed")["data"]
        assert (tool_done["output"], tool_done["is_error"]) == ("5", False)

    async def test_session_history_is_in_openai_shape(self, via_fakellm: Api):
        await via_fakellm.agent("calc", [], tools=CALCULATOR, model="mock:gpt-test")
        session_id = await via_fakellm.session("calc")
        await via_fakellm.wait((await via_fakellm.start(session_id, "2+3?"))["id"])

        user, call, result, answer = await via_fakellm.messages(session_id)
        assert (user["role"], user["content"]) == ("user", "2+3?")
        assert call["role"] == "assistant"
        (tool_call,) = call["tool_calls"]
        assert tool_call["type"] == "function"
        assert tool_call["function"]["name"] == "calculator"
        assert '"expression"' in tool_call["function"]["arguments"]
        assert (result["role"], result["tool_call_id"], result["content"]) == (
            "tool", tool_call["id"], "5")
        assert (answer["role"], answer["content"], answer.get("tool_calls")) == (
            "assistant", "It is 5.", None)


class TestLlmockFaults:
    async def _run(self, api: Api, text: str = "hi") -> tuple[dict[str, Any], list[dict]]:
        await api.agent("chat", [], model="mock:gpt-test")
        session_id = await api.session("chat")
        run = await api.wait((await api.start(session_id, text))["id"], timeout_s=30)
        return run, await api.events(run["id"])

    async def test_429_then_success_is_retried_and_completes(
        self, via_llmock: Api, llmock_server: MockServer
    ):
        llmock_script(llmock_server, {"type": "fail", "status": 429, "retry_after": 0})
        run, events = await self._run(via_llmock)
        assert run["status"] == "completed", run
        retries = [e["data"] for e in events if e["type"] == "llm.retry"]
        assert len(retries) == 1 and retries[0]["attempt"] == 1
        assert "429" in retries[0]["error"] or "rate" in retries[0]["error"].lower()
        assert run["usage"]["llm_calls"] == 2

    async def test_repeated_500_fails_with_provider_error(
        self, via_llmock: Api, llmock_server: MockServer
    ):
        llmock_script(llmock_server, {"type": "fail", "status": 500, "times": None})
        run, events = await self._run(via_llmock)
        assert run["status"] == "failed"
        assert run["error"]["code"] == "provider_error"
        assert _types(events).count("llm.retry") == 3
        assert events[-1]["type"] == "run.failed"
        assert events[-1]["data"]["error"]["code"] == "provider_error"

    @pytest.mark.parametrize("kind", ["disconnect", "truncate", "malformed"])
    async def test_broken_streams_are_retried_without_corrupting_history(
        self, via_llmock: Api, llmock_server: MockServer, kind: str
    ):
        llmock_script(llmock_server, {"type": "stream_fault", "kind": kind, "after_chunks": 2})
        run, events = await self._run(via_llmock, "tell me something")
        assert run["status"] == "completed", run
        assert _types(events).count("llm.retry") == 1
        session_messages = await via_llmock.messages(run["session_id"])
        assert [m["role"] for m in session_messages] == ["user", "assistant"]
        assert session_messages[1]["content"] == run["output"]
        completed = [e for e in events if e["type"] == "message.completed"]
        assert len(completed) == 1

    async def test_read_timeout_is_retried(self, via_llmock: Api, llmock_server: MockServer):
        llmock_script(llmock_server, {"type": "delay", "seconds": 3})
        run, events = await self._run(via_llmock)
        assert run["status"] == "completed", run
        retry = next(e["data"] for e in events if e["type"] == "llm.retry")
        assert "time" in retry["error"].lower()
        assert len(llmock_requests(llmock_server)) >= 2

    @pytest.mark.parametrize("status", [401, 403])
    async def test_a_refused_key_fails_at_once_without_retries(
        self, via_llmock: Api, llmock_server: MockServer, status: int
    ):
        llmock_script(llmock_server, {"type": "fail", "status": status, "times": None})
        run, events = await self._run(via_llmock)
        assert run["status"] == "failed"
        assert run["error"]["code"] == "provider_error"
        assert str(status) in run["error"]["detail"]
        assert "llm.retry" not in _types(events)
        assert len(llmock_requests(llmock_server)) == 1

    async def test_a_400_fails_at_once_with_the_providers_message(
        self, via_llmock: Api, llmock_server: MockServer
    ):
        llmock_script(llmock_server, {"type": "fail", "status": 400})
        run, events = await self._run(via_llmock)
        assert run["status"] == "failed"
        assert run["error"]["code"] == "provider_error"
        assert "llm.retry" not in _types(events)
