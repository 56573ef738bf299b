"""Operations (§12, §1.2): liveness, readiness, CORS and the access log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from app import __version__
from app.main import create_app
from app.store.migrate import downgrade, upgrade
from tests.conftest import ADMIN_TOKEN, Users, client_for, lifespan_of, make_settings
from tests.problems import assert_problem

UI = "https://ui.example"


def header_set(response: httpx.Response, name: str) -> set[str]:
    """A comma-separated header's values, lower-cased."""
    return {part.strip().lower() for part in response.headers.get(name, "").split(",")
            if part.strip()}


class TestHealthz:
    async def test_is_ok_with_the_version_without_a_token(
        self, anonymous: httpx.AsyncClient
    ) -> None:
        response = await anonymous.get("/healthz")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {"status": "ok", "version": __version__}
        assert response.headers["x-request-id"]

    async def test_ignores_a_bad_token(self, app: FastAPI) -> None:
        async with client_for(app, "not-a-token") as client:
            response = await client.get("/healthz")

        assert response.status_code == 200

    async def test_answers_in_open_mode_too(self, database_url: str) -> None:
        application = create_app(make_settings(database_url, admin_token=None))
        async with lifespan_of(application), client_for(application, None) as client:
            response = await client.get("/healthz")

        assert response.json()["status"] == "ok"


class TestReadyz:
    async def test_is_200_when_the_schema_is_current(self, anonymous: httpx.AsyncClient) -> None:
        response = await anonymous.get("/readyz")

        assert response.status_code == 200
        assert response.json()["status"] == "ok"

    async def test_is_503_when_the_schema_is_outdated(
        self, app: FastAPI, anonymous: httpx.AsyncClient, database_url: str
    ) -> None:
        assert (await anonymous.get("/readyz")).status_code == 200
        await asyncio.to_thread(downgrade, database_url, "base")
        try:
            response = await anonymous.get("/readyz")
            live = await anonymous.get("/healthz")
        finally:
            # The Postgres test database is shared by the session: put the schema back.
            await asyncio.to_thread(upgrade, database_url)

        body = assert_problem(response, 503, "unavailable")
        assert body["database"] == "outdated"
        assert "Traceback" not in response.text
        assert live.status_code == 200
        assert (await anonymous.get("/readyz")).status_code == 200


@pytest.fixture
async def cors_app(database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url, cors_origins=[UI]))
    async with lifespan_of(application):
        yield application


@pytest.fixture
async def browser(cors_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client without a token, as a browser's preflight is."""
    async with client_for(cors_app, None) as client:
        yield client


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, idempotency-key, last-event-id, "
                                          "content-type",
    }


class TestCors:
    async def test_preflight_from_a_listed_origin_is_allowed(
        self, browser: httpx.AsyncClient
    ) -> None:
        response = await browser.options("/v1/sessions", headers=preflight_headers(UI))

        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == UI
        assert {"authorization", "idempotency-key", "last-event-id", "content-type"} <= (
            header_set(response, "access-control-allow-headers")
        )
        assert "POST" in response.headers["access-control-allow-methods"]

    @pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
    async def test_preflight_allows_every_api_method(self, browser: httpx.AsyncClient,
                                                     method: str) -> None:
        response = await browser.options(
            "/v1/sessions/ses_x", headers=preflight_headers(UI, method)
        )

        assert response.status_code == 200
        assert method in response.headers["access-control-allow-methods"]

    async def test_a_simple_request_exposes_the_api_headers(self, cors_app: FastAPI) -> None:
        async with client_for(cors_app, ADMIN_TOKEN) as client:
            response = await client.get("/v1/whoami", headers={"Origin": UI})

        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == UI
        assert {"x-request-id", "location", "retry-after", "idempotency-replayed",
                "content-location"} <= header_set(response, "access-control-expose-headers")
        assert response.headers["x-request-id"]

    async def test_errors_are_readable_cross_origin(self, browser: httpx.AsyncClient) -> None:
        response = await browser.get("/v1/whoami", headers={"Origin": UI})

        assert_problem(response, 401, "unauthorized")
        assert response.headers["access-control-allow-origin"] == UI
        assert "x-request-id" in header_set(response, "access-control-expose-headers")

    @pytest.mark.parametrize(
        "origin", ["https://evil.example", "http://ui.example", "https://ui.example.evil", "null"]
    )
    async def test_an_unlisted_origin_gets_no_allow_origin(
        self, cors_app: FastAPI, browser: httpx.AsyncClient, origin: str
    ) -> None:
        preflight = await browser.options("/v1/sessions", headers=preflight_headers(origin))
        async with client_for(cors_app, ADMIN_TOKEN) as client:
            simple = await client.get("/v1/whoami", headers={"Origin": origin})

        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code >= 400
        assert "access-control-allow-origin" not in simple.headers
        assert simple.status_code == 200

    @pytest.mark.parametrize(("headers", "refused"), [
        (preflight_headers("https://evil.example"), "origin"),
        ({**preflight_headers(UI), "Access-Control-Request-Headers": "x-secret"}, "headers"),
    ])
    async def test_a_refused_preflight_is_a_problem(
        self, browser: httpx.AsyncClient, headers: dict[str, str], refused: str
    ) -> None:
        response = await browser.options("/v1/sessions", headers=headers)

        body = assert_problem(response, 400, "cors_rejected")
        assert refused in body["detail"]

    async def test_no_cors_headers_unless_configured(self, admin: httpx.AsyncClient) -> None:
        response = await admin.get("/v1/whoami", headers={"Origin": UI})

        assert response.status_code == 200
        assert not [name for name in response.headers if name.startswith("access-control-")]


