"""Errors (§1, §1.1): bad input is a 4xx problem+json with a stable code, never a 5xx."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import ADMIN_TOKEN, client_for, lifespan_of, make_settings
from tests.problems import PROBLEM_JSON, assert_problem

JSON = {"Content-Type": "application/json"}
KIB = 1024
MIB = 1024 * KIB


def error_locs(body: dict[str, Any]) -> list[list[str | int]]:
    return [error["loc"] for error in body["errors"]]


def encoded(value: Any) -> str:
    """A cursor-shaped string: URL-safe base64 of some JSON, as real cursors are."""
    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture
async def session_id(admin: httpx.AsyncClient) -> str:
    """A session of the admin's agent `a`."""
    agent = await admin.post("/v1/agents", json={"name": "a", "model": "scripted:x"})
    assert agent.status_code == 201, agent.text
    session = await admin.post("/v1/sessions", json={"agent": "a"})
    assert session.status_code == 201, session.text
    created: str = session.json()["id"]
    return created


class TestMalformedJson:
    @pytest.mark.parametrize(
        "body", [b"{", b"{'name': 'a'}", b'{"name": "a",}', b"nope", b"\xff\xfe\x00", b"{}{}"]
    )
    async def test_is_400_bad_request(self, admin: httpx.AsyncClient, body: bytes) -> None:
        response = await admin.post("/v1/agents", content=body, headers=JSON)

        assert_problem(response, 400, "bad_request")

    async def test_on_every_write_route(self, admin: httpx.AsyncClient, session_id: str) -> None:
        for method, path in [
            ("POST", "/v1/api-keys"), ("POST", "/v1/agents"), ("PATCH", "/v1/agents/a"),
            ("POST", "/v1/sessions"), ("PATCH", f"/v1/sessions/{session_id}"),
            ("POST", f"/v1/sessions/{session_id}/messages"),
            ("POST", f"/v1/sessions/{session_id}/fork"),
        ]:
            response = await admin.request(method, path, content=b'{"x": ', headers=JSON)

            assert_problem(response, 400, "bad_request")


