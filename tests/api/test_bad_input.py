"""Bad input at the HTTP edge: a clear 4xx naming the field, never a 500, nothing stored.

Covers `null` where a value is required, text no database can store (lone UTF-16
surrogates), nesting past the documented depth, and types the document does not declare.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.schemas.common import MAX_JSON_DEPTH, UnstorableValue, check_storable
from tests.conftest import Users
from tests.problems import assert_problem
from tests.runs.helpers import Api, agent_body, step

LONE_SURROGATE = "\ud83d"  # the first half of 😀, as JavaScript's string slicing leaves it
RUN_OVERRIDES = ("model", "instructions", "sampling", "max_turns", "timeout_s", "tools",
                 "allowed_hosts", "compaction")


@pytest.fixture
async def alice(users: Users) -> Api:
    """The user alice, with the agent `helper` that answers every call with "done"."""
    api = Api(await users.client("alice"))
    await api.agent("helper", [step("done")])
    return api


async def send(client: httpx.AsyncClient, method: str, url: str, body: Any) -> httpx.Response:
    """Send `body` as JSON with every non-ASCII character escaped, lone surrogates included.

    httpx's own `json=` encodes to UTF-8, which a lone surrogate cannot be encoded in.
    """
    return await client.request(method, url, content=json.dumps(body),
                                headers={"Content-Type": "application/json"})


def assert_invalid_at(response: httpx.Response, loc: list[str | int],
                      type_: str | None = None) -> dict[str, Any]:
    """A 422 `validation_error` with an error located exactly at `loc`."""
    problem = assert_problem(response, 422, "validation_error")
    located = [error for error in problem["errors"] if error["loc"] == loc]
    assert located, (loc, problem["errors"])
    if type_ is not None:
        assert located[0]["type"] == type_, located
    return problem


def nested(levels: int, container: str = "object") -> Any:
    """`levels` objects (or arrays) nested in each other, the innermost empty."""
    value: Any = {} if container == "object" else []
    for _ in range(levels - 1):
        value = {"a": value} if container == "object" else [value]
    return value


def path_into(levels: int, container: str = "object") -> list[str | int]:
    """The location, inside `nested(levels)`, of its `levels`-th container."""
    return ["a" if container == "object" else 0] * (levels - 1)


async def runs_of(api: Api, session_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/v1/sessions/{session_id}/runs")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def assert_session_untouched(api: Api, session_id: str) -> None:
    """No run and no message were stored, and the session's reads still answer."""
    assert await runs_of(api, session_id) == []
    assert await api.messages(session_id) == []
    events = await api.client.get(f"/v1/sessions/{session_id}")
    assert events.status_code == 200, events.text


def nullable(document: dict[str, Any], schema_name: str, field: str) -> bool:
    """Whether the served document lets `field` of `schema_name` be null."""
    schema = document["components"]["schemas"][schema_name]["properties"][field]
    variants = schema.get("anyOf", [schema])
    return any(v.get("type") == "null" or "null" in (v.get("type") or []) for v in variants)


async def served_document(api: Api) -> dict[str, Any]:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


class TestNullWhereAValueIsRequired:
    @pytest.mark.parametrize(
        "field", ["model", "sampling", "max_turns", "timeout_s", "tools", "compaction"])
    async def test_a_null_override_is_refused(self, alice: Api, field: str):
        session_id = await alice.session("helper")
        response = await alice.post_run(session_id, overrides={field: None})
        assert_invalid_at(response, ["body", "overrides", field], "null_not_allowed")
        await assert_session_untouched(alice, session_id)

    async def test_a_null_override_of_a_one_shot_run_is_refused(self, alice: Api):
        response = await alice.client.post("/v1/runs", json={
            "agent": "helper", "input": "hi", "overrides": {"timeout_s": None}})
        assert_invalid_at(response, ["body", "overrides", "timeout_s"], "null_not_allowed")
        sessions = await alice.client.get("/v1/sessions")
        assert sessions.status_code == 200 and sessions.json()["items"] == []

    @pytest.mark.parametrize("field", ["instructions", "allowed_hosts"])
    async def test_an_override_whose_null_has_a_meaning_runs(self, alice: Api, field: str):
        session_id = await alice.session("helper")
        run = await alice.start(session_id, overrides={field: None})
        assert (await alice.wait(run["id"]))["status"] == "completed"

    async def test_a_null_fork_point_is_refused(self, alice: Api):
        session_id = await alice.session("helper")
        response = await alice.client.post(f"/v1/sessions/{session_id}/fork",
                                           json={"at_seq": None})
        assert_invalid_at(response, ["body", "at_seq"], "null_not_allowed")

    async def test_a_null_cancel_reason_is_refused(self, alice: Api):
        session_id = await alice.session("helper")
        run = await alice.start(session_id)
        response = await alice.client.post(f"/v1/runs/{run['id']}/cancel",
                                           json={"reason": None})
        assert_invalid_at(response, ["body", "reason"], "null_not_allowed")


