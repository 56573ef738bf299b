"""`/v1/hooks` (API.md §6): registration, reading, changes, deliveries, pings and retries."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.ids import new_id
from app.services.hooks import matches_tool, matching_hooks
from app.store.tables import Hook as HookRow
from app.store.tables import HookDelivery
from tests.conftest import Users, make_settings
from tests.problems import assert_problem
from tests.tools.receivers import Receiver, Reply, answer, hang, tool_endpoint

HOOK_FIELDS = {"id", "name", "phase", "url", "agents", "tools", "events", "timeout_ms",
               "failure_mode", "enabled", "all_owners", "owner", "circuit", "created_at",
               "updated_at"}
DELIVERY_FIELDS = {"id", "attempt", "status", "status_code", "duration_ms", "error",
                   "response_excerpt", "event_type", "created_at", "phase", "run_id",
                   "message_id"}
GUARD_URL = "https://hooks.example.com/guard"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Of the private addresses, only 127.0.0.1 may be reached (127.0.0.2 may not)."""
    return make_settings(database_url, allow_private_urls="127.0.0.1")


def hook_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "guard", "phase": "pre_tool", "url": GUARD_URL}
    body.update(fields)
    return body


async def create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/hooks", json=hook_body(**fields))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def assert_invalid(response: httpx.Response, *loc: str | int) -> dict[str, Any]:
    """A 422 `validation_error` with an error located exactly at `loc`; returns that error."""
    body = assert_problem(response, 422, "validation_error")
    found = [error for error in body["errors"] if tuple(error["loc"]) == loc]
    assert found, (loc, body["errors"])
    error: dict[str, Any] = found[0]
    return error


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- registration ----------------------------------------------------------------------------


class TestCreate:
    async def test_the_secret_is_in_the_201_only(self, users: Users):
        alice = await users.client("alice")
        response = await alice.post("/v1/hooks", json=hook_body(tools=["http_*"]))
        assert response.status_code == 201, response.text
        created = response.json()
        assert set(created) == HOOK_FIELDS | {"secret"}
        assert response.headers["location"] == f"/v1/hooks/{created['id']}"
        assert created["id"].startswith("hook_")

        secret = created["secret"]
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
        signer = Webhook(secret)
        now = datetime.now(UTC)
        headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signer.sign("msg_1", now, "{}")}
        assert signer.verify("{}", headers) == {}

        read = await alice.get(response.headers["location"])
        listed = await alice.get("/v1/hooks")
        assert read.status_code == 200
        assert read.json() == {k: v for k, v in created.items() if k != "secret"}
        assert listed.json()["items"] == [read.json()]
        assert secret not in read.text + listed.text

    async def test_defaults(self, users: Users):
        alice = await users.client("alice")
        created = await create(alice)
        assert {k: created[k] for k in HOOK_FIELDS - {"id", "created_at", "updated_at"}} == {
            "name": "guard", "phase": "pre_tool", "url": GUARD_URL, "agents": [], "tools": [],
            "events": [], "timeout_ms": 5000, "failure_mode": "closed", "enabled": True,
            "all_owners": False, "owner": "alice", "circuit": "closed"}
        assert created["created_at"] == created["updated_at"]

    @pytest.mark.parametrize(("phase", "extra", "mode"), [
        ("pre_tool", {}, "closed"),
        ("post_tool", {}, "open"),
        ("event", {"events": ["run.completed"]}, "open"),
    ])
    async def test_the_failure_mode_defaults_by_phase(
        self, users: Users, phase: str, extra: dict[str, Any], mode: str,
    ):
        alice = await users.client("alice")
        assert (await create(alice, phase=phase, **extra))["failure_mode"] == mode

    async def test_every_field_given(self, users: Users):
        alice = await users.client("alice")
        created = await create(
            alice, name="audit", phase="event", url="http://127.0.0.1:9/events",
            agents=["support", "sales-*"], events=["run.completed", "run.state", "tool.denied"],
            timeout_ms=100, failure_mode="closed", enabled=False)
        assert {k: created[k] for k in ("name", "phase", "url", "agents", "tools", "events",
                                        "timeout_ms", "failure_mode", "enabled")} == {
            "name": "audit", "phase": "event", "url": "http://127.0.0.1:9/events",
            "agents": ["support", "sales-*"], "tools": [],
            "events": ["run.completed", "run.state", "tool.denied"], "timeout_ms": 100,
            "failure_mode": "closed", "enabled": False}

    async def test_a_token_is_needed(self, anonymous: httpx.AsyncClient):
        assert_problem(await anonymous.post("/v1/hooks", json=hook_body()), 401, "unauthorized")
        assert_problem(await anonymous.get("/v1/hooks"), 401, "unauthorized")


