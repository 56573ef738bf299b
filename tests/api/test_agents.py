"""`/v1/agents` (API.md §2, with §1 conventions, §1.1 errors, §1.2 auth and §7 tool specs)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.ids import new_id
from app.main import create_app
from app.store.tables import Run as RunRow
from app.store.tables import Session as SessionRow
from tests.conftest import client_for, lifespan_of, make_settings
from tests.problems import assert_problem

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ACTIVE_STATUSES = ("queued", "running", "requires_action", "paused")
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "interrupted")

DEFAULT_TOOL_POLICY = {
    "allow": ["*"], "deny": [], "require_approval": [], "rate_limits": {}, "max_parallel": 8,
    "rules": [], "approval_default": "deny",
}
DEFAULT_SAMPLING = {"temperature": 0.0, "top_p": None, "max_tokens": None, "seed": None,
                    "stop": None}
DEFAULT_COMPACTION = {"enabled": True, "threshold_tokens": 24000, "keep_last": 6}
CONFIG_FIELDS = ("description", "model", "instructions", "tools", "tool_policy", "sampling",
                 "max_turns", "timeout_s", "compaction", "provider_options", "metadata")
AGENT_FIELDS = {*CONFIG_FIELDS, "name", "version", "owner", "created_at", "updated_at"}

FULL_CONFIG: dict[str, Any] = {
    "description": "answers support tickets",
    "model": "openai:gpt-4o-mini",
    "instructions": "You are a helpful support agent.",
    "tools": [
        {"type": "builtin", "name": "calculator"},
        {"type": "http", "name": "lookup_order", "description": "find an order",
         "parameters": {"type": "object", "properties": {"id": {"type": "string"}},
                        "required": ["id"]},
         "url": "https://tools.example.com/orders", "timeout_ms": 5000},
        {"type": "client", "name": "read_local_file", "description": "read a file",
         "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}},
        {"type": "mcp", "server_url": "https://mcp.example.com/mcp",
         "allowed_tools": ["search"], "headers": {"x-team": "support"}, "timeout_ms": 30000},
        {"type": "agent", "name": "researcher", "agent": "researcher",
         "description": "digs deeper"},
    ],
    "tool_policy": {
        "allow": ["*"], "deny": ["sleep"], "require_approval": ["http_*"],
        "rate_limits": {"lookup_order": {"per_minute": 30}}, "max_parallel": 4,
        "rules": [{"tool": "deploy", "argument": "env", "equals": "production",
                   "action": "deny", "reason": "no prod deploys"}],
        "approval_default": "approve",
    },
    "sampling": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 512, "seed": 42,
                 "stop": ["END"]},
    "max_turns": 8,
    "timeout_s": 120,
    "compaction": {"enabled": False, "threshold_tokens": 4096, "keep_last": 2},
    "provider_options": {"reasoning_effort": "low"},
    "metadata": {"team": "support", "tier": 2},
}


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """An `OPENAI_API_KEY`, so `openai:*` agents are accepted (nothing here calls it)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")



def assert_invalid(response: httpx.Response, *loc: str | int) -> dict[str, Any]:
    """A 422 `validation_error` whose `errors` include one located at (or under) `loc`."""
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"], body
    for error in body["errors"]:
        assert set(error) >= {"loc", "msg", "type"}, error
    locations = [tuple(error["loc"]) for error in body["errors"]]
    assert any(found[: len(loc)] == loc for found in locations), (loc, locations)
    return body


