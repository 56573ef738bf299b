"""Creating, reading and listing runs (§1.3, §4.1 to §4.3)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import client_for
from tests.providers.mock_servers import MockServer, llmock_requests, running, start_llmock
from tests.runs.conftest import running_app
from tests.runs.helpers import (
    CALCULATOR,
    CURRENT_TIME,
    SLEEP,
    Api,
    assert_gapless,
    assert_problem,
    calls,
    error,
    of_type,
    step,
)


class TestOneShot:
    async def test_creates_a_session_and_its_first_run(self, alice: Api):
        await alice.agent("helper", [step("Hello!")])
        response = await alice.client.post("/v1/runs", json={
            "agent": "helper", "input": "hi", "metadata": {"ticket": "T-1"},
            "session": {"title": "first contact", "metadata": {"channel": "web"}},
        })

        assert response.status_code == 202, response.text
        run = response.json()
        assert response.headers["location"] == f"/v1/runs/{run['id']}"
        assert run["id"].startswith("run_") and run["metadata"] == {"ticket": "T-1"}
        assert run["agent"] == "helper" and run["agent_version"] == 1
        assert run["owner"] == "alice"
        session = await alice.get_session(run["session_id"])
        assert session["title"] == "first contact"
        assert session["metadata"] == {"channel": "web"}
        assert session["agent"] == "helper"
        finished = await alice.wait(run["id"])
        assert finished["output"] == "Hello!"
        assert [m["content"] for m in await alice.messages(run["session_id"])] == [
            "hi", "Hello!"]

    async def test_without_session_fields(self, alice: Api):
        await alice.agent("helper", [step("Hello!")])
        response = await alice.client.post("/v1/runs", json={"agent": "helper", "input": "hi"})
        assert response.status_code == 202, response.text
        session = await alice.get_session(response.json()["session_id"])
        assert session["title"] is None and session["metadata"] == {}

    async def test_unknown_agent_is_404(self, alice: Api):
        response = await alice.client.post("/v1/runs", json={"agent": "nobody", "input": "hi"})
        assert_problem(response, 404, "not_found")
        sessions = await alice.client.get("/v1/sessions")
        assert sessions.json()["items"] == []

    async def test_input_as_messages(self, alice: Api):
        await alice.agent("helper", [step("Done.")])
        response = await alice.client.post("/v1/runs", json={"agent": "helper", "input": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        ]})
        assert response.status_code == 202, response.text
        run = await alice.wait(response.json()["id"])
        messages = await alice.messages(run["session_id"])
        assert [(m["role"], m["content"]) for m in messages] == [
            ("system", "Answer in French."),
            ("user", [{"type": "text", "text": "hello"}]),
            ("assistant", "Done."),
        ]


class TestValidation:
    async def test_empty_input_needs_on_pending_resume(self, alice: Api):
        await alice.agent("helper", [step("Hello!")])
        session_id = await alice.session("helper")
        for empty in ("", []):
            for policy in ({}, {"on_pending": "abort"}):
                response = await alice.post_run(session_id, empty, **policy)
                assert_problem(response, 422, "validation_error")
            one_shot = await alice.client.post("/v1/runs",
                                               json={"agent": "helper", "input": empty})
            assert_problem(one_shot, 422, "validation_error")
        no_input = await alice.client.post(f"/v1/sessions/{session_id}/runs", json={})
        assert_problem(no_input, 422, "validation_error")
        assert (await alice.client.get("/v1/runs")).json()["items"] == []

    async def test_empty_input_with_resume_on_an_idle_session_runs_the_history(
        self, alice: Api
    ):
        await alice.agent("helper", [step("Continuing.")])
        session_id = await alice.session("helper")
        response = await alice.client.post(f"/v1/sessions/{session_id}/messages",
                                           json={"messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 201
        run = await alice.wait((await alice.start(session_id, "", on_pending="resume"))["id"])
        assert run["status"] == "completed" and run["output"] == "Continuing."
        assert [m["role"] for m in await alice.messages(session_id)] == ["user", "assistant"]

    async def test_overrides_naming_an_unknown_tool_is_422(self, alice: Api):
        await alice.agent("calc", [step("x")], [CALCULATOR])
        session_id = await alice.session("calc")
        response = await alice.post_run(session_id, overrides={"tools": ["calculator", "sleep"]})
        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"][0]["loc"] == ["body", "overrides", "tools"]
        assert "sleep" in problem["errors"][0]["msg"]
        session = await alice.get_session(session_id)
        assert session["status"] == "idle" and session["message_count"] == 0

    async def test_unknown_fields_are_rejected(self, alice: Api):
        await alice.agent("helper", [step("x")])
        session_id = await alice.session("helper")
        assert_problem(await alice.post_run(session_id, if_bussy="enqueue"), 422,
                       "validation_error")
        assert_problem(await alice.post_run(session_id, if_busy="wait"), 422,
                       "validation_error")

    async def test_unknown_provider_in_overrides_is_422(self, alice: Api):
        await alice.agent("helper", [step("x")])
        session_id = await alice.session("helper")
        response = await alice.post_run(session_id, overrides={"model": "nowhere:gpt"})
        assert_problem(response, 422, "validation_error")

    async def test_unknown_session_is_404(self, alice: Api):
        assert_problem(await alice.post_run("ses_missing"), 404, "not_found")

    async def test_a_deleted_agent_is_a_conflict(self, alice: Api):
        await alice.agent("gone", [step("x")])
        session_id = await alice.session("gone")
        assert (await alice.client.delete("/v1/agents/gone")).status_code == 204
        problem = assert_problem(await alice.post_run(session_id), 409, "conflict")
        assert "gone" in problem["detail"]


class TestOverrides:
    async def test_narrowed_tools_turn_other_calls_into_error_results(self, alice: Api):
        await alice.agent("both", [
            calls(("calculator", {"expression": "2+3"}), ("current_time", {})),
            step("Done."),
        ], [CALCULATOR, CURRENT_TIME])
        session_id = await alice.session("both")
        run = await alice.wait(
            (await alice.start(session_id, overrides={"tools": ["current_time"]}))["id"])

        assert run["status"] == "completed"
        results = {e["data"]["name"]: e["data"]
                   for e in of_type(await alice.events(run["id"]), "tool.completed")}
        assert results["calculator"]["is_error"] is True
        assert "unknown tool 'calculator'" in results["calculator"]["output"]
        assert "current_time" in results["calculator"]["output"]
        assert results["current_time"]["is_error"] is False
        assert results["current_time"]["output"].endswith("Z")

    async def test_the_narrowing_applies_to_one_run_only(self, alice: Api):
        calc = calls(("calculator", {"expression": "2*4"}))
        await alice.agent("calc", [calc, step("a"), calc, step("b")], [CALCULATOR])
        session_id = await alice.session("calc")
        narrowed = await alice.wait(
            (await alice.start(session_id, overrides={"tools": []}))["id"])
        full = await alice.wait((await alice.start(session_id))["id"])
        outputs = [
            of_type(await alice.events(run["id"]), "tool.completed")[0]["data"]
            for run in (narrowed, full)
        ]
        assert outputs[0]["is_error"] is True
        assert (outputs[1]["is_error"], outputs[1]["output"]) == (False, "8")

    async def test_instructions_override_is_not_stored_as_a_message(self, alice: Api):
        await alice.agent("helper", [step("Bonjour.")], instructions="Be brief.")
        session_id = await alice.session("helper")
        await alice.wait(
            (await alice.start(session_id, overrides={"instructions": "Speak French."}))["id"])
        assert [m["role"] for m in await alice.messages(session_id)] == ["user", "assistant"]


@pytest.fixture(scope="module")
def llmock() -> Iterator[MockServer]:
    """A real OpenAI-compatible server that records the requests it serves."""
    with running(start_llmock) as server:
        yield server


class TestSampling:
    async def test_temperature_zero_override_reaches_the_provider(
        self, database_url: str, llmock: MockServer
    ):
        providers = {"mock": {"base_url": llmock.api_url}}
        async with running_app(database_url, providers=providers) as app, client_for(
            app, "test-admin-token"
        ) as client:
            api = Api(client)
            await api.agent("hot", [], model="scripted:x",
                            sampling={"temperature": 0.9, "seed": 3})
            session_id = await api.session("hot")
            model = {"model": "mock:gpt-test"}
            default = await api.wait((await api.start(session_id, overrides=model))["id"])
            zero = await api.wait((await api.start(session_id, overrides={
                **model, "sampling": {"temperature": 0.0}}))["id"])

        assert default["status"] == zero["status"] == "completed", (default, zero)
        bodies = [r["body"] for r in llmock_requests(llmock)
                  if r["body"].get("model") == "gpt-test"][-2:]
        assert [b["temperature"] for b in bodies] == [0.9, 0.0]
        assert bodies[0]["seed"] == 3
        assert all(b["stream"] is True and "tools" not in b for b in bodies)


class TestIdempotency:
    async def test_same_key_and_body_replays_the_run(self, alice: Api):
        await alice.agent("helper", [step("Once.")])
        session_id = await alice.session("helper")
        headers = {"Idempotency-Key": "order-42"}
        body = {"input": "hi", "metadata": {"a": 1}}
        first = await alice.client.post(f"/v1/sessions/{session_id}/runs", json=body,
                                        headers=headers)
        assert first.status_code == 202 and "idempotency-replayed" not in first.headers
        again = await alice.client.post(f"/v1/sessions/{session_id}/runs",
                                        json={"metadata": {"a": 1}, "input": "hi"},
                                        headers=headers)

        assert again.status_code == 200, again.text
        assert again.headers["idempotency-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["location"] == f"/v1/runs/{first.json()['id']}"
        await alice.wait(first.json()["id"])
        runs = (await alice.client.get("/v1/runs")).json()["items"]
        assert [r["id"] for r in runs] == [first.json()["id"]]
        assert [m["content"] for m in await alice.messages(session_id)] == ["hi", "Once."]

    async def test_replay_after_the_run_ended_is_the_finished_run(self, alice: Api):
        await alice.agent("helper", [step("Once.")])
        session_id = await alice.session("helper")
        headers = {"Idempotency-Key": "k"}
        first = await alice.client.post(f"/v1/sessions/{session_id}/runs",
                                        json={"input": "hi"}, headers=headers)
        await alice.wait(first.json()["id"])
        again = await alice.client.post(f"/v1/sessions/{session_id}/runs",
                                        json={"input": "hi"}, headers=headers)
        assert again.status_code == 200
        assert (again.json()["id"], again.json()["status"]) == (first.json()["id"], "completed")

    async def test_same_key_with_another_body_is_a_conflict(self, alice: Api):
        await alice.agent("helper", [step("Once.")])
        session_id = await alice.session("helper")
        headers = {"Idempotency-Key": "order-42"}
        first = await alice.client.post(f"/v1/sessions/{session_id}/runs",
                                        json={"input": "hi"}, headers=headers)
        assert first.status_code == 202
        other = await alice.client.post(f"/v1/sessions/{session_id}/runs",
                                         json={"input": "bye"}, headers=headers)
        assert_problem(other, 409, "idempotency_conflict")
        await alice.wait(first.json()["id"])
        assert len((await alice.client.get("/v1/runs")).json()["items"]) == 1

    async def test_one_shot_replay_makes_no_second_session(self, alice: Api):
        await alice.agent("helper", [step("Once.")])
        headers = {"Idempotency-Key": "new-chat"}
        body = {"agent": "helper", "input": "hi", "session": {"title": "t"}}
        first = await alice.client.post("/v1/runs", json=body, headers=headers)
        again = await alice.client.post("/v1/runs", json=body, headers=headers)

        assert (first.status_code, again.status_code) == (202, 200)
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["session_id"] == first.json()["session_id"]
        await alice.wait(first.json()["id"])
        assert len((await alice.client.get("/v1/sessions")).json()["items"]) == 1

    async def test_one_shot_key_with_another_agent_or_session_is_a_conflict(self, alice: Api):
        await alice.agent("helper", [step("Once.")])
        await alice.agent("other", [step("Other.")])
        headers = {"Idempotency-Key": "new-chat"}
        body = {"agent": "helper", "input": "hi", "session": {"title": "t"}}
        first = await alice.client.post("/v1/runs", json=body, headers=headers)
        assert first.status_code == 202
        for change in ({"agent": "other"}, {"session": {"title": "another title"}},
                       {"session": {"title": "t", "metadata": {"k": 1}}}):
            other = await alice.client.post("/v1/runs", json={**body, **change},
                                            headers=headers)
            assert_problem(other, 409, "idempotency_conflict")
        await alice.wait(first.json()["id"])
        assert len((await alice.client.get("/v1/sessions")).json()["items"]) == 1

    async def test_keys_are_scoped_per_subject_and_path(self, alice: Api, bob: Api):
        for api in (alice, bob):
            await api.agent("helper", [step("Once.")])
        headers = {"Idempotency-Key": "same"}
        ids = set()
        for api in (alice, bob):
            session_id = await api.session("helper")
            response = await api.client.post(f"/v1/sessions/{session_id}/runs",
                                             json={"input": "hi"}, headers=headers)
            assert response.status_code == 202, response.text
            ids.add(response.json()["id"])
            await api.wait(response.json()["id"])
        assert len(ids) == 2

    async def test_a_rejected_request_does_not_use_up_the_key(self, alice: Api):
        await alice.agent("helper", [calls(("sleep", {"seconds": 30})), step("Done.")], [SLEEP])
        session_id = await alice.session("helper")
        busy = await alice.start(session_id)
        await alice.until(busy["id"], "tool.started")
        headers = {"Idempotency-Key": "retry-me"}
        rejected = await alice.client.post(f"/v1/sessions/{session_id}/runs",
                                           json={"input": "again"}, headers=headers)
        assert_problem(rejected, 409, "session_busy")
        await alice.cancel(busy["id"], wait=True)
        accepted = await alice.client.post(f"/v1/sessions/{session_id}/runs",
                                           json={"input": "again"}, headers=headers)
        assert accepted.status_code == 202, accepted.text
        assert (await alice.wait(accepted.json()["id"]))["status"] == "completed"


class TestReading:
    async def _three_runs(self, alice: Api) -> tuple[list[dict[str, Any]], list[str]]:
        await alice.agent("one", [step("a"), error(400), step("c")])
        await alice.agent("two", [step("b")])
        first, second = await alice.session("one"), await alice.session("two")
        runs = [await alice.wait((await alice.start(s))["id"]) for s in (first, second, first)]
        return runs, [first, second]

    async def test_get_returns_the_run_and_lists_are_newest_first_with_filters(
        self, alice: Api
    ):
        runs, (first, _) = await self._three_runs(alice)
        for run in runs:
            assert await alice.get_run(run["id"]) == run
        ids = [r["id"] for r in runs]

        async def listed(**params: Any) -> list[str]:
            response = await alice.client.get("/v1/runs", params=params)
            assert response.status_code == 200, response.text
            return [r["id"] for r in response.json()["items"]]

        assert [r["status"] for r in runs] == ["completed", "completed", "failed"]
        assert await listed() == ids[::-1]
        assert await listed(status="failed") == [ids[2]]
        assert await listed(status="completed") == [ids[1], ids[0]]
        assert await listed(agent="two") == [ids[1]]
        assert await listed(session_id=first) == [ids[2], ids[0]]
        assert await listed(session_id=first, status="completed") == [ids[0]]
        assert await listed(agent="nobody") == []
        page = (await alice.client.get("/v1/runs", params={"limit": 2})).json()
        assert [r["id"] for r in page["items"]] == ids[:0:-1]
        rest = await listed(cursor=page["next_cursor"])
        assert rest == [ids[0]]
        assert_problem(await alice.client.get("/v1/runs", params={"status": "done"}), 422,
                       "validation_error")

    async def test_session_runs_are_newest_first(self, alice: Api):
        runs, (first, second) = await self._three_runs(alice)
        response = await alice.client.get(f"/v1/sessions/{first}/runs")
        assert response.status_code == 200
        assert [r["id"] for r in response.json()["items"]] == [runs[2]["id"], runs[0]["id"]]
        other = (await alice.client.get(f"/v1/sessions/{second}/runs")).json()["items"]
        assert [r["id"] for r in other] == [runs[1]["id"]]

    async def test_users_see_only_their_own_runs(self, alice: Api, bob: Api, admin: Any):
        runs, (first, _) = await self._three_runs(alice)
        run_id = runs[0]["id"]
        for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/wait",
                     f"/v1/sessions/{first}/runs"):
            assert_problem(await bob.client.get(path), 404, "not_found")
        assert_problem(await bob.client.get(f"/v1/runs/{run_id}/events", headers={
            "Accept": "application/json"}), 404, "not_found")
        assert_problem(await bob.client.post(f"/v1/runs/{run_id}/cancel", json={}), 404,
                       "not_found")
        assert_problem(await bob.post_run(first), 404, "not_found")
        assert (await bob.client.get("/v1/runs")).json()["items"] == []
        assert (await bob.client.get("/v1/runs", params={"session_id": first})).json()[
            "items"] == []
        everyone = (await admin.get("/v1/runs")).json()["items"]
        assert len(everyone) == 3
        assert (await admin.get(f"/v1/runs/{run_id}")).json()["owner"] == "alice"

    async def test_events_page_by_page(self, alice: Api):
        await alice.agent("calc", [calls(("calculator", {"expression": "1+1"})),
                                   step("It is two.")], [CALCULATOR])
        run = await alice.wait((await alice.start(await alice.session("calc")))["id"])
        everything = await alice.events(run["id"])
        assert_gapless(everything)
        assert await alice.events(run["id"], limit=3) == everything
        tail = await alice.events(run["id"], after=5)
        assert tail == everything[5:]
        response = await alice.client.get(f"/v1/runs/{run['id']}/events",
                                          params={"limit": 4}, headers={
                                              "Accept": "application/json"})
        page = response.json()
        assert [e["seq"] for e in page["items"]] == [1, 2, 3, 4]
        assert page["next_cursor"] == "4"

    async def test_unknown_run_is_404(self, alice: Api):
        for path in ("/v1/runs/run_missing", "/v1/runs/run_missing/wait"):
            assert_problem(await alice.client.get(path), 404, "not_found")
        assert_problem(await alice.client.post("/v1/runs/run_missing/cancel", json={}), 404,
                       "not_found")

    async def test_wait_returns_the_current_run_when_the_time_is_up(self, alice: Api):
        await alice.agent("slow", [step("late", delay_ms=400)])
        run = await alice.start(await alice.session("slow"))
        response = await alice.client.get(f"/v1/runs/{run['id']}/wait",
                                          params={"timeout_s": 0.2})
        assert response.status_code == 200
        assert response.json()["status"] in ("queued", "running")
        assert (await alice.wait(run["id"]))["output"] == "late"
        assert_problem(await alice.client.get(f"/v1/runs/{run['id']}/wait",
                                              params={"timeout_s": 301}), 422,
                       "validation_error")


class TestConcurrentIdempotency:
    async def test_a_repeat_while_the_first_is_in_flight_replays_it(self, alice: Api):
        await alice.agent("helper", [step("Once.", delay_ms=100)])
        session_id = await alice.session("helper")
        headers = {"Idempotency-Key": "double-click"}
        responses = await asyncio.gather(*(
            alice.client.post(f"/v1/sessions/{session_id}/runs", json={"input": "hi"},
                              headers=headers)
            for _ in range(3)))
        assert sorted(r.status_code for r in responses) == [200, 200, 202], [
            r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        await alice.wait(responses[0].json()["id"])

    async def test_one_shot_repeat_while_in_flight_replays_it(self, alice: Api):
        await alice.agent("helper", [step("Once.", delay_ms=100)])
        headers = {"Idempotency-Key": "double-click"}
        responses = await asyncio.gather(*(
            alice.client.post("/v1/runs", json={"agent": "helper", "input": "hi"},
                              headers=headers)
            for _ in range(3)))
        assert sorted(r.status_code for r in responses) == [200, 200, 202], [
            r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        await alice.wait(responses[0].json()["id"])
        assert len((await alice.client.get("/v1/sessions")).json()["items"]) == 1