class TestValidation:
    async def test_events_on_a_tool_phase(self, users: Users):
        alice = await users.client("alice")
        for phase in ("pre_tool", "post_tool"):
            response = await alice.post("/v1/hooks", json=hook_body(
                phase=phase, events=["run.completed"]))
            assert assert_invalid(response, "body", "events")["type"] == "phase_mismatch"

    async def test_tools_on_an_event_hook(self, users: Users):
        alice = await users.client("alice")
        response = await alice.post("/v1/hooks", json=hook_body(
            phase="event", events=["run.completed"], tools=["http_*"]))
        assert assert_invalid(response, "body", "tools")["type"] == "phase_mismatch"

    async def test_an_event_hook_needs_events(self, users: Users):
        alice = await users.client("alice")
        for body in (hook_body(phase="event"), hook_body(phase="event", events=[])):
            response = await alice.post("/v1/hooks", json=body)
            assert assert_invalid(response, "body", "events")["type"] == "missing"

    async def test_an_unknown_event_type(self, users: Users):
        alice = await users.client("alice")
        for unknown in ("run.exploded", "stream.gap", "Run.Completed"):
            response = await alice.post("/v1/hooks", json=hook_body(
                phase="event", events=["run.completed", unknown]))
            error = assert_invalid(response, "body", "events", 1)
            assert error["type"] == "unknown_event_type"
            assert "run.state" in error["msg"]

    @pytest.mark.parametrize("timeout_ms", [99, 60_001, 0, -1, "5000", 1.5, None])
    async def test_a_bad_timeout(self, users: Users, timeout_ms: Any):
        alice = await users.client("alice")
        response = await alice.post("/v1/hooks", json=hook_body(timeout_ms=timeout_ms))
        assert_invalid(response, "body", "timeout_ms")

    async def test_the_timeout_bounds_are_allowed(self, users: Users):
        alice = await users.client("alice")
        assert (await create(alice, timeout_ms=100))["timeout_ms"] == 100
        assert (await create(alice, timeout_ms=60_000))["timeout_ms"] == 60_000

    @pytest.mark.parametrize("glob", ["", "a b", "x/y", "tool?", "ä", "a" * 65, 5, None])
    @pytest.mark.parametrize("field", ["agents", "tools"])
    async def test_bad_globs(self, users: Users, field: str, glob: Any):
        alice = await users.client("alice")
        response = await alice.post("/v1/hooks", json=hook_body(**{field: ["ok", glob]}))
        assert_invalid(response, "body", field, 1)

    async def test_globs_as_they_may_be(self, users: Users):
        alice = await users.client("alice")
        globs = ["*", "http_*", "Mixed.Case-1", "a" * 64]
        assert (await create(alice, agents=globs, tools=globs))["tools"] == globs

    @pytest.mark.parametrize(("field", "value"), [
        ("name", "Guard"), ("name", ""), ("phase", "before_tool"), ("url", "ftp://x.example/"),
        ("url", "not a url"), ("failure_mode", "ajar"), ("enabled", "yes"),
        ("all_owners", 1), ("secret", "whsec_mine"), ("circuit", "open"),
    ])
    async def test_other_bad_fields(self, users: Users, field: str, value: Any):
        alice = await users.client("alice")
        assert_invalid(await alice.post("/v1/hooks", json=hook_body(**{field: value})),
                       "body", field)

    @pytest.mark.parametrize("field", ["name", "phase", "url", "agents", "tools", "events",
                                       "failure_mode", "enabled", "all_owners"])
    async def test_null_is_refused(self, users: Users, field: str):
        alice = await users.client("alice")
        assert_invalid(await alice.post("/v1/hooks", json=hook_body(**{field: None})),
                       "body", field)

    @pytest.mark.parametrize("field", ["name", "phase", "url"])
    async def test_required_fields(self, users: Users, field: str):
        alice = await users.client("alice")
        body = hook_body()
        del body[field]
        assert assert_invalid(await alice.post("/v1/hooks", json=body),
                              "body", field)["type"] == "missing"