async def create_agent(
    client: httpx.AsyncClient, name: str = "support", **fields: Any
) -> dict[str, Any]:
    response = await client.post("/v1/agents", json={"name": name, "model": "scripted:demo",
                                                     **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def get_agent(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await client.get(f"/v1/agents/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def patch_agent(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    response = await client.patch(f"/v1/agents/{name}", json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def version_numbers(client: httpx.AsyncClient, name: str) -> list[int]:
    response = await client.get(f"/v1/agents/{name}/versions")
    assert response.status_code == 200, response.text
    return [item["version"] for item in response.json()["items"]]


def config_of(agent: dict[str, Any]) -> dict[str, Any]:
    return {field: agent[field] for field in CONFIG_FIELDS}


async def add_run(app: FastAPI, owner: str, agent: str, status: str) -> tuple[str, str]:
    """Insert a session and a run of `agent` with `status`; returns (session id, run id)."""
    session_id, run_id = new_id("ses"), new_id("run")
    async with app.state.db.transaction() as db:
        db.add(SessionRow(id=session_id, owner=owner, agent=agent, meta={}, open_tool_calls=[],
                          todos=[], status="running" if status in ACTIVE_STATUSES else "idle"))
        await db.flush()
        db.add(RunRow(id=run_id, session_id=session_id, owner=owner, agent=agent,
                      agent_version=1, status=status, usage={}, meta={}, request={},
                      config={}))
    return session_id, run_id


async def set_run_status(app: FastAPI, run_id: str, status: str) -> None:
    async with app.state.db.transaction() as db:
        run = await db.get(RunRow, run_id)
        assert run is not None
        run.status = status
        db.add(run)


@pytest.fixture
async def alice(users: Any) -> httpx.AsyncClient:
    client: httpx.AsyncClient = await users.client("alice")
    return client


@pytest.fixture
async def bob(users: Any) -> httpx.AsyncClient:
    client: httpx.AsyncClient = await users.client("bob")
    return client


BAD_AUTHORIZATION: dict[str, dict[str, str]] = {
    "missing": {},
    "unknown token": {"Authorization": "Bearer not-a-real-token"},
    "forged key": {"Authorization": "Bearer lmd_forged"},
    "revoked-looking admin token": {"Authorization": "Bearer test-admin-token-old"},
    "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
    "empty bearer": {"Authorization": "Bearer "},
}
# Names that no agent can have; the path segments are sent as written (already URL-encoded).
INVALID_PATH_NAMES = ("Support", "-support", "_support", "sup.port", "s%C3%BCpport",
                      "sup%20port", "a" * 65, "x" * 300)


async def assert_unauthorized(app: FastAPI, method: str, url: str, body: Any = None) -> None:
    """Every flavour of missing or invalid credentials is a 401 with a Bearer challenge."""
    async with client_for(app, None) as client:
        for case, headers in BAD_AUTHORIZATION.items():
            response = await client.request(method, url, headers=headers, json=body)
            assert response.status_code == 401, (case, response.text)
            assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].lower().startswith("bearer"), case


async def assert_invalid_names_not_found(
    client: httpx.AsyncClient, method: str, template: str, body: Any = None
) -> None:
    for name in INVALID_PATH_NAMES:
        response = await client.request(method, template.format(name=name), json=body)
        assert response.status_code == 404, (name, response.text)
        assert_problem(response, 404, "not_found")


# -- POST /v1/agents ------------------------------------------------------------------------


class TestCreateAgent:
    @pytest.fixture
    def settings(self, database_url: str) -> Any:
        """One extra OpenAI-compatible provider, as from `LOOMD_PROVIDERS`."""
        return make_settings(database_url,
                             providers={"local": {"base_url": "http://127.0.0.1:11434/v1"}})

    async def test_minimal_agent_gets_the_documented_defaults(self, alice):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo"})
        assert response.status_code == 201, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["x-request-id"]
        agent = response.json()
        assert set(agent) == AGENT_FIELDS
        assert config_of(agent) == {
            "description": None, "model": "scripted:demo", "instructions": None, "tools": [],
            "tool_policy": DEFAULT_TOOL_POLICY, "sampling": DEFAULT_SAMPLING, "max_turns": 16,
            "timeout_s": 600, "compaction": DEFAULT_COMPACTION, "provider_options": {},
            "metadata": {},
        }
        assert agent["name"] == "support"
        assert agent["version"] == 1
        assert agent["owner"] == "alice"

    async def test_location_header_points_at_the_new_agent(self, alice):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo"})
        assert response.status_code == 201
        location = response.headers["location"]
        assert location.endswith("/v1/agents/support")
        assert (await alice.get(location)).json() == response.json()

    async def test_timestamps_are_rfc3339_utc_with_milliseconds(self, alice):
        agent = await create_agent(alice)
        assert TIMESTAMP.match(agent["created_at"]), agent["created_at"]
        assert TIMESTAMP.match(agent["updated_at"]), agent["updated_at"]
        assert agent["created_at"] == agent["updated_at"]

    async def test_every_field_is_stored_and_returned(self, alice):
        created = await create_agent(alice, **FULL_CONFIG)
        assert config_of(created) == FULL_CONFIG
        assert config_of(await get_agent(alice, "support")) == FULL_CONFIG

    async def test_tool_spec_defaults_are_filled_in(self, alice):
        agent = await create_agent(alice, tools=[
            {"type": "http", "name": "lookup", "url": "https://tools.example.com/lookup"},
            {"type": "client", "name": "pick_file"},
            {"type": "mcp", "server_url": "https://mcp.example.com/mcp"},
        ])
        http, client, mcp = agent["tools"]
        assert http["timeout_ms"] == 10000
        assert http["parameters"] == {"type": "object", "properties": {}}
        assert client["parameters"] == {"type": "object", "properties": {}}
        assert mcp["timeout_ms"] == 60000
        assert mcp["allowed_tools"] is None
        assert mcp["headers"] == {}

    async def test_explicit_zero_temperature_is_kept(self, alice):
        response = await alice.post("/v1/agents", json={
            "name": "support", "model": "scripted:demo",
            "sampling": {"temperature": 0.0, "top_p": 0.5}})
        assert response.status_code == 201
        assert response.json()["sampling"]["temperature"] == 0.0
        assert (await get_agent(alice, "support"))["sampling"]["temperature"] == 0.0

    async def test_sampling_boundaries_are_accepted(self, alice):
        agent = await create_agent(alice, sampling={
            "temperature": 2.0, "top_p": 1.0, "max_tokens": 1, "stop": ["a", "b", "c", "d"]})
        assert agent["sampling"] == {"temperature": 2.0, "top_p": 1.0, "max_tokens": 1,
                                     "seed": None, "stop": ["a", "b", "c", "d"]}

    async def test_a_single_stop_string_is_kept_as_a_string(self, alice):
        agent = await create_agent(alice, sampling={"stop": "END"})
        assert agent["sampling"]["stop"] == "END"

    @pytest.mark.parametrize("name", ["a", "0", "a" * 64, "a-b_c9", "9lives"])
    async def test_valid_names_are_accepted(self, alice, name):
        agent = await create_agent(alice, name)
        assert agent["name"] == name
        assert (await get_agent(alice, name))["name"] == name

    @pytest.mark.parametrize(
        "model", ["openai:gpt-4o-mini", "scripted:demo", "openai:ft:gpt-4o:acme:1",
                  "local:llama3:8b"],
    )
    async def test_model_is_provider_colon_model_split_at_the_first_colon(self, alice, model):
        agent = await create_agent(alice, model=model)
        assert agent["model"] == model

    async def test_scripted_provider_options_are_stored_verbatim(self, alice):
        options = {"script": [
            {"text": "let me check", "tool_calls": [{"name": "calculator",
                                                     "arguments": {"expression": "2+3"}}]},
            {"error": {"status": 429, "message": "slow down"}},
            {"text": "it is 5", "reasoning": "easy", "finish_reason": "stop", "delay_ms": 0},
        ], "chunk_delay_ms": 5}
        agent = await create_agent(alice, provider_options=options)
        assert agent["provider_options"] == options

    async def test_duplicate_name_for_same_owner_is_agent_exists(self, alice):
        await create_agent(alice, "support")
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "openai:gpt-4o"})
        body = assert_problem(response, 409, "agent_exists")
        assert "support" in body["detail"]
        assert (await get_agent(alice, "support"))["model"] == "scripted:demo"

    async def test_another_owner_may_use_the_same_name(self, alice, bob):
        await create_agent(alice, "support", model="scripted:alice")
        theirs = await create_agent(bob, "support", model="scripted:bob")
        assert theirs["owner"] == "bob"
        assert theirs["version"] == 1
        assert (await get_agent(alice, "support"))["model"] == "scripted:alice"
        assert (await get_agent(bob, "support"))["model"] == "scripted:bob"

    async def test_admin_creates_in_another_namespace_with_owner(self, admin, alice):
        response = await admin.post("/v1/agents?owner=alice",
                                    json={"name": "support", "model": "scripted:demo"})
        assert response.status_code == 201, response.text
        assert response.json()["owner"] == "alice"
        assert (await get_agent(alice, "support"))["owner"] == "alice"
        assert_problem(await admin.get("/v1/agents/support"), 404, "not_found")
        follow = await admin.get(response.headers["location"])
        assert follow.status_code == 200, follow.text
        assert follow.json() == response.json()

    async def test_admin_404_names_the_owners_that_have_the_agent(self, admin, alice, bob):
        await create_agent(alice, "support")
        await create_agent(bob, "support")

        body = assert_problem(await admin.get("/v1/agents/support"), 404, "not_found")
        assert "exists for owner(s) alice, bob: use ?owner=alice" in body["detail"]
        patched = await admin.patch("/v1/agents/support", json={"max_turns": 3})
        assert "use ?owner=alice" in assert_problem(patched, 404, "not_found")["detail"]

    async def test_a_user_404_reveals_no_other_owner(self, alice, bob):
        await create_agent(bob, "support")

        body = assert_problem(await alice.get("/v1/agents/support"), 404, "not_found")
        assert "bob" not in body["detail"] and "owner" not in body["detail"]

    async def test_user_may_name_their_own_namespace_with_owner(self, alice):
        response = await alice.post("/v1/agents?owner=alice",
                                    json={"name": "support", "model": "scripted:demo"})
        assert response.status_code == 201
        assert response.json()["owner"] == "alice"

    async def test_user_creating_in_another_namespace_is_forbidden(self, alice, bob):
        response = await alice.post("/v1/agents?owner=bob",
                                    json={"name": "support", "model": "scripted:demo"})
        assert_problem(response, 403, "forbidden")
        assert_problem(await bob.get("/v1/agents/support"), 404, "not_found")

    @pytest.mark.parametrize("owner", ["", "bad owner", "-x", "a" * 65])
    async def test_malformed_owner_is_a_validation_error(self, admin, owner):
        response = await admin.post(f"/v1/agents?owner={owner}",
                                    json={"name": "support", "model": "scripted:demo"})
        assert_invalid(response, "query", "owner")
        assert (await admin.get("/v1/agents")).json()["items"] == []

    async def test_concurrent_creates_of_one_name_make_one_agent(self, alice):
        responses = await asyncio.gather(*(
            alice.post("/v1/agents", json={"name": "support", "model": f"scripted:{i}"})
            for i in range(4)))
        assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
        for response in responses:
            if response.status_code == 409:
                assert_problem(response, 409, "agent_exists")
        winner = next(r.json() for r in responses if r.status_code == 201)
        assert await get_agent(alice, "support") == winner
        assert [a["name"] for a in (await alice.get("/v1/agents")).json()["items"]] == [
            "support"]

    async def test_open_mode_tokenless_caller_creates_as_the_admin(self, database_url):
        application = create_app(make_settings(database_url, admin_token=None))
        async with lifespan_of(application), client_for(application, None) as client:
            response = await client.post("/v1/agents", json={"name": "support",
                                                             "model": "scripted:demo"})
            assert response.status_code == 201, response.text
            assert response.json()["owner"] == "admin"
            forged = await client.get("/v1/agents/support",
                                      headers={"Authorization": "Bearer not-a-key"})
            assert_problem(forged, 401, "unauthorized")

    async def test_owner_in_the_body_is_rejected(self, alice):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo",
                                                        "owner": "bob"})
        assert_invalid(response, "body", "owner")

    async def test_without_a_valid_token_is_unauthorized(self, app):
        await assert_unauthorized(app, "POST", "/v1/agents",
                                  {"name": "support", "model": "scripted:demo"})

    async def test_unauthorized_wins_over_an_invalid_body(self, anonymous):
        response = await anonymous.post("/v1/agents", json={"name": "Bad Name"})
        assert_problem(response, 401, "unauthorized")

    @pytest.mark.parametrize(
        "name", ["", "Support", "-support", "_support", "a" * 65, "sup port", "sup.port",
                 "süpport", "support\n", 42, None],
    )
    async def test_invalid_name_is_a_validation_error(self, alice, name):
        response = await alice.post("/v1/agents", json={"name": name, "model": "scripted:x"})
        assert_invalid(response, "body", "name")

    @pytest.mark.parametrize("missing", ["name", "model"])
    async def test_name_and_model_are_required(self, alice, missing):
        body = {"name": "support", "model": "scripted:demo"}
        del body[missing]
        response = await alice.post("/v1/agents", json=body)
        problem = assert_invalid(response, "body", missing)
        assert any(e["type"] == "missing" for e in problem["errors"])

    @pytest.mark.parametrize(
        "model", ["gpt-4o", ":gpt-4o", "openai:", "OpenAI:gpt-4o", "openai: gpt-4o", "", 7],
    )
    async def test_model_without_provider_prefix_is_a_validation_error(self, alice, model):
        response = await alice.post("/v1/agents", json={"name": "support", "model": model})
        assert_invalid(response, "body", "model")

    async def test_unknown_provider_is_a_validation_error(self, alice):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "anthropic:claude"})
        body = assert_invalid(response, "body", "model")
        assert "anthropic" in body["detail"]
        assert_problem(await alice.get("/v1/agents/support"), 404, "not_found")

    @pytest.mark.parametrize(
        ("tool", "loc"),
        [
            ({"type": "builtin", "name": "rm_rf"}, ("builtin", "name")),
            ({"type": "builtin"}, ("builtin", "name")),
            ({"type": "builtin", "name": "calculator", "url": "https://x.example"},
             ("builtin", "url")),
            ({"type": "http", "name": "lookup", "url": "not a url"}, ("http", "url")),
            ({"type": "http", "name": "lookup", "url": "ftp://files.example.com/x"},
             ("http", "url")),
            ({"type": "http", "name": "lookup"}, ("http", "url")),
            ({"type": "http", "name": "look up", "url": "https://tools.example.com/x"},
             ("http", "name")),
            ({"type": "http", "name": "lookup", "url": "https://tools.example.com/x",
              "timeout_ms": 99}, ("http", "timeout_ms")),
            ({"type": "http", "name": "lookup", "url": "https://tools.example.com/x",
              "timeout_ms": 600_001}, ("http", "timeout_ms")),
            ({"type": "http", "name": "lookup", "url": "https://tools.example.com/x",
              "timeout_ms": "fast"}, ("http", "timeout_ms")),
            ({"type": "http", "name": "lookup", "url": "https://tools.example.com/x",
              "parameters": {"type": "array", "items": {"type": "string"}}},
             ("http", "parameters")),
            ({"type": "client", "name": "pick", "parameters": {"type": "string"}},
             ("client", "parameters")),
            ({"type": "client", "name": "pick", "parameters": ["path"]},
             ("client", "parameters")),
            ({"type": "client", "name": "pick",
              "parameters": {"type": "object", "properties": {"p": {"type": "file"}}}},
             ("client", "parameters")),
            ({"type": "client", "name": "pick",
              "parameters": {"type": "object", "required": "path"}},
             ("client", "parameters")),
            ({"type": "client", "name": "x" * 65}, ("client", "name")),
            ({"type": "mcp", "server_url": "mcp.example.com"}, ("mcp", "server_url")),
            ({"type": "mcp", "server_url": "https://mcp.example.com/mcp", "timeout_ms": 0},
             ("mcp", "timeout_ms")),
            ({"type": "mcp", "server_url": "https://mcp.example.com/mcp",
              "allowed_tools": ["no spaces"]}, ("mcp", "allowed_tools")),
            ({"type": "agent", "name": "research", "agent": "Not An Agent"},
             ("agent", "agent")),
            ({"type": "agent", "name": "research"}, ("agent", "agent")),
            ({"type": "teleport", "name": "beam"}, ()),
            ({"name": "calculator"}, ()),
            ("calculator", ()),
        ],
        ids=["unknown_builtin", "builtin_without_name", "builtin_extra_field", "http_bad_url",
             "http_ftp_url", "http_without_url", "http_bad_name", "http_timeout_too_small",
             "http_timeout_too_large", "http_timeout_not_int", "http_parameters_array",
             "client_parameters_string", "client_parameters_not_object",
             "client_parameters_invalid_schema", "client_parameters_bad_required",
             "client_name_too_long", "mcp_relative_url", "mcp_timeout_zero",
             "mcp_bad_allowed_tool", "agent_bad_agent_name", "agent_without_agent",
             "unknown_type", "missing_type", "not_an_object"],
    )
    async def test_invalid_tool_spec_is_a_validation_error(self, alice, tool, loc):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo",
                                                        "tools": [{"type": "builtin",
                                                                   "name": "sleep"}, tool]})
        assert_invalid(response, "body", "tools", 1, *loc)

    async def test_duplicate_tool_names_are_a_validation_error(self, alice):
        response = await alice.post("/v1/agents", json={
            "name": "support", "model": "scripted:demo",
            "tools": [{"type": "builtin", "name": "calculator"},
                      {"type": "client", "name": "calculator"}]})
        body = assert_invalid(response, "body", "tools")
        assert "calculator" in body["detail"]

    async def test_mcp_servers_do_not_clash_by_name(self, alice):
        agent = await create_agent(alice, tools=[
            {"type": "mcp", "server_url": "https://one.example.com/mcp"},
            {"type": "mcp", "server_url": "https://two.example.com/mcp"},
        ])
        assert len(agent["tools"]) == 2

    @pytest.mark.parametrize(
        ("policy", "field"),
        [({"max_parallel": 0}, "max_parallel"), ({"approval_default": "maybe"},
                                                  "approval_default"),
         ({"deny": ["bad glob!"]}, "deny"), ({"rate_limits": {"x": {"per_minute": 0}}},
                                              "rate_limits"),
         ({"rules": [{"tool": "deploy", "argument": "env", "action": "explode"}]}, "rules"),
         ({"allow_all": True}, "allow_all")],
    )
    async def test_invalid_tool_policy_is_a_validation_error(self, alice, policy, field):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo",
                                                        "tool_policy": policy})
        assert_invalid(response, "body", "tool_policy", field)

    @pytest.mark.parametrize(
        ("sampling", "field"),
        [({"temperature": 2.5}, "temperature"), ({"temperature": -0.1}, "temperature"),
         ({"temperature": "hot"}, "temperature"), ({"top_p": 0}, "top_p"),
         ({"top_p": 1.01}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
         ({"max_tokens": -5}, "max_tokens"), ({"seed": "lucky"}, "seed"),
         ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": []}, "stop"),
         ({"stop": [""]}, "stop"), ({"stop": 5}, "stop")],
        ids=["temperature_2_5", "temperature_negative", "temperature_string", "top_p_0",
             "top_p_above_1", "max_tokens_0", "max_tokens_negative", "seed_string",
             "five_stop_sequences", "empty_stop_list", "empty_stop_sequence", "stop_number"],
    )
    async def test_sampling_out_of_range_is_a_validation_error(self, alice, sampling, field):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo",
                                                        "sampling": sampling})
        assert_invalid(response, "body", "sampling", field)

    @pytest.mark.parametrize(
        ("fields", "loc"),
        [({"max_turns": 0}, ("max_turns",)), ({"max_turns": 1001}, ("max_turns",)),
         ({"max_turns": "many"}, ("max_turns",)), ({"timeout_s": 0}, ("timeout_s",)),
         ({"timeout_s": 86_401}, ("timeout_s",)),
         ({"compaction": {"threshold_tokens": 100}}, ("compaction", "threshold_tokens")),
         ({"compaction": {"keep_last": -1}}, ("compaction", "keep_last")),
         ({"description": "x" * 4097}, ("description",)),
         ({"instructions": "x" * (256 * 1024 + 1)}, ("instructions",)),
         ({"instructions": ["not", "a", "string"]}, ("instructions",)),
         ({"metadata": {f"k{i}": i for i in range(65)}}, ("metadata",)),
         ({"metadata": ["not", "an", "object"]}, ("metadata",)),
         ({"provider_options": "fast"}, ("provider_options",)),
         ({"tools": {"type": "builtin", "name": "calculator"}}, ("tools",))],
        ids=["max_turns_0", "max_turns_1001", "max_turns_string", "timeout_s_0",
             "timeout_s_too_large", "compaction_threshold_small", "compaction_keep_negative",
             "description_too_long", "instructions_too_long", "instructions_list",
             "metadata_65_keys", "metadata_list", "provider_options_string",
             "tools_not_a_list"],
    )
    async def test_out_of_range_field_is_a_validation_error(self, alice, fields, loc):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo", **fields})
        assert_invalid(response, "body", *loc)

    @pytest.mark.parametrize(
        ("fields", "loc"),
        [({"temprature": 0.5}, ("temprature",)), ({"version": 3}, ("version",)),
         ({"created_at": "2026-01-01T00:00:00.000Z"}, ("created_at",)),
         ({"sampling": {"temp": 0.5}}, ("sampling", "temp")),
         ({"compaction": {"enable": False}}, ("compaction", "enable")),
         ({"tools": [{"type": "http", "name": "x", "url": "https://t.example.com/x",
                      "timeout": 5}]}, ("tools", 0, "http", "timeout"))],
    )
    async def test_unknown_field_is_rejected(self, alice, fields, loc):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo", **fields})
        body = assert_invalid(response, "body", *loc)
        assert any(e["type"] == "extra_forbidden" for e in body["errors"])
        assert_problem(await alice.get("/v1/agents/support"), 404, "not_found")

    @pytest.mark.parametrize(
        ("options", "loc"),
        [({"script": [{}]}, ("script", 0)),
         ({"script": [{"reasoning": "hmm"}]}, ("script", 0)),
         ({"script": [{"tool_calls": []}]}, ("script", 0)),
         ({"script": [{"text": "hi", "bogus": 1}]}, ("script", 0, "bogus")),
         ({"script": [{"text": "ok"}, {"error": {"status": 200}}]},
          ("script", 1, "error", "status")),
         ({"script": [{"tool_calls": [{"name": "bad name"}]}]},
          ("script", 0, "tool_calls", 0, "name")),
         ({"script": [{"tool_calls": [{"arguments": {}}]}]},
          ("script", 0, "tool_calls", 0, "name")),
         ({"script": [{"text": "x", "finish_reason": "done"}]},
          ("script", 0, "finish_reason")),
         ({"script": [{"text": "x", "delay_ms": -1}]}, ("script", 0, "delay_ms")),
         ({"script": "say hi"}, ("script",)),
         ({"script": ["say hi"]}, ("script", 0)),
         ({"chunk_delay_ms": -5}, ("chunk_delay_ms",)),
         ({"scirpt": [{"text": "hi"}]}, ("scirpt",))],
        ids=["empty_step", "reasoning_only", "empty_tool_calls", "unknown_step_field",
             "error_status_200", "bad_tool_name", "tool_call_without_name",
             "unknown_finish_reason", "negative_delay", "script_string", "step_string",
             "negative_chunk_delay", "typo_script"],
    )
    async def test_invalid_scripted_steps_are_a_validation_error(self, alice, options, loc):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo",
                                                        "provider_options": options})
        assert_invalid(response, "body", "provider_options", *loc)
        assert_problem(await alice.get("/v1/agents/support"), 404, "not_found")

    @pytest.mark.parametrize(
        ("fields", "loc"),
        [({"instructions": "be\u0000nice"}, ("instructions",)),
         ({"description": "\u0000"}, ("description",)),
         ({"metadata": {"note": "a\u0000b"}}, ("metadata", "note")),
         ({"metadata": {"bad\u0000key": 1}}, ("metadata",)),
         ({"sampling": {"stop": ["\u0000"]}}, ("sampling", "stop")),
         ({"tools": [{"type": "client", "name": "pick", "description": "\u0000"}]},
          ("tools", 0)),
         ({"provider_options": {"script": [{"text": "nul\u0000"}]}},
          ("provider_options", "script", 0, "text"))],
        ids=["instructions", "description", "metadata_value", "metadata_key", "stop",
             "tool_description", "script_text"],
    )
    async def test_nul_character_is_a_validation_error_on_every_backend(self, alice, fields,
                                                                        loc):
        response = await alice.post("/v1/agents", json={"name": "support",
                                                        "model": "scripted:demo", **fields})
        assert_invalid(response, "body", *loc)
        assert_problem(await alice.get("/v1/agents/support"), 404, "not_found")

    async def test_every_invalid_field_is_reported(self, alice):
        response = await alice.post("/v1/agents", json={
            "name": "Bad", "model": "nope", "max_turns": 0, "sampling": {"top_p": 0}})
        body = assert_invalid(response, "body", "name")
        locations = {tuple(e["loc"]) for e in body["errors"]}
        assert {("body", "model"), ("body", "max_turns"), ("body", "sampling", "top_p")} \
            <= locations

    async def test_malformed_json_is_a_bad_request(self, alice):
        response = await alice.post("/v1/agents", content=b'{"name": "support",',
                                    headers={"Content-Type": "application/json"})
        assert_problem(response, 400, "bad_request")

    @pytest.mark.parametrize("body", [[], "support", 7, None])
    async def test_body_that_is_not_an_object_is_a_validation_error(self, alice, body):
        response = await alice.post("/v1/agents", json=body)
        assert_invalid(response, "body")

    async def test_error_echoes_the_callers_request_id(self, alice):
        response = await alice.post("/v1/agents", json={"name": "Bad"},
                                    headers={"X-Request-ID": "trace-1234"})
        body = assert_invalid(response, "body", "name")
        assert body["request_id"] == "trace-1234"


