"""Compaction (API.md §10): older messages folded into one summary message.

Manual (`POST /v1/sessions/{id}/compact`) and automatic (at a run's turn boundary, above the
agent's `threshold_tokens`), with the scripted provider's `summary` option, and through the
real `openai` SDK path against a loopback server that records what it is sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import ADMIN_TOKEN, client_for
from tests.runs.conftest import running_app
from tests.runs.helpers import (
    CALCULATOR,
    SLEEP,
    Api,
    assert_gapless,
    assert_problem,
    calls,
    of_type,
    step,
    types,
)
from tests.tools.receivers import Received, Receiver, Reply

PREFIX = "Summary of the earlier conversation:"
SUMMARY = "The user asked what 2+3 is: 5."


def tool_call(call_id: str, expression: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": "calculator", "arguments": json.dumps({"expression": expression})}}


CONVERSATION = [
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "tool_calls": [tool_call("c1", "2+3")]},
    {"role": "tool", "tool_call_id": "c1", "name": "calculator", "content": "5"},
    {"role": "assistant", "content": "It is 5."},
    {"role": "user", "content": "And 3+4?"},
    {"role": "assistant", "tool_calls": [tool_call("c2", "3+4")]},
    {"role": "tool", "tool_call_id": "c2", "name": "calculator", "content": "7"},
    {"role": "assistant", "content": "It is 7."},
]
"""Eight messages with two tool calls; `keep_last: 2` would cut between call c2 and its
result, so the kept tail starts at the call: five are folded, three kept."""


def estimate(messages: list[dict[str, Any]]) -> int:
    """The documented estimate: a token per four characters of text and tool calls."""
    chars = 0
    for message in messages:
        content = message.get("content")
        chars += len(content) if isinstance(content, str) else 0
        for call in message.get("tool_calls") or []:
            chars += len(call["function"]["name"]) + len(call["function"]["arguments"])
    return max(1, chars // 4)


def shape(message: dict[str, Any]) -> dict[str, Any]:
    """What a copy of a message keeps of it."""
    return {key: message.get(key) for key in ("role", "content", "tool_calls", "tool_call_id",
                                               "name", "run_id")}


async def agent_with(api: Api, name: str = "calc", *, keep_last: int = 2,
                     summary: dict[str, Any] | None = None,
                     script: list[dict[str, Any]] | None = None, **fields: Any) -> None:
    options = {"summary": summary} if summary is not None else {}
    await api.agent(name, script or [], [CALCULATOR], options=options,
                    compaction={"enabled": False, "threshold_tokens": 256,
                                "keep_last": keep_last}, **fields)


async def session_with(api: Api, messages: list[dict[str, Any]], agent: str = "calc") -> str:
    session_id = await api.session(agent)
    response = await api.client.post(f"/v1/sessions/{session_id}/messages",
                                     json={"messages": messages})
    assert response.status_code == 201, response.text
    return session_id


async def compact(api: Api, session_id: str, **body: Any) -> dict[str, Any]:
    response = await api.client.post(f"/v1/sessions/{session_id}/compact", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def every_message(api: Api, session_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/v1/sessions/{session_id}/messages",
                                    params={"include_compacted": "true", "limit": 200})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


@pytest.fixture
async def event_schema(alice: Api) -> Draft202012Validator:
    """A validator of the served document's `Event` union."""
    document = (await alice.client.get("/openapi.json")).json()
    registry: Registry[Any] = Registry().with_resource(
        "urn:loomd", Resource.from_contents(document, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": "urn:loomd#/components/schemas/Event"},
                                registry=registry)


class TestManualCompaction:
    async def test_a_cut_between_a_call_and_its_result_moves_to_the_call(self, alice: Api):
        await agent_with(alice, summary={"text": SUMMARY})
        session_id = await session_with(alice, CONVERSATION)
        before = await alice.messages(session_id)

        result = await compact(alice, session_id, reason="too long")

        folded, tail = before[:5], before[5:]
        summary = {"role": "system", "content": f"{PREFIX}\n{SUMMARY}"}
        assert result == {"compacted": True, "before_tokens": estimate(before),
                          "after_tokens": estimate([summary, *tail]), "folded_messages": 5}
        active = await alice.messages(session_id)
        assert [m["seq"] for m in active] == [9, 10, 11, 12]
        assert (active[0]["role"], active[0]["content"]) == ("system", summary["content"])
        assert active[0]["run_id"] is None
        assert [shape(m) for m in active[1:]] == [shape(m) for m in tail]
        assert active[1]["tool_calls"][0]["id"] == "c2"
        assert active[2]["tool_call_id"] == "c2"
        assert all(m["state"] == "active" for m in active)

        stored = await every_message(alice, session_id)
        assert [m["seq"] for m in stored] == list(range(1, 13))
        assert [m["state"] for m in stored[:8]] == ["compacted"] * 8
        assert [shape(m) for m in stored[:8]] == [shape(m) for m in folded + tail]
        session = await alice.get_session(session_id)
        assert (session["message_count"], session["status"]) == (12, "idle")

    async def test_the_default_summary_of_the_scripted_provider(self, alice: Api):
        await agent_with(alice, keep_last=4)
        session_id = await session_with(alice, CONVERSATION)
        result = await compact(alice, session_id)
        assert (result["compacted"], result["folded_messages"]) == (True, 4)
        summary = (await alice.messages(session_id))[0]
        assert summary["content"].startswith(f"{PREFIX}\nsummary: ")
        assert "What is 2+3?" in summary["content"]

    async def test_a_short_history_is_not_compacted(self, alice: Api):
        await agent_with(alice, keep_last=8, summary={"error": {"status": 500}})
        session_id = await session_with(alice, CONVERSATION)
        before = await every_message(alice, session_id)

        result = await compact(alice, session_id)

        tokens = estimate(before)
        assert result == {"compacted": False, "before_tokens": tokens, "after_tokens": tokens,
                          "folded_messages": 0}
        assert await every_message(alice, session_id) == before

    async def test_a_tool_call_waiting_for_its_result_stays_in_the_tail(self, alice: Api):
        await agent_with(alice, keep_last=0, summary={"text": SUMMARY})
        session_id = await session_with(alice, CONVERSATION[:2])
        assert (await alice.get_session(session_id))["status"] == "pending"

        result = await compact(alice, session_id)

        assert (result["compacted"], result["folded_messages"]) == (True, 1)
        summary, call = await alice.messages(session_id)
        assert summary["content"] == f"{PREFIX}\n{SUMMARY}"
        assert call["tool_calls"][0]["id"] == "c1"
        assert (await alice.get_session(session_id))["status"] == "pending"
        response = await alice.client.post(f"/v1/sessions/{session_id}/messages", json={
            "messages": [CONVERSATION[2]]})
        assert response.status_code == 201, response.text
        assert (await alice.get_session(session_id))["status"] == "idle"

    async def test_the_next_run_goes_on_from_the_summary_and_the_tail(self, alice: Api):
        # The summary call is the session's LLM call 0: the run's call is number 1.
        await agent_with(alice, summary={"text": SUMMARY},
                         script=[step("(not played)"), step("It is 11.")])
        session_id = await session_with(alice, CONVERSATION)
        await compact(alice, session_id)

        run = await alice.wait((await alice.start(session_id, "And 5+6?"))["id"])

        assert (run["status"], run["output"]) == ("completed", "It is 11.")
        sent = [{"role": "system", "content": f"{PREFIX}\n{SUMMARY}"}, *CONVERSATION[5:],
                {"role": "user", "content": "And 5+6?"}]
        (usage,) = of_type(await alice.events(run["id"]), "usage")
        assert usage["data"]["prompt_tokens"] == estimate(sent)
        assert [m["seq"] for m in await alice.messages(session_id)] == [9, 10, 11, 12, 13, 14]

    async def test_a_failed_summary_changes_nothing(self, alice: Api):
        await agent_with(alice, summary={"error": {"status": 500, "message": "summary outage"}})
        session_id = await session_with(alice, CONVERSATION)
        before = await every_message(alice, session_id)
        session = await alice.get_session(session_id)

        response = await alice.client.post(f"/v1/sessions/{session_id}/compact", json={})

        problem = assert_problem(response, 503, "unavailable")
        assert "summary outage" in problem["detail"]
        assert problem["reason"] == "summary_failed"
        assert await every_message(alice, session_id) == before
        assert await alice.get_session(session_id) == session

    async def test_an_empty_summary_changes_nothing(self, alice: Api):
        await agent_with(alice, summary={"text": "  "})
        session_id = await session_with(alice, CONVERSATION)
        before = await every_message(alice, session_id)
        response = await alice.client.post(f"/v1/sessions/{session_id}/compact")
        assert "empty" in assert_problem(response, 503, "unavailable")["detail"]
        assert await every_message(alice, session_id) == before

    async def test_compacting_while_a_run_is_unfinished_is_refused(self, alice: Api):
        await alice.agent("napper", [calls(("sleep", {"seconds": 30}))], [SLEEP])
        session_id = await alice.session("napper")
        run = await alice.start(session_id)
        await alice.until(run["id"], "tool.started")

        response = await alice.client.post(f"/v1/sessions/{session_id}/compact", json={})

        assert assert_problem(response, 409, "session_busy")["active_run_id"] == run["id"]
        await alice.cancel(run["id"], wait=True)
        assert all(m["state"] == "active" for m in await every_message(alice, session_id))

    async def test_someone_elses_or_an_unknown_session_is_not_found(self, alice: Api,
                                                                    bob: Api):
        await agent_with(alice, summary={"text": SUMMARY})
        session_id = await session_with(alice, CONVERSATION)
        assert_problem(await bob.client.post(f"/v1/sessions/{session_id}/compact", json={}),
                       404, "not_found")
        assert_problem(await alice.client.post("/v1/sessions/ses_nope/compact", json={}),
                       404, "not_found")
        assert all(m["state"] == "active" for m in await every_message(alice, session_id))

    @pytest.mark.parametrize("body", [{"reason": 5}, {"reason": "x" * 1025}, {"why": "x"}, []])
    async def test_a_bad_body_is_a_422(self, alice: Api, body: Any):
        await agent_with(alice, summary={"text": SUMMARY})
        session_id = await session_with(alice, CONVERSATION)
        response = await alice.client.post(f"/v1/sessions/{session_id}/compact", json=body)
        assert_problem(response, 422, "validation_error")

    async def test_a_session_whose_agent_was_deleted_is_a_conflict(self, alice: Api):
        await agent_with(alice, summary={"text": SUMMARY})
        session_id = await session_with(alice, CONVERSATION)
        assert (await alice.client.delete("/v1/agents/calc")).status_code == 204
        response = await alice.client.post(f"/v1/sessions/{session_id}/compact", json={})
        assert_problem(response, 409, "conflict")

    @pytest.mark.parametrize("summary", [{"text": 5}, {"txt": "x"}, {"error": {"status": 200}},
                                         {"delay_ms": -1}, "short"])
    async def test_a_bad_scripted_summary_option_is_a_422(self, alice: Api, summary: Any):
        response = await alice.client.post("/v1/agents", json={
            "name": "calc", "model": "scripted:test", "provider_options": {"summary": summary}})
        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"][0]["loc"][:3] == ["body", "provider_options", "summary"]


class TestAutomaticCompaction:
    LONG = "Tell me about " + "lorem ipsum " * 100
    """About 300 tokens: above the threshold of 256 on its own."""

    async def _agent(self, api: Api, summary: dict[str, Any], keep_last: int = 2) -> None:
        await api.agent("calc", [
            calls(("calculator", {"expression": "2+3"})),
            step("(not played: call 1 is the summary call)"),
            step("It is 5."),
        ], [CALCULATOR], options={"summary": summary},
            compaction={"enabled": True, "threshold_tokens": 256, "keep_last": keep_last})

    async def test_a_long_history_is_compacted_at_a_turn_boundary(
        self, alice: Api, event_schema: Draft202012Validator,
    ):
        await self._agent(alice, {"text": "The user asked about lorem ipsum."})
        session_id = await alice.session("calc")

        run = await alice.wait((await alice.start(session_id, self.LONG))["id"])

        assert (run["status"], run["output"]) == ("completed", "It is 5."), run
        assert run["usage"]["llm_calls"] == 3
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert [t for t in types(events) if t not in ("message.delta", "usage")] == [
            "run.created", "run.started",
            "turn.started", "message.completed", "tool.started", "tool.completed",
            "turn.completed",
            "compaction.completed",
            "turn.started", "message.completed", "turn.completed",
            "run.completed",
        ]
        (compacted,) = of_type(events, "compaction.completed")
        for problem in event_schema.iter_errors(compacted):
            raise AssertionError(problem.message)
        data = compacted["data"]
        assert (data["compacted"], data["folded_messages"]) == (True, 1)
        assert data["before_tokens"] > 256 > data["after_tokens"]
        assert data.get("error") is None
        first, second = of_type(events, "usage")
        assert first["data"]["prompt_tokens"] > 256 > second["data"]["prompt_tokens"]

        summary, call, result, answer = await alice.messages(session_id)
        assert summary["content"] == f"{PREFIX}\nThe user asked about lorem ipsum."
        assert summary["run_id"] == run["id"]
        assert (call["tool_calls"][0]["function"]["name"], result["content"]) == (
            "calculator", "5")
        assert answer["content"] == "It is 5."
        stored = await every_message(alice, session_id)
        assert [(m["seq"], m["state"]) for m in stored] == [
            (1, "compacted"), (2, "compacted"), (3, "compacted"),
            (4, "active"), (5, "active"), (6, "active"), (7, "active")]
        assert stored[0]["content"] == self.LONG

    async def test_a_failed_summary_leaves_the_history_and_the_run_goes_on(self, alice: Api):
        await self._agent(alice, {"error": {"status": 500, "message": "summary outage"}})
        session_id = await alice.session("calc")

        run = await alice.wait((await alice.start(session_id, self.LONG))["id"])

        assert (run["status"], run["output"]) == ("completed", "It is 5."), run
        events = await alice.events(run["id"])
        assert_gapless(events)
        (failed,) = of_type(events, "compaction.completed")
        data = failed["data"]
        assert (data["compacted"], data["folded_messages"]) == (False, 0)
        assert data["before_tokens"] == data["after_tokens"] > 256
        assert data["error"]["code"] == "provider_error"
        assert "summary outage" in data["error"]["detail"]
        stored = await every_message(alice, session_id)
        assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
        assert all(m["state"] == "active" for m in stored)

    async def test_nothing_to_fold_means_no_compaction(self, alice: Api):
        await self._agent(alice, {"text": "never"}, keep_last=10)
        session_id = await alice.session("calc")
        run = await alice.wait((await alice.start(session_id, self.LONG))["id"])
        assert run["status"] == "completed", run
        assert "compaction.completed" not in types(await alice.events(run["id"]))
        assert all(m["state"] == "active" for m in await every_message(alice, session_id))


class TestForkOfACompactedSession:
    @pytest.fixture
    async def compacted(self, alice: Api) -> str:
        await agent_with(alice, summary={"text": SUMMARY})
        session_id = await session_with(alice, CONVERSATION)
        await compact(alice, session_id)
        return session_id

    async def _fork(self, api: Api, session_id: str, **body: Any) -> dict[str, Any]:
        response = await api.client.post(f"/v1/sessions/{session_id}/fork", json=body)
        assert response.status_code == 201, response.text
        fork: dict[str, Any] = response.json()
        return fork

    async def test_the_fork_goes_on_from_the_summary_and_the_tail(self, alice: Api,
                                                                  compacted: str):
        fork = await self._fork(alice, compacted)
        assert fork["message_count"] == 12
        assert await alice.messages(fork["id"]) == await alice.messages(compacted)
        assert await every_message(alice, fork["id"]) == await every_message(alice, compacted)

    async def test_a_fork_before_the_compaction_has_its_messages_active(self, alice: Api,
                                                                        compacted: str):
        fork = await self._fork(alice, compacted, at_seq=5)
        active = await alice.messages(fork["id"])
        assert [shape(m) for m in active] == [shape(m) for m in
                                              (await every_message(alice, compacted))[:5]]
        assert [m["seq"] for m in active] == [1, 2, 3, 4, 5]
        assert fork["status"] == "idle"

    async def test_a_fork_inside_the_tail_keeps_the_summary(self, alice: Api, compacted: str):
        fork = await self._fork(alice, compacted, at_seq=10)
        summary, call = await alice.messages(fork["id"])
        assert summary["content"] == f"{PREFIX}\n{SUMMARY}"
        assert call["tool_calls"][0]["id"] == "c2"
        stored = await every_message(alice, fork["id"])
        assert [m["state"] for m in stored] == ["compacted"] * 8 + ["active"] * 2
        assert fork["status"] == "pending"  # the call's result came after seq 10


def openai_stream(text: str, prompt_tokens: int, completion_tokens: int) -> Reply:
    """A streamed Chat Completions answer with its usage chunk."""
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                      "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                  "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens}},
    ]
    body = "".join(
        "data: " + json.dumps({"id": "cmpl-1", "object": "chat.completion.chunk",
                               "created": 0, "model": "m", **chunk}) + "\n\n"
        for chunk in chunks) + "data: [DONE]\n\n"
    return Reply(200, body.encode(), {"Content-Type": "text/event-stream"})


