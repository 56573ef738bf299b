"""An admin reaches another subject's agents with `?owner=` on every route that names an
agent (API.md §3): sessions, one-shot runs and batches are then that subject's."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Users
from tests.problems import assert_problem
from tests.runs.helpers import Api, step


@pytest.fixture
async def alice(users: Users) -> Api:
    api = Api(await users.client("alice"))
    await api.agent("helper", [step("from alice's agent")])
    return api


class TestSessions:
    async def test_an_admin_opens_a_session_of_another_subjects_agent(
            self, admin: httpx.AsyncClient, alice: Api):
        response = await admin.post("/v1/sessions?owner=alice", json={"agent": "helper"})

        assert response.status_code == 201, response.text
        session = response.json()
        assert (session["owner"], session["agent"]) == ("alice", "helper")
        assert (await alice.get_session(session["id"]))["owner"] == "alice"
        run = await alice.wait((await alice.start(session["id"]))["id"])
        assert (run["owner"], run["output"]) == ("alice", "from alice's agent")

    async def test_without_owner_an_admin_is_told_which_owner_has_the_agent(
            self, admin: httpx.AsyncClient, alice: Api):
        response = await admin.post("/v1/sessions", json={"agent": "helper"})

        body = assert_problem(response, 404, "not_found")
        assert "use ?owner=alice" in body["detail"]

    async def test_a_user_may_name_only_themselves(self, users: Users, alice: Api):
        bob = await users.client("bob")
        other = await bob.post("/v1/sessions?owner=alice", json={"agent": "helper"})
        assert_problem(other, 403, "forbidden")
        mine = await alice.client.post("/v1/sessions?owner=alice", json={"agent": "helper"})
        assert mine.status_code == 201, mine.text

    async def test_an_owner_no_subject_can_have_is_422(self, admin: httpx.AsyncClient):
        response = await admin.post("/v1/sessions?owner=no%20such", json={"agent": "helper"})

        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["query", "owner"]


class TestRuns:
    async def test_an_admin_starts_a_one_shot_run_on_another_subjects_agent(
            self, admin: httpx.AsyncClient, alice: Api):
        response = await admin.post("/v1/runs?owner=alice",
                                    json={"agent": "helper", "input": "hi"})

        assert response.status_code == 202, response.text
        run = await alice.wait(response.json()["id"])
        assert (run["owner"], run["status"], run["output"]) == (
            "alice", "completed", "from alice's agent")
        assert (await alice.get_session(run["session_id"]))["owner"] == "alice"

    async def test_a_one_shot_run_needs_owner_and_a_user_may_not_name_another(
            self, admin: httpx.AsyncClient, users: Users, alice: Api):
        refused = await admin.post("/v1/runs", json={"agent": "helper", "input": "hi"})
        assert_problem(refused, 404, "not_found")
        bob = await users.client("bob")
        forbidden = await bob.post("/v1/runs?owner=alice",
                                   json={"agent": "helper", "input": "hi"})
        assert_problem(forbidden, 403, "forbidden")

    async def test_an_admin_starts_a_batch_on_another_subjects_agents(
            self, admin: httpx.AsyncClient, alice: Api):
        response = await admin.post("/v1/runs/batch?owner=alice", json={
            "runs": [{"agent": "helper", "input": "one"}, {"agent": "helper", "input": "two"}]})

        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [(r["status"], r["output"]) for r in results] == [
            ("completed", "from alice's agent")] * 2
        for result in results:
            assert (await alice.get_run(result["run_id"]))["owner"] == "alice"
        assert_problem(await admin.post("/v1/runs/batch", json={
            "runs": [{"agent": "helper", "input": "one"}]}), 404, "not_found")