class TestBodyWithoutJsonContentType:
    @pytest.mark.parametrize("headers", [
        {}, {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "text/plain"},
    ])
    async def test_is_415_saying_what_to_send(
        self, admin: httpx.AsyncClient, headers: dict[str, str]
    ) -> None:
        response = await admin.post("/v1/agents", headers=headers,
                                    content=b'{"name": "a", "model": "scripted:demo"}')

        body = assert_problem(response, 415, "unsupported_media_type")
        assert "send Content-Type: application/json" in body["detail"]

    async def test_a_json_suffix_type_is_json(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post("/v1/agents", headers={"Content-Type": "application/x+json"},
                                    content=b'{"name": "a", "model": "scripted:demo"}')

        assert response.status_code == 201, response.text

    async def test_a_missing_body_is_still_a_422(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post("/v1/agents")

        assert_problem(response, 422, "validation_error")


class TestInvalidPayloads:
    async def test_wrong_types_name_each_field(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post(
            "/v1/agents", json={"name": 5, "model": "scripted:x", "max_turns": "lots"}
        )

        body = assert_problem(response, 422, "validation_error")
        assert ["body", "name"] in error_locs(body)
        assert ["body", "max_turns"] in error_locs(body)
        assert all({"loc", "msg", "type"} <= set(error) for error in body["errors"])

    async def test_nested_fields_are_located(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post(
            "/v1/agents",
            json={"name": "a", "model": "scripted:x", "sampling": {"temperature": "hot"}},
        )

        body = assert_problem(response, 422, "validation_error")
        assert error_locs(body) == [["body", "sampling", "temperature"]]

    async def test_unknown_fields_are_rejected(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post(
            "/v1/agents", json={"name": "a", "model": "scripted:x", "instruction": "typo"}
        )

        body = assert_problem(response, 422, "validation_error")
        assert error_locs(body) == [["body", "instruction"]]
        assert body["errors"][0]["type"] == "extra_forbidden"
        assert (await admin.get("/v1/agents/a")).status_code == 404

    async def test_missing_required_field(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post("/v1/agents", json={"name": "a"})

        body = assert_problem(response, 422, "validation_error")
        assert error_locs(body) == [["body", "model"]]
        assert body["errors"][0]["type"] == "missing"

    @pytest.mark.parametrize("body", [b"[]", b'[{"name": "a"}]', b'"a"', b"42", b"true", b"null"])
    async def test_a_non_object_body_is_422(self, admin: httpx.AsyncClient, body: bytes) -> None:
        response = await admin.post("/v1/agents", content=body, headers=JSON)

        assert_problem(response, 422, "validation_error")

    async def test_huge_instructions_are_422(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post(
            "/v1/agents",
            json={"name": "a", "model": "scripted:x", "instructions": "x" * (300 * KIB)},
        )

        body = assert_problem(response, 422, "validation_error")
        assert error_locs(body) == [["body", "instructions"]]
        assert len(response.content) < 10 * KIB, "the error must not echo the input"

    async def test_huge_title_is_422(self, admin: httpx.AsyncClient, session_id: str) -> None:
        title = "t" * (2 * MIB)

        created = await admin.post("/v1/sessions", json={"agent": "a", "title": title})
        patched = await admin.patch(f"/v1/sessions/{session_id}", json={"title": title})

        assert error_locs(assert_problem(created, 422, "validation_error")) == [["body", "title"]]
        assert error_locs(assert_problem(patched, 422, "validation_error")) == [["body", "title"]]
        assert len(created.content) < 10 * KIB

    async def test_huge_unicode_name_is_422(self, admin: httpx.AsyncClient) -> None:
        response = await admin.post("/v1/agents", json={"name": "ñ" * 100_000, "model": "a:b"})

        assert error_locs(assert_problem(response, 422, "validation_error")) == [["body", "name"]]


@pytest.fixture
async def small_app(database_url: str) -> AsyncIterator[FastAPI]:
    """The service with a 2 KiB body cap."""
    application = create_app(make_settings(database_url, max_body_bytes=2048))
    async with lifespan_of(application):
        yield application


@pytest.fixture
async def small(small_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(small_app, ADMIN_TOKEN) as client:
        yield client


def agent_body(size: int) -> bytes:
    """A valid agent as JSON of exactly `size` bytes (the description pads it)."""
    empty = json.dumps({"name": "big", "model": "scripted:x", "description": ""}).encode()
    padded = json.dumps({"name": "big", "model": "scripted:x",
                         "description": "d" * (size - len(empty))}).encode()
    assert len(padded) == size
    return padded


async def chunks(body: bytes, size: int = 500) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


class TestBodySizeCap:
    async def test_a_body_at_the_cap_is_accepted(self, small: httpx.AsyncClient) -> None:
        response = await small.post("/v1/agents", content=agent_body(2048), headers=JSON)

        assert response.status_code == 201, response.text

    async def test_content_length_over_the_cap_is_413(self, small: httpx.AsyncClient) -> None:
        response = await small.post("/v1/agents", content=agent_body(2049), headers=JSON)

        body = assert_problem(response, 413, "body_too_large")
        assert "2048" in body["detail"]
        assert (await small.get("/v1/agents/big")).status_code == 404

    async def test_chunked_body_over_the_cap_is_413(self, small: httpx.AsyncClient) -> None:
        response = await small.post("/v1/agents", content=chunks(agent_body(4096)), headers=JSON)

        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "body_too_large")
        assert (await small.get("/v1/agents/big")).status_code == 404

    async def test_chunked_body_under_the_cap_is_accepted(self, small: httpx.AsyncClient) -> None:
        response = await small.post("/v1/agents", content=chunks(agent_body(2000)), headers=JSON)

        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert response.status_code == 201, response.text

    async def test_the_cap_applies_before_authentication(self, small_app: FastAPI) -> None:
        async with client_for(small_app, None) as anonymous:
            response = await anonymous.post("/v1/agents", content=b"x" * 5000, headers=JSON)

        assert_problem(response, 413, "body_too_large")

    async def test_the_cap_applies_to_every_write_route(self, small: httpx.AsyncClient) -> None:
        for method, path in [("POST", "/v1/api-keys"), ("PATCH", "/v1/agents/a"),
                             ("POST", "/v1/sessions"), ("POST", "/v1/sessions/ses_x/messages")]:
            sized = await small.request(method, path, content=b" " * 3000, headers=JSON)
            streamed = await small.request(method, path, content=chunks(b" " * 3000),
                                           headers=JSON)

            assert_problem(sized, 413, "body_too_large")
            assert_problem(streamed, 413, "body_too_large")


class TestUnknownRoutes:
    @pytest.mark.parametrize("path", ["/v2/agents", "/v1/nothing", "/v1", "/v1/agents/a/b/c/d"])
    async def test_unknown_route_is_404(self, admin: httpx.AsyncClient, path: str) -> None:
        assert_problem(await admin.get(path), 404, "not_found")

    async def test_a_trailing_slash_is_not_redirected(self, admin: httpx.AsyncClient) -> None:
        assert_problem(await admin.get("/v1/agents/"), 404, "not_found")

    async def test_unknown_route_needs_no_token(self, anonymous: httpx.AsyncClient) -> None:
        assert_problem(await anonymous.get("/v1/nothing"), 404, "not_found")


class TestWrongMethod:
    @pytest.mark.parametrize(
        ("method", "path", "allowed"),
        [
            ("PUT", "/v1/api-keys", {"GET", "POST"}),
            ("GET", "/v1/api-keys/key_x", {"DELETE"}),
            ("DELETE", "/v1/agents", {"GET", "POST"}),
            ("PUT", "/v1/agents/a", {"GET", "PATCH", "DELETE"}),
            ("POST", "/v1/whoami", {"GET"}),
            ("POST", "/healthz", {"GET"}),
            ("PATCH", "/v1/sessions/ses_x/runs", {"GET", "POST"}),
        ],
    )
    async def test_is_405_with_every_allowed_method(
        self, admin: httpx.AsyncClient, method: str, path: str, allowed: set[str]
    ) -> None:
        response = await admin.request(method, path)

        assert_problem(response, 405, "method_not_allowed")
        listed = {m.strip() for m in response.headers["allow"].split(",")}
        assert listed - {"HEAD"} == allowed


class TestInvalidPathIds:
    @pytest.mark.parametrize(
        "session",
        [
            "..%2F", "..%2F..%2Fetc%2Fpasswd", "ses_" + "x" * 200, "x" * 5000, "%C3%B1%E6%BC%A2",
            "%F0%9F%92%A9", "%00", "ses_%00", "%FF%FE", "%20", "%25", "..", "%2E%2E",
        ],
    )
    async def test_sessions_are_404(self, admin: httpx.AsyncClient, session: str) -> None:
        for suffix in ("", "/messages", "/runs"):
            if session == ".." and suffix == "/runs":
                continue  # the client resolves `/v1/sessions/../runs` to `/v1/runs`, a real list
            response = await admin.get(f"/v1/sessions/{session}{suffix}")

            assert_problem(response, 404, "not_found")

    @pytest.mark.parametrize("agent", ["A", "-a", "a" * 65, "a" * 5000, "%C3%B1", "%00", "a%2Fb"])
    async def test_agents_are_404(self, admin: httpx.AsyncClient, agent: str) -> None:
        for suffix in ("", "/versions", "/versions/1"):
            response = await admin.get(f"/v1/agents/{agent}{suffix}")

            assert_problem(response, 404, "not_found")

    @pytest.mark.parametrize("version", ["0", "-1", "abc", "1.5", "9" * 30])
    async def test_impossible_agent_versions_are_404(self, admin: httpx.AsyncClient,
                                                     session_id: str, version: str) -> None:
        response = await admin.get(f"/v1/agents/a/versions/{version}")

        assert_problem(response, 404, "not_found")

    @pytest.mark.parametrize("key", ["key_" + "x" * 100, "%C3%B1", "%00", "..%2F"])
    async def test_api_keys_are_404(self, admin: httpx.AsyncClient, key: str) -> None:
        assert_problem(await admin.delete(f"/v1/api-keys/{key}"), 404, "not_found")

    async def test_writes_to_invalid_ids_are_404(self, admin: httpx.AsyncClient) -> None:
        long_id = "ses_" + "x" * 300
        for method, path, body in [
            ("PATCH", f"/v1/sessions/{long_id}", {"title": "t"}),
            ("POST", f"/v1/sessions/{long_id}/fork", {}),
            ("POST", f"/v1/sessions/{long_id}/messages", {"messages": []}),
            ("DELETE", f"/v1/sessions/{long_id}", None),
            ("PATCH", f"/v1/agents/{'a' * 100}", {"max_turns": 2}),
            ("DELETE", f"/v1/agents/{'a' * 100}", None),
        ]:
            response = await admin.request(method, path, json=body)

            assert_problem(response, 404, "not_found")


MALFORMED_CURSORS = [
    "not-a-cursor", "!!!", "WyI", "%%%", " ", "-1", "1.5", "0x10", "1e3",
    "ñ", "😀", "x" * 500, "²", "١٢", "9" * 40, "99999999999",
    encoded(["0001-01-01T00:00:00+01:00", "key_x"]),  # before year 1 in UTC
    encoded(["9999-12-31T23:59:59-01:00", "key_x"]),  # after year 9999 in UTC
    encoded({"created_at": "2026-01-01T00:00:00Z", "id": "x"}),
    encoded(["yesterday", "key_x"]),
    encoded(["2026-01-01T00:00:00", "key_x"]),  # no time zone
    encoded(["2026-01-01T00:00:00Z", 7]),
    encoded([1, 2]),
    encoded(["2026-01-01T00:00:00Z"]),
    encoded(["2026-01-01T00:00:00Z", "a", "b"]),
    encoded(None),
    encoded("ab"),
    base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
]


class TestInvalidCursors:
    async def test_every_list_route_answers_400(
        self, admin: httpx.AsyncClient, session_id: str
    ) -> None:
        routes = [
            "/v1/api-keys", "/v1/agents", "/v1/agents/a/versions", "/v1/sessions",
            f"/v1/sessions/{session_id}/messages", f"/v1/sessions/{session_id}/runs",
        ]
        for route in routes:
            for cursor in MALFORMED_CURSORS:
                response = await admin.get(route, params={"cursor": cursor})

                assert response.status_code == 400, (route, cursor, response.text)
                assert_problem(response, 400, "bad_request")

    async def test_an_overlong_cursor_is_400(self, admin: httpx.AsyncClient,
                                             session_id: str) -> None:
        for route in ("/v1/api-keys", "/v1/agents/a/versions",
                      f"/v1/sessions/{session_id}/messages"):
            response = await admin.get(route, params={"cursor": "1" * 600})

            assert_problem(response, 400, "bad_request")


class TestRequestId:
    async def test_a_given_request_id_is_echoed(self, admin: httpx.AsyncClient) -> None:
        response = await admin.get("/v1/whoami", headers={"X-Request-ID": "trace-123_abc.def"})

        assert response.headers["x-request-id"] == "trace-123_abc.def"

    async def test_echoed_on_errors_and_in_the_problem(self, admin: httpx.AsyncClient) -> None:
        response = await admin.get("/v1/agents/nope", headers={"X-Request-ID": "req-404"})

        body = assert_problem(response, 404, "not_found")
        assert body["request_id"] == "req-404"
        assert response.headers["x-request-id"] == "req-404"

    async def test_generated_when_not_sent(self, admin: httpx.AsyncClient) -> None:
        first = await admin.get("/v1/whoami")
        second = await admin.get("/v1/whoami")

        assert len(first.headers["x-request-id"]) >= 16
        assert first.headers["x-request-id"] != second.headers["x-request-id"]

    async def test_present_without_a_token(self, anonymous: httpx.AsyncClient) -> None:
        response = await anonymous.get("/v1/whoami")

        body = assert_problem(response, 401, "unauthorized")
        assert body["request_id"]

    @pytest.mark.parametrize("unusable", ["has space", "x" * 201, ""])
    async def test_an_unusable_one_is_replaced(self, admin: httpx.AsyncClient,
                                               unusable: str) -> None:
        response = await admin.get("/v1/whoami", headers={"X-Request-ID": unusable})

        assert response.headers["x-request-id"] not in ("", unusable)
        assert response.headers["x-request-id"].isalnum()


SECRET = "s3cr3t-database-password-in-exception"


@pytest.fixture
async def buggy_app(database_url: str) -> AsyncIterator[FastAPI]:
    """The service with an extra route that fails the way a bug would."""
    application = create_app(make_settings(database_url))

    async def explode() -> None:
        raise RuntimeError(SECRET)

    application.add_api_route("/v1/test-explode", explode, methods=["GET", "POST"],
                              tags=["test"])
    async with lifespan_of(application):
        yield application


class TestUnhandledException:
    async def test_is_a_500_problem_without_a_trace(self, buggy_app: FastAPI) -> None:
        async with client_for(buggy_app, ADMIN_TOKEN) as client:
            response = await client.get("/v1/test-explode", headers={"X-Request-ID": "boom-1"})

        body = assert_problem(response, 500, "internal_error")
        assert body["request_id"] == "boom-1"
        for leak in (SECRET, "RuntimeError", "Traceback", "explode", ".py"):
            assert leak not in response.text

    async def test_the_service_keeps_answering(self, buggy_app: FastAPI) -> None:
        async with client_for(buggy_app, ADMIN_TOKEN) as client:
            failed = await client.post("/v1/test-explode", json={})
            after = await client.get("/v1/whoami")

        assert_problem(failed, 500, "internal_error")
        assert after.status_code == 200


NOT_OBJECTS: list[Any] = [[], [{}], "x", 0, -1.5, True, None]
MALFORMED_BYTES = [
    b"", b"{", b"}", b"[", b"{{}}", b"{'a': 1}", b'{"a": undefined}', b'{"a": 1,}',
    b"\x00", b"\xff\xfe\xfd", b"\xef\xbb\xbf{}", b'{"a": "\xff"}', b'{"a": "\\ud800"}',
    b'{"a": "\\u12"}', b"NaN", b"[" * 50_000, b'{"a":' * 50_000, b"9" * 5000, b"1e999",
    b"--", b"<xml/>", b"a=1&b=2",
]
BAD_VALUES: list[Any] = [
    None, True, 0, -1, 2**31, 2**63, 10**40, -(10**40), 1.5, 1e308, "", " ", "x" * 70_000,
    "ñ😀\u202e", "\r\n", "../..", "'; DROP TABLE agents; --", [], [None], [[[]]], {},
    {"a": None}, {"": 1}, {"x" * 300: 1}, {str(i): i for i in range(100)},
]
FIELDS = [
    "name", "model", "subject", "role", "agent", "title", "metadata", "description",
    "instructions", "tools", "tool_policy", "sampling", "max_turns", "timeout_s",
    "compaction", "provider_options", "messages", "at_seq",
]
NESTED: list[Any] = [
    *({"sampling": {"temperature": value}} for value in (-1, 3, "hot", 1e309)),
    {"sampling": {"stop": []}}, {"sampling": {"stop": [""] * 5}}, {"sampling": {"seed": 2**70}},
    {"tools": [{}]}, {"tools": [{"name": "t"}, {"name": "t"}]}, {"tools": [None]},
    {"tools": [{"type": "function", "name": "x" * 1000}]},
    {"tool_policy": {"allow": None}}, {"tool_policy": {"max_parallel": -1}},
    {"compaction": {"threshold_tokens": 0}}, {"compaction": {"keep_last": 2**70}},
    {"messages": [{}]}, {"messages": [{"role": "robot", "content": "x"}]},
    {"messages": [{"role": "tool", "content": "x", "tool_call_id": "nope"}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]},
    {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[]"}}]}]},
    {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}]},
    {"messages": [{"role": "user", "content": "x"}] * 5000},
    {"metadata": {str(i): i for i in range(65)}},
    {"at_seq": 0}, {"at_seq": 10**30},
]


def malformed_json_bodies() -> list[Any]:
    """Objects that are valid JSON but wrong: each field with each bad value, and more."""
    bodies: list[Any] = [*NOT_OBJECTS, {}, {"unknown": 1}]
    for field in FIELDS:
        for value in BAD_VALUES:
            bodies.append({"name": "zz", "model": "scripted:x", "agent": "a", field: value})
            bodies.append({field: value})
    bodies.extend(NESTED)
    return bodies


class TestNoServerErrorsOnBadInput:
    """A sweep of malformed bodies against every write route: never a 5xx."""

    async def test_every_write_route_answers_4xx_or_success(
        self, admin: httpx.AsyncClient, session_id: str
    ) -> None:
        routes = [
            ("POST", "/v1/api-keys"), ("POST", "/v1/agents"), ("PATCH", "/v1/agents/a"),
            ("POST", "/v1/sessions"), ("PATCH", f"/v1/sessions/{session_id}"),
            ("POST", f"/v1/sessions/{session_id}/messages"),
            ("POST", f"/v1/sessions/{session_id}/fork"),
        ]
        payloads = [json.dumps(body).encode() for body in malformed_json_bodies()]
        payloads += MALFORMED_BYTES
        failures: list[tuple[str, str, bytes, int]] = []
        checked = 0
        for method, path in routes:
            for payload in payloads:
                response = await admin.request(method, path, content=payload, headers=JSON)
                checked += 1
                if response.status_code >= 500:
                    failures.append((method, path, payload[:100], response.status_code))
                elif response.status_code >= 400:
                    assert_problem(response, response.status_code, response.json()["code"])

        assert checked > 5000
        assert failures == []

    async def test_wrong_content_types_are_4xx(self, admin: httpx.AsyncClient) -> None:
        for content_type in ("text/plain", "application/x-www-form-urlencoded",
                             "multipart/form-data; boundary=x", "application/xml", ""):
            response = await admin.post(
                "/v1/agents", content=b'{"name": "a", "model": "scripted:x"}',
                headers={"Content-Type": content_type},
            )

            assert 400 <= response.status_code < 500, (content_type, response.text)
            assert response.headers["content-type"].startswith(PROBLEM_JSON)