class TestTheDocumentSaysWhatNullMeans:
    """Null is accepted exactly where the served document declares the field nullable."""

    async def test_agent_patch(self, alice: Api):
        document = await served_document(alice)
        fields = document["components"]["schemas"]["AgentUpdate"]["properties"]
        declared = {field for field in fields if nullable(document, "AgentUpdate", field)}
        assert declared == {"description", "instructions"}
        for field in fields:
            response = await alice.client.patch("/v1/agents/helper", json={field: None})
            if field in declared:
                assert response.status_code == 200, (field, response.text)
                assert response.json()[field] is None
            else:
                assert_invalid_at(response, ["body", field], "null_not_allowed")

    async def test_session_patch(self, alice: Api):
        document = await served_document(alice)
        session_id = await alice.session("helper", title="t", metadata={"k": "v"})
        fields = document["components"]["schemas"]["SessionUpdate"]["properties"]
        declared = {field for field in fields if nullable(document, "SessionUpdate", field)}
        assert declared == {"title"}
        for field in fields:
            response = await alice.client.patch(f"/v1/sessions/{session_id}",
                                                json={field: None})
            if field in declared:
                assert response.status_code == 200, (field, response.text)
            else:
                assert_invalid_at(response, ["body", field], "null_not_allowed")
        assert (await alice.get_session(session_id))["metadata"] == {"k": "v"}

    async def test_run_overrides(self, alice: Api):
        document = await served_document(alice)
        fields = document["components"]["schemas"]["RunOverrides"]["properties"]
        assert set(fields) == set(RUN_OVERRIDES)
        declared = {field for field in fields if nullable(document, "RunOverrides", field)}
        assert declared == {"instructions", "allowed_hosts"}
        for field in fields:
            session_id = await alice.session("helper")
            response = await alice.post_run(session_id, overrides={field: None})
            if field in declared:
                assert response.status_code == 202, (field, response.text)
                await alice.wait(response.json()["id"])
            else:
                assert_invalid_at(response, ["body", "overrides", field], "null_not_allowed")