class TestPrivateUrls:
    async def test_an_address_not_allowed_is_refused_without_traffic(self, users: Users):
        alice = await users.client("alice")
        async with Receiver(answer(Reply.text("never")), host="127.0.0.2") as forbidden:
            response = await alice.post("/v1/hooks", json=hook_body(url=forbidden.url("/h")))
            error = assert_invalid(response, "body", "url")
            assert error["type"] == "private_url"
            assert "127.0.0.2" in error["msg"]

            hook = await create(alice)
            patched = await alice.patch(f"/v1/hooks/{hook['id']}",
                                        json={"url": forbidden.url("/h")})
            assert assert_invalid(patched, "body", "url")["type"] == "private_url"
        assert forbidden.connections == 0
        assert (await alice.get(f"/v1/hooks/{hook['id']}")).json()["url"] == GUARD_URL
        assert len((await alice.get("/v1/hooks")).json()["items"]) == 1

    async def test_metadata_addresses_are_refused(self, users: Users):
        alice = await users.client("alice")
        response = await alice.post("/v1/hooks", json=hook_body(
            url="http://169.254.169.254/latest/meta-data"))
        assert assert_invalid(response, "body", "url")["type"] == "private_url"

    async def test_an_allowed_address_is_taken(self, users: Users):
        alice = await users.client("alice")
        assert (await create(alice, url="http://127.0.0.1:9/h"))["url"] == "http://127.0.0.1:9/h"


# -- reading, changing, deleting -------------------------------------------------------------


