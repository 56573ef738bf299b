"""Authentication (§1.2): the admin token, API keys, `whoami`, admin-only routes, open mode."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import col

from app.main import create_app
from app.store.tables import ApiKey
from tests.conftest import ADMIN_TOKEN, Users, client_for, lifespan_of, make_settings
from tests.problems import assert_problem


def assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


async def list_all_keys(admin: httpx.AsyncClient, limit: int) -> list[dict[str, Any]]:
    """Follow `next_cursor` to the end of the key listing."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await admin.get("/v1/api-keys", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


class TestCreateApiKey:
    async def test_returns_201_with_the_secret_key_once(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post("/v1/api-keys", json={"subject": "alice", "role": "user"})

        assert response.status_code == 201, response.text
        body = response.json()
        assert body["id"].startswith("key_")
        assert body["subject"] == "alice"
        assert body["role"] == "user"
        assert body["created_at"].endswith("Z")
        assert body["key"].startswith("lmd_")
        assert len(body["key"]) >= 4 + 24
        assert response.headers["location"] == f"/v1/api-keys/{body['id']}"

    async def test_role_defaults_to_user(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post("/v1/api-keys", json={"subject": "bob"})

        assert response.status_code == 201
        assert response.json()["role"] == "user"

    async def test_can_issue_an_admin_key(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post("/v1/api-keys", json={"subject": "ops", "role": "admin"})

        assert response.status_code == 201
        assert response.json()["role"] == "admin"

    async def test_every_key_is_distinct(self, users: Users) -> None:
        first, second = await users.key("alice"), await users.key("alice")

        assert first["id"] != second["id"]
        assert first["key"] != second["key"]

    @pytest.mark.parametrize(
        "subject", ["", " alice", "al ice", "alice/bob", "-alice", "x" * 65, "ålice", 42, None]
    )
    async def test_invalid_subject_is_422(self, admin: httpx.AsyncClient, subject: object) -> None:
        response = await admin.post("/v1/api-keys", json={"subject": subject})

        body = assert_problem(response, 422, "validation_error")
        assert ["body", "subject"] in [error["loc"] for error in body["errors"]]

    @pytest.mark.parametrize("role", ["root", "Admin", "", None, 1])
    async def test_invalid_role_is_422(self, admin: httpx.AsyncClient, role: object) -> None:
        response = await admin.post("/v1/api-keys", json={"subject": "alice", "role": role})

        body = assert_problem(response, 422, "validation_error")
        assert ["body", "role"] in [error["loc"] for error in body["errors"]]

    async def test_missing_subject_and_unknown_fields_are_422(
        self, admin: httpx.AsyncClient
    ) -> None:
        missing = await admin.post("/v1/api-keys", json={"role": "user"})
        typo = await admin.post("/v1/api-keys", json={"subject": "alice", "rol": "admin"})

        assert_problem(missing, 422, "validation_error")
        body = assert_problem(typo, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["body", "rol"]

    async def test_the_key_is_stored_only_as_a_hash(self, app: FastAPI, users: Users) -> None:
        created = await users.key("alice")
        secret = created["key"]

        async with app.state.db.read() as session:
            connection = await session.connection()
            rows = (await connection.execute(sa.text("SELECT * FROM api_keys"))).mappings().all()

        assert len(rows) == 1
        stored = {column: str(value) for column, value in rows[0].items()}
        assert stored["id"] == created["id"]
        for column, value in stored.items():
            assert secret not in value, f"the key is stored in clear in {column}"
            assert secret[len("lmd_") + 6:] not in value, f"the key's secret part is in {column}"


class TestListApiKeys:
    async def test_listing_never_shows_the_secret(self, admin: httpx.AsyncClient,
                                                  users: Users) -> None:
        created = await users.key("alice")

        response = await admin.get("/v1/api-keys")

        assert response.status_code == 200
        [item] = response.json()["items"]
        assert item["id"] == created["id"]
        assert item["subject"] == "alice"
        assert item["role"] == "user"
        assert item["created_at"] == created["created_at"]
        assert "key" not in item
        assert created["key"] not in response.text

    async def test_empty_listing(self, admin: httpx.AsyncClient) -> None:
        response = await admin.get("/v1/api-keys")

        assert response.status_code == 200
        assert response.json() == {"items": [], "next_cursor": None}

    async def test_newest_first(self, app: FastAPI, admin: httpx.AsyncClient,
                                users: Users) -> None:
        ids = [(await users.key(f"user{i}"))["id"] for i in range(4)]
        # Keys made in the same millisecond tie; spread them a second apart, oldest first.
        start = datetime(2030, 1, 1, tzinfo=UTC)
        async with app.state.db.transaction() as session:
            connection = await session.connection()
            for offset, key_id in enumerate(ids):
                await connection.execute(
                    sa.update(ApiKey).where(col(ApiKey.id) == key_id)
                    .values(created_at=start + timedelta(seconds=offset))
                )

        response = await admin.get("/v1/api-keys")

        assert [item["id"] for item in response.json()["items"]] == ids[::-1]

    async def test_cursor_pages_through_every_key_once(
        self, admin: httpx.AsyncClient, users: Users
    ) -> None:
        ids = {(await users.key(f"user{i}"))["id"] for i in range(5)}

        first = (await admin.get("/v1/api-keys", params={"limit": 2})).json()
        items = await list_all_keys(admin, limit=2)

        assert len(first["items"]) == 2
        assert first["next_cursor"] is not None
        assert [item["id"] for item in items][:2] == [item["id"] for item in first["items"]]
        assert len(items) == 5
        assert {item["id"] for item in items} == ids
        stamps = [item["created_at"] for item in items]
        assert stamps == sorted(stamps, reverse=True)

    async def test_a_full_last_page_has_no_cursor(self, admin: httpx.AsyncClient,
                                                  users: Users) -> None:
        for i in range(2):
            await users.key(f"user{i}")

        page = (await admin.get("/v1/api-keys", params={"limit": 2})).json()

        assert len(page["items"]) == 2
        assert page["next_cursor"] is None

    @pytest.mark.parametrize("limit", [0, 201, -1, "many"])
    async def test_limit_out_of_range_is_422(self, admin: httpx.AsyncClient,
                                             limit: object) -> None:
        response = await admin.get("/v1/api-keys", params={"limit": str(limit)})

        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["query", "limit"]

    async def test_malformed_cursor_is_400(self, admin: httpx.AsyncClient) -> None:
        response = await admin.get("/v1/api-keys", params={"cursor": "not-a-cursor"})

        assert_problem(response, 400, "bad_request")


class TestDeleteApiKey:
    async def test_revokes_the_key_at_once(self, admin: httpx.AsyncClient, users: Users) -> None:
        alice = await users.client("alice")
        key_id = (await admin.get("/v1/api-keys")).json()["items"][0]["id"]
        assert (await alice.get("/v1/whoami")).status_code == 200

        response = await admin.delete(f"/v1/api-keys/{key_id}")

        assert response.status_code == 204
        assert response.content == b""
        assert_unauthorized(await alice.get("/v1/whoami"))
        assert (await admin.get("/v1/api-keys")).json()["items"] == []

    async def test_other_keys_keep_working(self, admin: httpx.AsyncClient, users: Users) -> None:
        revoked = await users.key("alice")
        kept = await users.client("alice")

        await admin.delete(f"/v1/api-keys/{revoked['id']}")

        assert (await kept.get("/v1/whoami")).json()["subject"] == "alice"

    async def test_unknown_id_is_404(self, admin: httpx.AsyncClient) -> None:
        response = await admin.delete("/v1/api-keys/key_doesnotexist")

        assert_problem(response, 404, "not_found")

    async def test_deleting_twice_is_404(self, admin: httpx.AsyncClient, users: Users) -> None:
        key = await users.key("alice")
        await admin.delete(f"/v1/api-keys/{key['id']}")

        response = await admin.delete(f"/v1/api-keys/{key['id']}")

        assert_problem(response, 404, "not_found")


class TestWhoAmI:
    async def test_admin_token(self, admin: httpx.AsyncClient) -> None:
        response = await admin.get("/v1/whoami")

        assert response.status_code == 200
        assert response.json() == {"subject": "admin", "role": "admin", "open_mode": False}

    async def test_user_key(self, users: Users) -> None:
        alice = await users.client("alice")

        response = await alice.get("/v1/whoami")

        assert response.json() == {"subject": "alice", "role": "user", "open_mode": False}

    async def test_admin_key(self, users: Users) -> None:
        ops = await users.client("ops", role="admin")

        response = await ops.get("/v1/whoami")

        assert response.json() == {"subject": "ops", "role": "admin", "open_mode": False}

    async def test_bearer_scheme_is_case_insensitive(self, anonymous: httpx.AsyncClient) -> None:
        response = await anonymous.get(
            "/v1/whoami", headers={"Authorization": f"bearer {ADMIN_TOKEN}"}
        )

        assert response.status_code == 200
        assert response.json()["subject"] == "admin"


class TestBearerTokenRequired:
    async def test_no_token_is_401_with_www_authenticate(
        self, anonymous: httpx.AsyncClient
    ) -> None:
        assert_unauthorized(await anonymous.get("/v1/whoami"))

    @pytest.mark.parametrize(
        "token",
        [
            "wrong", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1], "lmd_" + "A" * 32, "lmd_",
            "Bearer " + ADMIN_TOKEN, "ünïcödé", "x" * 10_000,
        ],
    )
    async def test_wrong_token_is_401(self, app: FastAPI, token: str) -> None:
        async with client_for(app, None) as client:
            response = await client.get(
                "/v1/whoami", headers={"Authorization": f"Bearer {token}".encode()}
            )

        assert_unauthorized(response)

    @pytest.mark.parametrize(
        "authorization",
        [
            f"Basic {ADMIN_TOKEN}", f"Token {ADMIN_TOKEN}", ADMIN_TOKEN, "Bearer", "Bearer ",
            "", f"Bearer{ADMIN_TOKEN}",
        ],
    )
    async def test_other_authorization_schemes_are_401(
        self, anonymous: httpx.AsyncClient, authorization: str
    ) -> None:
        response = await anonymous.get("/v1/whoami", headers={"Authorization": authorization})

        assert_unauthorized(response)

    async def test_a_user_key_is_not_the_admin_token(self, users: Users,
                                                     anonymous: httpx.AsyncClient) -> None:
        key = await users.key("alice")

        response = await anonymous.get(
            "/v1/whoami", headers={"Authorization": f"Bearer {key['key']}x"}
        )

        assert_unauthorized(response)

    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/v1/agents"), ("POST", "/v1/agents"), ("GET", "/v1/sessions"),
         ("GET", "/v1/api-keys"), ("POST", "/v1/api-keys"), ("DELETE", "/v1/api-keys/key_x")],
    )
    async def test_api_routes_need_a_token(self, anonymous: httpx.AsyncClient, method: str,
                                           path: str) -> None:
        json = {} if method == "POST" else None

        assert_unauthorized(await anonymous.request(method, path, json=json))


class TestAdminOnlyRoutes:
    async def test_user_key_cannot_create_keys(self, users: Users) -> None:
        alice = await users.client("alice")

        response = await alice.post("/v1/api-keys", json={"subject": "alice", "role": "admin"})

        assert_problem(response, 403, "forbidden")

    async def test_user_key_cannot_list_keys(self, users: Users) -> None:
        alice = await users.client("alice")

        assert_problem(await alice.get("/v1/api-keys"), 403, "forbidden")

    async def test_user_key_cannot_delete_keys_not_even_its_own(
        self, admin: httpx.AsyncClient, users: Users
    ) -> None:
        alice = await users.client("alice")
        own_id = (await admin.get("/v1/api-keys")).json()["items"][0]["id"]

        response = await alice.delete(f"/v1/api-keys/{own_id}")

        assert_problem(response, 403, "forbidden")
        assert (await alice.get("/v1/whoami")).status_code == 200

    async def test_admin_key_manages_keys(self, users: Users) -> None:
        ops = await users.client("ops", role="admin")

        created = await ops.post("/v1/api-keys", json={"subject": "carol"})
        listed = await ops.get("/v1/api-keys")
        deleted = await ops.delete(f"/v1/api-keys/{created.json()['id']}")

        assert created.status_code == 201
        assert created.json()["id"] in [item["id"] for item in listed.json()["items"]]
        assert deleted.status_code == 204


@pytest.fixture
async def open_app(database_url: str) -> AsyncIterator[FastAPI]:
    """The service without an admin token."""
    application = create_app(make_settings(database_url, admin_token=None))
    async with lifespan_of(application):
        yield application


class TestOpenMode:
    async def test_no_token_acts_as_the_admin(self, open_app: FastAPI) -> None:
        async with client_for(open_app, None) as client:
            response = await client.get("/v1/whoami")

        assert response.status_code == 200
        assert response.json() == {"subject": "admin", "role": "admin", "open_mode": True}

    async def test_no_token_reaches_admin_routes(self, open_app: FastAPI) -> None:
        async with client_for(open_app, None) as client:
            created = await client.post("/v1/api-keys", json={"subject": "alice"})
            listed = await client.get("/v1/api-keys")

        assert created.status_code == 201
        assert [item["id"] for item in listed.json()["items"]] == [created.json()["id"]]

    async def test_a_valid_key_acts_as_its_subject(self, open_app: FastAPI) -> None:
        async with client_for(open_app, None) as client:
            key = (await client.post("/v1/api-keys", json={"subject": "alice"})).json()
        async with client_for(open_app, key["key"]) as alice:
            whoami = await alice.get("/v1/whoami")
            keys = await alice.get("/v1/api-keys")

        assert whoami.json() == {"subject": "alice", "role": "user", "open_mode": True}
        assert_problem(keys, 403, "forbidden")

    @pytest.mark.parametrize("token", ["wrong", ADMIN_TOKEN, "lmd_" + "A" * 32])
    async def test_an_invalid_token_is_still_401(self, open_app: FastAPI, token: str) -> None:
        async with client_for(open_app, token) as client:
            response = await client.get("/v1/whoami")

        assert_unauthorized(response)

    async def test_a_revoked_key_is_401_not_the_admin(self, open_app: FastAPI) -> None:
        async with client_for(open_app, None) as client:
            key = (await client.post("/v1/api-keys", json={"subject": "alice"})).json()
            await client.delete(f"/v1/api-keys/{key['id']}")
        async with client_for(open_app, key["key"]) as alice:
            response = await alice.get("/v1/whoami")

        assert_unauthorized(response)

    async def test_start_up_warns_about_open_mode(
        self, database_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="loomd")
        application = create_app(make_settings(database_url, admin_token=None))

        async with lifespan_of(application):
            pass

        warnings = [r for r in caplog.records
                    if r.name == "loomd" and r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "open mode" in warnings[0].getMessage()

    async def test_no_warning_with_an_admin_token(
        self, database_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="loomd")
        application = create_app(make_settings(database_url))

        async with lifespan_of(application):
            pass

        assert not [r for r in caplog.records if "open mode" in r.getMessage()]