# -- GET /v1/agents -------------------------------------------------------------------------


async def all_pages(
    client: httpx.AsyncClient, url: str, limit: int, key: str = "name"
) -> list[list[Any]]:
    """Follow `next_cursor` to the end; returns the items' `key` on each page."""
    pages: list[list[Any]] = []
    cursor: str | None = None
    separator = "&" if "?" in url else "?"
    while True:
        params = f"{separator}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = await client.get(url + params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append([item[key] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


class TestListAgents:
    async def test_empty_namespace_lists_nothing(self, alice):
        response = await alice.get("/v1/agents")
        assert response.status_code == 200
        assert response.json() == {"items": [], "next_cursor": None}

    async def test_items_are_full_agents_newest_first(self, alice):
        for name in ("first", "second", "third", "fourth"):
            await create_agent(alice, name)
        response = await alice.get("/v1/agents")
        assert response.status_code == 200
        page = response.json()
        assert [item["name"] for item in page["items"]] == ["fourth", "third", "second",
                                                            "first"]
        assert page["next_cursor"] is None
        assert page["items"][0] == await get_agent(alice, "fourth")

    async def test_cursor_pagination_walks_every_agent_once(self, alice):
        names = [f"agent-{i}" for i in range(7)]
        for name in names:
            await create_agent(alice, name)
        pages = await all_pages(alice, "/v1/agents", limit=3)
        assert [len(page) for page in pages] == [3, 3, 1]
        assert [name for page in pages for name in page] == names[::-1]

    async def test_default_page_size_is_50(self, alice):
        for index in range(51):
            await create_agent(alice, f"agent-{index}")
        page = (await alice.get("/v1/agents")).json()
        assert len(page["items"]) == 50
        assert page["items"][0]["name"] == "agent-50"
        rest = (await alice.get(f"/v1/agents?cursor={page['next_cursor']}")).json()
        assert [item["name"] for item in rest["items"]] == ["agent-0"]
        assert rest["next_cursor"] is None

    async def test_last_full_page_has_no_next_cursor(self, alice):
        for name in ("one", "two"):
            await create_agent(alice, name)
        response = await alice.get("/v1/agents?limit=2")
        assert len(response.json()["items"]) == 2
        assert response.json()["next_cursor"] is None

    async def test_agent_created_while_paging_does_not_shift_later_pages(self, alice):
        for name in ("a1", "a2", "a3", "a4"):
            await create_agent(alice, name)
        first = (await alice.get("/v1/agents?limit=2")).json()
        assert [item["name"] for item in first["items"]] == ["a4", "a3"]
        await create_agent(alice, "a5")
        second = (await alice.get(f"/v1/agents?limit=2&cursor={first['next_cursor']}")).json()
        assert [item["name"] for item in second["items"]] == ["a2", "a1"]
        assert second["next_cursor"] is None

    async def test_user_sees_only_their_own_agents(self, alice, bob):
        await create_agent(alice, "mine")
        await create_agent(bob, "theirs")
        await create_agent(bob, "mine")
        items = (await alice.get("/v1/agents")).json()["items"]
        assert [(item["name"], item["owner"]) for item in items] == [("mine", "alice")]

    async def test_admin_sees_every_owners_agents_each_with_its_owner(self, admin, alice, bob):
        await create_agent(alice, "support")
        await create_agent(bob, "support")
        await create_agent(admin, "ops")
        items = (await admin.get("/v1/agents")).json()["items"]
        assert [(item["name"], item["owner"]) for item in items] == [
            ("ops", "admin"), ("support", "bob"), ("support", "alice")]

    async def test_admin_pages_across_owners(self, admin, alice, bob):
        for client, name in ((alice, "a1"), (bob, "b1"), (alice, "a2"), (bob, "b2")):
            await create_agent(client, name)
        pages = await all_pages(admin, "/v1/agents", limit=3)
        assert pages == [["b2", "a2", "b1"], ["a1"]]

    async def test_admin_owner_filter_lists_one_namespace(self, admin, alice, bob):
        await create_agent(alice, "support")
        await create_agent(bob, "billing")
        items = (await admin.get("/v1/agents?owner=bob")).json()["items"]
        assert [(item["name"], item["owner"]) for item in items] == [("billing", "bob")]
        assert (await admin.get("/v1/agents?owner=nobody")).json()["items"] == []

    async def test_user_may_filter_by_their_own_name(self, alice):
        await create_agent(alice, "support")
        items = (await alice.get("/v1/agents?owner=alice")).json()["items"]
        assert [item["name"] for item in items] == ["support"]

    async def test_user_owner_filter_of_someone_else_is_forbidden(self, alice, bob):
        await create_agent(bob, "support")
        assert_problem(await alice.get("/v1/agents?owner=bob"), 403, "forbidden")

    @pytest.mark.parametrize("owner", ["", "bad owner", "a" * 65])
    async def test_malformed_owner_is_a_validation_error(self, admin, owner):
        await create_agent(admin, "ops")
        assert_invalid(await admin.get(f"/v1/agents?owner={owner}"), "query", "owner")

    @pytest.mark.parametrize("limit", ["0", "201", "-1", "ten"])
    async def test_limit_out_of_range_is_a_validation_error(self, alice, limit):
        assert_invalid(await alice.get(f"/v1/agents?limit={limit}"), "query", "limit")

    async def test_limit_bounds_are_accepted(self, alice):
        await create_agent(alice, "support")
        for limit in (1, 200):
            response = await alice.get(f"/v1/agents?limit={limit}")
            assert response.status_code == 200, response.text
            assert len(response.json()["items"]) == 1

    @pytest.mark.parametrize(
        "cursor", ["garbage", "bm90LWpzb24", "WyJub3QtYS10aW1lIiwiYWd0X3giXQ", "W10", "%00"],
        ids=["not_base64", "not_json", "not_a_timestamp", "empty_list", "nul"],
    )
    async def test_malformed_cursor_is_a_bad_request(self, alice, cursor):
        await create_agent(alice, "support")
        assert_problem(await alice.get(f"/v1/agents?cursor={cursor}"), 400, "bad_request")

    async def test_without_a_valid_token_is_unauthorized(self, app):
        await assert_unauthorized(app, "GET", "/v1/agents")


