"""Steering: input queued into an unfinished run (`POST /v1/runs/{id}/input`,
`if_busy: "steer"`), delivered at its next turn boundary."""

from __future__ import annotations

from typing import Any

from tests.runs.helpers import SLEEP, Api, assert_gapless, assert_problem, calls, step, types


def conversation(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(m["role"], m["content"]) for m in messages]


class TestSteering:
    async def test_input_is_delivered_at_the_next_turn_boundary(self, alice: Api):
        await alice.agent("napper", [calls(("sleep", {"seconds": 3})), step("done")],
                          tools=[SLEEP])
        session_id = await alice.session("napper")
        run = await alice.start(session_id, "nap")
        await alice.until(run["id"], "tool.started")
        response = await alice.client.post(f"/v1/runs/{run['id']}/input",
                                           json={"input": "and then tidy up"})
        assert response.status_code == 202, response.text
        assert response.json()["id"] == run["id"]

        done = await alice.wait(run["id"])
        assert done["status"] == "completed" and done["output"] == "done"
        roles = [role for role, _ in conversation(await alice.messages(session_id))]
        assert roles == ["user", "assistant", "tool", "user", "assistant"]
        assert conversation(await alice.messages(session_id))[3] == (
            "user", "and then tidy up")
        events = await alice.events(run["id"])
        assert_gapless(events)
        kinds = types(events)
        delivered = kinds.index("run.input")
        assert kinds[delivered - 1] == "turn.completed"
        assert kinds[delivered + 1] == "turn.started"
        (event,) = [e for e in events if e["type"] == "run.input"]
        assert event["data"]["messages"][0]["content"] == "and then tidy up"

    async def test_input_after_the_final_answer_starts_one_more_turn(self, alice: Api):
        await alice.agent("slow", [step("first answer", delay_ms=2000), step("second answer")])
        session_id = await alice.session("slow")
        run = await alice.start(session_id, "hello")
        await alice.until(run["id"], "turn.started")
        response = await alice.client.post(f"/v1/runs/{run['id']}/input", json={
            "input": [{"role": "user", "content": "one more thing"}]})
        assert response.status_code == 202, response.text
        done = await alice.wait(run["id"])
        assert done["status"] == "completed" and done["output"] == "second answer"
        assert done["turns"] == 2
        assert conversation(await alice.messages(session_id)) == [
            ("user", "hello"), ("assistant", "first answer"), ("user", "one more thing"),
            ("assistant", "second answer")]
        assert_gapless(await alice.events(run["id"]))

    async def test_if_busy_steer_gives_the_input_to_the_active_run(self, alice: Api):
        await alice.agent("napper", [calls(("sleep", {"seconds": 3})), step("done")],
                          tools=[SLEEP])
        session_id = await alice.session("napper")
        run = await alice.start(session_id, "nap")
        await alice.until(run["id"], "tool.started")
        response = await alice.post_run(session_id, "steered in", if_busy="steer")
        assert response.status_code == 200, response.text
        assert response.json()["id"] == run["id"]
        await alice.wait(run["id"])
        contents = [content for _, content in conversation(await alice.messages(session_id))]
        assert "steered in" in contents
        listed = await alice.client.get("/v1/runs", params={"session_id": session_id})
        assert len(listed.json()["items"]) == 1

    async def test_if_busy_steer_on_an_idle_session_starts_a_run(self, alice: Api):
        await alice.agent("plain", [step("hi")])
        session_id = await alice.session("plain")
        response = await alice.post_run(session_id, "hello", if_busy="steer")
        assert response.status_code == 202, response.text

    async def test_a_finished_run_gets_409(self, alice: Api):
        await alice.agent("plain", [step("hi")])
        run = await alice.wait((await alice.start(await alice.session("plain")))["id"])
        response = await alice.client.post(f"/v1/runs/{run['id']}/input",
                                           json={"input": "late"})
        assert_problem(response, 409, "run_finished")

    async def test_empty_input_gets_422(self, alice: Api):
        await alice.agent("plain", [step("hi")])
        run = await alice.wait((await alice.start(await alice.session("plain")))["id"])
        for body in ({"input": ""}, {"input": []}, {}):
            response = await alice.client.post(f"/v1/runs/{run['id']}/input", json=body)
            assert_problem(response, 422, "validation_error")


class TestInputAtTheEnd:
    async def test_input_stored_as_the_run_ends_gives_it_one_more_turn(self, alice: Api,
                                                                       monkeypatch):
        from app.runs.manager import RunManager

        # As when the input reaches another process: this one is not told, so only the
        # end's write finds it.
        monkeypatch.setattr(RunManager, "steer", lambda self, run_id: None)
        await alice.agent("slow", [step("first answer", delay_ms=1000), step("second answer")])
        session_id = await alice.session("slow")
        run = await alice.start(session_id, "hello")
        await alice.until(run["id"], "turn.started")
        response = await alice.client.post(f"/v1/runs/{run['id']}/input",
                                           json={"input": "one more thing"})
        assert response.status_code == 202, response.text
        await alice.until(run["id"], "run.completed", timeout_s=10)
        done = await alice.get_run(run["id"])
        assert done["output"] == "second answer" and done["turns"] == 2
        events = await alice.events(run["id"])
        assert_gapless(events)
        turns = [e["data"]["turn"] for e in events if e["type"] == "turn.started"]
        assert turns == [1, 2]
        kinds = types(events)
        assert kinds.index("run.input") < kinds.index("run.resumed") < len(kinds) - 1
        assert conversation(await alice.messages(session_id))[2] == ("user", "one more thing")


class TestInputWhileWaiting:
    async def test_input_to_a_waiting_run_is_delivered_once_it_goes_on(self, alice: Api):
        ask = {"type": "client", "name": "ask_user"}
        await alice.agent("asker", [calls(("ask_user", {})), step("thanks")], tools=[ask])
        session_id = await alice.session("asker")
        run = await alice.wait((await alice.start(session_id, "hi"))["id"])
        assert run["status"] == "requires_action"
        response = await alice.client.post(f"/v1/runs/{run['id']}/input",
                                           json={"input": "by the way"})
        assert response.status_code == 202, response.text
        call_id = run["required_action"]["tool_calls"][0]["id"]
        response = await alice.client.post(f"/v1/runs/{run['id']}/tool-outputs", json={
            "outputs": [{"tool_call_id": call_id, "output": "blue"}]})
        assert response.status_code == 200, response.text
        done = await alice.wait(run["id"])
        assert done["status"] == "completed" and done["turns"] == 2
        assert [role for role, _ in conversation(await alice.messages(session_id))] == [
            "user", "assistant", "tool", "user", "assistant"]
        kinds = types(await alice.events(run["id"]))
        delivered = kinds.index("run.input")
        assert kinds[delivered - 1] == "turn.completed"
        assert kinds[delivered + 1] == "turn.started"