class TestReadUpdateDelete:
    async def test_list_is_newest_first_and_paged(self, users: Users):
        alice = await users.client("alice")
        ids = [(await create(alice, name=f"h{i}"))["id"] for i in range(3)]
        first = (await alice.get("/v1/hooks?limit=2")).json()
        assert [h["id"] for h in first["items"]] == ids[::-1][:2]
        rest = (await alice.get("/v1/hooks", params={"limit": 2,
                                                     "cursor": first["next_cursor"]})).json()
        assert [h["id"] for h in rest["items"]] == [ids[0]]
        assert rest["next_cursor"] is None

    async def test_a_malformed_cursor(self, users: Users):
        alice = await users.client("alice")
        assert_problem(await alice.get("/v1/hooks?cursor=nope"), 400, "bad_request")

    async def test_patch_replaces_the_fields_present(self, users: Users):
        alice = await users.client("alice")
        hook = await create(alice, tools=["http_*"])
        response = await alice.patch(f"/v1/hooks/{hook['id']}", json={
            "name": "guard-2", "url": "http://127.0.0.1:9/v2", "agents": ["support"],
            "tools": [], "timeout_ms": 250, "failure_mode": "open", "enabled": False})
        assert response.status_code == 200, response.text
        patched = response.json()
        assert {k: patched[k] for k in ("name", "url", "agents", "tools", "timeout_ms",
                                        "failure_mode", "enabled", "phase")} == {
            "name": "guard-2", "url": "http://127.0.0.1:9/v2", "agents": ["support"],
            "tools": [], "timeout_ms": 250, "failure_mode": "open", "enabled": False,
            "phase": "pre_tool"}
        assert "secret" not in patched
        assert patched["created_at"] == hook["created_at"]
        assert moment(patched["updated_at"]) >= moment(hook["updated_at"])
        assert (await alice.get(f"/v1/hooks/{hook['id']}")).json() == patched

    async def test_an_empty_patch_changes_nothing(self, users: Users):
        alice = await users.client("alice")
        hook = await create(alice)
        response = await alice.patch(f"/v1/hooks/{hook['id']}", json={})
        assert response.status_code == 200
        assert response.json() == {k: v for k, v in hook.items() if k != "secret"}

    async def test_patching_events_of_an_event_hook(self, users: Users):
        alice = await users.client("alice")
        hook = await create(alice, phase="event", events=["run.completed"])
        url = f"/v1/hooks/{hook['id']}"
        changed = await alice.patch(url, json={"events": ["run.failed", "run.state"]})
        assert changed.json()["events"] == ["run.failed", "run.state"]
        emptied = await alice.patch(url, json={"events": []})
        assert assert_invalid(emptied, "body", "events")["type"] == "missing"
        tools = await alice.patch(url, json={"tools": ["calculator"]})
        assert assert_invalid(tools, "body", "tools")["type"] == "phase_mismatch"
        unknown = await alice.patch(url, json={"events": ["nope"]})
        assert assert_invalid(unknown, "body", "events", 0)["type"] == "unknown_event_type"
        assert (await alice.get(url)).json()["events"] == ["run.failed", "run.state"]

    async def test_patching_events_of_a_tool_hook(self, users: Users):
        alice = await users.client("alice")
        hook = await create(alice)
        response = await alice.patch(f"/v1/hooks/{hook['id']}",
                                     json={"events": ["run.completed"]})
        assert assert_invalid(response, "body", "events")["type"] == "phase_mismatch"

    async def test_the_phase_cannot_change(self, users: Users):
        alice = await users.client("alice")
        hook = await create(alice)
        response = await alice.patch(f"/v1/hooks/{hook['id']}", json={"phase": "post_tool"})
        assert_invalid(response, "body", "phase")

    @pytest.mark.parametrize("field", ["name", "url", "agents", "tools", "events",
                                       "timeout_ms", "failure_mode", "enabled", "all_owners"])
    async def test_patch_refuses_null(self, users: Users, field: str):
        alice = await users.client("alice")
        hook = await create(alice)
        response = await alice.patch(f"/v1/hooks/{hook['id']}", json={field: None})
        assert assert_invalid(response, "body", field)["type"] == "null_not_allowed"

    async def test_patch_validates_values(self, users: Users):
        alice = await users.client("alice")
        hook = await create(alice)
        url = f"/v1/hooks/{hook['id']}"
        assert_invalid(await alice.patch(url, json={"timeout_ms": 60_001}), "body", "timeout_ms")
        assert_invalid(await alice.patch(url, json={"agents": ["a b"]}), "body", "agents", 0)

    async def test_delete(self, users: Users):
        alice = await users.client("alice")
        hook = await create(alice)
        url = f"/v1/hooks/{hook['id']}"
        await alice.post(f"{url}/test")
        response = await alice.delete(url)
        assert response.status_code == 204 and response.content == b""
        assert_problem(await alice.get(url), 404, "not_found")
        assert_problem(await alice.get(f"{url}/deliveries"), 404, "not_found")
        assert_problem(await alice.delete(url), 404, "not_found")
        assert (await alice.get("/v1/hooks")).json()["items"] == []

    @pytest.mark.parametrize("hook_id", ["hook_missing", "x" * 65, "%20"])
    async def test_an_unknown_id_is_not_found(self, users: Users, hook_id: str):
        alice = await users.client("alice")
        for response in (
            await alice.get(f"/v1/hooks/{hook_id}"),
            await alice.patch(f"/v1/hooks/{hook_id}", json={"enabled": False}),
            await alice.delete(f"/v1/hooks/{hook_id}"),
            await alice.get(f"/v1/hooks/{hook_id}/deliveries"),
            await alice.post(f"/v1/hooks/{hook_id}/test"),
            await alice.post(f"/v1/hooks/{hook_id}/deliveries/dlv_x/retry"),
        ):
            assert_problem(response, 404, "not_found")


