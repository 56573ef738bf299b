"""Pausing and resuming the runtime (§9): runs park at turn boundaries and go on after."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, Users, _truncate, client_for, postgres_url
from tests.runs.conftest import running_app
from tests.runs.helpers import (
    CALCULATOR,
    SLEEP,
    Api,
    assert_gapless,
    assert_problem,
    calls,
    of_type,
    step,
    types,
)

SLOW_TOOL = [calls(("sleep", {"seconds": 0.5})), step("done after the pause")]


async def pause(admin: httpx.AsyncClient, timeout_ms: int = 10_000) -> dict[str, Any]:
    response = await admin.post("/v1/runtime/pause", json={"timeout_ms": timeout_ms})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def resume(admin: httpx.AsyncClient) -> dict[str, Any]:
    response = await admin.post("/v1/runtime/resume")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def runtime(admin: httpx.AsyncClient) -> dict[str, Any]:
    response = await admin.get("/v1/runtime")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until_status(api: Api, run_id: str, status: str, timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await api.get_run(run_id))["status"] != status:
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.02)


class TestPause:
    async def test_a_run_in_a_tool_call_parks_after_it_and_ends_as_if_never_paused(
            self, admin: httpx.AsyncClient, alice: Api) -> None:
        await alice.agent("slow", SLOW_TOOL, tools=[SLEEP])
        reference = await alice.wait((await alice.start(await alice.session("slow")))["id"])
        run = await alice.start(await alice.session("slow"))
        await alice.until(run["id"], "tool.started")

        paused = await pause(admin)

        assert paused["status"] == "paused"
        assert (paused["paused_runs"], paused["force_cancelled"]) == (1, 0)
        parked = await alice.get_run(run["id"])
        assert parked["status"] == "paused"
        events = await alice.events(run["id"])
        assert types(events)[-3:] == ["tool.completed", "turn.completed", "run.paused"]
        assert of_type(events, "tool.completed")[0]["data"]["output"].startswith("slept")
        state = await runtime(admin)
        assert state["status"] == "paused" and state["paused_runs"] == 1
        assert state["paused_at"] is not None

        assert (await resume(admin))["resumed_runs"] == 1

        ended = await alice.wait(run["id"])
        assert ended["status"] == "completed"
        assert (ended["output"], ended["turns"]) == (reference["output"], reference["turns"])
        events = await alice.events(run["id"])
        assert_gapless(events)
        after = types(events)[types(events).index("run.paused"):]
        assert after[:3] == ["run.paused", "run.resumed", "turn.started"]
        assert (await runtime(admin))["status"] == "running"

    async def test_a_run_in_an_llm_stream_parks_after_the_call_and_its_tools(
            self, admin: httpx.AsyncClient, alice: Api) -> None:
        words = "one two three four five six seven eight nine ten"
        script = [calls(("calculator", {"expression": "6*7"}), text=words), step("42 it is")]
        await alice.agent("stream", script, tools=[CALCULATOR], options={"chunk_delay_ms": 30})
        run = await alice.start(await alice.session("stream"))
        await alice.until(run["id"], "message.delta")

        paused = await pause(admin)

        assert paused["paused_runs"] == 1
        events = await alice.events(run["id"])
        deltas = "".join(e["data"]["text"] for e in of_type(events, "message.delta"))
        assert deltas == words
        assert types(events)[-4:] == ["tool.started", "tool.completed", "turn.completed",
                                      "run.paused"]
        await resume(admin)
        ended = await alice.wait(run["id"])
        assert (ended["status"], ended["output"]) == ("completed", "42 it is")

    async def test_a_run_that_does_not_park_in_time_is_cancelled(
            self, admin: httpx.AsyncClient, alice: Api) -> None:
        await alice.agent("stuck", [calls(("sleep", {"seconds": 30}))], tools=[SLEEP])
        run = await alice.start(await alice.session("stuck"))
        await alice.until(run["id"], "tool.started")

        paused = await pause(admin, timeout_ms=200)

        assert (paused["paused_runs"], paused["force_cancelled"]) == (0, 1)
        assert any("cancelled" in warning for warning in paused["warnings"])
        ended = await alice.get_run(run["id"])
        assert ended["status"] == "cancelled"
        completed = of_type(await alice.events(run["id"]), "tool.completed")
        assert completed[0]["data"]["output"].startswith("<cancelled:")
        await resume(admin)

    async def test_new_runs_are_refused_while_paused_and_accepted_after(
            self, admin: httpx.AsyncClient, alice: Api) -> None:
        await alice.agent("idle", [step("hello")])
        session_id = await alice.session("idle")
        await pause(admin)

        refused = await alice.post_run(session_id)
        body = assert_problem(refused, 503, "runtime_paused")
        assert int(refused.headers["retry-after"]) > 0
        assert "paused" in body["detail"]
        one_shot = await alice.client.post("/v1/runs", json={"agent": "idle", "input": "hi"})
        assert_problem(one_shot, 503, "runtime_paused")
        assert (await alice.get_session(session_id))["status"] == "idle"

        await resume(admin)
        assert (await alice.wait((await alice.start(session_id))["id"]))["output"] == "hello"

    async def test_pause_and_resume_conflicts_and_access(
            self, admin: httpx.AsyncClient, alice: Api) -> None:
        assert_problem(await admin.post("/v1/runtime/resume"), 409, "not_paused")
        assert_problem(await alice.client.post("/v1/runtime/pause"), 403, "forbidden")
        assert_problem(await alice.client.get("/v1/runtime"), 403, "forbidden")
        assert (await admin.post("/v1/runtime/pause")).status_code == 200  # no body
        assert_problem(await admin.post("/v1/runtime/pause", json={}), 409, "already_paused")
        assert_problem(await admin.post("/v1/runtime/pause", json={"timeout_ms": -1}), 422,
                       "validation_error")
        assert (await resume(admin))["status"] == "running"

    async def test_paused_time_does_not_count_toward_the_timeout(
            self, admin: httpx.AsyncClient, alice: Api) -> None:
        await alice.agent("tight", SLOW_TOOL, tools=[SLEEP], timeout_s=2)
        run = await alice.start(await alice.session("tight"))
        await alice.until(run["id"], "tool.started")
        await pause(admin)
        await asyncio.sleep(2.5)  # longer than the run's whole timeout
        await resume(admin)
        ended = await alice.wait(run["id"])
        assert (ended["status"], ended["output"]) == ("completed", "done after the pause")

    async def test_a_run_answered_while_paused_stays_parked_until_resume(
            self, admin: httpx.AsyncClient, alice: Api) -> None:
        tool = {"type": "client", "name": "ask", "parameters": {"type": "object"}}
        await alice.agent("client", [calls(("ask", {})), step("thanks")], tools=[tool])
        run = await alice.start(await alice.session("client"))
        waiting = await alice.wait(run["id"])
        assert waiting["status"] == "requires_action"
        await pause(admin)
        call_id = waiting["required_action"]["tool_calls"][0]["id"]
        answered = await alice.client.post(f"/v1/runs/{run['id']}/tool-outputs", json={
            "outputs": [{"tool_call_id": call_id, "output": "42"}]})
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == "paused"
        await asyncio.sleep(0.3)
        assert (await alice.get_run(run["id"]))["status"] == "paused"
        assert (await runtime(admin))["paused_runs"] == 1

        await resume(admin)
        ended = await alice.wait(run["id"])
        assert (ended["status"], ended["output"]) == ("completed", "thanks")

    async def test_a_parked_run_can_be_cancelled(self, admin: httpx.AsyncClient,
                                                 alice: Api) -> None:
        await alice.agent("slow", SLOW_TOOL, tools=[SLEEP])
        session_id = await alice.session("slow")
        run = await alice.start(session_id)
        await alice.until(run["id"], "tool.started")
        await pause(admin)

        cancelled = await alice.cancel(run["id"])

        assert cancelled["cancelled"] == 1
        assert (await alice.get_run(run["id"]))["status"] == "cancelled"
        assert (await alice.get_session(session_id))["status"] == "idle"
        assert_gapless(await alice.events(run["id"]))
        assert (await resume(admin))["resumed_runs"] == 0


    async def test_a_resume_while_runs_are_parking_lets_them_go_on(
            self, admin: httpx.AsyncClient, alice: Api) -> None:
        await alice.agent("slow", SLOW_TOOL, tools=[SLEEP])
        run = await alice.start(await alice.session("slow"))
        await alice.until(run["id"], "tool.started")
        pausing = asyncio.create_task(pause(admin))
        deadline = asyncio.get_running_loop().time() + 5
        while (await runtime(admin))["status"] != "pausing":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)

        assert (await resume(admin))["status"] == "running"

        paused = await pausing
        assert paused["force_cancelled"] == 0
        ended = await alice.wait(run["id"])
        assert (ended["status"], ended["output"]) == ("completed", "done after the pause")
        assert (await runtime(admin))["paused_runs"] == 0

    async def test_a_subrun_runs_on_and_its_parent_parks_after_it(
            self, admin: httpx.AsyncClient, alice: Api) -> None:
        await alice.agent("child", [calls(("sleep", {"seconds": 0.5})), step("child done")],
                          tools=[SLEEP])
        delegate = {"type": "agent", "name": "delegate", "agent": "child"}
        await alice.agent("parent", [calls(("delegate", {"input": "go"})),
                                     step("parent done")], tools=[delegate])
        run = await alice.start(await alice.session("parent"))
        started = of_type(await alice.until(run["id"], "subrun.started"), "subrun.started")
        child_id = started[0]["data"]["run_id"]
        await alice.until(child_id, "tool.started")

        paused = await pause(admin)

        assert (paused["paused_runs"], paused["force_cancelled"]) == (1, 0)
        child = await alice.get_run(child_id)
        assert (child["status"], child["output"]) == ("completed", "child done")
        assert (await alice.get_run(run["id"]))["status"] == "paused"
        await resume(admin)
        ended = await alice.wait(run["id"])
        assert (ended["status"], ended["output"]) == ("completed", "parent done")


class TestPauseAcrossRestarts:
    async def test_a_restart_while_paused_stays_paused_and_resumes_the_parked_run(
            self, database_url: str) -> None:
        async with running_app(database_url) as first, client_for(first, ADMIN_TOKEN) as admin:
            users = Users(first, admin)
            api = Api(await users.client("alice"))
            await api.agent("slow", SLOW_TOOL, tools=[SLEEP])
            run = await api.start(await api.session("slow"))
            await api.until(run["id"], "tool.started")
            await pause(admin)
            token = str(api.client.headers["authorization"]).removeprefix("Bearer ")
            await users.close()
        async with running_app(database_url) as second, client_for(second, ADMIN_TOKEN) as admin:
            assert (await runtime(admin))["status"] == "paused"
            api = Api(client_for(second, token))
            assert (await api.get_run(run["id"]))["status"] == "paused"
            assert (await resume(admin))["resumed_runs"] == 1
            ended = await api.wait(run["id"])
            assert (ended["status"], ended["output"]) == ("completed", "done after the pause")
            await api.client.aclose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Processes share a database only on Postgres (a SQLite file has one process).
    if "replicas_backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend")
        metafunc.parametrize("replicas_backend", ["postgres"] if chosen != "sqlite" else [])


class TestPauseAcrossProcesses:
    async def test_a_pause_on_one_process_parks_the_runs_of_another(
            self, replicas_backend: str, postgres_database: str) -> None:
        await _truncate(postgres_database)
        url = postgres_url(postgres_database)
        async with (running_app(url, instance_id="one") as one,
                    running_app(url, instance_id="two") as two,
                    client_for(one, ADMIN_TOKEN) as admin_one,
                    client_for(two, ADMIN_TOKEN) as admin_two):
            users = Users(two, admin_two)
            api = Api(await users.client("alice"))
            # Longer than the second the other process may take to notice the pause.
            script = [calls(("sleep", {"seconds": 2})), step("done after the pause")]
            await api.agent("slow", script, tools=[SLEEP])
            run = await api.start(await api.session("slow"))
            await api.until(run["id"], "tool.started")

            await pause(admin_one)

            await until_status(api, run["id"], "paused")
            assert (await runtime(admin_two))["status"] == "paused"
            refused = await api.post_run(await api.session("slow"))
            assert_problem(refused, 503, "runtime_paused")
            assert (await resume(admin_one))["resumed_runs"] == 1
            ended = await api.wait(run["id"])
            assert (ended["status"], ended["output"]) == ("completed", "done after the pause")
            await until_runtime(admin_two, "running")
            await users.close()


async def until_runtime(admin: httpx.AsyncClient, status: str, timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await runtime(admin))["status"] != status:
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.05)
