"""A session's messages (API.md §3): importing them and reading them back in `seq` order."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, update

from app.clock import utcnow
from app.ids import new_id
from app.store.tables import Message, Run
from app.store.tables import Session as SessionRow
from tests.problems import assert_problem

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def call(call_id: str, name: str = "lookup", arguments: str = '{"q": "x"}') -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def asks(*call_ids: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [call(i) for i in call_ids]}


def answer(call_id: str, output: str = "result") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def error_locs(problem: dict[str, Any]) -> list[list[Any]]:
    return [error["loc"] for error in problem["errors"]]


@pytest.fixture
async def alice(users: Any) -> httpx.AsyncClient:
    client: httpx.AsyncClient = await users.client("alice")
    response = await client.post("/v1/agents", json={"name": "demo", "model": "scripted:demo"})
    assert response.status_code == 201, response.text
    return client


@pytest.fixture
async def session_id(alice: httpx.AsyncClient) -> str:
    response = await alice.post("/v1/sessions", json={"agent": "demo"})
    assert response.status_code == 201, response.text
    created: str = response.json()["id"]
    return created


async def post(client: httpx.AsyncClient, session_id: str, *messages: Any) -> httpx.Response:
    return await client.post(
        f"/v1/sessions/{session_id}/messages", json={"messages": list(messages)}
    )


async def append(client: httpx.AsyncClient, session_id: str, *messages: Any) -> dict[str, Any]:
    response = await post(client, session_id, *messages)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def listing(
    client: httpx.AsyncClient, session_id: str, **params: Any
) -> dict[str, Any]:
    response = await client.get(f"/v1/sessions/{session_id}/messages", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def seqs(client: httpx.AsyncClient, session_id: str, **params: Any) -> list[int]:
    return [m["seq"] for m in (await listing(client, session_id, **params))["items"]]


async def session_of(client: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def hold_with_a_run(app: FastAPI, session_id: str) -> str:
    """Give the session an unfinished run, as the run manager would."""
    now = utcnow()
    run = Run(id=new_id("run"), session_id=session_id, owner="alice", agent="demo",
              agent_version=1, status="running", usage={}, meta={}, request={}, config={},
              created_at=now, started_at=now)
    async with app.state.db.transaction() as db:
        db.add(run)
        session = await db.get(SessionRow, session_id)
        assert session is not None
        session.active_run_id = run.id
        session.status = "running"
        db.add(session)
    return run.id


async def compact(app: FastAPI, session_id: str, *seq: int) -> None:
    async with app.state.db.transaction() as db:
        await db.exec(
            update(Message)
            .where(col(Message.session_id) == session_id, col(Message.seq).in_(seq))
            .values(state="compacted")
        )


class TestAppendMessages:
    async def test_stores_the_messages_with_seq_from_one(self, alice, session_id):
        response = await post(alice, session_id, {"role": "system", "content": "be brief"},
                              user("hello"), {"role": "assistant", "content": "hi"})

        assert response.status_code == 201, response.text
        body = response.json()
        items = body["items"]
        assert [m["seq"] for m in items] == [1, 2, 3]
        assert [(m["role"], m["content"]) for m in items] == [
            ("system", "be brief"), ("user", "hello"), ("assistant", "hi")
        ]
        for message in items:
            assert message["state"] == "active"
            assert message["run_id"] is None
            assert RFC3339_MS.match(message["created_at"])
        assert body["session"]["id"] == session_id
        assert body["session"]["message_count"] == 3
        assert body["session"]["status"] == "idle"
        assert (await listing(alice, session_id))["items"] == items

    async def test_later_appends_continue_the_numbering(self, alice, session_id):
        await append(alice, session_id, user("one"), {"role": "assistant", "content": "1"})

        body = await append(alice, session_id, user("two"))

        assert [m["seq"] for m in body["items"]] == [3]
        assert body["session"]["message_count"] == 3
        assert (await session_of(alice, session_id))["message_count"] == 3
        assert await seqs(alice, session_id) == [1, 2, 3]

    async def test_openai_shaped_tool_calls_round_trip(self, alice, session_id):
        calls = [call("call_a", "get_weather", '{"city": "Paris", "days": [1, 2]}'),
                 call("call_b", "get-time", "{}")]
        message = {"role": "assistant", "content": "Let me check.", "tool_calls": calls}

        body = await append(alice, session_id, user("weather?"), message)

        assert body["items"][1]["tool_calls"] == calls
        assert body["items"][1]["content"] == "Let me check."
        stored = (await listing(alice, session_id))["items"][1]
        assert stored["tool_calls"] == calls
        assert stored["tool_call_id"] is None

    async def test_the_tool_call_type_defaults_to_function(self, alice, session_id):
        bare = {"id": "call_1", "function": {"name": "lookup", "arguments": "{}"}}

        body = await append(alice, session_id, user("q"),
                            {"role": "assistant", "tool_calls": [bare]})

        assert body["items"][1]["tool_calls"] == [{**bare, "type": "function"}]

    async def test_a_tool_message_answering_an_open_call_is_accepted(self, alice, session_id):
        await append(alice, session_id, user("q"), asks("call_1"))

        body = await append(alice, session_id,
                            {**answer("call_1", "42"), "name": "lookup"})

        [stored] = body["items"]
        assert (stored["role"], stored["tool_call_id"], stored["content"], stored["name"]) == (
            "tool", "call_1", "42", "lookup"
        )
        assert body["session"]["status"] == "idle"

    async def test_a_tool_message_with_an_unknown_tool_call_id_is_rejected(
        self, alice, session_id
    ):
        await append(alice, session_id, user("q"))

        response = await post(alice, session_id, asks("call_1"), answer("call_2"))

        problem = assert_problem(response, 422, "validation_error")
        assert error_locs(problem) == [["body", "messages", 1, "tool_call_id"]]
        assert await seqs(alice, session_id) == [1]
        assert (await session_of(alice, session_id))["message_count"] == 1

    async def test_a_tool_message_without_an_open_call_is_rejected(self, alice, session_id):
        await append(alice, session_id, user("q"), asks("call_1"), answer("call_1"))

        response = await post(alice, session_id, answer("call_1"))

        problem = assert_problem(response, 422, "validation_error")
        assert error_locs(problem) == [["body", "messages", 0, "tool_call_id"]]

    @pytest.mark.parametrize(
        "interruption",
        [user("never mind"), {"role": "system", "content": "x"},
         {"role": "assistant", "content": "moving on"}],
        ids=["user", "system", "assistant"],
    )
    async def test_a_message_while_tool_calls_are_open_is_rejected(
        self, alice, session_id, interruption
    ):
        await append(alice, session_id, user("q"), asks("call_1", "call_2"), answer("call_1"))

        response = await post(alice, session_id, interruption)

        problem = assert_problem(response, 422, "validation_error")
        assert error_locs(problem)[0][:3] == ["body", "messages", 0]
        assert await seqs(alice, session_id) == [1, 2, 3]
        assert (await session_of(alice, session_id))["status"] == "pending"

    async def test_unanswered_tool_calls_leave_the_session_pending(self, alice, session_id):
        asked = await append(alice, session_id, user("q"), asks("call_1", "call_2"))
        half = await append(alice, session_id, answer("call_2"))
        done = await append(alice, session_id, answer("call_1"),
                            {"role": "assistant", "content": "done"})

        assert asked["session"]["status"] == "pending"
        assert half["session"]["status"] == "pending"
        assert done["session"]["status"] == "idle"
        assert (await session_of(alice, session_id))["status"] == "idle"

    async def test_a_pending_session_reads_back_as_pending(self, alice, session_id):
        await append(alice, session_id, user("q"), asks("call_1"))

        assert (await session_of(alice, session_id))["status"] == "pending"

    async def test_calls_and_answers_in_one_request_are_accepted(self, alice, session_id):
        body = await append(alice, session_id, user("q"), asks("call_1"), answer("call_1"),
                            asks("call_2"), answer("call_2"),
                            {"role": "assistant", "content": "all done"})

        assert [m["seq"] for m in body["items"]] == [1, 2, 3, 4, 5, 6]
        assert body["session"]["status"] == "idle"

    @pytest.mark.parametrize(
        "arguments",
        ["not json", "[1, 2]", "42", '"text"', "null", ""],
        ids=["garbage", "array", "number", "string", "null", "empty"],
    )
    async def test_arguments_that_are_not_a_json_object_string_are_rejected(
        self, alice, session_id, arguments
    ):
        response = await post(alice, session_id, user("q"),
                              {"role": "assistant", "tool_calls": [call("c", "f", arguments)]})

        problem = assert_problem(response, 422, "validation_error")
        assert any("arguments" in loc for loc in error_locs(problem))
        assert await seqs(alice, session_id) == []

    async def test_arguments_as_an_object_instead_of_a_string_are_rejected(
        self, alice, session_id
    ):
        bad = {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}

        response = await post(alice, session_id, user("q"),
                              {"role": "assistant", "tool_calls": [bad]})

        assert_problem(response, 422, "validation_error")

    @pytest.mark.parametrize(
        "message",
        [
            {"role": "tool", "content": "orphan"},
            {"role": "tool", "tool_call_id": "call_1"},
            {"role": "user", "content": "hi", "tool_calls": [call("call_9")]},
            {"role": "user"},
            {"role": "user", "content": None},
            {"role": "system"},
            {"role": "user", "content": "hi", "tool_call_id": "call_1"},
            {"role": "assistant"},
            {"role": "assistant", "content": "x", "tool_calls": []},
            {"role": "developer", "content": "hi"},
            {"role": "user", "content": "hi", "run_id": "run_x"},
            {"role": "user", "content": 42},
            {"content": "no role"},
        ],
        ids=[
            "tool-without-tool_call_id", "tool-without-content", "user-with-tool_calls",
            "user-without-content", "user-with-null-content", "system-without-content",
            "user-with-tool_call_id", "assistant-with-nothing", "assistant-empty-tool_calls",
            "unknown-role", "unknown-field", "content-not-text", "no-role",
        ],
    )
    async def test_role_and_field_rule_violations_are_rejected(
        self, alice, session_id, message
    ):
        await append(alice, session_id, user("q"), asks("call_1"))

        response = await post(alice, session_id, message)

        problem = assert_problem(response, 422, "validation_error")
        assert all(loc[:3] == ["body", "messages", 0] for loc in error_locs(problem))
        assert await seqs(alice, session_id) == [1, 2]

    async def test_duplicate_tool_call_ids_in_one_message_are_rejected(
        self, alice, session_id
    ):
        response = await post(alice, session_id, user("q"), asks("same", "same"))

        problem = assert_problem(response, 422, "validation_error")
        assert error_locs(problem) == [["body", "messages", 1, "tool_calls"]]

    async def test_content_as_a_list_of_parts_round_trips(self, alice, session_id):
        parts = [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "text", "text": "Be brief.", "annotations": None},
            {"type": "image_url",
             "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        ]

        body = await append(alice, session_id, {"role": "user", "content": parts})

        assert body["items"][0]["content"] == parts
        assert (await listing(alice, session_id))["items"][0]["content"] == parts

    @pytest.mark.parametrize(
        "parts",
        [[{"type": "text"}], [{"type": "image_url"}], [{"type": "video", "url": "x"}]],
        ids=["text-without-text", "image-without-url", "unknown-type"],
    )
    async def test_malformed_content_parts_are_rejected(self, alice, session_id, parts):
        response = await post(alice, session_id, {"role": "user", "content": parts})

        assert_problem(response, 422, "validation_error")

    async def test_busy_session_is_rejected_with_active_run_id(self, alice, session_id, app):
        await append(alice, session_id, user("q"))
        run_id = await hold_with_a_run(app, session_id)

        response = await post(alice, session_id, {"role": "assistant", "content": "a"})

        problem = assert_problem(response, 409, "session_busy")
        assert problem["active_run_id"] == run_id
        assert await seqs(alice, session_id) == [1]

    @pytest.mark.parametrize(
        "body", [{"messages": []}, {}, {"messages": "hi"}, {"messages": [], "extra": 1}],
        ids=["empty-list", "missing", "not-a-list", "unknown-field"],
    )
    async def test_a_body_without_messages_is_rejected(self, alice, session_id, body):
        response = await alice.post(f"/v1/sessions/{session_id}/messages", json=body)

        assert_problem(response, 422, "validation_error")

    async def test_malformed_json_is_a_bad_request(self, alice, session_id):
        response = await alice.post(
            f"/v1/sessions/{session_id}/messages", content=b'{"messages": [',
            headers={"Content-Type": "application/json"},
        )

        assert_problem(response, 400, "bad_request")

    async def test_an_unknown_session_is_not_found(self, alice):
        response = await post(alice, "ses_missing", user("q"))

        assert_problem(response, 404, "not_found")


class TestListMessages:
    async def test_an_empty_session_has_an_empty_page(self, alice, session_id):
        assert await listing(alice, session_id) == {"items": [], "next_cursor": None}

    async def test_lists_in_ascending_seq(self, alice, session_id):
        await append(alice, session_id, user("a"), {"role": "assistant", "content": "b"})
        await append(alice, session_id, user("c"))

        body = await listing(alice, session_id)

        assert [(m["seq"], m["content"]) for m in body["items"]] == [
            (1, "a"), (2, "b"), (3, "c")
        ]
        assert body["next_cursor"] is None

    async def test_after_returns_only_later_messages(self, alice, session_id):
        await append(alice, session_id, *[user(str(i)) for i in range(5)])

        assert await seqs(alice, session_id, after=3) == [4, 5]
        assert await seqs(alice, session_id, after=5) == []
        assert await seqs(alice, session_id, after=0) == [1, 2, 3, 4, 5]

    @pytest.mark.parametrize("after", [2**31 - 1, 2**31, 2**63, 10**30])
    async def test_after_past_any_seq_is_an_empty_page(self, alice, session_id, after):
        await append(alice, session_id, user("q"))

        body = await listing(alice, session_id, after=after)

        assert body == {"items": [], "next_cursor": None}

    async def test_pages_with_limit_and_next_cursor(self, alice, session_id):
        await append(alice, session_id, *[user(str(i)) for i in range(5)])
        pages: list[list[int]] = []
        params: dict[str, Any] = {"limit": 2}

        while True:
            body = await listing(alice, session_id, **params)
            pages.append([m["seq"] for m in body["items"]])
            if body["next_cursor"] is None:
                break
            params = {"limit": 2, "cursor": body["next_cursor"]}

        assert pages == [[1, 2], [3, 4], [5]]

    async def test_a_full_last_page_has_no_next_cursor(self, alice, session_id):
        await append(alice, session_id, *[user(str(i)) for i in range(4)])

        first = await listing(alice, session_id, limit=2)
        second = await listing(alice, session_id, limit=2, cursor=first["next_cursor"])

        assert [m["seq"] for m in second["items"]] == [3, 4]
        assert second["next_cursor"] is None

    async def test_paging_starts_after_the_after_parameter(self, alice, session_id):
        await append(alice, session_id, *[user(str(i)) for i in range(5)])

        first = await listing(alice, session_id, after=1, limit=2)
        second = await listing(alice, session_id, after=1, limit=2, cursor=first["next_cursor"])

        assert [m["seq"] for m in first["items"]] == [2, 3]
        assert [m["seq"] for m in second["items"]] == [4, 5]

    @pytest.mark.parametrize(
        "cursor", ["abc", "-1", "1.5", "WzEsMl0", "\u00b2", "9" * 25, str(2**31)],
        ids=["letters", "negative", "fraction", "base64", "superscript", "huge", "past-int32"],
    )
    async def test_a_malformed_cursor_is_a_bad_request(self, alice, session_id, cursor):
        await append(alice, session_id, user("q"))

        response = await alice.get(
            f"/v1/sessions/{session_id}/messages", params={"cursor": cursor}
        )

        assert_problem(response, 400, "bad_request")

    @pytest.mark.parametrize(
        "params", [{"limit": 0}, {"limit": 201}, {"after": -1}, {"after": "x"}],
        ids=["limit-0", "limit-201", "after-negative", "after-not-a-number"],
    )
    async def test_out_of_range_parameters_are_rejected(self, alice, session_id, params):
        response = await alice.get(f"/v1/sessions/{session_id}/messages", params=params)

        assert_problem(response, 422, "validation_error")

    async def test_compacted_messages_are_hidden_by_default(self, alice, session_id, app):
        await append(alice, session_id, *[user(str(i)) for i in range(5)])
        await compact(app, session_id, 1, 2, 3)

        assert await seqs(alice, session_id) == [4, 5]
        shown = (await listing(alice, session_id, include_compacted="true"))["items"]
        assert [(m["seq"], m["state"]) for m in shown] == [
            (1, "compacted"), (2, "compacted"), (3, "compacted"), (4, "active"), (5, "active")
        ]
        assert await seqs(alice, session_id, include_compacted="false") == [4, 5]

    async def test_paging_skips_compacted_messages(self, alice, session_id, app):
        await append(alice, session_id, *[user(str(i)) for i in range(6)])
        await compact(app, session_id, 2, 3)

        first = await listing(alice, session_id, limit=2)
        second = await listing(alice, session_id, limit=2, cursor=first["next_cursor"])

        assert [m["seq"] for m in first["items"]] == [1, 4]
        assert [m["seq"] for m in second["items"]] == [5, 6]
        assert second["next_cursor"] is None

    async def test_an_unknown_session_is_not_found(self, alice):
        response = await alice.get("/v1/sessions/ses_missing/messages")

        assert_problem(response, 404, "not_found")
