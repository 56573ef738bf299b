"""`/v1/sessions` (API.md §3): create, list, read, update, delete, fork and a session's runs."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import func, select

from app.clock import utcnow
from app.ids import new_id
from app.store.tables import Message, Run, RunEvent
from app.store.tables import Session as SessionRow
from tests.problems import assert_problem

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SESSION_KEYS = {
    "id", "agent", "owner", "title", "metadata", "status", "active_run_id",
    "parent_session_id", "parent_run_id", "message_count", "todos", "usage", "created_at",
    "updated_at",
}
RUN_KEYS = {
    "id", "session_id", "agent", "agent_version", "owner", "status", "stop_reason", "error",
    "output", "turns", "usage", "required_action", "approvals", "parent_run_id", "last_seq",
    "metadata",
    "created_at", "started_at", "ended_at",
}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "loomd"}'}}


async def user_with_agent(users: Any, subject: str, *agents: str) -> httpx.AsyncClient:
    client: httpx.AsyncClient = await users.client(subject)
    for name in agents or ("demo",):
        response = await client.post("/v1/agents", json={"name": name, "model": "scripted:demo"})
        assert response.status_code == 201, response.text
    return client


async def create_session(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/sessions", json={"agent": "demo", **body})
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


async def append(client: httpx.AsyncClient, session_id: str, *messages: dict[str, Any]) -> None:
    response = await client.post(
        f"/v1/sessions/{session_id}/messages", json={"messages": list(messages)}
    )
    assert response.status_code == 201, response.text


async def conversation(client: httpx.AsyncClient, session_id: str) -> None:
    """Four messages: a question, a tool call, its result and the answer."""
    await append(
        client, session_id,
        {"role": "user", "content": "find loomd"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        {"role": "assistant", "content": "It is a loop runtime."},
    )


async def messages_of(client: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/sessions/{session_id}/messages", params={"limit": 200})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def insert_run(
    app: FastAPI, session_id: str, *, status: str = "running", owner: str = "alice",
    created_at_offset_s: int = 0,
) -> str:
    """A run row with one event; an unfinished run also holds the session."""
    now = utcnow() + timedelta(seconds=created_at_offset_s)
    run = Run(
        id=new_id("run"), session_id=session_id, owner=owner, agent="demo", agent_version=1,
        status=status, usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        meta={"source": "test"}, request={}, config={}, last_seq=1, created_at=now,
        started_at=now, ended_at=None if status in ("queued", "running") else now,
        stop_reason="end_turn" if status == "completed" else None,
        output="done" if status == "completed" else None, turns=1,
    )
    async with app.state.db.transaction() as db:
        db.add(run)
        await db.flush()
        db.add(RunEvent(run_id=run.id, seq=1, type="run.created", data={}, ts=now))
        if status in ("queued", "running", "requires_action", "paused"):
            session = await db.get(SessionRow, session_id)
            assert session is not None
            session.active_run_id = run.id
            session.status = "running"
            db.add(session)
    return run.id


async def insert_child_session(app: FastAPI, parent_id: str, owner: str = "alice") -> str:
    now = utcnow()
    child = SessionRow(
        id=new_id("ses"), owner=owner, agent="demo", meta={}, open_tool_calls=[], todos=[],
        parent_session_id=parent_id, message_count=1, last_seq=1, created_at=now,
        updated_at=now,
    )
    async with app.state.db.transaction() as db:
        db.add(child)
        await db.flush()
        db.add(Message(session_id=child.id, seq=1, role="user", content="sub-task",
                       created_at=now))
    return child.id


async def count_rows(app: FastAPI, model: Any, column: Any, value: str) -> int:
    async with app.state.db.transaction() as db:
        total: int = (await db.exec(select(func.count()).select_from(model).where(
            column == value))).one()
    return total


@pytest.fixture
async def alice(users: Any) -> httpx.AsyncClient:
    return await user_with_agent(users, "alice")


@pytest.fixture
async def bob(users: Any) -> httpx.AsyncClient:
    return await user_with_agent(users, "bob")


class TestCreateSession:
    async def test_creates_an_idle_session_and_points_to_it(self, alice):
        response = await alice.post(
            "/v1/sessions", json={"agent": "demo", "title": "Hi", "metadata": {"k": [1, 2]}}
        )

        assert response.status_code == 201, response.text
        session = response.json()
        assert set(session) == SESSION_KEYS
        assert session["id"].startswith("ses_")
        assert response.headers["location"] == f"/v1/sessions/{session['id']}"
        assert "idempotency-replayed" not in response.headers
        assert session["agent"] == "demo"
        assert session["owner"] == "alice"
        assert session["title"] == "Hi"
        assert session["metadata"] == {"k": [1, 2]}
        assert session["status"] == "idle"
        assert session["active_run_id"] is None
        assert session["parent_session_id"] is None
        assert session["parent_run_id"] is None
        assert session["message_count"] == 0
        assert session["usage"] == {"prompt_tokens": 0, "completion_tokens": 0,
                                    "total_tokens": 0}
        assert RFC3339_MS.match(session["created_at"])
        assert RFC3339_MS.match(session["updated_at"])
        fetched = await alice.get(response.headers["location"])
        assert fetched.json() == session

    async def test_title_and_metadata_default_to_null_and_empty(self, alice):
        session = await create_session(alice)

        assert session["title"] is None
        assert session["metadata"] == {}

    async def test_unknown_agent_is_not_found(self, alice):
        response = await alice.post("/v1/sessions", json={"agent": "nobody"})

        assert_problem(response, 404, "not_found")

    async def test_agent_of_another_user_is_not_found(self, alice, users):
        await user_with_agent(users, "bob", "bobs-agent")

        response = await alice.post("/v1/sessions", json={"agent": "bobs-agent"})

        assert_problem(response, 404, "not_found")

    @pytest.mark.parametrize(
        ("body", "loc"),
        [
            ({"agent": "demo", "titel": "typo"}, ["body", "titel"]),
            ({"title": "no agent"}, ["body", "agent"]),
            ({"agent": "Not A Name"}, ["body", "agent"]),
            ({"agent": "demo", "metadata": ["not", "an", "object"]}, ["body", "metadata"]),
            ({"agent": "demo", "title": "x" * 513}, ["body", "title"]),
        ],
    )
    async def test_invalid_bodies_are_rejected_naming_the_field(self, alice, body, loc):
        response = await alice.post("/v1/sessions", json=body)

        problem = assert_problem(response, 422, "validation_error")
        assert loc in [error["loc"] for error in problem["errors"]]
        assert (await alice.get("/v1/sessions")).json()["items"] == []

    async def test_missing_token_is_unauthorized(self, anonymous):
        response = await anonymous.post("/v1/sessions", json={"agent": "demo"})

        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


class TestCreateSessionIdempotency:
    async def test_same_key_and_body_replays_the_original_session(self, alice):
        body = {"agent": "demo", "title": "once", "metadata": {"a": 1, "b": 2}}
        first = await alice.post("/v1/sessions", json=body, headers={"Idempotency-Key": "k-1"})
        # The same body with its keys in another order is the same canonical JSON.
        again = await alice.post(
            "/v1/sessions", headers={"Idempotency-Key": "k-1", "Content-Type": "application/json"},
            content=b'{"metadata": {"b": 2, "a": 1}, "title": "once", "agent": "demo"}',
        )

        assert first.status_code == 201, first.text
        assert again.status_code == 200, again.text
        assert again.headers["idempotency-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["location"] == first.headers["location"]
        listed = (await alice.get("/v1/sessions")).json()["items"]
        assert [s["id"] for s in listed] == [first.json()["id"]]

    async def test_same_key_with_another_body_is_a_conflict(self, alice):
        first = await alice.post(
            "/v1/sessions", json={"agent": "demo", "title": "a"}, headers={"Idempotency-Key": "k"}
        )
        response = await alice.post(
            "/v1/sessions", json={"agent": "demo", "title": "b"}, headers={"Idempotency-Key": "k"}
        )

        assert first.status_code == 201
        assert_problem(response, 409, "idempotency_conflict")
        listed = (await alice.get("/v1/sessions")).json()["items"]
        assert [s["title"] for s in listed] == ["a"]

    async def test_the_key_is_scoped_to_the_caller(self, alice, bob):
        headers = {"Idempotency-Key": "shared-key"}

        mine = await alice.post("/v1/sessions", json={"agent": "demo"}, headers=headers)
        theirs = await bob.post("/v1/sessions", json={"agent": "demo"}, headers=headers)

        assert mine.status_code == 201
        assert theirs.status_code == 201
        assert "idempotency-replayed" not in theirs.headers
        assert mine.json()["id"] != theirs.json()["id"]
        assert theirs.json()["owner"] == "bob"

    async def test_without_a_key_each_request_creates_a_session(self, alice):
        first = await create_session(alice)
        second = await create_session(alice)

        assert first["id"] != second["id"]

    async def test_concurrent_requests_with_one_key_create_one_session(self, alice):
        headers = {"Idempotency-Key": "race"}
        responses = await asyncio.gather(*[
            alice.post("/v1/sessions", json={"agent": "demo"}, headers=headers)
            for _ in range(4)
        ])

        assert sorted(r.status_code for r in responses) == [200, 200, 200, 201]
        assert len({r.json()["id"] for r in responses}) == 1
        assert len((await alice.get("/v1/sessions")).json()["items"]) == 1

    async def test_a_failed_creation_does_not_burn_the_key(self, alice):
        headers = {"Idempotency-Key": "retry-me"}
        failed = await alice.post("/v1/sessions", json={"agent": "later"}, headers=headers)
        created = await alice.post("/v1/agents", json={"name": "later", "model": "scripted:x"})

        retried = await alice.post("/v1/sessions", json={"agent": "later"}, headers=headers)

        assert_problem(failed, 404, "not_found")
        assert created.status_code == 201
        assert retried.status_code == 201, retried.text

    @pytest.mark.parametrize("key", ["", "k" * 256], ids=["empty", "256-chars"])
    async def test_a_key_outside_1_to_255_characters_is_a_bad_request(self, alice, key):
        response = await alice.post(
            "/v1/sessions", json={"agent": "demo"}, headers={"Idempotency-Key": key}
        )

        assert_problem(response, 400, "bad_request")
        assert (await alice.get("/v1/sessions")).json()["items"] == []

    async def test_a_255_character_key_is_accepted(self, alice):
        response = await alice.post(
            "/v1/sessions", json={"agent": "demo"}, headers={"Idempotency-Key": "k" * 255}
        )

        assert response.status_code == 201, response.text


class TestListSessions:
    async def test_lists_newest_first(self, alice):
        ids = [(await create_session(alice, title=str(i)))["id"] for i in range(3)]

        response = await alice.get("/v1/sessions")

        assert response.status_code == 200
        body = response.json()
        assert [s["id"] for s in body["items"]] == ids[::-1]
        assert body["next_cursor"] is None
        assert all(set(s) == SESSION_KEYS for s in body["items"])

    async def test_pages_through_with_the_cursor(self, alice):
        ids = [(await create_session(alice))["id"] for _ in range(3)]
        seen: list[str] = []
        cursors: list[str | None] = []
        params: dict[str, Any] = {"limit": 1}

        for _ in range(3):
            page = (await alice.get("/v1/sessions", params=params)).json()
            assert len(page["items"]) == 1
            seen.append(page["items"][0]["id"])
            cursors.append(page["next_cursor"])
            params = {"limit": 1, "cursor": page["next_cursor"]}

        assert seen == ids[::-1]
        assert cursors[0] is not None
        assert cursors[1] is not None
        assert cursors[2] is None

    async def test_filters_by_agent(self, users):
        alice = await user_with_agent(users, "alice", "demo", "other")
        await create_session(alice)
        other = await create_session(alice, agent="other")

        response = await alice.get("/v1/sessions", params={"agent": "other"})

        assert [s["id"] for s in response.json()["items"]] == [other["id"]]

    async def test_filters_by_status(self, alice, app):
        idle = await create_session(alice)
        pending = await create_session(alice)
        await append(alice, pending["id"], {"role": "user", "content": "go"},
                     {"role": "assistant", "tool_calls": [CALL]})
        running = await create_session(alice)
        await insert_run(app, running["id"])

        by_status = {
            status: [s["id"] for s in (await alice.get(
                "/v1/sessions", params={"status": status})).json()["items"]]
            for status in ("idle", "pending", "running")
        }

        assert by_status == {"idle": [idle["id"]], "pending": [pending["id"]],
                             "running": [running["id"]]}

    async def test_an_unknown_status_is_rejected(self, alice):
        response = await alice.get("/v1/sessions", params={"status": "sleeping"})

        assert_problem(response, 422, "validation_error")

    @pytest.mark.parametrize(
        "cursor", ["not a cursor", "bm90LWpzb24", "WyJ5ZXN0ZXJkYXkiLCJzZXNfMSJd", "WzEsMl0"],
        ids=["garbage", "not-json", "bad-timestamp", "wrong-types"],
    )
    async def test_a_malformed_cursor_is_a_bad_request(self, alice, cursor):
        await create_session(alice)

        response = await alice.get("/v1/sessions", params={"cursor": cursor})

        assert_problem(response, 400, "bad_request")

    @pytest.mark.parametrize("limit", [0, 201, -1])
    async def test_a_limit_outside_1_to_200_is_rejected(self, alice, limit):
        response = await alice.get("/v1/sessions", params={"limit": limit})

        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"][0]["loc"] == ["query", "limit"]

    async def test_users_see_only_their_own_sessions(self, alice, bob):
        mine = await create_session(alice)
        await create_session(bob)

        response = await alice.get("/v1/sessions")

        assert [s["id"] for s in response.json()["items"]] == [mine["id"]]

    async def test_admin_sees_every_owners_sessions(self, alice, bob, admin):
        mine = await create_session(alice)
        theirs = await create_session(bob)

        response = await admin.get("/v1/sessions")

        items = response.json()["items"]
        assert {(s["id"], s["owner"]) for s in items} == {
            (mine["id"], "alice"), (theirs["id"], "bob")
        }


class TestGetSession:
    async def test_returns_the_session(self, alice):
        session = await create_session(alice, title="t")

        response = await alice.get(f"/v1/sessions/{session['id']}")

        assert response.status_code == 200
        assert response.json() == session

    async def test_an_unknown_id_is_not_found(self, alice):
        response = await alice.get("/v1/sessions/ses_doesnotexist")

        assert_problem(response, 404, "not_found")

    async def test_a_not_found_problem_echoes_the_callers_request_id(self, alice):
        response = await alice.get(
            "/v1/sessions/ses_doesnotexist", headers={"X-Request-ID": "trace-123"}
        )

        problem = assert_problem(response, 404, "not_found")
        assert problem["request_id"] == "trace-123"

    async def test_admin_can_read_a_users_session(self, alice, admin):
        session = await create_session(alice)

        response = await admin.get(f"/v1/sessions/{session['id']}")

        assert response.status_code == 200
        assert response.json()["owner"] == "alice"

    async def test_reflects_message_count_and_status(self, alice):
        session = await create_session(alice)
        await conversation(alice, session["id"])

        fetched = (await alice.get(f"/v1/sessions/{session['id']}")).json()

        assert fetched["message_count"] == 4
        assert fetched["status"] == "idle"


class TestOtherUsersSession:
    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [
            ("GET", "", None),
            ("PATCH", "", {"title": "mine now"}),
            ("DELETE", "", None),
            ("GET", "/messages", None),
            ("POST", "/messages", {"messages": [{"role": "user", "content": "hi"}]}),
            ("POST", "/fork", {}),
            ("GET", "/runs", None),
        ],
    )
    async def test_is_not_found_on_every_route(self, alice, bob, method, suffix, body):
        session = await create_session(alice, title="private")

        response = await bob.request(
            method, f"/v1/sessions/{session['id']}{suffix}", json=body
        )

        assert_problem(response, 404, "not_found")
        after = await alice.get(f"/v1/sessions/{session['id']}")
        assert after.json() == session
        assert await messages_of(alice, session["id"]) == []
        assert len((await bob.get("/v1/sessions")).json()["items"]) == 0


class TestUpdateSession:
    async def test_replaces_title_and_metadata(self, alice):
        session = await create_session(alice, title="old", metadata={"a": 1, "b": 2})

        response = await alice.patch(
            f"/v1/sessions/{session['id']}", json={"title": "new", "metadata": {"c": 3}}
        )

        assert response.status_code == 200, response.text
        updated = response.json()
        assert updated["title"] == "new"
        assert updated["metadata"] == {"c": 3}
        assert updated["updated_at"] >= session["updated_at"]
        assert updated["created_at"] == session["created_at"]
        assert (await alice.get(f"/v1/sessions/{session['id']}")).json() == updated

    async def test_leaves_absent_fields_alone(self, alice):
        session = await create_session(alice, title="keep", metadata={"keep": True})

        retitled = await alice.patch(f"/v1/sessions/{session['id']}", json={"title": "t2"})
        remeta = await alice.patch(f"/v1/sessions/{session['id']}", json={"metadata": {}})

        assert retitled.json()["metadata"] == {"keep": True}
        assert remeta.json()["title"] == "t2"
        assert remeta.json()["metadata"] == {}

    async def test_a_null_title_clears_it(self, alice):
        session = await create_session(alice, title="temporary")

        response = await alice.patch(f"/v1/sessions/{session['id']}", json={"title": None})

        assert response.status_code == 200
        assert response.json()["title"] is None

    async def test_null_metadata_is_rejected(self, alice):
        session = await create_session(alice, metadata={"a": 1})

        response = await alice.patch(f"/v1/sessions/{session['id']}", json={"metadata": None})

        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"][0]["loc"] == ["body", "metadata"]
        fetched = await alice.get(f"/v1/sessions/{session['id']}")
        assert fetched.json()["metadata"] == {"a": 1}

    @pytest.mark.parametrize(
        "body", [{"agent": "demo"}, {"status": "idle"}, {"metadata": "text"}],
        ids=["agent", "status", "metadata-not-object"],
    )
    async def test_fields_outside_title_and_metadata_are_rejected(self, alice, body):
        session = await create_session(alice)

        response = await alice.patch(f"/v1/sessions/{session['id']}", json=body)

        assert_problem(response, 422, "validation_error")
        assert (await alice.get(f"/v1/sessions/{session['id']}")).json() == session

    async def test_an_unknown_id_is_not_found(self, alice):
        response = await alice.patch("/v1/sessions/ses_nothere", json={"title": "x"})

        assert_problem(response, 404, "not_found")


class TestDeleteSession:
    async def test_deletes_the_session_and_its_messages(self, alice, app):
        session = await create_session(alice)
        await conversation(alice, session["id"])
        keep = await create_session(alice)
        await conversation(alice, keep["id"])

        response = await alice.delete(f"/v1/sessions/{session['id']}")

        assert response.status_code == 204
        assert response.content == b""
        assert_problem(await alice.get(f"/v1/sessions/{session['id']}"), 404, "not_found")
        assert_problem(
            await alice.get(f"/v1/sessions/{session['id']}/messages"), 404, "not_found"
        )
        assert await count_rows(app, Message, Message.session_id, session["id"]) == 0
        assert len(await messages_of(alice, keep["id"])) == 4

    async def test_deletes_finished_runs_and_their_events(self, alice, app):
        session = await create_session(alice)
        run_id = await insert_run(app, session["id"], status="completed")

        response = await alice.delete(f"/v1/sessions/{session['id']}")

        assert response.status_code == 204
        assert await count_rows(app, Run, Run.session_id, session["id"]) == 0
        assert await count_rows(app, RunEvent, RunEvent.run_id, run_id) == 0

    async def test_a_second_delete_is_not_found(self, alice):
        session = await create_session(alice)
        await alice.delete(f"/v1/sessions/{session['id']}")

        response = await alice.delete(f"/v1/sessions/{session['id']}")

        assert_problem(response, 404, "not_found")

    async def test_busy_session_is_rejected_with_active_run_id(self, alice, app):
        session = await create_session(alice)
        await append(alice, session["id"], {"role": "user", "content": "hi"})
        run_id = await insert_run(app, session["id"])

        response = await alice.delete(f"/v1/sessions/{session['id']}")

        problem = assert_problem(response, 409, "session_busy")
        assert problem["active_run_id"] == run_id
        fetched = (await alice.get(f"/v1/sessions/{session['id']}")).json()
        assert fetched["status"] == "running"
        assert fetched["active_run_id"] == run_id
        assert len(await messages_of(alice, session["id"])) == 1

    async def test_force_deletes_a_busy_session(self, alice, app):
        session = await create_session(alice)
        run_id = await insert_run(app, session["id"])

        response = await alice.delete(
            f"/v1/sessions/{session['id']}", params={"force": "true"}
        )

        assert response.status_code == 204
        assert_problem(await alice.get(f"/v1/sessions/{session['id']}"), 404, "not_found")
        assert await count_rows(app, Run, Run.id, run_id) == 0

    async def test_force_on_an_idle_session_deletes_it(self, alice):
        session = await create_session(alice)

        response = await alice.delete(
            f"/v1/sessions/{session['id']}", params={"force": "true"}
        )

        assert response.status_code == 204
        assert_problem(await alice.get(f"/v1/sessions/{session['id']}"), 404, "not_found")

    async def test_child_sessions_are_deleted_recursively(self, alice, app):
        parent = await create_session(alice)
        sibling = await create_session(alice)
        child = await insert_child_session(app, parent["id"])
        grandchild = await insert_child_session(app, child)
        assert (await alice.get(f"/v1/sessions/{grandchild}")).json()["parent_session_id"] == child

        response = await alice.delete(f"/v1/sessions/{parent['id']}")

        assert response.status_code == 204
        for session_id in (child, grandchild):
            assert_problem(await alice.get(f"/v1/sessions/{session_id}"), 404, "not_found")
            assert await count_rows(app, Message, Message.session_id, session_id) == 0
        listed = (await alice.get("/v1/sessions")).json()["items"]
        assert [s["id"] for s in listed] == [sibling["id"]]

    async def test_deleting_a_child_keeps_its_parent(self, alice, app):
        parent = await create_session(alice)
        child = await insert_child_session(app, parent["id"])

        response = await alice.delete(f"/v1/sessions/{child}")

        assert response.status_code == 204
        assert (await alice.get(f"/v1/sessions/{parent['id']}")).status_code == 200


class TestForkSession:
    async def test_copies_every_message_by_default(self, alice):
        original = await create_session(alice, title="t", metadata={"m": 1})
        await conversation(alice, original["id"])

        response = await alice.post(f"/v1/sessions/{original['id']}/fork")

        assert response.status_code == 201, response.text
        fork = response.json()
        assert fork["id"] != original["id"]
        assert response.headers["location"] == f"/v1/sessions/{fork['id']}"
        assert (fork["agent"], fork["owner"], fork["title"], fork["metadata"]) == (
            "demo", "alice", "t", {"m": 1}
        )
        assert fork["message_count"] == 4
        assert fork["status"] == "idle"
        assert await messages_of(alice, fork["id"]) == await messages_of(alice, original["id"])

    async def test_an_empty_body_copies_everything_too(self, alice):
        original = await create_session(alice)
        await conversation(alice, original["id"])

        response = await alice.post(f"/v1/sessions/{original['id']}/fork", json={})

        assert response.status_code == 201
        assert response.json()["message_count"] == 4

    async def test_at_seq_copies_up_to_and_including_it(self, alice):
        original = await create_session(alice)
        await conversation(alice, original["id"])

        response = await alice.post(f"/v1/sessions/{original['id']}/fork", json={"at_seq": 3})

        assert response.status_code == 201, response.text
        fork = response.json()
        assert fork["message_count"] == 3
        copied = await messages_of(alice, fork["id"])
        assert copied == (await messages_of(alice, original["id"]))[:3]

    async def test_the_fork_continues_numbering_after_at_seq(self, alice):
        original = await create_session(alice)
        await conversation(alice, original["id"])
        fork = (await alice.post(f"/v1/sessions/{original['id']}/fork",
                                 json={"at_seq": 1})).json()

        response = await alice.post(f"/v1/sessions/{fork['id']}/messages", json={
            "messages": [{"role": "assistant", "content": "another answer"}]})

        assert response.status_code == 201, response.text
        assert [m["seq"] for m in response.json()["items"]] == [2]

    @pytest.mark.parametrize("at_seq", [5, 1000])
    async def test_at_seq_beyond_the_last_message_is_rejected(self, alice, at_seq):
        original = await create_session(alice)
        await conversation(alice, original["id"])

        response = await alice.post(
            f"/v1/sessions/{original['id']}/fork", json={"at_seq": at_seq}
        )

        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"][0]["loc"] == ["body", "at_seq"]
        assert len((await alice.get("/v1/sessions")).json()["items"]) == 1

    @pytest.mark.parametrize("body", [{"at_seq": 0}, {"at_seq": "two"}, {"seq": 1}])
    async def test_invalid_bodies_are_rejected(self, alice, body):
        original = await create_session(alice)
        await conversation(alice, original["id"])

        response = await alice.post(f"/v1/sessions/{original['id']}/fork", json=body)

        assert_problem(response, 422, "validation_error")

    async def test_the_fork_of_a_session_with_unanswered_tool_calls_is_pending(self, alice):
        original = await create_session(alice)
        await append(alice, original["id"], {"role": "user", "content": "go"},
                     {"role": "assistant", "tool_calls": [CALL]})

        fork = (await alice.post(f"/v1/sessions/{original['id']}/fork")).json()

        assert fork["status"] == "pending"
        answer = await alice.post(f"/v1/sessions/{fork['id']}/messages", json={
            "messages": [{"role": "tool", "tool_call_id": "call_1", "content": "ok"}]})
        assert answer.status_code == 201, answer.text
        assert answer.json()["session"]["status"] == "idle"

    async def test_forking_at_a_tool_call_leaves_the_fork_pending(self, alice):
        original = await create_session(alice)
        await conversation(alice, original["id"])

        fork = (await alice.post(f"/v1/sessions/{original['id']}/fork",
                                 json={"at_seq": 2})).json()

        assert fork["status"] == "pending"
        blocked = await alice.post(f"/v1/sessions/{fork['id']}/messages", json={
            "messages": [{"role": "user", "content": "skip the tool"}]})
        assert_problem(blocked, 422, "validation_error")

    async def test_the_original_is_unchanged(self, alice):
        original = await create_session(alice)
        await conversation(alice, original["id"])
        before = (await alice.get(f"/v1/sessions/{original['id']}")).json()
        messages_before = await messages_of(alice, original["id"])

        fork = (await alice.post(f"/v1/sessions/{original['id']}/fork",
                                 json={"at_seq": 1})).json()
        await append(alice, fork["id"], {"role": "assistant", "content": "forked reply"})
        await alice.patch(f"/v1/sessions/{fork['id']}", json={"title": "fork"})

        assert (await alice.get(f"/v1/sessions/{original['id']}")).json() == before
        assert await messages_of(alice, original["id"]) == messages_before

    async def test_a_busy_session_can_be_forked_into_an_idle_one(self, alice, app):
        original = await create_session(alice)
        await conversation(alice, original["id"])
        await insert_run(app, original["id"])

        response = await alice.post(f"/v1/sessions/{original['id']}/fork")

        assert response.status_code == 201, response.text
        assert response.json()["status"] == "idle"
        assert response.json()["active_run_id"] is None


class TestListSessionRuns:
    async def test_a_session_without_runs_has_an_empty_page(self, alice):
        session = await create_session(alice)

        response = await alice.get(f"/v1/sessions/{session['id']}/runs")

        assert response.status_code == 200
        assert response.json() == {"items": [], "next_cursor": None}

    async def test_lists_a_run_in_the_run_shape(self, alice, app):
        session = await create_session(alice)
        run_id = await insert_run(app, session["id"], status="completed")

        response = await alice.get(f"/v1/sessions/{session['id']}/runs")

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["next_cursor"] is None
        [run] = body["items"]
        assert set(run) == RUN_KEYS
        assert run["id"] == run_id
        assert run["session_id"] == session["id"]
        assert (run["agent"], run["agent_version"], run["owner"]) == ("demo", 1, "alice")
        assert (run["status"], run["stop_reason"], run["output"]) == (
            "completed", "end_turn", "done"
        )
        assert run["error"] is None
        assert run["required_action"] is None
        assert run["usage"] == {"prompt_tokens": 3, "completion_tokens": 4,
                                "total_tokens": 7, "llm_calls": 0}
        assert run["metadata"] == {"source": "test"}
        assert run["turns"] == 1
        assert run["last_seq"] == 1
        for field in ("created_at", "started_at", "ended_at"):
            assert RFC3339_MS.match(run[field]), field

    async def test_lists_newest_first_and_pages(self, alice, app):
        session = await create_session(alice)
        other = await create_session(alice)
        older = await insert_run(app, session["id"], status="failed", created_at_offset_s=-60)
        newer = await insert_run(app, session["id"], status="completed")
        await insert_run(app, other["id"], status="completed")

        first = (await alice.get(f"/v1/sessions/{session['id']}/runs",
                                 params={"limit": 1})).json()
        second = (await alice.get(f"/v1/sessions/{session['id']}/runs",
                                  params={"limit": 1, "cursor": first["next_cursor"]})).json()

        assert [r["id"] for r in first["items"]] == [newer]
        assert [r["id"] for r in second["items"]] == [older]
        assert second["next_cursor"] is None

    async def test_a_malformed_cursor_is_a_bad_request(self, alice):
        session = await create_session(alice)

        response = await alice.get(
            f"/v1/sessions/{session['id']}/runs", params={"cursor": "%%%"}
        )

        assert_problem(response, 400, "bad_request")