class ChatServer:
    """A loopback Chat Completions server that records requests; it answers summary calls
    (no tools) with `SUMMARY` and others with "It is 11.", once `released` is set."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()
        self.released.set()
        self.receiver = Receiver(self.handle)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [request.json() for request in self.receiver.requests]

    async def handle(self, request: Received) -> Reply:
        self.arrived.set()
        await self.released.wait()
        if "tools" not in request.json():  # the agent has a tool: this is the summary call
            return openai_stream(SUMMARY, 40, 10)
        return openai_stream("It is 11.", 30, 5)


@pytest.fixture
async def chat_server() -> AsyncIterator[ChatServer]:
    server = ChatServer()
    async with server.receiver:
        yield server


@pytest.fixture
async def via_openai(database_url: str, chat_server: ChatServer) -> AsyncIterator[Api]:
    async with running_app(database_url, allow_private_urls=True,
                           providers={"mock": {"base_url": chat_server.receiver.url("/v1")}}
                           ) as app, client_for(app, ADMIN_TOKEN) as client:
        yield Api(client)


class TestThroughTheOpenAIPath:
    async def test_the_next_request_carries_the_summary_and_the_tail(
        self, via_openai: Api, chat_server: ChatServer,
    ):
        await agent_with(via_openai, model="mock:m", instructions="Be brief.")
        session_id = await session_with(via_openai, CONVERSATION)

        result = await compact(via_openai, session_id)
        run = await via_openai.wait((await via_openai.start(session_id, "And 5+6?"))["id"])

        assert result["folded_messages"] == 5
        assert (run["status"], run["output"]) == ("completed", "It is 11."), run
        summary_call, turn_call = chat_server.bodies
        assert "tools" not in summary_call
        assert [m["role"] for m in summary_call["messages"]] == ["system", "user"]
        transcript = summary_call["messages"][1]["content"]
        for text in ("What is 2+3?", "calculator", "It is 5.", "And 3+4?"):
            assert text in transcript
        assert "It is 7." not in transcript
        assert turn_call["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": f"{PREFIX}\n{SUMMARY}"},
            {"role": "assistant", "content": None, "tool_calls": [tool_call("c2", "3+4")]},
            {"role": "tool", "tool_call_id": "c2", "content": "7"},
            {"role": "assistant", "content": "It is 7."},
            {"role": "user", "content": "And 5+6?"},
        ]
        session = await via_openai.get_session(session_id)
        assert session["usage"] == {"prompt_tokens": 70, "completion_tokens": 15,
                                    "total_tokens": 85}

    async def test_a_session_changed_during_the_summary_call_is_not_compacted(
        self, via_openai: Api, chat_server: ChatServer,
    ):
        await agent_with(via_openai, model="mock:m")
        session_id = await session_with(via_openai, CONVERSATION)
        chat_server.released.clear()

        compaction = asyncio.create_task(
            via_openai.client.post(f"/v1/sessions/{session_id}/compact", json={}))
        await asyncio.wait_for(chat_server.arrived.wait(), timeout=10)
        response = await via_openai.client.post(f"/v1/sessions/{session_id}/messages", json={
            "messages": [{"role": "user", "content": "one more thing"}]})
        assert response.status_code == 201, response.text
        chat_server.released.set()

        assert_problem(await compaction, 409, "conflict")
        stored = await every_message(via_openai, session_id)
        assert len(stored) == 9 and all(m["state"] == "active" for m in stored)
