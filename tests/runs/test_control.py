"""Busy and pending sessions, cancellation and admission (§4.1, §4.2, §4.3)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.conftest import ADMIN_TOKEN, client_for
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

NAP = calls(("sleep", {"seconds": 30}))


async def sleeping_run(api: Api, session_id: str, **body: Any) -> dict[str, Any]:
    """A run that is inside a 30 s `sleep` tool call."""
    run = await api.start(session_id, "nap", **body)
    await api.until(run["id"], "tool.started")
    return run


class TestBusySession:
    async def test_reject_is_409_with_the_active_run(self, alice: Api):
        await alice.agent("napper", [NAP, step("Awake.")], [SLEEP])
        session_id = await alice.session("napper")
        first = await sleeping_run(alice, session_id)

        response = await alice.post_run(session_id, "again")
        problem = assert_problem(response, 409, "session_busy")
        assert problem["active_run_id"] == first["id"]
        assert int(response.headers["retry-after"]) >= 1
        session = await alice.get_session(session_id)
        assert (session["status"], session["active_run_id"]) == ("running", first["id"])
        await alice.cancel(first["id"], wait=True)

    async def test_enqueue_runs_after_the_active_run_in_order(self, alice: Api):
        await alice.agent("chat", [step("one", delay_ms=300), step("two"), step("three")])
        session_id = await alice.session("chat")
        first = await alice.start(session_id, "first")
        second = await alice.start(session_id, "second", if_busy="enqueue")
        third = await alice.start(session_id, "third", if_busy="enqueue")
        assert second["status"] == third["status"] == "queued"
        assert (await alice.get_run(second["id"]))["status"] == "queued"

        finished = [await alice.wait(r["id"]) for r in (first, second, third)]

        assert [r["status"] for r in finished] == ["completed"] * 3
        assert [r["output"] for r in finished] == ["one", "two", "three"]
        assert finished[0]["ended_at"] <= finished[1]["started_at"]
        assert finished[1]["ended_at"] <= finished[2]["started_at"]
        assert [(m["role"], m["content"]) for m in await alice.messages(session_id)] == [
            ("user", "first"), ("assistant", "one"), ("user", "second"), ("assistant", "two"),
            ("user", "third"), ("assistant", "three")]
        for run in finished:
            assert_gapless(await alice.events(run["id"]))
        session = await alice.get_session(session_id)
        assert (session["status"], session["active_run_id"]) == ("idle", None)

    async def test_interrupt_cancels_the_active_run_and_starts_the_new_one(self, alice: Api):
        await alice.agent("napper", [NAP, step("Fresh start.")], [SLEEP])
        session_id = await alice.session("napper")
        first = await sleeping_run(alice, session_id)

        second = await alice.start(session_id, "new question", if_busy="interrupt")
        done = await alice.wait(second["id"])
        interrupted = await alice.get_run(first["id"])

        assert interrupted["status"] == "cancelled"
        events = await alice.events(first["id"])
        assert_gapless(events)
        assert events[-1]["type"] == "run.cancelled"
        assert events[-1]["data"]["reason"] == f"interrupted by {second['id']}"
        assert done["status"] == "completed" and done["output"] == "Fresh start."
        messages = await alice.messages(session_id)
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user",
                                                 "assistant"]
        assert messages[2]["content"] == f"<cancelled: interrupted by {second['id']}>"
        assert messages[3]["content"] == "new question"

    async def test_cancelling_a_queued_run_skips_it(self, alice: Api):
        await alice.agent("chat", [step("one", delay_ms=300), step("three")])
        session_id = await alice.session("chat")
        first = await alice.start(session_id, "first")
        second = await alice.start(session_id, "second", if_busy="enqueue")
        third = await alice.start(session_id, "third", if_busy="enqueue")

        result = await alice.cancel(second["id"], reason="changed my mind")
        assert result["cancelled"] == 1
        assert result["run"]["status"] == "cancelled"
        events = await alice.events(second["id"])
        assert types(events) == ["run.created", "run.cancelled"]
        assert events[-1]["data"]["reason"] == "changed my mind"

        assert (await alice.wait(first["id"]))["output"] == "one"
        assert (await alice.wait(third["id"]))["output"] == "three"
        assert [m["content"] for m in await alice.messages(session_id)] == [
            "first", "one", "third", "three"]


def pending_call(call_id: str = "call_p1", expression: str = "6*7") -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": "calculator", "arguments": f'{{"expression": "{expression}"}}'}}


async def pending_session(api: Api) -> str:
    """A session whose last assistant message asked for a tool call without a result."""
    await api.agent("calc", [step("It is 42.")], [CALCULATOR])
    session_id = await api.session("calc")
    response = await api.client.post(f"/v1/sessions/{session_id}/messages", json={"messages": [
        {"role": "user", "content": "What is 6*7?"},
        {"role": "assistant", "content": None, "tool_calls": [pending_call()]},
    ]})
    assert response.status_code == 201, response.text
    assert (await api.get_session(session_id))["status"] == "pending"
    return session_id


class TestPendingSession:
    async def test_reject_is_409_with_the_pending_tool_calls(self, alice: Api):
        session_id = await pending_session(alice)
        response = await alice.post_run(session_id, "hello?")
        problem = assert_problem(response, 409, "session_pending")
        assert problem["pending_tool_calls"] == [
            {"id": "call_p1", "name": "calculator", "arguments": '{"expression": "6*7"}'}]
        assert (await alice.get_session(session_id))["status"] == "pending"

    async def test_resume_runs_the_missing_calls_at_turn_zero(self, alice: Api):
        session_id = await pending_session(alice)
        run = await alice.wait((await alice.start(session_id, "", on_pending="resume"))["id"])

        assert run["status"] == "completed" and run["output"] == "It is 42."
        assert run["turns"] == 1
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert types(events)[:5] == ["run.created", "run.started", "tool.started",
                                     "tool.completed", "turn.started"]
        started, completed = events[2]["data"], events[3]["data"]
        assert started == {"turn": 0, "tool_call_id": "call_p1", "name": "calculator",
                           "arguments": {"expression": "6*7"}}
        assert (completed["turn"], completed["output"], completed["is_error"]) == (
            0, "42", False)
        messages = await alice.messages(session_id)
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
        assert (messages[2]["tool_call_id"], messages[2]["content"]) == ("call_p1", "42")
        assert messages[2]["run_id"] == run["id"]
        assert (await alice.get_session(session_id))["status"] == "idle"

    async def test_resume_with_new_input_answers_the_calls_first(self, alice: Api):
        session_id = await pending_session(alice)
        await alice.wait((await alice.start(session_id, "and now?", on_pending="resume"))["id"])
        messages = await alice.messages(session_id)
        assert [(m["role"], m["content"]) for m in messages][2:] == [
            ("tool", "42"), ("user", "and now?"), ("assistant", "It is 42.")]

    async def test_abort_answers_the_calls_with_a_synthetic_result(self, alice: Api):
        session_id = await pending_session(alice)
        run = await alice.wait(
            (await alice.start(session_id, "forget it", on_pending="abort"))["id"])

        assert run["status"] == "completed"
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert "tool.started" not in types(events)
        [aborted] = of_type(events, "tool.completed")
        assert aborted["data"]["turn"] == 0
        assert aborted["data"]["output"] == "<aborted: new input>"
        messages = await alice.messages(session_id)
        assert [(m["role"], m["content"]) for m in messages][2:] == [
            ("tool", "<aborted: new input>"), ("user", "forget it"), ("assistant", "It is 42.")]
        assert messages[2]["tool_call_id"] == "call_p1"

    async def test_a_busy_session_is_busy_before_it_is_pending(self, alice: Api):
        await alice.agent("napper", [NAP], [SLEEP])
        session_id = await alice.session("napper")
        first = await sleeping_run(alice, session_id)
        assert_problem(await alice.post_run(session_id, "x"), 409, "session_busy")
        await alice.cancel(first["id"], wait=True)


class TestCancel:
    async def test_cancel_with_wait_stops_a_sleeping_tool_at_once(self, alice: Api):
        await alice.agent("napper", [NAP, step("never")], [SLEEP])
        session_id = await alice.session("napper")
        run = await sleeping_run(alice, session_id)

        started = time.monotonic()
        result = await alice.cancel(run["id"], wait=True)

        assert time.monotonic() - started < 1.5
        assert result["cancelled"] == 1
        assert result["run"]["status"] == "cancelled"
        assert result["run"]["ended_at"] is not None
        assert result["run"]["turns"] == 1
        assert result["run"]["usage"]["llm_calls"] == 1
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert result["run"]["last_seq"] == len(events)
        assert events[-1]["type"] == "run.cancelled"
        assert events[-1]["data"] == {"reason": "cancelled by the client"}
        [closed] = of_type(events, "tool.completed")
        assert closed["data"]["tool_call_id"] == "call_0_0"
        assert closed["data"]["turn"] == 1
        assert closed["data"]["is_error"] is True
        messages = await alice.messages(session_id)
        assert messages[-1]["role"] == "tool"
        assert messages[-1]["content"] == "<cancelled: cancelled by the client>"
        session = await alice.get_session(session_id)
        assert (session["status"], session["active_run_id"]) == ("idle", None)

    async def test_cancel_with_a_reason_without_waiting(self, alice: Api):
        await alice.agent("napper", [NAP], [SLEEP])
        session_id = await alice.session("napper")
        run = await sleeping_run(alice, session_id)

        result = await alice.cancel(run["id"], reason="user pressed stop")
        assert result["cancelled"] == 1
        finished = await alice.wait(run["id"], timeout_s=3)
        assert finished["status"] == "cancelled"
        events = await alice.events(run["id"])
        assert events[-1]["data"]["reason"] == "user pressed stop"
        assert (await alice.messages(session_id))[-1]["content"] == (
            "<cancelled: user pressed stop>")

    async def test_cancel_without_wait_answers_the_run_as_the_cancel_left_it(self, alice: Api):
        await alice.agent("napper", [NAP], [SLEEP])
        run = await sleeping_run(alice, await alice.session("napper"))

        result = await alice.cancel(run["id"])

        assert result["cancelled"] == 1
        assert result["run"]["status"] == "cancelled"
        assert result["run"]["ended_at"] is not None
        assert result["run"] == await alice.get_run(run["id"])

    async def test_a_cancelled_tool_reports_how_long_it_ran(self, alice: Api):
        await alice.agent("napper", [NAP], [SLEEP])
        run = await sleeping_run(alice, await alice.session("napper"))
        await asyncio.sleep(0.3)  # the tool has run at least this long when it is cancelled

        await alice.cancel(run["id"], wait=True)

        [closed] = of_type(await alice.events(run["id"]), "tool.completed")
        assert closed["data"]["is_error"] is True
        assert 300 <= closed["data"]["duration_ms"] < 30_000

    async def test_cancelling_a_finished_run_is_a_no_op(self, alice: Api):
        await alice.agent("quick", [step("Done.")])
        run = await alice.wait((await alice.start(await alice.session("quick")))["id"])
        result = await alice.cancel(run["id"], wait=True)
        assert result["cancelled"] == 0
        assert result["run"] == run
        assert (await alice.cancel(run["id"]))["cancelled"] == 0

    async def test_cancelling_twice_counts_once(self, alice: Api):
        await alice.agent("napper", [NAP], [SLEEP])
        run = await sleeping_run(alice, await alice.session("napper"))
        assert (await alice.cancel(run["id"], wait=True))["cancelled"] == 1
        again = await alice.cancel(run["id"], wait=True)
        assert again["cancelled"] == 0 and again["run"]["status"] == "cancelled"
        assert of_type(await alice.events(run["id"]), "run.cancelled")[0]["seq"] == (
            again["run"]["last_seq"])

    async def test_the_session_takes_new_runs_after_a_cancel(self, alice: Api):
        await alice.agent("napper", [NAP, step("Back.")], [SLEEP])
        session_id = await alice.session("napper")
        run = await sleeping_run(alice, session_id)
        await alice.cancel(run["id"], wait=True)
        after = await alice.wait((await alice.start(session_id, "still there?"))["id"])
        assert after["status"] == "completed" and after["output"] == "Back."

    async def test_cancel_during_an_llm_call(self, alice: Api):
        await alice.agent("slow", [step("late", delay_ms=30_000)])
        session_id = await alice.session("slow")
        run = await alice.start(session_id)
        await alice.until(run["id"], "turn.started")
        result = await alice.cancel(run["id"], wait=True)
        assert result["run"]["status"] == "cancelled"
        assert [m["role"] for m in await alice.messages(session_id)] == ["user"]
        assert (await alice.get_session(session_id))["status"] == "idle"


class TestAdmission:
    async def test_a_full_queue_is_429_backpressure(self, database_url: str):
        async with running_app(database_url, max_concurrent_runs=1,
                               max_queued_runs=0) as app, client_for(app, ADMIN_TOKEN) as client:
            api = Api(client)
            await api.agent("napper", [NAP], [SLEEP])
            first = await sleeping_run(api, await api.session("napper"))
            other = await api.session("napper")

            response = await api.post_run(other, "me too")

            assert_problem(response, 429, "backpressure")
            assert int(response.headers["retry-after"]) >= 1
            assert (await api.get_session(other))["status"] == "idle"
            await api.cancel(first["id"], wait=True)
            accepted = await api.start(other, "now?")
            await api.until(accepted["id"], "tool.started")
            await api.cancel(accepted["id"], wait=True)

    async def test_runs_over_the_concurrency_limit_wait_their_turn(self, database_url: str):
        async with running_app(database_url, max_concurrent_runs=1,
                               max_queued_runs=2) as app, client_for(app, ADMIN_TOKEN) as client:
            api = Api(client)
            await api.agent("napper", [NAP], [SLEEP])
            await api.agent("quick", [step("Done.")])
            first = await sleeping_run(api, await api.session("napper"))
            waiting = [await api.start(await api.session("quick")) for _ in range(2)]
            assert_problem(await api.post_run(await api.session("quick")), 429, "backpressure")

            await asyncio.sleep(0.1)
            assert [(await api.get_run(r["id"]))["status"] for r in waiting] == ["queued"] * 2
            await api.cancel(first["id"])
            finished = [await api.wait(r["id"]) for r in waiting]
            assert [r["status"] for r in finished] == ["completed"] * 2
            assert finished[0]["started_at"] <= finished[1]["started_at"]


class TestConcurrentCreation:
    async def test_only_one_of_two_simultaneous_runs_gets_an_idle_session(self, alice: Api):
        await alice.agent("chat", [step("one", delay_ms=200), step("two")])
        session_id = await alice.session("chat")
        responses = await asyncio.gather(*(alice.post_run(session_id, text)
                                           for text in ("a", "b")))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202, 409], [r.text for r in responses]
        [accepted] = [r for r in responses if r.status_code == 202]
        [rejected] = [r for r in responses if r.status_code == 409]
        assert rejected.json()["active_run_id"] == accepted.json()["id"]
        await alice.wait(accepted.json()["id"])


class TestDeletingABusySession:
    async def test_delete_is_409_while_a_run_is_active(self, alice: Api):
        await alice.agent("napper", [NAP], [SLEEP])
        session_id = await alice.session("napper")
        run = await sleeping_run(alice, session_id)
        response = await alice.client.delete(f"/v1/sessions/{session_id}")
        assert assert_problem(response, 409, "session_busy")["active_run_id"] == run["id"]
        await alice.cancel(run["id"], wait=True)

    async def test_force_cancels_the_runs_then_deletes(self, alice: Api, app: Any):
        await alice.agent("napper", [NAP], [SLEEP])
        session_id = await alice.session("napper")
        run = await sleeping_run(alice, session_id)
        queued = await alice.start(session_id, "later", if_busy="enqueue")

        response = await alice.client.delete(f"/v1/sessions/{session_id}",
                                             params={"force": "true"})

        assert response.status_code == 204, response.text
        for run_id in (run["id"], queued["id"]):
            assert_problem(await alice.client.get(f"/v1/runs/{run_id}"), 404, "not_found")
        assert app.state.manager.active_count == 0
        assert (await alice.client.get("/v1/runs")).json()["items"] == []


class TestLeases:
    async def test_runs_waiting_longer_than_the_lease_are_not_taken_for_orphans(
        self, database_url: str
    ):
        async with running_app(database_url, run_lease_s=0.6,
                               max_concurrent_runs=1) as app, client_for(
                app, ADMIN_TOKEN) as client:
            api = Api(client)
            await api.agent("napper", [calls(("sleep", {"seconds": 1})), step("one"),
                                       step("two")], [SLEEP])
            await api.agent("quick", [step("three")])
            session_id = await api.session("napper")
            first = await api.start(session_id, "first")
            behind = await api.start(session_id, "second", if_busy="enqueue")
            admitted_later = await api.start(await api.session("quick"), "third")

            finished = [await api.wait(r["id"]) for r in (first, behind, admitted_later)]

            assert [r["status"] for r in finished] == ["completed"] * 3, finished
            assert [r["output"] for r in finished] == ["one", "two", "three"]


class TestCancelRaces:
    async def test_simultaneous_cancels_end_the_run_once(self, alice: Api):
        await alice.agent("napper", [NAP, step("Back.")], [SLEEP])
        session_id = await alice.session("napper")
        run = await sleeping_run(alice, session_id)

        results = await asyncio.gather(*(alice.cancel(run["id"], wait=wait)
                                         for wait in (True, False, True, False)))

        assert results[0]["run"]["status"] == "cancelled"
        finished = await alice.wait(run["id"], timeout_s=3)
        assert finished["status"] == "cancelled"
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert events[-1]["type"] == "run.cancelled"
        session = await alice.get_session(session_id)
        assert (session["status"], session["active_run_id"]) == ("idle", None)
        after = await alice.wait((await alice.start(session_id, "again"))["id"])
        assert after["output"] == "Back."

    async def test_a_cancel_right_after_creation_ends_the_run_cancelled(self, alice: Api):
        await alice.agent("quick", [step("Done."), step("Again.")])
        session_id = await alice.session("quick")
        for _ in range(5):
            run = await alice.start(session_id, "hi")
            result = await alice.cancel(run["id"], wait=True)
            finished = await alice.wait(run["id"], timeout_s=3)
            assert finished["status"] in ("cancelled", "completed")
            assert result["run"]["status"] == finished["status"]
            events = await alice.events(run["id"])
            assert_gapless(events)
            session = await alice.get_session(session_id)
            assert (session["status"], session["active_run_id"]) == ("idle", None)

    async def test_a_cancel_as_the_run_ends_never_rewrites_its_end(self, alice: Api):
        await alice.agent("quick", [])
        session_id = await alice.session("quick")
        for attempt in range(5):
            run = await alice.start(session_id, f"hi {attempt}")
            await asyncio.sleep(0.01 * attempt)
            await alice.cancel(run["id"])
            finished = await alice.wait(run["id"], timeout_s=3)
            events = await alice.events(run["id"])
            assert_gapless(events)
            assert events[-1]["type"] == f"run.{finished['status']}"
            assert finished["last_seq"] == len(events)

    async def test_cancelling_a_queued_run_as_it_starts(self, alice: Api):
        await alice.agent("chat", [step(f"answer {i}", delay_ms=20) for i in range(8)])
        session_id = await alice.session("chat")
        for attempt in range(4):
            first = await alice.start(session_id, "first")
            queued = await alice.start(session_id, "second", if_busy="enqueue")
            await asyncio.sleep(0.005 * attempt)
            await alice.cancel(queued["id"])
            for run in (first, queued):
                finished = await alice.wait(run["id"], timeout_s=3)
                events = await alice.events(run["id"])
                assert_gapless(events)
                assert events[-1]["type"] == f"run.{finished['status']}"
            session = await alice.get_session(session_id)
            assert (session["status"], session["active_run_id"]) == ("idle", None)


class TestShutdown:
    async def test_a_graceful_shutdown_interrupts_the_runs_and_frees_their_sessions(
        self, database_url: str
    ):
        async with running_app(database_url) as app, client_for(app, ADMIN_TOKEN) as client:
            api = Api(client)
            await api.agent("napper", [NAP, step("Back again.")], [SLEEP])
            session_id = await api.session("napper")
            active = await sleeping_run(api, session_id)
            queued = await api.start(session_id, "later", if_busy="enqueue")

        async with running_app(database_url) as app, client_for(app, ADMIN_TOKEN) as client:
            api = Api(client)
            for run in (active, queued):
                stopped = await api.get_run(run["id"])
                assert stopped["status"] == "interrupted"
                events = await api.events(run["id"])
                assert_gapless(events)
                assert events[-1]["data"] == {"reason": "the service shut down"}
            messages = await api.messages(session_id)
            assert messages[-1]["content"] == "<cancelled: the service shut down>"
            session = await api.get_session(session_id)
            assert (session["status"], session["active_run_id"]) == ("idle", None)
            after = await api.wait((await api.start(session_id, "hello again"))["id"])
            assert after["output"] == "Back again."
