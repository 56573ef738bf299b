"""`/v1/tool-secret`: the owner's key for signing `http` tool calls."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime

from fastapi import FastAPI
from standardwebhooks.webhooks import Webhook

from app.services.tool_secrets import read_secret
from tests.conftest import Users


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_create_then_read(users: Users):
    alice = await users.client("alice")
    created = await alice.post("/v1/tool-secret")
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"owner", "secret", "created_at"}
    assert body["owner"] == "alice"
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) == 32
    Webhook(body["secret"]).sign("msg_1", moment(body["created_at"]), "{}")

    read = await alice.get("/v1/tool-secret")
    assert read.status_code == 200, read.text
    assert read.json() == {"owner": "alice", "created_at": body["created_at"],
                           "secret_prefix": body["secret"][:10]}
    assert body["secret"] not in read.text


async def test_reading_before_one_exists_is_not_found(users: Users):
    alice = await users.client("alice")
    response = await alice.get("/v1/tool-secret")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "POST /v1/tool-secret" in response.json()["detail"]


async def test_creating_again_replaces_the_secret(app: FastAPI, users: Users):
    alice = await users.client("alice")
    first = (await alice.post("/v1/tool-secret")).json()
    second = (await alice.post("/v1/tool-secret")).json()
    assert second["secret"] != first["secret"]
    assert moment(second["created_at"]) >= moment(first["created_at"])
    read = (await alice.get("/v1/tool-secret")).json()
    assert read["secret_prefix"] == second["secret"][:10]
    assert read["created_at"] == second["created_at"]
    assert await read_secret(app.state.db, "alice") == second["secret"]


async def test_the_run_core_reads_the_secret_or_none(app: FastAPI, users: Users):
    alice = await users.client("alice")
    assert await read_secret(app.state.db, "alice") is None
    secret = (await alice.post("/v1/tool-secret")).json()["secret"]
    assert await read_secret(app.state.db, "alice") == secret
    assert await read_secret(app.state.db, "bob") is None


async def test_concurrent_first_creations_leave_one_secret(app: FastAPI, users: Users):
    alice = await users.client("alice")
    responses = await asyncio.gather(*(alice.post("/v1/tool-secret") for _ in range(5)))
    assert [r.status_code for r in responses] == [201] * 5, [r.text for r in responses]
    stored = await read_secret(app.state.db, "alice")
    assert stored in {r.json()["secret"] for r in responses}


class TestOwners:
    async def test_each_owner_has_its_own(self, users: Users):
        alice, bob = await users.client("alice"), await users.client("bob")
        mine = (await alice.post("/v1/tool-secret")).json()
        assert (await bob.get("/v1/tool-secret")).status_code == 404
        theirs = (await bob.post("/v1/tool-secret")).json()
        assert theirs["owner"] == "bob"
        assert (await alice.get("/v1/tool-secret")).json()["secret_prefix"] == (
            mine["secret"][:10])

    async def test_a_user_may_not_address_another_owner(self, users: Users):
        alice, bob = await users.client("alice"), await users.client("bob")
        await alice.post("/v1/tool-secret")
        for response in (await bob.get("/v1/tool-secret?owner=alice"),
                         await bob.post("/v1/tool-secret?owner=alice")):
            assert response.status_code == 403
            assert response.json()["code"] == "forbidden"
        assert (await bob.get("/v1/tool-secret?owner=bob")).status_code == 404

    async def test_an_admin_may_address_any_owner(self, app: FastAPI, admin, users: Users):
        alice = await users.client("alice")
        mine = (await alice.post("/v1/tool-secret")).json()
        read = await admin.get("/v1/tool-secret?owner=alice")
        assert read.status_code == 200
        assert read.json()["secret_prefix"] == mine["secret"][:10]

        rotated = await admin.post("/v1/tool-secret?owner=alice")
        assert rotated.status_code == 201
        assert rotated.json()["owner"] == "alice"
        assert await read_secret(app.state.db, "alice") == rotated.json()["secret"]

    async def test_an_owner_no_subject_can_have_is_a_validation_error(self, admin):
        response = await admin.get("/v1/tool-secret?owner=no%20such")
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["query", "owner"]

    async def test_a_token_is_needed(self, anonymous):
        assert (await anonymous.get("/v1/tool-secret")).status_code == 401
        assert (await anonymous.post("/v1/tool-secret")).status_code == 401