class TestLoneSurrogates:
    async def test_in_run_input_text(self, alice: Api):
        session_id = await alice.session("helper")
        response = await send(alice.client, "POST", f"/v1/sessions/{session_id}/runs",
                              {"input": f"cut in half: {LONE_SURROGATE}"})
        assert_invalid_at(response, ["body", "input"], "unstorable_value")
        await assert_session_untouched(alice, session_id)

    async def test_in_run_input_messages(self, alice: Api):
        session_id = await alice.session("helper")
        response = await send(alice.client, "POST", f"/v1/sessions/{session_id}/runs", {
            "input": [{"role": "user", "content": [{"type": "text", "text": LONE_SURROGATE}]}]})
        assert_invalid_at(response, ["body", "input", 0, "content", 0, "text"])
        await assert_session_untouched(alice, session_id)

    async def test_in_a_run_metadata_value(self, alice: Api):
        session_id = await alice.session("helper")
        response = await send(alice.client, "POST", f"/v1/sessions/{session_id}/runs",
                              {"input": "hi", "metadata": {"note": LONE_SURROGATE}})
        assert_invalid_at(response, ["body", "metadata", "note"], "unstorable_value")
        await assert_session_untouched(alice, session_id)

    async def test_in_a_run_metadata_key(self, alice: Api):
        session_id = await alice.session("helper")
        response = await send(alice.client, "POST", f"/v1/sessions/{session_id}/runs",
                              {"input": "hi", "metadata": {LONE_SURROGATE: 1}})
        assert_invalid_at(response, ["body", "metadata"], "unstorable_value")
        await assert_session_untouched(alice, session_id)

    async def test_in_a_one_shot_runs_session_metadata(self, alice: Api):
        response = await send(alice.client, "POST", "/v1/runs", {
            "agent": "helper", "input": "hi", "session": {"metadata": {"k": [LONE_SURROGATE]}}})
        assert_invalid_at(response, ["body", "session", "metadata", "k", 0], "unstorable_value")
        sessions = await alice.client.get("/v1/sessions")
        assert sessions.status_code == 200 and sessions.json()["items"] == []

    @pytest.mark.parametrize("where", ["key", "value"])
    async def test_in_session_metadata(self, alice: Api, where: str):
        metadata = {LONE_SURROGATE: "v"} if where == "key" else {"k": LONE_SURROGATE}
        loc = ["body", "metadata"] if where == "key" else ["body", "metadata", "k"]
        created = await send(alice.client, "POST", "/v1/sessions",
                             {"agent": "helper", "metadata": metadata})
        assert_invalid_at(created, loc, "unstorable_value")
        session_id = await alice.session("helper", metadata={"k": "v"})
        patched = await send(alice.client, "PATCH", f"/v1/sessions/{session_id}",
                             {"metadata": metadata})
        assert_invalid_at(patched, loc, "unstorable_value")
        sessions = await alice.client.get("/v1/sessions")
        assert sessions.status_code == 200, sessions.text
        assert [s["metadata"] for s in sessions.json()["items"]] == [{"k": "v"}]

    async def test_in_provider_options(self, alice: Api):
        body = agent_body("halved", [step(LONE_SURROGATE)])
        response = await send(alice.client, "POST", "/v1/agents", body)
        assert_invalid_at(response, ["body", "provider_options", "script", 0, "text"],
                          "unstorable_value")
        agents = await alice.client.get("/v1/agents")
        assert agents.status_code == 200
        assert [agent["name"] for agent in agents.json()["items"]] == ["helper"]

    @pytest.mark.parametrize("field", ["instructions", "description"])
    async def test_in_agent_text(self, alice: Api, field: str):
        response = await send(alice.client, "PATCH", "/v1/agents/helper",
                              {field: f"Be brief {LONE_SURROGATE}"})
        assert_invalid_at(response, ["body", field], "unstorable_value")
        agent = await alice.client.get("/v1/agents/helper")
        assert agent.status_code == 200 and agent.json()["version"] == 1

    async def test_in_appended_messages(self, alice: Api):
        session_id = await alice.session("helper")
        response = await send(alice.client, "POST", f"/v1/sessions/{session_id}/messages",
                              {"messages": [{"role": "user", "content": LONE_SURROGATE}]})
        assert_invalid_at(response, ["body", "messages", 0, "content"], "unstorable_value")
        await assert_session_untouched(alice, session_id)

    async def test_an_escaped_pair_is_one_character_and_stored(self, alice: Api):
        response = await send(alice.client, "POST", "/v1/sessions",
                              {"agent": "helper", "metadata": {"face": "😀"}})
        assert '"\\ud83d\\ude00"' in response.request.content.decode()
        assert response.status_code == 201, response.text
        assert (await alice.get_session(response.json()["id"]))["metadata"] == {"face": "😀"}