# -- GET /v1/agents/{agent_name} ------------------------------------------------------------


class TestGetAgent:
    async def test_returns_the_current_version(self, alice):
        created = await create_agent(alice, **FULL_CONFIG)
        response = await alice.get("/v1/agents/support")
        assert response.status_code == 200
        assert response.json() == created

    async def test_after_a_patch_returns_the_new_version(self, alice):
        await create_agent(alice)
        patched = await patch_agent(alice, "support", max_turns=3)
        current = await get_agent(alice, "support")
        assert current == patched
        assert current["version"] == 2
        assert current["max_turns"] == 3

    async def test_unknown_name_is_not_found(self, alice):
        body = assert_problem(await alice.get("/v1/agents/ghost"), 404, "not_found")
        assert "ghost" in body["detail"]

    async def test_invalid_name_in_the_path_is_not_found(self, alice):
        await assert_invalid_names_not_found(alice, "GET", "/v1/agents/{name}")

    async def test_another_users_agent_is_not_found(self, alice, bob):
        await create_agent(alice, "secret")
        assert_problem(await bob.get("/v1/agents/secret"), 404, "not_found")

    async def test_each_owner_reads_their_own_agent_of_a_shared_name(self, alice, bob):
        await create_agent(alice, "support", instructions="alice's")
        await create_agent(bob, "support", instructions="bob's")
        assert (await get_agent(alice, "support"))["instructions"] == "alice's"
        assert (await get_agent(bob, "support"))["instructions"] == "bob's"

    async def test_admin_reads_another_owners_agent_with_owner(self, admin, alice):
        created = await create_agent(alice, "support")
        assert_problem(await admin.get("/v1/agents/support"), 404, "not_found")
        response = await admin.get("/v1/agents/support?owner=alice")
        assert response.status_code == 200
        assert response.json() == created

    async def test_user_owner_of_someone_else_is_forbidden(self, alice, bob):
        await create_agent(bob, "support")
        assert_problem(await alice.get("/v1/agents/support?owner=bob"), 403, "forbidden")

    async def test_user_owner_of_themselves_is_allowed(self, alice):
        await create_agent(alice, "support")
        response = await alice.get("/v1/agents/support?owner=alice")
        assert response.status_code == 200
        assert response.json()["owner"] == "alice"

    async def test_without_a_valid_token_is_unauthorized(self, app, admin):
        await create_agent(admin, "support")
        await assert_unauthorized(app, "GET", "/v1/agents/support")

    async def test_unsupported_method_is_a_problem(self, alice):
        await create_agent(alice, "support")
        response = await alice.put("/v1/agents/support",
                                   json={"name": "support", "model": "scripted:demo"})
        assert_problem(response, 405, "method_not_allowed")