class TestNoTokenNeeded:
    @pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs"])
    async def test_operational_pages(self, anonymous: httpx.AsyncClient, path: str) -> None:
        assert (await anonymous.get(path)).status_code == 200

    @pytest.mark.parametrize("path", ["/docs", "/redoc"])
    async def test_docs_pages_may_load_nothing_from_outside(
        self, anonymous: httpx.AsyncClient, path: str
    ) -> None:
        page = await anonymous.get(path)

        policy = dict(part.strip().split(" ", 1)
                      for part in page.headers["content-security-policy"].split(";"))
        assert policy["default-src"] == policy["img-src"].split()[0] == "'self'"
        assert "http" not in page.headers["content-security-policy"]
        assert "/docs/assets/" in page.text and "cdn" not in page.text.lower()


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "loomd.access"]


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="loomd.access")
    return caplog


class TestAccessLog:
    async def test_one_record_per_request_with_its_facts(
        self, admin: httpx.AsyncClient, access_log: pytest.LogCaptureFixture
    ) -> None:
        access_log.clear()

        response = await admin.get("/v1/whoami", headers={"X-Request-ID": "log-me-1"})

        [record] = access_records(access_log)
        assert response.status_code == 200
        assert record.levelno == logging.INFO
        facts = vars(record)
        assert facts["method"] == "GET"
        assert facts["path"] == "/v1/whoami"
        assert facts["status"] == 200
        assert isinstance(facts["duration_ms"], int | float)
        assert facts["duration_ms"] >= 0
        assert facts["request_id"] == "log-me-1"
        assert facts["subject"] == "admin"

    async def test_a_generated_request_id_is_logged(
        self, admin: httpx.AsyncClient, access_log: pytest.LogCaptureFixture
    ) -> None:
        access_log.clear()

        response = await admin.get("/healthz")

        [record] = access_records(access_log)
        assert vars(record)["request_id"] == response.headers["x-request-id"]

    async def test_records_the_key_subject(
        self, users: Users, access_log: pytest.LogCaptureFixture
    ) -> None:
        alice = await users.client("alice")
        access_log.clear()

        await alice.post("/v1/agents", json={"name": "a", "model": "scripted:x"})

        [record] = access_records(access_log)
        assert (vars(record)["method"], vars(record)["status"]) == ("POST", 201)
        assert vars(record)["subject"] == "alice"

    async def test_failed_requests_are_logged_with_their_status(
        self, anonymous: httpx.AsyncClient, access_log: pytest.LogCaptureFixture
    ) -> None:
        access_log.clear()

        await anonymous.get("/v1/whoami")
        await anonymous.get("/v1/nothing")

        records = access_records(access_log)
        assert [(vars(r)["path"], vars(r)["status"]) for r in records] == [
            ("/v1/whoami", 401), ("/v1/nothing", 404)
        ]
        assert [vars(r)["subject"] for r in records] == [None, None]

    async def test_a_rejected_oversized_body_is_logged(
        self, database_url: str, access_log: pytest.LogCaptureFixture
    ) -> None:
        application = create_app(make_settings(database_url, max_body_bytes=1024))
        async with lifespan_of(application), client_for(application, ADMIN_TOKEN) as client:
            access_log.clear()
            await client.post("/v1/agents", content=b"x" * 2000)

        [record] = access_records(access_log)
        assert vars(record)["status"] == 413