# -- owners ----------------------------------------------------------------------------------


class TestOwners:
    async def test_another_users_hook_is_not_found(self, users: Users):
        alice, bob = await users.client("alice"), await users.client("bob")
        hook = await create(alice)
        url = f"/v1/hooks/{hook['id']}"
        for response in (
            await bob.get(url),
            await bob.patch(url, json={"enabled": False}),
            await bob.delete(url),
            await bob.get(f"{url}/deliveries"),
            await bob.post(f"{url}/test"),
        ):
            assert_problem(response, 404, "not_found")
        assert (await bob.get("/v1/hooks")).json()["items"] == []
        assert (await alice.get(url)).json()["enabled"] is True

    async def test_a_user_may_not_address_another_owner(self, users: Users):
        bob = await users.client("bob")
        assert_problem(await bob.get("/v1/hooks?owner=alice"), 403, "forbidden")
        assert_problem(await bob.post("/v1/hooks?owner=alice", json=hook_body()),
                       403, "forbidden")
        assert (await bob.get("/v1/hooks?owner=bob")).status_code == 200

    async def test_an_admin_addresses_any_owner(self, admin: httpx.AsyncClient, users: Users):
        alice, bob = await users.client("alice"), await users.client("bob")
        response = await admin.post("/v1/hooks?owner=alice", json=hook_body(name="for-alice"))
        assert response.status_code == 201, response.text
        for_alice = response.json()
        assert for_alice["owner"] == "alice"
        assert response.headers["location"] == f"/v1/hooks/{for_alice['id']}"
        bobs = await create(bob, name="bobs")
        own = await create(admin, name="admins")
        assert own["owner"] == "admin"

        def names(page: httpx.Response) -> list[str]:
            return [hook["name"] for hook in page.json()["items"]]

        assert names(await alice.get("/v1/hooks")) == ["for-alice"]
        assert names(await admin.get("/v1/hooks?owner=alice")) == ["for-alice"]
        assert names(await admin.get("/v1/hooks")) == ["admins", "bobs", "for-alice"]
        read = await admin.get(f"/v1/hooks/{bobs['id']}")
        assert read.status_code == 200 and read.json()["owner"] == "bob"
        patched = await admin.patch(f"/v1/hooks/{bobs['id']}", json={"enabled": False})
        assert patched.json()["enabled"] is False and patched.json()["owner"] == "bob"

    async def test_an_owner_no_subject_can_have(self, admin: httpx.AsyncClient):
        response = await admin.get("/v1/hooks?owner=no%20such")
        assert_invalid(response, "query", "owner")

    async def test_only_admins_set_all_owners(self, admin: httpx.AsyncClient, users: Users):
        alice = await users.client("alice")
        assert_problem(await alice.post("/v1/hooks", json=hook_body(all_owners=True)),
                       403, "forbidden")
        hook = await create(alice, all_owners=False)
        assert_problem(await alice.patch(f"/v1/hooks/{hook['id']}", json={"all_owners": True}),
                       403, "forbidden")
        assert (await alice.get(f"/v1/hooks/{hook['id']}")).json()["all_owners"] is False
        assert (await create(admin, all_owners=True))["all_owners"] is True