# -- PATCH /v1/agents/{agent_name} ----------------------------------------------------------


class TestUpdateAgent:
    async def test_present_field_is_replaced_and_version_increments(self, alice):
        created = await create_agent(alice, **FULL_CONFIG)
        patched = await patch_agent(alice, "support", instructions="Be brief.")
        assert patched["version"] == 2
        assert patched["instructions"] == "Be brief."
        untouched = {k: v for k, v in config_of(created).items() if k != "instructions"}
        assert {k: v for k, v in config_of(patched).items() if k != "instructions"} == untouched
        assert patched["name"] == "support"
        assert patched["owner"] == "alice"
        assert patched["created_at"] == created["created_at"]
        assert TIMESTAMP.match(patched["updated_at"])
        assert patched["updated_at"] >= created["updated_at"]

    async def test_object_field_is_replaced_whole_not_merged(self, alice):
        await create_agent(alice, sampling={"temperature": 0.9, "max_tokens": 100})
        patched = await patch_agent(alice, "support", sampling={"top_p": 0.5})
        assert patched["sampling"] == {**DEFAULT_SAMPLING, "top_p": 0.5}
        assert patched["sampling"]["temperature"] == 0.0

    async def test_metadata_is_replaced_not_merged(self, alice):
        await create_agent(alice, metadata={"a": 1, "b": 2})
        assert (await patch_agent(alice, "support", metadata={"c": 3}))["metadata"] == {"c": 3}

    async def test_tool_policy_is_replaced_whole(self, alice):
        await create_agent(alice, tool_policy={"deny": ["sleep"], "max_parallel": 2})
        patched = await patch_agent(alice, "support", tool_policy={"require_approval": ["*"]})
        assert patched["tool_policy"] == {**DEFAULT_TOOL_POLICY, "require_approval": ["*"]}

    async def test_tools_are_replaced_whole(self, alice):
        await create_agent(alice, tools=[{"type": "builtin", "name": "calculator"},
                                         {"type": "builtin", "name": "sleep"}])
        patched = await patch_agent(alice, "support",
                                    tools=[{"type": "builtin", "name": "current_time"}])
        assert patched["tools"] == [{"type": "builtin", "name": "current_time"}]
        assert (await patch_agent(alice, "support", tools=[]))["tools"] == []

    @pytest.mark.parametrize("field", ["description", "instructions"])
    async def test_null_clears_a_nullable_field(self, alice, field):
        await create_agent(alice, description="old", instructions="old")
        patched = await patch_agent(alice, "support", **{field: None})
        assert patched[field] is None
        assert patched["version"] == 2
        assert (await get_agent(alice, "support"))[field] is None

    @pytest.mark.parametrize(
        "field", ["model", "tools", "tool_policy", "sampling", "max_turns", "timeout_s",
                  "compaction", "provider_options", "metadata"],
    )
    async def test_null_on_a_non_nullable_field_is_a_validation_error(self, alice, field):
        created = await create_agent(alice, **FULL_CONFIG)
        response = await alice.patch("/v1/agents/support", json={field: None})
        assert_invalid(response, "body", field)
        assert await get_agent(alice, "support") == created

    async def test_explicit_zero_temperature_is_kept(self, alice):
        await create_agent(alice, sampling={"temperature": 0.8})
        patched = await patch_agent(alice, "support", sampling={"temperature": 0.0})
        assert patched["sampling"]["temperature"] == 0.0
        assert patched["version"] == 2
        assert (await get_agent(alice, "support"))["sampling"]["temperature"] == 0.0

    async def test_new_version_appears_while_old_version_keeps_old_config(self, alice):
        created = await create_agent(alice, model="scripted:v1", max_turns=4)
        await patch_agent(alice, "support", model="scripted:v2")
        assert await version_numbers(alice, "support") == [2, 1]
        old = (await alice.get("/v1/agents/support/versions/1")).json()
        assert config_of(old) == config_of(created)
        new = (await alice.get("/v1/agents/support/versions/2")).json()
        assert new["model"] == "scripted:v2"
        assert new["max_turns"] == 4

    async def test_patch_that_changes_nothing_keeps_the_version(self, alice):
        created = await create_agent(alice, **FULL_CONFIG)
        for body in ({}, {"max_turns": FULL_CONFIG["max_turns"]},
                     {"sampling": FULL_CONFIG["sampling"]}, {"tools": FULL_CONFIG["tools"]},
                     {"description": FULL_CONFIG["description"]}, FULL_CONFIG):
            response = await alice.patch("/v1/agents/support", json=body)
            assert response.status_code == 200, response.text
            assert response.json() == created, body
        assert await version_numbers(alice, "support") == [1]

    async def test_patching_defaults_to_their_own_values_keeps_the_version(self, alice):
        created = await create_agent(alice)
        response = await alice.patch("/v1/agents/support", json={
            "description": None, "sampling": {"temperature": 0.0}, "max_turns": 16,
            "tool_policy": {}, "compaction": {}, "metadata": {}})
        assert response.status_code == 200
        assert response.json() == created
        assert await version_numbers(alice, "support") == [1]

    async def test_each_change_makes_one_more_version(self, alice):
        await create_agent(alice)
        for turns in (2, 3, 4):
            patched = await patch_agent(alice, "support", max_turns=turns)
        assert patched["version"] == 4
        assert await version_numbers(alice, "support") == [4, 3, 2, 1]

    async def test_concurrent_changes_each_make_their_own_version(self, alice):
        await create_agent(alice)
        responses = await asyncio.gather(*(
            alice.patch("/v1/agents/support", json={"max_turns": turns})
            for turns in (2, 3, 4, 5)))
        assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
        assert sorted(r.json()["version"] for r in responses) == [2, 3, 4, 5]
        assert await version_numbers(alice, "support") == [5, 4, 3, 2, 1]
        for response in responses:
            version = response.json()["version"]
            stored = (await alice.get(f"/v1/agents/support/versions/{version}")).json()
            assert stored["max_turns"] == response.json()["max_turns"]
        last = next(r.json() for r in responses if r.json()["version"] == 5)
        assert await get_agent(alice, "support") == last

    async def test_nul_character_is_a_validation_error_and_changes_nothing(self, alice):
        created = await create_agent(alice)
        response = await alice.patch("/v1/agents/support",
                                     json={"metadata": {"note": "a\u0000b"}})
        assert_invalid(response, "body", "metadata", "note")
        assert await get_agent(alice, "support") == created

    async def test_model_can_switch_provider(self, alice):
        await create_agent(alice, provider_options={"script": [{"text": "hi"}]})
        patched = await patch_agent(alice, "support", model="openai:gpt-4o")
        assert patched["model"] == "openai:gpt-4o"

    async def test_switching_to_scripted_checks_the_kept_provider_options(self, alice):
        await create_agent(alice, model="openai:gpt-4o", provider_options={"seed_mode": 1})
        response = await alice.patch("/v1/agents/support", json={"model": "scripted:demo"})
        assert_invalid(response, "body", "provider_options", "seed_mode")
        assert (await get_agent(alice, "support"))["version"] == 1

    @pytest.mark.parametrize(
        ("body", "loc"),
        [({"model": "gpt-4o"}, ("model",)), ({"model": "anthropic:claude"}, ("model",)),
         ({"sampling": {"temperature": 2.5}}, ("sampling", "temperature")),
         ({"sampling": {"top_p": 0}}, ("sampling", "top_p")),
         ({"sampling": {"max_tokens": 0}}, ("sampling", "max_tokens")),
         ({"sampling": {"stop": ["1", "2", "3", "4", "5"]}}, ("sampling", "stop")),
         ({"max_turns": 0}, ("max_turns",)),
         ({"tools": [{"type": "builtin", "name": "rm_rf"}]}, ("tools", 0, "builtin", "name")),
         ({"tools": [{"type": "http", "name": "x", "url": "nope"}]}, ("tools", 0, "http",
                                                                     "url")),
         ({"tools": [{"type": "builtin", "name": "sleep"}, {"type": "client", "name": "sleep"}]},
          ("tools",)),
         ({"provider_options": {"script": [{}]}}, ("provider_options", "script", 0)),
         ({"temprature": 0.5}, ("temprature",)), ({"name": "renamed"}, ("name",)),
         ({"version": 7}, ("version",)), ({"owner": "bob"}, ("owner",))],
        ids=["model_without_provider", "unknown_provider", "temperature_2_5", "top_p_0",
             "max_tokens_0", "five_stops", "max_turns_0", "unknown_builtin", "bad_http_url",
             "duplicate_tool_names", "bad_script_step", "typo", "rename", "version",
             "owner"],
    )
    async def test_invalid_patch_is_a_validation_error_and_changes_nothing(self, alice, body,
                                                                           loc):
        created = await create_agent(alice)
        response = await alice.patch("/v1/agents/support", json=body)
        assert_invalid(response, "body", *loc)
        assert await get_agent(alice, "support") == created
        assert await version_numbers(alice, "support") == [1]

    @pytest.mark.parametrize("body", [[], [{"max_turns": 2}], "max_turns", 2])
    async def test_body_that_is_not_an_object_is_a_validation_error(self, alice, body):
        created = await create_agent(alice)
        assert_invalid(await alice.patch("/v1/agents/support", json=body), "body")
        assert await get_agent(alice, "support") == created

    async def test_malformed_json_is_a_bad_request(self, alice):
        await create_agent(alice)
        response = await alice.patch("/v1/agents/support", content=b"{max_turns: 2}",
                                     headers={"Content-Type": "application/json"})
        assert_problem(response, 400, "bad_request")

    async def test_unknown_name_is_not_found(self, alice):
        response = await alice.patch("/v1/agents/ghost", json={"max_turns": 2})
        assert_problem(response, 404, "not_found")
        assert_problem(await alice.get("/v1/agents/ghost"), 404, "not_found")

    async def test_invalid_name_in_the_path_is_not_found(self, alice):
        await assert_invalid_names_not_found(alice, "PATCH", "/v1/agents/{name}",
                                             {"max_turns": 2})

    async def test_another_users_agent_is_not_found_and_unchanged(self, alice, bob):
        created = await create_agent(alice, "support")
        response = await bob.patch("/v1/agents/support", json={"max_turns": 2})
        assert_problem(response, 404, "not_found")
        assert await get_agent(alice, "support") == created

    async def test_patch_touches_only_the_callers_agent_of_a_shared_name(self, alice, bob):
        alices = await create_agent(alice, "support")
        await create_agent(bob, "support")
        patched = await patch_agent(bob, "support", max_turns=2)
        assert patched["owner"] == "bob"
        assert patched["version"] == 2
        assert await get_agent(alice, "support") == alices

    async def test_admin_patches_another_owners_agent_with_owner(self, admin, alice):
        await create_agent(alice, "support")
        response = await admin.patch("/v1/agents/support?owner=alice", json={"max_turns": 2})
        assert response.status_code == 200, response.text
        assert response.json()["owner"] == "alice"
        assert (await get_agent(alice, "support"))["max_turns"] == 2
        response = await admin.patch("/v1/agents/support", json={"max_turns": 3})
        assert_problem(response, 404, "not_found")

    async def test_user_owner_of_someone_else_is_forbidden(self, alice, bob):
        await create_agent(bob, "support")
        response = await alice.patch("/v1/agents/support?owner=bob", json={"max_turns": 2})
        assert_problem(response, 403, "forbidden")
        assert (await get_agent(bob, "support"))["version"] == 1

    async def test_without_a_valid_token_is_unauthorized(self, app, admin):
        await create_agent(admin, "support")
        await assert_unauthorized(app, "PATCH", "/v1/agents/support",
                                  {"max_turns": 2})
        assert (await get_agent(admin, "support"))["version"] == 1