class TestNestingLimit:
    async def test_metadata_at_the_limit_is_stored_and_read_back(self, alice: Api):
        # The body is the first level, so metadata may hold MAX_JSON_DEPTH - 1 levels.
        metadata = nested(MAX_JSON_DEPTH - 1)
        session_id = await alice.session("helper", metadata=metadata)
        run = await alice.start(session_id, metadata=metadata)
        await alice.wait(run["id"])
        assert (await alice.get_session(session_id))["metadata"] == metadata
        assert (await alice.get_run(run["id"]))["metadata"] == metadata
        assert (await alice.events(run["id"]))[0]["type"] == "run.created"

    @pytest.mark.parametrize("container", ["object", "array"])
    async def test_session_metadata_past_the_limit(self, alice: Api, container: str):
        metadata = {"deep": nested(MAX_JSON_DEPTH - 1, container)}
        response = await alice.client.post("/v1/sessions",
                                           json={"agent": "helper", "metadata": metadata})
        loc = ["body", "metadata", "deep", *path_into(MAX_JSON_DEPTH - 1, container)]
        assert_invalid_at(response, loc, "nesting_too_deep")
        sessions = await alice.client.get("/v1/sessions")
        assert sessions.status_code == 200 and sessions.json()["items"] == []

    @pytest.mark.parametrize("levels", [MAX_JSON_DEPTH, 253, 300, 900])
    async def test_run_metadata_past_the_limit(self, alice: Api, levels: int):
        session_id = await alice.session("helper")
        response = await alice.post_run(session_id, metadata=nested(levels))
        assert_invalid_at(response, ["body", "metadata", *path_into(MAX_JSON_DEPTH)],
                          "nesting_too_deep")
        await assert_session_untouched(alice, session_id)

    @pytest.mark.parametrize("levels", [MAX_JSON_DEPTH, 300])
    async def test_provider_options_past_the_limit(self, alice: Api, levels: int):
        body = agent_body("deep", [step("hi")], options={"extra": nested(levels)})
        response = await alice.client.post("/v1/agents", json=body)
        assert_invalid_at(
            response, ["body", "provider_options", "extra", *path_into(MAX_JSON_DEPTH - 1)],
            "nesting_too_deep")
        agents = await alice.client.get("/v1/agents")
        assert [agent["name"] for agent in agents.json()["items"]] == ["helper"]

    async def test_json_too_deep_to_parse_is_a_bad_request(self, alice: Api):
        response = await alice.client.post(
            "/v1/sessions", content='{"agent": "helper", "metadata": ' + "[" * 100_000,
            headers={"Content-Type": "application/json"})
        assert response.status_code in (400, 422), response.text
        assert_problem(response, response.status_code, response.json()["code"])

    def test_the_check_itself_never_recurses(self):
        value: Any = {}
        for _ in range(200_000):
            value = {"a": [value]}
        with pytest.raises(UnstorableValue) as caught:
            check_storable(value)
        assert len(caught.value.path) == MAX_JSON_DEPTH


class TestStrictTypes:
    @pytest.mark.parametrize(("fields", "loc"), [
        ({"compaction": {"keep_last": False}}, ["compaction", "keep_last"]),
        ({"max_turns": "5"}, ["max_turns"]),
        ({"max_turns": True}, ["max_turns"]),
        ({"timeout_s": 60.0}, ["timeout_s"]),
        ({"sampling": {"temperature": "0.5"}}, ["sampling", "temperature"]),
        ({"compaction": {"enabled": "yes"}}, ["compaction", "enabled"]),
        ({"compaction": {"enabled": 1}}, ["compaction", "enabled"]),
    ])
    async def test_agent_fields_take_only_their_declared_type(
        self, alice: Api, fields: dict[str, Any], loc: list[str],
    ):
        response = await alice.client.post("/v1/agents",
                                           json=agent_body("typed", [step("hi")], **fields))
        assert_invalid_at(response, ["body", *loc])

    async def test_a_whole_number_is_a_number(self, alice: Api):
        agent = await alice.agent("typed", [step("hi")], sampling={"temperature": 1, "top_p": 1})
        assert agent["sampling"]["temperature"] == 1.0 and agent["sampling"]["top_p"] == 1.0

    @pytest.mark.parametrize(("body", "loc"), [
        ({"stream": "yes"}, ["stream"]),
        ({"stream": 1}, ["stream"]),
        ({"overrides": {"max_turns": "5"}}, ["overrides", "max_turns"]),
        ({"overrides": {"compaction": {"keep_last": False}}},
         ["overrides", "compaction", "keep_last"]),
    ])
    async def test_run_fields_take_only_their_declared_type(
        self, alice: Api, body: dict[str, Any], loc: list[str],
    ):
        session_id = await alice.session("helper")
        response = await alice.post_run(session_id, **body)
        assert_invalid_at(response, ["body", *loc])
        await assert_session_untouched(alice, session_id)

    async def test_a_fork_point_is_an_integer(self, alice: Api):
        session_id = await alice.session("helper")
        await alice.wait((await alice.start(session_id))["id"])
        response = await alice.client.post(f"/v1/sessions/{session_id}/fork",
                                           json={"at_seq": True})
        assert_invalid_at(response, ["body", "at_seq"])