class TestMatching:
    async def test_the_hooks_of_a_run_in_creation_order(
        self, app: FastAPI, admin: httpx.AsyncClient, users: Users,
    ):
        alice, bob = await users.client("alice"), await users.client("bob")
        everyone = await create(admin, name="everyone", all_owners=True)
        support = await create(alice, name="support", agents=["sup*"], tools=["http_*"])
        await create(alice, name="sales", agents=["sales"])
        await create(alice, name="off", enabled=False)
        await create(alice, name="post", phase="post_tool")
        await create(bob, name="bobs")
        await create(admin, name="admins-own")
        every_agent = await create(alice, name="all-agents")

        found = await matching_hooks(app.state.db, "alice", "support", "pre_tool")
        assert [hook.id for hook in found] == [everyone["id"], support["id"],
                                               every_agent["id"]]
        by_name = {hook.name: hook for hook in found}
        assert matches_tool(by_name["support"], "http_get")
        assert not matches_tool(by_name["support"], "calculator")
        assert matches_tool(by_name["all-agents"], "calculator")
        assert [hook.name for hook in await matching_hooks(
            app.state.db, "alice", "support", "post_tool")] == ["post"]
        assert [hook.name for hook in await matching_hooks(
            app.state.db, "carol", "support", "pre_tool")] == ["everyone"]


# -- pings and deliveries --------------------------------------------------------------------


class TestPing:
    async def test_a_signed_ping_is_delivered(self, users: Users):
        alice = await users.client("alice")
        received: list[Any] = []

        def respond(payload: Any) -> Reply:
            received.append(payload)
            return Reply.json({"pong": True})

        async with Receiver() as receiver:
            hook = await create(alice, url=receiver.url("/hook"))
            receiver.handler = tool_endpoint(hook["secret"], respond)
            response = await alice.post(f"/v1/hooks/{hook['id']}/test")
        assert response.status_code == 200, response.text
        delivery = response.json()
        assert set(delivery) == DELIVERY_FIELDS
        assert received == [{"type": "ping", "hook_id": hook["id"], "owner": "alice"}]
        request = receiver.requests[0]
        assert request.method == "POST" and request.target == "/hook"
        assert request.headers["content-type"] == "application/json"
        assert Webhook(hook["secret"]).verify(request.body, request.headers) == received[0]
        assert {k: delivery[k] for k in ("phase", "event_type", "status", "status_code",
                                         "attempt", "error", "run_id", "message_id",
                                         "response_excerpt")} == {
            "phase": "ping", "event_type": "ping", "status": "delivered", "status_code": 200,
            "attempt": 1, "error": None, "run_id": None,
            "message_id": request.headers["webhook-id"], "response_excerpt": '{"pong": true}'}
        assert delivery["id"].startswith("dlv_")
        assert isinstance(delivery["duration_ms"], int) and delivery["duration_ms"] >= 0
        listed = (await alice.get(f"/v1/hooks/{hook['id']}/deliveries")).json()
        assert listed["items"] == [delivery]

    async def test_a_ping_signed_with_another_secret_fails(self, users: Users):
        alice = await users.client("alice")
        other = (await alice.post("/v1/tool-secret")).json()["secret"]
        async with Receiver(tool_endpoint(other, lambda _p: Reply.text("ok"))) as receiver:
            hook = await create(alice, url=receiver.url("/hook"))
            delivery = (await alice.post(f"/v1/hooks/{hook['id']}/test")).json()
        assert delivery["status"] == "failed" and delivery["status_code"] == 401
        assert delivery["response_excerpt"].startswith("bad signature")

    async def test_a_receiver_answering_500(self, users: Users):
        alice = await users.client("alice")
        async with Receiver(answer(Reply.text("it broke", status=500))) as receiver:
            hook = await create(alice, url=receiver.url("/hook"))
            response = await alice.post(f"/v1/hooks/{hook['id']}/test")
        assert response.status_code == 200, response.text
        delivery = response.json()
        assert (delivery["status"], delivery["status_code"], delivery["response_excerpt"],
                delivery["error"]) == ("failed", 500, "it broke", None)

    async def test_a_long_answer_is_cut_to_an_excerpt(self, users: Users):
        """Stored on both backends, although Postgres text cannot hold the NUL it starts with."""
        alice = await users.client("alice")
        async with Receiver(answer(Reply.text("\x00" + "x" * 5000))) as receiver:
            hook = await create(alice, url=receiver.url("/hook"))
            delivery = (await alice.post(f"/v1/hooks/{hook['id']}/test")).json()
        assert delivery["status"] == "delivered"
        assert delivery["response_excerpt"] == "\ufffd" + "x" * 1023

    async def test_a_receiver_that_does_not_answer_in_time(self, users: Users):
        alice = await users.client("alice")
        async with Receiver(hang()) as receiver:
            hook = await create(alice, url=receiver.url("/hook"), timeout_ms=100)
            response = await alice.post(f"/v1/hooks/{hook['id']}/test")
        assert response.status_code == 200, response.text
        delivery = response.json()
        assert (delivery["status"], delivery["status_code"], delivery["response_excerpt"]) == (
            "failed", None, None)
        assert "timed out" in delivery["error"]

    async def test_a_receiver_that_is_not_there(self, users: Users):
        alice = await users.client("alice")
        async with Receiver() as receiver:
            url = receiver.url("/hook")
        hook = await create(alice, url=url)
        delivery = (await alice.post(f"/v1/hooks/{hook['id']}/test")).json()
        assert delivery["status"] == "failed" and delivery["status_code"] is None
        assert "could not connect" in delivery["error"]

    async def test_the_connect_time_guard_applies(self, app: FastAPI, users: Users):
        """A URL that passed registration but now reaches a refused address is not sent to."""
        alice = await users.client("alice")
        hook = await create(alice, url="http://127.0.0.1:9/hook")
        async with Receiver(answer(Reply.text("never")), host="127.0.0.2") as forbidden:
            async with app.state.db.transaction() as db:
                row = await db.get(HookRow, hook["id"])
                row.url = forbidden.url("/hook")
                db.add(row)
            delivery = (await alice.post(f"/v1/hooks/{hook['id']}/test")).json()
        assert forbidden.connections == 0
        assert delivery["status"] == "failed" and delivery["status_code"] is None
        assert "refused" in delivery["error"] and "127.0.0.2" in delivery["error"]