# -- DELETE /v1/agents/{agent_name} ---------------------------------------------------------


class TestDeleteAgent:
    async def test_delete_removes_the_agent_and_its_versions(self, alice):
        await create_agent(alice)
        await patch_agent(alice, "support", max_turns=2)
        response = await alice.delete("/v1/agents/support")
        assert response.status_code == 204
        assert response.content == b""
        assert_problem(await alice.get("/v1/agents/support"), 404, "not_found")
        assert_problem(await alice.get("/v1/agents/support/versions"), 404, "not_found")
        assert_problem(await alice.get("/v1/agents/support/versions/1"), 404, "not_found")
        assert (await alice.get("/v1/agents")).json()["items"] == []

    async def test_deleting_twice_is_not_found(self, alice):
        await create_agent(alice)
        assert (await alice.delete("/v1/agents/support")).status_code == 204
        assert_problem(await alice.delete("/v1/agents/support"), 404, "not_found")

    async def test_name_can_be_reused_and_starts_a_fresh_history(self, alice):
        await create_agent(alice, model="scripted:old")
        await patch_agent(alice, "support", max_turns=2)
        assert (await alice.delete("/v1/agents/support")).status_code == 204
        recreated = await create_agent(alice, model="scripted:new")
        assert recreated["version"] == 1
        assert recreated["max_turns"] == 16
        assert await version_numbers(alice, "support") == [1]
        assert_problem(await alice.get("/v1/agents/support/versions/2"), 404, "not_found")

    async def test_unknown_name_is_not_found(self, alice):
        assert_problem(await alice.delete("/v1/agents/ghost"), 404, "not_found")

    async def test_invalid_name_in_the_path_is_not_found(self, alice):
        await assert_invalid_names_not_found(alice, "DELETE", "/v1/agents/{name}")

    async def test_another_users_agent_is_not_found_and_kept(self, alice, bob):
        created = await create_agent(alice, "support")
        assert_problem(await bob.delete("/v1/agents/support"), 404, "not_found")
        assert await get_agent(alice, "support") == created

    async def test_delete_touches_only_the_callers_agent_of_a_shared_name(self, alice, bob):
        alices = await create_agent(alice, "support")
        await create_agent(bob, "support")
        assert (await bob.delete("/v1/agents/support")).status_code == 204
        assert_problem(await bob.get("/v1/agents/support"), 404, "not_found")
        assert await get_agent(alice, "support") == alices

    @pytest.mark.parametrize("status", ACTIVE_STATUSES)
    async def test_agent_with_an_active_run_is_a_conflict(self, app, alice, status):
        created = await create_agent(alice, "support")
        await add_run(app, "alice", "support", status)
        body = assert_problem(await alice.delete("/v1/agents/support"), 409, "conflict")
        assert body["active_runs"] == 1
        assert await get_agent(alice, "support") == created

    async def test_conflict_counts_every_active_run(self, app, alice):
        await create_agent(alice, "support")
        await add_run(app, "alice", "support", "running")
        await add_run(app, "alice", "support", "queued")
        await add_run(app, "alice", "support", "completed")
        body = assert_problem(await alice.delete("/v1/agents/support"), 409, "conflict")
        assert body["active_runs"] == 2

    @pytest.mark.parametrize("status", TERMINAL_STATUSES)
    async def test_finished_runs_do_not_block_deletion(self, app, alice, status):
        await create_agent(alice, "support")
        await add_run(app, "alice", "support", status)
        assert (await alice.delete("/v1/agents/support")).status_code == 204

    async def test_delete_succeeds_once_the_run_finished_and_sessions_stay(self, app, alice):
        await create_agent(alice, "support")
        session_id, run_id = await add_run(app, "alice", "support", "running")
        assert_problem(await alice.delete("/v1/agents/support"), 409, "conflict")
        await set_run_status(app, run_id, "completed")
        assert (await alice.delete("/v1/agents/support")).status_code == 204
        session = await alice.get(f"/v1/sessions/{session_id}")
        assert session.status_code == 200, session.text
        assert session.json()["agent"] == "support"

    async def test_active_run_of_another_owners_same_named_agent_does_not_block(
        self, app, alice, bob
    ):
        await create_agent(alice, "support")
        await create_agent(bob, "support")
        await add_run(app, "bob", "support", "running")
        assert (await alice.delete("/v1/agents/support")).status_code == 204
        assert_problem(await bob.delete("/v1/agents/support"), 409, "conflict")

    async def test_admin_deletes_another_owners_agent_with_owner(self, admin, alice):
        await create_agent(alice, "support")
        assert_problem(await admin.delete("/v1/agents/support"), 404, "not_found")
        assert (await admin.delete("/v1/agents/support?owner=alice")).status_code == 204
        assert_problem(await alice.get("/v1/agents/support"), 404, "not_found")

    async def test_user_owner_of_someone_else_is_forbidden(self, alice, bob):
        await create_agent(bob, "support")
        assert_problem(await alice.delete("/v1/agents/support?owner=bob"), 403, "forbidden")
        assert (await get_agent(bob, "support"))["name"] == "support"

    async def test_without_a_valid_token_is_unauthorized(self, app, admin):
        await create_agent(admin, "support")
        await assert_unauthorized(app, "DELETE", "/v1/agents/support")
        assert (await get_agent(admin, "support"))["name"] == "support"


