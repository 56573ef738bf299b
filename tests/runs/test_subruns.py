"""Agent tools (subruns, §7.1), the batch endpoint (§4.3) and `todo_write`, through the
public API."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from tests.conftest import make_settings
from tests.runs.helpers import SLEEP, Api, assert_gapless, calls, error, of_type, step


def agent_tool(name: str, agent: str) -> dict[str, Any]:
    return {"type": "agent", "name": name, "agent": agent}


def tool_results(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


async def chain(api: Api, depth: int, leaf: list[dict[str, Any]] | None = None,
                leaf_tools: list[dict[str, Any]] | None = None) -> None:
    """Agents `a0` … `a<depth>`: each but the last delegates to the next."""
    await api.agent(f"a{depth}", leaf or [step(f"answer of a{depth}")], tools=leaf_tools)
    for level in reversed(range(depth)):
        await api.agent(f"a{level}", [calls(("delegate", {"input": f"task {level}"})),
                                      step(f"a{level} relayed")],
                        tools=[agent_tool("delegate", f"a{level + 1}")])


class TestSubruns:
    async def test_a_subrun_three_levels_deep(self, alice: Api):
        await chain(alice, 3)
        session_id = await alice.session("a0")
        top = await alice.wait((await alice.start(session_id, "go"))["id"], timeout_s=20)
        assert top["status"] == "completed" and top["output"] == "a0 relayed"
        assert tool_results(await alice.messages(session_id)) == ["a1 relayed"]

        events = await alice.events(top["id"])
        assert_gapless(events)
        (started,) = of_type(events, "subrun.started")
        (completed,) = of_type(events, "subrun.completed")
        assert started["data"]["agent"] == "a1"
        assert completed["data"]["status"] == "completed"
        assert completed["data"]["output"] == "a1 relayed"

        child = await alice.get_run(started["data"]["run_id"])
        assert child["parent_run_id"] == top["id"]
        child_session = await alice.get_session(child["session_id"])
        assert child_session["parent_session_id"] == session_id
        assert child_session["parent_run_id"] == top["id"]
        # Down the chain: a1's child is a2, whose child is a3.
        level, run = 1, child
        while level < 3:
            (nested,) = of_type(await alice.events(run["id"]), "subrun.started")
            run = await alice.get_run(nested["data"]["run_id"])
            level += 1
            assert run["agent"] == f"a{level}" and run["status"] == "completed"
        assert tool_results(await alice.messages(run["session_id"])) == []

    async def test_a_missing_agent_is_an_error_result(self, alice: Api):
        await alice.agent("boss", [calls(("delegate", {"input": "x"})), step("done")],
                          tools=[agent_tool("delegate", "nobody")])
        session_id = await alice.session("boss")
        run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        (result,) = tool_results(await alice.messages(session_id))
        assert "nobody" in result and "not found" in result

    async def test_a_failed_subrun_is_an_error_result(self, alice: Api):
        await chain(alice, 1, leaf=[error(400, "bad request")])
        session_id = await alice.session("a0")
        run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        (result,) = tool_results(await alice.messages(session_id))
        assert "did not complete (failed)" in result and "provider_error" in result
        completed = of_type(await alice.events(run["id"]), "subrun.completed")[0]["data"]
        assert completed["status"] == "failed"

    async def test_cancelling_the_parent_cancels_every_descendant(self, alice: Api):
        await chain(alice, 2, leaf=[calls(("sleep", {"seconds": 30})), step("late")],
                    leaf_tools=[SLEEP])
        session_id = await alice.session("a0")
        top = await alice.start(session_id)
        # Wait until the grandchild sleeps.
        (first,) = of_type(await alice.until(top["id"], "subrun.started"), "subrun.started")
        middle = first["data"]["run_id"]
        (second,) = of_type(await alice.until(middle, "subrun.started"), "subrun.started")
        leaf = second["data"]["run_id"]
        await alice.until(leaf, "tool.started")

        result = await alice.cancel(top["id"], wait=True)
        assert result["cancelled"] == 3
        for run_id in (top["id"], middle, leaf):
            ended = await alice.wait(run_id)
            assert ended["status"] == "cancelled", ended
            assert_gapless(await alice.events(run_id))
        again = await alice.cancel(top["id"])
        assert again["cancelled"] == 0


class TestDepthCap:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return make_settings(database_url, llm_retry_base_s=0.01, max_subrun_depth=1)

    async def test_a_subrun_beyond_the_cap_is_refused(self, alice: Api):
        await chain(alice, 2)
        session_id = await alice.session("a0")
        top = await alice.wait((await alice.start(session_id))["id"], timeout_s=20)
        assert top["status"] == "completed"
        (started,) = of_type(await alice.events(top["id"]), "subrun.started")
        middle = await alice.get_run(started["data"]["run_id"])
        (refused,) = tool_results(await alice.messages(middle["session_id"]))
        assert "at most 1 deep" in refused
        assert of_type(await alice.events(middle["id"]), "subrun.started") == []


class TestBatch:
    async def test_join_keeps_a_failure_in_its_row(self, alice: Api):
        await alice.agent("ok", [step("fine")])
        await alice.agent("broken", [error(400, "no")])
        response = await alice.client.post("/v1/runs/batch", json={"runs": [
            {"agent": "ok", "input": "one"}, {"agent": "broken", "input": "two"},
            {"agent": "ok", "input": "three", "metadata": {"n": 3}}]})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["index"] for r in results] == [0, 1, 2]
        assert [r["status"] for r in results] == ["completed", "failed", "completed"]
        assert results[0]["output"] == "fine" and results[1]["output"] is None
        assert results[1]["error"]["code"] == "provider_error"
        assert len({r["session_id"] for r in results}) == 3
        third = await alice.get_run(results[2]["run_id"])
        assert third["metadata"] == {"n": 3}

    async def test_detach_answers_at_once(self, alice: Api):
        await alice.agent("ok", [step("fine")])
        response = await alice.client.post("/v1/runs/batch", json={
            "mode": "detach", "runs": [{"agent": "ok", "input": "x"}] * 2})
        assert response.status_code == 202, response.text
        runs = response.json()["runs"]
        assert len(runs) == 2
        for run in runs:
            assert (await alice.wait(run["id"]))["status"] == "completed"

    async def test_join_answers_when_the_timeout_passes(self, alice: Api):
        await alice.agent("napper", [calls(("sleep", {"seconds": 30})), step("late")],
                          tools=[SLEEP])
        response = await alice.client.post("/v1/runs/batch", json={
            "timeout_ms": 300, "runs": [{"agent": "napper", "input": "x"}]})
        assert response.status_code == 200, response.text
        (row,) = response.json()["results"]
        assert row["status"] == "running"
        await alice.cancel(row["run_id"])

    async def test_a_missing_agent_refuses_the_batch(self, alice: Api):
        await alice.agent("ok", [step("fine")])
        response = await alice.client.post("/v1/runs/batch", json={"runs": [
            {"agent": "ok", "input": "x"}, {"agent": "ghost", "input": "y"}]})
        assert response.status_code == 404, response.text
        assert "runs[1]" in response.json()["detail"]
        listed = await alice.client.get("/v1/runs", params={"agent": "ok"})
        assert listed.json()["items"] == []

    async def test_a_run_with_bad_overrides_refuses_the_batch(self, alice: Api):
        await alice.agent("ok", [step("fine")])
        response = await alice.client.post("/v1/runs/batch", json={"runs": [
            {"agent": "ok", "input": "x"},
            {"agent": "ok", "input": "y", "overrides": {"tools": ["nope"]}}]})
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", "runs", 1, "overrides", "tools"]
        listed = await alice.client.get("/v1/runs", params={"agent": "ok"})
        assert listed.json()["items"] == []

    @pytest.mark.parametrize("body", [{"runs": []}, {"runs": [{"agent": "ok"}] * 33},
                                      {"runs": [{"agent": "ok", "input": "x",
                                                 "stream": True}]}])
    async def test_bad_batches_get_422(self, alice: Api, body: dict[str, Any]):
        response = await alice.client.post("/v1/runs/batch", json=body)
        assert response.status_code == 422, response.text


class TestTodos:
    async def test_todo_write_replaces_the_sessions_list(self, alice: Api):
        todo = {"type": "builtin", "name": "todo_write"}
        items = [{"content": "read the issue", "status": "done"},
                 {"content": "write the fix", "status": "in_progress"}]
        await alice.agent("planner", [calls(("todo_write", {"items": items})),
                                      calls(("todo_write", {"items": items[1:]})),
                                      calls(("todo_write", {"items": [{"content": "x",
                                                                       "status": "later"}]})),
                                      step("planned")], tools=[todo])
        session_id = await alice.session("planner")
        run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        session = await alice.get_session(session_id)
        assert session["todos"] == items[1:]
        first, second, invalid = tool_results(await alice.messages(session_id))
        assert "2 items" in first and "[done] read the issue" in first
        assert "1 items" in second or "1 item" in second
        assert invalid.startswith("invalid arguments for 'todo_write'")
