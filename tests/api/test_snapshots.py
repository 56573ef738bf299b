"""`/v1/snapshots` (API.md §11): make, list, read, export, delete, import and restore.

A round trip builds state on one instance, exports it, imports it into a fresh instance on
a database of its own and restores it there; what the second instance then serves is
compared with what the first one served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.store.migrate import upgrade
from tests.conftest import (
    ADMIN_TOKEN,
    Users,
    client_for,
    create_postgres_database,
    drop_postgres_database,
    lifespan_of,
    make_settings,
    postgres_url,
)
from tests.problems import assert_problem
from tests.runs.helpers import JSON, SLEEP, Api, calls, step

META_KEYS = {"id", "label", "created_at", "format_version", "byte_size", "sha256", "counts"}
COUNTED = {"agents", "sessions", "messages", "runs", "hooks", "events"}
SECTIONS = {"agents", "events", "hooks", "runs", "sessions"}
HOOK_URL = "https://hooks.example.com/guard"
ANSWER = [step("the answer")]
SLOW = [calls(("sleep", {"seconds": 30})), step("done after the sleep")]
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "loomd"}'}}


def sections_hash(envelope: dict[str, Any]) -> str:
    canonical = json.dumps(envelope["sections"], sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
    return hashlib.sha256(canonical).hexdigest()


def envelope_bytes(envelope: dict[str, Any], **dumps: Any) -> bytes:
    return json.dumps(envelope, **{"ensure_ascii": False, **dumps}).encode()


async def snapshot(admin: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await admin.post("/v1/snapshots", json=body)
    assert response.status_code == 201, response.text
    meta: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/snapshots/{meta['id']}"
    return meta


async def export(admin: httpx.AsyncClient, snapshot_id: str) -> bytes:
    response = await admin.get(f"/v1/snapshots/{snapshot_id}/export")
    assert response.status_code == 200, response.text
    return response.content


async def import_(admin: httpx.AsyncClient, content: Any) -> httpx.Response:
    return await admin.post("/v1/snapshots/import", content=content)


async def listed(admin: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await admin.get("/v1/snapshots", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def restore(admin: httpx.AsyncClient, snapshot_id: str, **body: Any) -> dict[str, Any]:
    response = await admin.post(f"/v1/snapshots/{snapshot_id}/restore", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params or None, headers=JSON)
    assert response.status_code == 200, (path, response.text)
    return response.json()


async def hook(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/v1/hooks", json={
        "name": "guard", "phase": "event", "url": HOOK_URL, "events": ["run.completed"]})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.fixture
def other_database_url(backend: str, request: pytest.FixtureRequest,
                       tmp_path: Path) -> Iterator[str]:
    """A second migrated, empty database of `backend`, for the instance restored into."""
    if backend == "sqlite":
        path = tmp_path / "other.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    name = create_postgres_database()
    try:
        upgrade(postgres_url(name))
        yield postgres_url(name)
    finally:
        drop_postgres_database(name)


@asynccontextmanager
async def instance(database_url: str, **settings: Any) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url, **settings))
    async with lifespan_of(application):
        yield application


@asynccontextmanager
async def admin_of(application: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(application, ADMIN_TOKEN) as client:
        yield client


class TestMake:
    async def test_create_list_get_export_and_delete(self, admin: httpx.AsyncClient,
                                                     users: Users):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        session_id = await alice.session("helper")
        await alice.wait((await alice.start(session_id))["id"])
        first = await snapshot(admin, label="before")
        second = await snapshot(admin)

        assert set(first) == META_KEYS
        assert first["id"].startswith("snap_") and first["label"] == "before"
        assert first["format_version"] == 1 and second["label"] is None
        assert first["counts"] == {"agents": 1, "sessions": 1, "messages": 2, "runs": 1,
                                   "hooks": 0, "events": 0}
        assert [s["id"] for s in await listed(admin)] == [second["id"], first["id"]]
        page = await get_json(admin, "/v1/snapshots", limit=1)
        assert [s["id"] for s in page["items"]] == [second["id"]]
        rest = await get_json(admin, "/v1/snapshots", limit=1, cursor=page["next_cursor"])
        assert [s["id"] for s in rest["items"]] == [first["id"]] and rest["next_cursor"] is None

        response = await admin.get(f"/v1/snapshots/{first['id']}/export")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["content-disposition"] == (
            f'attachment; filename="{first["id"]}.json"')
        assert response.headers["etag"] == f'"{first["sha256"]}"'
        assert len(response.content) == first["byte_size"]
        envelope = json.loads(response.content)
        assert envelope["format"] == "loomd.snapshot" and envelope["format_version"] == 1
        assert set(envelope["source"]) == {"version", "instance"}
        assert set(envelope["sections"]) == SECTIONS
        assert envelope["sha256"] == first["sha256"] == sections_hash(envelope)
        assert envelope["sections"]["events"] == []
        session = envelope["sections"]["sessions"][0]
        assert session["id"] == session_id and len(session["messages"]) == 2
        assert "secret" not in json.dumps(envelope["sections"]["hooks"])

        detail = await admin.get(f"/v1/snapshots/{first['id']}")
        assert detail.status_code == 200
        body = detail.json()
        assert {key: body[key] for key in META_KEYS} == first
        assert body["envelope"] == envelope
        assert detail.content.endswith(response.content + b"}")

        deleted = await admin.delete(f"/v1/snapshots/{first['id']}")
        assert deleted.status_code == 204
        assert_problem(await admin.get(f"/v1/snapshots/{first['id']}"), 404, "not_found")
        assert_problem(await admin.get(f"/v1/snapshots/{first['id']}/export"), 404,
                       "not_found")
        assert (await admin.delete(f"/v1/snapshots/{first['id']}")).status_code == 204
        assert [s["id"] for s in await listed(admin)] == [second["id"]]

    async def test_sections_carry_every_object_and_no_secret(self, admin: httpx.AsyncClient,
                                                             users: Users):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        patched = await alice.client.patch("/v1/agents/helper", json={"max_turns": 3})
        assert patched.status_code == 200, patched.text
        created_hook = await hook(alice.client)
        meta = await snapshot(admin)
        envelope = json.loads(await export(admin, meta["id"]))

        agent = envelope["sections"]["agents"][0]
        assert (agent["owner"], agent["name"], agent["version"]) == ("alice", "helper", 2)
        assert [v["version"] for v in agent["versions"]] == [1, 2]
        assert agent["config"]["max_turns"] == 3
        stored_hook = envelope["sections"]["hooks"][0]
        assert stored_hook["id"] == created_hook["id"] and stored_hook["url"] == HOOK_URL
        assert created_hook["secret"] not in json.dumps(envelope)
        assert not {"secret", "circuit"} & set(stored_hook)

    async def test_history_only_when_asked_and_since_a_moment(self, admin: httpx.AsyncClient,
                                                              users: Users):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", [step("one"), step("two")])
        session_id = await alice.session("helper")
        early = await alice.wait((await alice.start(session_id))["id"])
        between = datetime.now(UTC)
        late = await alice.wait((await alice.start(session_id))["id"])

        everything = await snapshot(admin, include_history=True)
        events = json.loads(await export(admin, everything["id"]))["sections"]["events"]
        assert everything["counts"]["events"] == early["last_seq"] + late["last_seq"] == len(
            events)
        assert set(events[0]) == {"run_id", "seq", "type", "data", "ts"}
        served = await alice.events(early["id"])
        assert [(e["seq"], e["type"], e["data"]) for e in events if e["run_id"] == early["id"]
                ] == [(e["seq"], e["type"], e["data"]) for e in served]

        recent = await snapshot(admin, include_history=True,
                                history_since=between.isoformat())
        kept = json.loads(await export(admin, recent["id"]))["sections"]["events"]
        assert {e["run_id"] for e in kept} == {late["id"]}
        assert len(kept) == late["last_seq"] == recent["counts"]["events"]

    async def test_over_max_bytes_is_413_and_leaves_nothing(self, admin: httpx.AsyncClient,
                                                            users: Users):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        await alice.session("helper")
        response = await admin.post("/v1/snapshots", json={"max_bytes": 300})
        body = assert_problem(response, 413, "snapshot_too_large")
        assert body["max_bytes"] == 300
        assert await listed(admin) == []

    async def test_invalid_requests(self, admin: httpx.AsyncClient):
        for body in ({"include_history": "yes"}, {"max_bytes": 0}, {"labels": "x"},
                     {"include_history": True, "history_since": "yesterday"},
                     {"include_history": True, "history_since": "2026-01-01T00:00:00"},
                     {"history_since": "2026-01-01T00:00:00Z"}):
            assert_problem(await admin.post("/v1/snapshots", json=body), 422,
                           "validation_error")
        empty = await admin.post("/v1/snapshots")
        assert empty.status_code == 201, empty.text

    async def test_unknown_snapshots(self, admin: httpx.AsyncClient):
        for path in ("/v1/snapshots/snap_missing", "/v1/snapshots/snap_missing/export"):
            assert_problem(await admin.get(path), 404, "not_found")
        assert_problem(await admin.post("/v1/snapshots/snap_missing/restore", json={}), 404,
                       "not_found")
        assert (await admin.delete("/v1/snapshots/snap_missing")).status_code == 204

    async def test_user_keys_are_refused(self, admin: httpx.AsyncClient, users: Users):
        meta = await snapshot(admin)
        alice = await users.client("alice")
        envelope = await export(admin, meta["id"])
        for response in (
            await alice.post("/v1/snapshots", json={}),
            await alice.get("/v1/snapshots"),
            await alice.get(f"/v1/snapshots/{meta['id']}"),
            await alice.get(f"/v1/snapshots/{meta['id']}/export"),
            await alice.delete(f"/v1/snapshots/{meta['id']}"),
            await alice.post("/v1/snapshots/import", content=envelope),
            await alice.post(f"/v1/snapshots/{meta['id']}/restore", json={}),
        ):
            assert_problem(response, 403, "forbidden")
        assert [s["id"] for s in await listed(admin)] == [meta["id"]]


class TestImport:
    async def test_an_export_imports_as_a_new_snapshot_with_the_same_bytes(
            self, admin: httpx.AsyncClient, users: Users):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        await alice.wait((await alice.start(await alice.session("helper")))["id"])
        meta = await snapshot(admin, include_history=True)
        original = await export(admin, meta["id"])

        response = await import_(admin, original)
        assert response.status_code == 201, response.text
        imported = response.json()
        assert imported["id"] != meta["id"]
        assert response.headers["location"] == f"/v1/snapshots/{imported['id']}"
        assert {k: imported[k] for k in ("sha256", "byte_size", "counts", "format_version")} == {
            k: meta[k] for k in ("sha256", "byte_size", "counts", "format_version")}
        assert await export(admin, imported["id"]) == original
        labelled = await admin.post("/v1/snapshots/import", params={"label": "copy"},
                                    content=original)
        assert labelled.status_code == 201 and labelled.json()["label"] == "copy"

    async def test_layout_and_section_order_do_not_matter(self, admin: httpx.AsyncClient,
                                                          users: Users):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        await alice.session("helper")
        await hook(alice.client)
        meta = await snapshot(admin)
        original = await export(admin, meta["id"])
        envelope = json.loads(original)
        shuffled = {"sha256": envelope["sha256"],
                    "sections": dict(reversed(list(envelope["sections"].items()))),
                    **{k: envelope[k] for k in ("source", "created_at", "format_version",
                                                "format")}}
        response = await import_(admin, envelope_bytes(shuffled, indent=2, ensure_ascii=True))
        assert response.status_code == 201, response.text
        assert response.json()["sha256"] == meta["sha256"]
        assert await export(admin, response.json()["id"]) == original

    async def test_bad_envelopes_are_refused_and_nothing_is_kept(self, admin: httpx.AsyncClient,
                                                                 users: Users):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        await alice.session("helper")
        meta = await snapshot(admin)
        envelope = json.loads(await export(admin, meta["id"]))

        tampered = json.loads(json.dumps(envelope))
        tampered["sections"]["sessions"][0]["title"] = "changed"
        newer = {**envelope, "format_version": 2}
        unknown_field = json.loads(json.dumps(envelope))
        unknown_field["sections"]["agents"][0]["colour"] = "blue"
        unknown_field["sha256"] = sections_hash(unknown_field)
        unstorable = json.loads(json.dumps(envelope))
        unstorable["sections"]["sessions"][0]["title"] = "nul \x00 inside"
        unstorable["sha256"] = sections_hash(unstorable)
        cases = [
            (envelope_bytes(tampered), "snapshot_corrupt"),
            (envelope_bytes(newer), "snapshot_version_unsupported"),
            (envelope_bytes({**envelope, "format": "other"}), "snapshot_corrupt"),
            (b'{"hello": "world"}', "snapshot_corrupt"),
            (b"[1, 2, 3]", "snapshot_corrupt"),
            (b"", "snapshot_corrupt"),
            (envelope_bytes(envelope)[:-10], "snapshot_corrupt"),
            (b'{"format": "loomd.snapshot", "format_version": 1,,}', "snapshot_corrupt"),
            (envelope_bytes(envelope) + b" trailing", "snapshot_corrupt"),
            (envelope_bytes({**envelope, "extra": 1}), "snapshot_corrupt"),
            (envelope_bytes(unknown_field), "snapshot_corrupt"),
            (envelope_bytes(unstorable), "snapshot_corrupt"),
            (b"\xff\xfe not utf-8", "snapshot_corrupt"),
        ]
        for content, code in cases:
            assert_problem(await import_(admin, content), 422, code)
        assert [s["id"] for s in await listed(admin)] == [meta["id"]]

    @pytest.mark.parametrize(("where", "edit"), [
        ("sessions[0].messages[0].content", lambda s: s["sessions"][0]["messages"][0].update(
            content=42)),
        ("sessions[0].messages[1].tool_calls[0].id", lambda s: s["sessions"][0]["messages"][1]
            .update(tool_calls=[{"type": "function"}])),
        ("sessions[0].messages[1].seq", lambda s: s["sessions"][0]["messages"][1].update(seq=1)),
        ("sessions[0].messages[1].seq", lambda s: s["sessions"][0]["messages"][1].update(
            seq=99)),
        ("sessions[0].todos[0].status", lambda s: s["sessions"][0].update(
            todos=[{"content": "x", "status": "someday"}])),
        ("sessions[0].open_tool_calls[0].id", lambda s: s["sessions"][0].update(
            open_tool_calls=[{"name": "lookup", "arguments": "{}"}])),
        ("agents[0].config.model", lambda s: s["agents"][0].update(config={})),
        ("agents[0].versions[0].config.tools", lambda s: s["agents"][0]["versions"][0][
            "config"].update(tools="none")),
        ("agents[0].versions", lambda s: s["agents"][0].update(versions=[])),
        ("runs[0].error.detail", lambda s: s["runs"][0].update(error={"code": "x"})),
        ("runs[0].config.max_turns", lambda s: s["runs"][0]["config"].update(max_turns="ten")),
        ("runs[0].config.only_tools", lambda s: s["runs"][0]["config"].update(only_tools="x")),
        ("runs[0].waiting.turn", lambda s: s["runs"][0].update(waiting={"kind": "parked"})),
        ("runs[0].pending_input[0].role", lambda s: s["runs"][0].update(
            pending_input=[{"role": "tool", "content": "x"}])),
        ("runs[0].request.input", lambda s: s["runs"][0]["request"].update(input="hi")),
        ("events[0].data.stop_reason", lambda s: next(
            e for e in s["events"] if e["type"] == "run.completed").update(data={})
            or s["events"].sort(key=lambda e: e["type"] != "run.completed")),
        ("hooks[0].url", lambda s: s["hooks"][0].update(url="not a url")),
        ("hooks[0].timeout_ms", lambda s: s["hooks"][0].update(timeout_ms=5)),
    ])
    async def test_items_the_service_could_not_serve_are_refused_by_path(
            self, admin: httpx.AsyncClient, users: Users, where: str, edit: Any):
        """A hand-edited envelope whose hash was recomputed: each edit would be stored, and
        then fail every read of it (or the run it belongs to)."""
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        await alice.wait((await alice.start(await alice.session("helper"), "hi"))["id"])
        await hook(alice.client)
        meta = await snapshot(admin, include_history=True)
        envelope = json.loads(await export(admin, meta["id"]))
        edit(envelope["sections"])
        envelope["sha256"] = sections_hash(envelope)

        body = assert_problem(await import_(admin, envelope_bytes(envelope)), 422,
                              "snapshot_corrupt")
        assert f"sections.{where}: " in body["detail"], body["detail"]
        assert [s["id"] for s in await listed(admin)] == [meta["id"]]

    async def test_an_envelope_over_the_snapshot_cap_is_413(self, database_url: str):
        async with instance(database_url, snapshot_max_bytes=2048) as application, \
                admin_of(application) as admin:
            meta = await snapshot(admin)
            envelope = json.loads(await export(admin, meta["id"]))
            big = envelope_bytes({**envelope, "padding": "x" * 4000})
            assert_problem(await import_(admin, big), 413, "snapshot_too_large")

            async def streamed() -> AsyncIterator[bytes]:  # no Content-Length
                for start in range(0, len(big), 500):
                    yield big[start:start + 500]

            assert_problem(await import_(admin, streamed()), 413, "snapshot_too_large")
            assert [s["id"] for s in await listed(admin)] == [meta["id"]]

    async def test_the_body_cap_does_not_apply_to_imports(self, database_url: str):
        async with instance(database_url, max_body_bytes=1024) as application, \
                admin_of(application) as admin:
            agent = {"name": "helper", "model": "scripted:x", "description": "d" * 500}
            assert (await admin.post("/v1/agents", json=agent)).status_code == 201
            meta = await snapshot(admin)
            content = await export(admin, meta["id"])
            assert len(content) > 1024
            assert (await import_(admin, content)).status_code == 201
            assert_problem(await admin.post("/v1/agents", json={**agent, "name": "other",
                                                                "description": "d" * 2000}),
                           413, "body_too_large")

    async def test_a_slow_import_may_take_longer_than_the_body_read_timeout(
            self, database_url: str):
        """An envelope of hundreds of MiB takes a while to upload: the import only needs
        its parts to keep coming, while other bodies must arrive whole in time."""
        async with instance(database_url, body_read_timeout_s=0.3) as application, \
                admin_of(application) as admin:
            meta = await snapshot(admin)
            content = await export(admin, meta["id"])

            async def trickled() -> AsyncIterator[bytes]:
                third = len(content) // 3 + 1
                for start in range(0, len(content), third):
                    await asyncio.sleep(0.2)
                    yield content[start:start + third]

            assert (await import_(admin, trickled())).status_code == 201

            async def trickled_agent() -> AsyncIterator[bytes]:
                for part in (b'{"name": "slow", ', b'"model": "scripted:x"}'):
                    await asyncio.sleep(0.2)
                    yield part

            slow = await admin.post("/v1/agents", content=trickled_agent(),
                                    headers={"Content-Type": "application/json"})
            assert_problem(slow, 408, "request_timeout")


class TestRestore:
    async def test_a_round_trip_to_a_fresh_instance_keeps_ids_and_contents(
            self, admin: httpx.AsyncClient, users: Users, other_database_url: str):
        alice = Api(await users.client("alice"))
        agent = await alice.agent("helper", [step("first"), step("second")])
        await alice.client.patch("/v1/agents/helper", json={"description": "v2"})
        session_id = await alice.session("helper", title="talk", metadata={"k": [1, 2.5]})
        run = await alice.wait((await alice.start(session_id, "hello"))["id"])
        created_hook = await hook(alice.client)
        imported_talk = await alice.session("helper")
        appended = await alice.client.post(f"/v1/sessions/{imported_talk}/messages", json={
            "messages": [{"role": "user", "content": [{"type": "text", "text": "look up"}]},
                         {"role": "assistant", "tool_calls": [CALL]},
                         {"role": "tool", "tool_call_id": CALL["id"], "content": "found"}]})
        assert appended.status_code == 201, appended.text
        meta = await snapshot(admin, include_history=True)
        content = await export(admin, meta["id"])
        messages_path = f"/v1/sessions/{imported_talk}/messages"
        messages_text = (await admin.get(messages_path)).text
        paths = [f"/v1/sessions/{session_id}", f"/v1/runs/{run['id']}",
                 f"/v1/hooks/{created_hook['id']}", "/v1/agents/helper?owner=alice",
                 "/v1/agents/helper/versions?owner=alice", "/v1/sessions",
                 f"/v1/sessions/{session_id}/messages?include_compacted=true",
                 f"/v1/runs/{run['id']}/events"]
        before = {path: await get_json(admin, path) for path in paths}

        async with instance(other_database_url) as fresh, admin_of(fresh) as other:
            imported = await import_(other, content)
            assert imported.status_code == 201, imported.text
            result = await restore(other, imported.json()["id"])
            assert result["created"] == {"agents": 1, "sessions": 2, "messages": 5, "runs": 1,
                                         "hooks": 1, "events": run["last_seq"]}
            assert result["skipped"] == dict.fromkeys(COUNTED, 0)
            assert result["resumed_runs"] == 0 and result["warnings"] == []
            [secret] = result["hook_secrets"]
            assert secret["hook_id"] == created_hook["id"]
            assert secret["secret"].startswith("whsec_")
            assert secret["secret"] != created_hook["secret"]
            for path in paths:
                assert await get_json(other, path) == before[path], path
            # Tool calls and content parts keep their members' order, not only their values.
            assert (await other.get(messages_path)).text == messages_text
            assert agent["version"] == 1

            again = await restore(other, imported.json()["id"])
            assert again["created"] == dict.fromkeys(COUNTED, 0)
            assert again["skipped"] == result["created"]
            assert again["hook_secrets"] == []
            for path in paths:
                assert await get_json(other, path) == before[path], path

            forked = await other.post(f"/v1/sessions/{session_id}/fork", json={})
            assert forked.status_code == 201, forked.text
            fork_messages = await get_json(other, f"/v1/sessions/{forked.json()['id']}/messages")
            assert [(m["role"], m["content"]) for m in fork_messages["items"]] == [
                ("user", "hello"), ("assistant", "first")]
            more = await other.post(f"/v1/sessions/{session_id}/runs", json={"input": "again"})
            assert more.status_code == 202, more.text
            done = await get_json(other, f"/v1/runs/{more.json()['id']}/wait")
            assert (done["status"], done["output"]) == ("completed", "second")

    async def test_restore_into_the_same_instance_skips_everything(
            self, admin: httpx.AsyncClient, users: Users):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        await alice.wait((await alice.start(await alice.session("helper")))["id"])
        await hook(alice.client)
        meta = await snapshot(admin, include_history=True)
        result = await restore(admin, meta["id"])
        assert result["created"] == dict.fromkeys(COUNTED, 0)
        assert result["skipped"] == meta["counts"]
        assert len((await get_json(admin, "/v1/sessions"))["items"]) == 1

    async def test_an_agent_whose_name_is_taken_is_skipped_with_a_warning(
            self, admin: httpx.AsyncClient, users: Users, other_database_url: str):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        content = await export(admin, (await snapshot(admin))["id"])
        async with instance(other_database_url) as fresh, admin_of(fresh) as other:
            taken = await other.post("/v1/agents", params={"owner": "alice"},
                                     json={"name": "helper", "model": "scripted:other"})
            assert taken.status_code == 201, taken.text
            result = await restore(other, (await import_(other, content)).json()["id"])
            assert result["created"]["agents"] == 0 and result["skipped"]["agents"] == 1
            assert any("helper" in warning for warning in result["warnings"])
            current = await get_json(other, "/v1/agents/helper", owner="alice")
            assert current["model"] == "scripted:other"

    async def test_running_runs_end_interrupted_and_queued_ones_go_on(
            self, admin: httpx.AsyncClient, users: Users, other_database_url: str):
        alice = Api(await users.client("alice"))
        await alice.agent("slow", SLOW, tools=[SLEEP])
        session_id = await alice.session("slow")
        running = await alice.start(session_id)
        await alice.until(running["id"], "tool.started")
        queued = await alice.start(session_id, "next", if_busy="enqueue")
        assert queued["status"] == "queued"
        content = await export(admin, (await snapshot(admin, include_history=True))["id"])
        await alice.cancel(running["id"])

        async with instance(other_database_url) as fresh, admin_of(fresh) as other:
            result = await restore(other, (await import_(other, content)).json()["id"])
            assert result["created"]["runs"] == 2
            assert any(running["id"] in warning for warning in result["warnings"])
            ended = await get_json(other, f"/v1/runs/{running['id']}")
            assert ended["status"] == "interrupted" and ended["ended_at"] is not None
            events = (await get_json(other, f"/v1/runs/{running['id']}/events"))["items"]
            assert events[-1]["type"] == "run.interrupted"
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            after = await get_json(other, f"/v1/runs/{queued['id']}/wait", timeout_s=10)
            assert (after["status"], after["output"]) == ("completed", "done after the sleep")
            session = await get_json(other, f"/v1/sessions/{session_id}")
            assert (session["status"], session["active_run_id"]) == ("idle", None)

    @pytest.mark.parametrize("cut_at", ["_adopt", "_settle", "_hooks"])
    async def test_a_restore_cut_short_is_finished_by_the_next_one(
            self, admin: httpx.AsyncClient, users: Users, other_database_url: str,
            monkeypatch: pytest.MonkeyPatch, cut_at: str):
        alice = Api(await users.client("alice"))
        await alice.agent("helper", ANSWER)
        parent = await alice.session("helper", title="parent")
        await alice.wait((await alice.start(parent))["id"])
        forked = await alice.client.post(f"/v1/sessions/{parent}/fork", json={})
        assert forked.status_code == 201, forked.text
        child = forked.json()["id"]
        await alice.agent("slow", SLOW, tools=[SLEEP])
        busy = await alice.session("slow")
        running = await alice.start(busy)
        await alice.until(running["id"], "tool.started")
        queued = await alice.start(busy, "next", if_busy="enqueue")
        await hook(alice.client)
        envelope = json.loads(await export(admin, (await snapshot(admin,
                                                                  include_history=True))["id"]))
        await alice.cancel(running["id"])
        # A child session (as a subagent's is) before its parent: it is linked to its
        # parent only once every session is in.
        sessions = envelope["sections"]["sessions"]
        sessions.sort(key=lambda session: session["id"] != child)
        sessions[0]["parent_session_id"] = parent
        envelope["sha256"] = sections_hash(envelope)

        async with instance(other_database_url) as fresh, admin_of(fresh) as other:
            imported = (await import_(other, envelope_bytes(envelope))).json()["id"]

            async def cut_short(*_: Any) -> None:
                raise RuntimeError("the process stopped here")

            with monkeypatch.context() as patch:
                from app.snapshots.restore import Restorer
                patch.setattr(Restorer, cut_at, cut_short)
                cut = await other.post(f"/v1/snapshots/{imported}/restore", json={})
                assert cut.status_code == 500, cut.text
            result = await restore(other, imported)

            linked = await get_json(other, f"/v1/sessions/{child}")
            assert linked["parent_session_id"] == parent
            events = (await get_json(other, f"/v1/runs/{running['id']}/events"))["items"]
            assert [e["type"] for e in events].count("run.interrupted") == 1
            assert events[-1]["type"] == "run.interrupted"
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            after = await get_json(other, f"/v1/runs/{queued['id']}/wait", timeout_s=10)
            assert (after["status"], after["output"]) == ("completed", "done after the sleep")
            hooks = (await get_json(other, "/v1/hooks"))["items"]
            assert len(hooks) == 1
            # Hooks come last: the restore cut short made none, the next one each.
            assert [s["hook_id"] for s in result["hook_secrets"]] == [hooks[0]["id"]]

    async def test_a_paused_run_resumes_on_the_instance_restored_into(
            self, admin: httpx.AsyncClient, users: Users, other_database_url: str):
        alice = Api(await users.client("alice"))
        await alice.agent("slow", [calls(("sleep", {"seconds": 0.3})), step("finished")],
                          tools=[SLEEP])
        run = await alice.start(await alice.session("slow"))
        await alice.until(run["id"], "tool.started")
        paused = await admin.post("/v1/runtime/pause", json={"timeout_ms": 10_000})
        assert paused.status_code == 200 and paused.json()["paused_runs"] == 1, paused.text
        assert (await alice.get_run(run["id"]))["status"] == "paused"
        content = await export(admin, (await snapshot(admin, include_history=True))["id"])

        async with instance(other_database_url) as fresh, admin_of(fresh) as other:
            result = await restore(other, (await import_(other, content)).json()["id"])
            assert result["resumed_runs"] == 1, result
            ended = await get_json(other, f"/v1/runs/{run['id']}/wait", timeout_s=10)
            assert (ended["status"], ended["output"]) == ("completed", "finished")
            events = (await get_json(other, f"/v1/runs/{run['id']}/events"))["items"]
            kinds = [e["type"] for e in events]
            assert kinds.index("run.paused") < kinds.index("run.resumed")
            assert kinds[-1] == "run.completed"
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert (await admin.post("/v1/runtime/resume")).status_code == 200