class TestDeliveries:
    async def test_newest_first_and_paged(self, users: Users):
        alice = await users.client("alice")
        answers = iter([Reply.text("first"), Reply.text("second", status=503),
                        Reply.text("third")])

        async def handler(_request: Any) -> Reply:
            return next(answers)

        async with Receiver(handler) as receiver:
            hook = await create(alice, url=receiver.url("/hook"))
            ids = [(await alice.post(f"/v1/hooks/{hook['id']}/test")).json()["id"]
                   for _ in range(3)]
        url = f"/v1/hooks/{hook['id']}/deliveries"
        page = (await alice.get(url)).json()
        assert [d["id"] for d in page["items"]] == ids[::-1]
        assert [d["response_excerpt"] for d in page["items"]] == ["third", "second", "first"]
        assert [d["status"] for d in page["items"]] == ["delivered", "failed", "delivered"]
        assert len({d["message_id"] for d in page["items"]}) == 3
        first = (await alice.get(url, params={"limit": 2})).json()
        rest = (await alice.get(url, params={"limit": 2, "cursor": first["next_cursor"]})).json()
        assert [d["id"] for d in first["items"] + rest["items"]] == ids[::-1]
        assert rest["next_cursor"] is None

    async def test_deliveries_of_one_hook_only(self, users: Users):
        alice = await users.client("alice")
        async with Receiver() as receiver:
            one = await create(alice, name="one", url=receiver.url("/1"))
            other = await create(alice, name="other", url=receiver.url("/2"))
            await alice.post(f"/v1/hooks/{one['id']}/test")
        assert (await alice.get(f"/v1/hooks/{other['id']}/deliveries")).json()["items"] == []