# -- GET /v1/agents/{agent_name}/versions ---------------------------------------------------


class TestListAgentVersions:
    async def test_new_agent_has_one_version_equal_to_the_agent(self, alice):
        created = await create_agent(alice, **FULL_CONFIG)
        response = await alice.get("/v1/agents/support/versions")
        assert response.status_code == 200
        page = response.json()
        assert page == {"items": [created], "next_cursor": None}

    async def test_versions_are_newest_first_with_their_own_config(self, alice):
        v1 = await create_agent(alice, instructions="one")
        v2 = await patch_agent(alice, "support", instructions="two")
        v3 = await patch_agent(alice, "support", instructions="three", max_turns=5)
        items = (await alice.get("/v1/agents/support/versions")).json()["items"]
        assert [item["version"] for item in items] == [3, 2, 1]
        assert [config_of(item) for item in items] == [config_of(v3), config_of(v2),
                                                      config_of(v1)]
        for item in items:
            assert set(item) == AGENT_FIELDS
            assert item["name"] == "support"
            assert item["owner"] == "alice"
            assert item["created_at"] == v1["created_at"]
            assert TIMESTAMP.match(item["updated_at"])
        assert [item["updated_at"] for item in items] == [v3["updated_at"], v2["updated_at"],
                                                          v1["updated_at"]]

    async def test_cursor_pagination_walks_every_version_once(self, alice):
        await create_agent(alice)
        for turns in range(2, 7):
            await patch_agent(alice, "support", max_turns=turns)
        pages = await all_pages(alice, "/v1/agents/support/versions", limit=2, key="version")
        assert pages == [[6, 5], [4, 3], [2, 1]]

    async def test_version_created_while_paging_does_not_shift_later_pages(self, alice):
        await create_agent(alice)
        await patch_agent(alice, "support", max_turns=2)
        await patch_agent(alice, "support", max_turns=3)
        first = (await alice.get("/v1/agents/support/versions?limit=2")).json()
        assert [item["version"] for item in first["items"]] == [3, 2]
        await patch_agent(alice, "support", max_turns=4)
        cursor = first["next_cursor"]
        second = (await alice.get(f"/v1/agents/support/versions?limit=2&cursor={cursor}"))
        assert [item["version"] for item in second.json()["items"]] == [1]
        assert second.json()["next_cursor"] is None

    async def test_malformed_cursor_is_a_bad_request(self, alice):
        await create_agent(alice)
        for cursor in ("abc", "0", "-1", "1.5", " 1", "1\n", "²", "\u0661", "2147483648",
                       "9" * 20, "1" * 500):
            response = await alice.get("/v1/agents/support/versions",
                                       params={"cursor": cursor})
            assert response.status_code == 400, (cursor, response.text)
            assert_problem(response, 400, "bad_request")

    @pytest.mark.parametrize("limit", ["0", "201", "x"])
    async def test_limit_out_of_range_is_a_validation_error(self, alice, limit):
        await create_agent(alice)
        response = await alice.get(f"/v1/agents/support/versions?limit={limit}")
        assert_invalid(response, "query", "limit")

    async def test_unknown_name_is_not_found(self, alice):
        assert_problem(await alice.get("/v1/agents/ghost/versions"), 404, "not_found")

    async def test_invalid_name_in_the_path_is_not_found(self, alice):
        await assert_invalid_names_not_found(alice, "GET", "/v1/agents/{name}/versions")

    async def test_another_users_agent_is_not_found(self, alice, bob):
        await create_agent(alice, "support")
        assert_problem(await bob.get("/v1/agents/support/versions"), 404, "not_found")

    async def test_each_owner_sees_the_history_of_their_own_agent(self, alice, bob):
        await create_agent(alice, "support")
        await patch_agent(alice, "support", max_turns=2)
        await create_agent(bob, "support")
        assert await version_numbers(alice, "support") == [2, 1]
        assert await version_numbers(bob, "support") == [1]

    async def test_admin_lists_another_owners_versions_with_owner(self, admin, alice):
        await create_agent(alice, "support")
        await patch_agent(alice, "support", max_turns=2)
        response = await admin.get("/v1/agents/support/versions?owner=alice")
        assert [item["version"] for item in response.json()["items"]] == [2, 1]
        assert_problem(await admin.get("/v1/agents/support/versions"), 404, "not_found")

    async def test_user_owner_of_someone_else_is_forbidden(self, alice, bob):
        await create_agent(bob, "support")
        response = await alice.get("/v1/agents/support/versions?owner=bob")
        assert_problem(response, 403, "forbidden")

    async def test_without_a_valid_token_is_unauthorized(self, app, admin):
        await create_agent(admin, "support")
        await assert_unauthorized(app, "GET", "/v1/agents/support/versions")


# -- GET /v1/agents/{agent_name}/versions/{version} ----------------------------------------


class TestGetAgentVersion:
    async def test_returns_the_agent_as_it_was_at_that_version(self, alice):
        v1 = await create_agent(alice, **FULL_CONFIG)
        v2 = await patch_agent(alice, "support", description=None, sampling={"top_p": 0.5})
        old = await alice.get("/v1/agents/support/versions/1")
        assert old.status_code == 200
        assert old.json() == v1
        new = await alice.get("/v1/agents/support/versions/2")
        assert new.json() == v2
        assert new.json() == await get_agent(alice, "support")

    async def test_unknown_version_is_not_found(self, alice):
        await create_agent(alice)
        body = assert_problem(await alice.get("/v1/agents/support/versions/2"), 404,
                              "not_found")
        assert "2" in body["detail"]

    async def test_unknown_agent_is_not_found(self, alice):
        assert_problem(await alice.get("/v1/agents/ghost/versions/1"), 404, "not_found")

    async def test_invalid_name_in_the_path_is_not_found(self, alice):
        await assert_invalid_names_not_found(alice, "GET", "/v1/agents/{name}/versions/1")

    async def test_another_users_agent_is_not_found(self, alice, bob):
        await create_agent(alice, "support")
        assert_problem(await bob.get("/v1/agents/support/versions/1"), 404, "not_found")

    async def test_same_named_agents_have_separate_histories(self, alice, bob):
        await create_agent(alice, "support", model="scripted:alice")
        await patch_agent(alice, "support", max_turns=2)
        await create_agent(bob, "support", model="scripted:bob")
        assert_problem(await bob.get("/v1/agents/support/versions/2"), 404, "not_found")
        response = await bob.get("/v1/agents/support/versions/1")
        assert response.json()["model"] == "scripted:bob"

    async def test_admin_reads_another_owners_version_with_owner(self, admin, alice):
        created = await create_agent(alice, "support")
        response = await admin.get("/v1/agents/support/versions/1?owner=alice")
        assert response.status_code == 200
        assert response.json() == created

    async def test_user_owner_of_someone_else_is_forbidden(self, alice, bob):
        await create_agent(bob, "support")
        response = await alice.get("/v1/agents/support/versions/1?owner=bob")
        assert_problem(response, 403, "forbidden")

    async def test_without_a_valid_token_is_unauthorized(self, app, admin):
        await create_agent(admin, "support")
        await assert_unauthorized(app, "GET", "/v1/agents/support/versions/1")


class TestProviderWithoutApiKey:
    @pytest.fixture
    def settings(self, database_url: str) -> Any:
        return make_settings(database_url, providers={
            "cloud": {"base_url": "https://llm.example.com/v1", "api_key_env": "CLOUD_KEY"},
            "local": {"base_url": "http://127.0.0.1:11434/v1", "api_key_env": "LOCAL_KEY"},
            "open": {"base_url": "https://llm.example.com/v1"},
        })

    @pytest.fixture(autouse=True)
    def no_keys(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("OPENAI_API_KEY", "CLOUD_KEY", "LOCAL_KEY"):
            monkeypatch.delenv(name, raising=False)

    @pytest.mark.parametrize(("model", "setting"), [
        ("openai:gpt-4o-mini", "OPENAI_API_KEY"), ("cloud:big", "CLOUD_KEY")])
    async def test_create_is_a_422_naming_the_setting(self, alice, model, setting):
        response = await alice.post("/v1/agents", json={"name": "support", "model": model})

        body = assert_invalid(response, "body", "model")
        assert setting in body["detail"]
        assert body["errors"][0]["type"] == "missing_api_key"
        assert (await alice.get("/v1/agents")).json()["items"] == []

    async def test_update_to_such_a_model_is_refused(self, alice):
        await create_agent(alice, "support")

        response = await alice.patch("/v1/agents/support", json={"model": "openai:gpt-4o"})

        assert "OPENAI_API_KEY" in assert_invalid(response, "body", "model")["detail"]
        assert (await get_agent(alice, "support"))["version"] == 1

    @pytest.mark.parametrize("model", ["local:llama3", "open:any", "scripted:demo"])
    async def test_loopback_keyless_and_scripted_providers_need_no_key(self, alice, model):
        assert (await create_agent(alice, model=model))["model"] == model

    async def test_a_key_in_the_environment_is_enough(self, alice, monkeypatch):
        monkeypatch.setenv("CLOUD_KEY", "secret")

        assert (await create_agent(alice, model="cloud:big"))["model"] == "cloud:big"

    async def test_a_run_overriding_the_model_is_refused(self, alice):
        await create_agent(alice, "support")

        response = await alice.post("/v1/runs", json={
            "agent": "support", "input": "hi", "overrides": {"model": "cloud:big"}})

        assert "CLOUD_KEY" in assert_invalid(response, "body", "overrides", "model")["detail"]
        assert (await alice.get("/v1/runs")).json()["items"] == []