async def insert_delivery(app: FastAPI, hook_id: str, status: str, attempt: int = 8) -> str:
    """A delivery as the sender leaves it (the API never makes `dead` ones itself)."""
    now = datetime.now(UTC)
    delivery = HookDelivery(
        id=new_id("dlv"), hook_id=hook_id, message_id=new_id("msg"), phase="event",
        event_type="run.completed", run_id="run_x", payload={"type": "event"}, status=status,
        attempt=attempt, status_code=503, duration_ms=12, error=None, response_excerpt="down",
        next_attempt_at=None, created_at=now, updated_at=now)
    async with app.state.db.transaction() as db:
        db.add(delivery)
    return delivery.id


class TestRetry:
    async def test_a_dead_delivery_is_queued_again(self, app: FastAPI, users: Users):
        alice = await users.client("alice")
        hook = await create(alice, phase="event", events=["run.completed"])
        delivery_id = await insert_delivery(app, hook["id"], "dead")
        url = f"/v1/hooks/{hook['id']}/deliveries/{delivery_id}/retry"
        before = datetime.now(UTC)
        response = await alice.post(url)
        assert response.status_code == 202, response.text
        retried = response.json()
        assert (retried["id"], retried["status"], retried["attempt"], retried["event_type"],
                retried["run_id"]) == (delivery_id, "pending", 8, "run.completed", "run_x")
        async with app.state.db.read() as db:
            row = await db.get(HookDelivery, delivery_id)
        assert row.status == "pending" and row.next_attempt_at is not None
        assert row.next_attempt_at.replace(tzinfo=row.next_attempt_at.tzinfo or UTC) >= before
        listed = (await alice.get(f"/v1/hooks/{hook['id']}/deliveries")).json()["items"]
        assert listed == [retried]

        again = assert_problem(await alice.post(url), 409, "delivery_not_dead")
        assert again["delivery_status"] == "pending" and "pending" in again["detail"]

    @pytest.mark.parametrize("status", ["pending", "delivered", "failed"])
    async def test_only_a_dead_delivery(self, app: FastAPI, users: Users, status: str):
        alice = await users.client("alice")
        hook = await create(alice, phase="event", events=["run.completed"])
        delivery_id = await insert_delivery(app, hook["id"], status, attempt=1)
        response = await alice.post(f"/v1/hooks/{hook['id']}/deliveries/{delivery_id}/retry")
        assert_problem(response, 409, "delivery_not_dead")
        async with app.state.db.read() as db:
            assert (await db.get(HookDelivery, delivery_id)).status == status

    async def test_a_ping_is_not_retried(self, users: Users):
        alice = await users.client("alice")
        async with Receiver() as receiver:
            hook = await create(alice, url=receiver.url("/hook"))
            ping = (await alice.post(f"/v1/hooks/{hook['id']}/test")).json()
        response = await alice.post(f"/v1/hooks/{hook['id']}/deliveries/{ping['id']}/retry")
        assert_problem(response, 409, "delivery_not_dead")
        assert len(receiver.requests) == 1

    async def test_another_hooks_delivery_is_not_found(self, app: FastAPI, users: Users):
        alice, bob = await users.client("alice"), await users.client("bob")
        hook = await create(alice, phase="event", events=["run.completed"])
        other = await create(alice, name="other", phase="event", events=["run.failed"])
        delivery_id = await insert_delivery(app, hook["id"], "dead")
        for client, hook_id in ((alice, other["id"]), (bob, hook["id"])):
            response = await client.post(
                f"/v1/hooks/{hook_id}/deliveries/{delivery_id}/retry")
            assert_problem(response, 404, "not_found")
        async with app.state.db.read() as db:
            assert (await db.get(HookDelivery, delivery_id)).status == "dead"
