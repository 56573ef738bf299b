"""The agent loop through the API (§4, §5, §8): turns, tools, limits, retries, timeouts."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest

from app.runs.store import RunStore, Tally
from tests.runs.conftest import MAX_ATTEMPTS
from tests.runs.helpers import (
    CALCULATOR,
    CURRENT_TIME,
    SLEEP,
    Api,
    arguments,
    assert_gapless,
    calls,
    error,
    of_type,
    step,
    types,
)

ANSWER = "The answer is 5."


class TestToolThenAnswer:
    async def test_run_completes_with_output_turns_and_usage(self, alice: Api):
        await alice.agent("calc", [calls(("calculator", {"expression": "2+3"})), step(ANSWER)],
                          [CALCULATOR])
        session_id = await alice.session("calc")
        created = await alice.start(session_id, "What is 2+3?")
        assert created["status"] == "queued"
        assert created["session_id"] == session_id and created["agent"] == "calc"

        run = await alice.wait(created["id"])

        assert run["status"] == "completed"
        assert run["stop_reason"] == "end_turn"
        assert run["output"] == ANSWER
        assert run["turns"] == 2
        assert run["error"] is None
        usage = run["usage"]
        assert usage["llm_calls"] == 2
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert run["started_at"] and run["ended_at"]

    async def test_events_follow_the_documented_order(self, alice: Api):
        await alice.agent("calc", [calls(("calculator", {"expression": "2+3"})), step(ANSWER)],
                          [CALCULATOR])
        session_id = await alice.session("calc")
        run = await alice.wait((await alice.start(session_id, "What is 2+3?"))["id"])

        events = await alice.events(run["id"])

        assert_gapless(events)
        assert run["last_seq"] == len(events)
        deltas = of_type(events, "message.delta")
        assert types(events) == [
            "run.created", "run.started",
            "turn.started", "message.completed", "usage", "tool.started", "tool.completed",
            "turn.completed",
            "turn.started", *["message.delta"] * len(deltas), "message.completed", "usage",
            "turn.completed",
            "run.completed",
        ]
        assert len(deltas) == 4
        assert "".join(d["data"]["text"] for d in deltas) == ANSWER
        assert all(e["run_id"] == run["id"] and e["session_id"] == session_id for e in events)
        assert events[0]["data"]["run"]["id"] == run["id"]
        assert [e["data"]["turn"] for e in of_type(events, "turn.started")] == [1, 2]

        started, completed = of_type(events, "tool.started")[0], of_type(
            events, "tool.completed")[0]
        assert started["data"] == {"turn": 1, "tool_call_id": "call_0_0", "name": "calculator",
                                   "arguments": {"expression": "2+3"}}
        assert completed["data"]["output"] == "5"
        assert completed["data"]["is_error"] is False
        assert completed["data"]["turn"] == 1
        first, second = of_type(events, "message.completed")
        assert first["data"]["finish_reason"] == "tool_calls"
        assert second["data"]["finish_reason"] == "stop"
        assert second["data"]["message"]["content"] == ANSWER

        final = events[-1]["data"]
        assert final == {"stop_reason": "end_turn", "output": ANSWER, "usage": run["usage"],
                         "turns": 2}
        usage_events = of_type(events, "usage")
        assert sum(u["data"]["total_tokens"] for u in usage_events) == (
            run["usage"]["total_tokens"])

    async def test_messages_are_stored_in_the_openai_shape(self, alice: Api):
        await alice.agent("calc", [calls(("calculator", {"expression": "2+3"})), step(ANSWER)],
                          [CALCULATOR])
        session_id = await alice.session("calc")
        before = await alice.get_session(session_id)
        run = await alice.wait((await alice.start(session_id, "What is 2+3?"))["id"])

        messages = await alice.messages(session_id)

        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
        assert [m["seq"] for m in messages] == [1, 2, 3, 4]
        assert all(m["run_id"] == run["id"] and m["state"] == "active" for m in messages)
        user, asked, result, answer = messages
        assert user["content"] == "What is 2+3?"
        assert asked["content"] is None
        [call] = asked["tool_calls"]
        assert call["id"] == "call_0_0" and call["type"] == "function"
        assert call["function"]["name"] == "calculator"
        assert arguments(asked) == {"expression": "2+3"}
        assert result["tool_call_id"] == "call_0_0"
        assert result["name"] == "calculator"
        assert result["content"] == "5"
        assert answer["content"] == ANSWER and answer.get("tool_calls") is None

        after = await alice.get_session(session_id)
        assert after["status"] == "idle" and after["active_run_id"] is None
        assert after["message_count"] == 4
        assert before["usage"]["total_tokens"] == 0
        assert after["usage"]["total_tokens"] == run["usage"]["total_tokens"] > 0
        assert after["usage"]["prompt_tokens"] == run["usage"]["prompt_tokens"]

    async def test_a_second_run_continues_the_history(self, alice: Api):
        await alice.agent("chat", [step("one"), step("two")])
        session_id = await alice.session("chat")
        first = await alice.wait((await alice.start(session_id, "first"))["id"])
        second = await alice.wait((await alice.start(session_id, "second"))["id"])

        assert (first["output"], second["output"]) == ("one", "two")
        assert [(m["role"], m["content"]) for m in await alice.messages(session_id)] == [
            ("user", "first"), ("assistant", "one"), ("user", "second"), ("assistant", "two")]
        session = await alice.get_session(session_id)
        assert session["usage"]["total_tokens"] == (
            first["usage"]["total_tokens"] + second["usage"]["total_tokens"])

    async def test_past_the_script_the_provider_echoes(self, alice: Api):
        await alice.agent("echo", [])
        session_id = await alice.session("echo")
        run = await alice.wait((await alice.start(session_id, "ping pong"))["id"])
        assert run["output"] == "echo: ping pong"


class TestLimits:
    async def test_max_turns_ends_the_run_completed(self, alice: Api):
        again = calls(("calculator", {"expression": "1+1"}), text="Once more.")
        await alice.agent("loopy", [again, again, again, step("never")], [CALCULATOR],
                          max_turns=2)
        session_id = await alice.session("loopy")
        run = await alice.wait((await alice.start(session_id, "go"))["id"])

        assert run["status"] == "completed"
        assert run["stop_reason"] == "max_turns"
        assert run["turns"] == 2
        assert run["output"] == "Once more."
        assert run["usage"]["llm_calls"] == 2
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert len(of_type(events, "turn.started")) == 2
        assert events[-1]["data"]["stop_reason"] == "max_turns"
        assert (await alice.get_session(session_id))["status"] == "idle"

    async def test_max_turns_override_wins_over_the_agent(self, alice: Api):
        again = calls(("calculator", {"expression": "1+1"}))
        await alice.agent("loopy", [again, again, again], [CALCULATOR], max_turns=3)
        session_id = await alice.session("loopy")
        run = await alice.wait(
            (await alice.start(session_id, "go", overrides={"max_turns": 1}))["id"])
        assert (run["stop_reason"], run["turns"], run["output"]) == ("max_turns", 1, None)

    async def test_length_finish_gets_two_nudges_then_max_tokens(self, alice: Api):
        parts = ["Part one ", "part two ", "part three."]
        await alice.agent("wordy", [step(p, finish_reason="length") for p in parts]
                          + [step("never")])
        session_id = await alice.session("wordy")
        run = await alice.wait((await alice.start(session_id, "tell me"))["id"])

        assert run["status"] == "completed"
        assert run["stop_reason"] == "max_tokens"
        assert run["turns"] == 1
        assert run["usage"]["llm_calls"] == 3
        assert run["output"] == "part three."
        messages = await alice.messages(session_id)
        assert [(m["role"], m["content"]) for m in messages] == [
            ("user", "tell me"), *[("assistant", p) for p in parts]]
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert len(of_type(events, "turn.started")) == 1
        assert [e["data"]["finish_reason"] for e in of_type(events, "message.completed")] == [
            "length"] * 3

    async def test_an_answer_after_a_nudge_ends_the_turn(self, alice: Api):
        await alice.agent("wordy", [step("Half", finish_reason="length"), step(" done.")])
        session_id = await alice.session("wordy")
        run = await alice.wait((await alice.start(session_id, "tell me"))["id"])
        assert (run["stop_reason"], run["turns"], run["output"]) == ("end_turn", 1, " done.")
        assert [m["role"] for m in await alice.messages(session_id)] == [
            "user", "assistant", "assistant"]


class TestProviderErrors:
    async def test_rate_limit_is_retried_with_an_llm_retry_event(self, alice: Api):
        await alice.agent("flaky", [error(429, "slow down"), step("Recovered.")])
        session_id = await alice.session("flaky")
        run = await alice.wait((await alice.start(session_id, "hi"))["id"])

        assert run["status"] == "completed"
        assert run["output"] == "Recovered."
        assert run["usage"]["llm_calls"] == 2
        events = await alice.events(run["id"])
        assert_gapless(events)
        [retry] = of_type(events, "llm.retry")
        assert retry["data"]["attempt"] == 1
        assert retry["data"]["max_attempts"] == MAX_ATTEMPTS
        assert "slow down" in retry["data"]["error"]
        assert retry["data"]["wait_ms"] >= 0
        assert types(events)[:5] == ["run.created", "run.started", "turn.started", "llm.retry",
                                     "message.delta"]

    async def test_a_provider_that_keeps_failing_fails_the_run(self, alice: Api):
        await alice.agent("down", [error(500, "boom")] * (MAX_ATTEMPTS + 1) + [step("never")])
        session_id = await alice.session("down")
        run = await alice.wait((await alice.start(session_id, "hi"))["id"])

        assert run["status"] == "failed"
        assert run["error"]["code"] == "provider_error"
        assert "boom" in run["error"]["detail"]
        assert run["output"] is None and run["stop_reason"] is None
        assert run["usage"]["llm_calls"] == MAX_ATTEMPTS
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert [e["data"]["attempt"] for e in of_type(events, "llm.retry")] == list(
            range(1, MAX_ATTEMPTS))
        assert events[-1]["type"] == "run.failed"
        assert events[-1]["data"]["error"] == run["error"]
        session = await alice.get_session(session_id)
        assert session["status"] == "idle"
        assert [m["role"] for m in await alice.messages(session_id)] == ["user"]

    async def test_a_client_error_fails_at_once_without_retry(self, alice: Api):
        await alice.agent("broken", [error(400, "bad request"), step("never")])
        session_id = await alice.session("broken")
        run = await alice.wait((await alice.start(session_id, "hi"))["id"])

        assert run["status"] == "failed"
        assert run["error"]["code"] == "provider_error"
        assert run["usage"]["llm_calls"] == 1
        events = await alice.events(run["id"])
        assert "llm.retry" not in types(events)
        assert types(events) == ["run.created", "run.started", "turn.started", "run.failed"]


class TestToolErrors:
    async def test_invalid_arguments_and_unknown_tools_become_error_results(self, alice: Api):
        await alice.agent("sloppy", [
            calls(("calculator", {"formula": "1+1"}), ("teleport", {"to": "mars"})),
            step("Sorry about that."),
        ], [CALCULATOR])
        session_id = await alice.session("sloppy")
        run = await alice.wait((await alice.start(session_id, "hi"))["id"])

        assert run["status"] == "completed"
        assert run["output"] == "Sorry about that."
        events = await alice.events(run["id"])
        results = {e["data"]["name"]: e["data"] for e in of_type(events, "tool.completed")}
        assert results["calculator"]["is_error"] is True
        assert "invalid arguments" in results["calculator"]["output"]
        assert results["teleport"]["is_error"] is True
        assert "unknown tool 'teleport'" in results["teleport"]["output"]
        tool_messages = [m for m in await alice.messages(session_id) if m["role"] == "tool"]
        assert {m["tool_call_id"]: m["content"] for m in tool_messages} == {
            "call_0_0": results["calculator"]["output"],
            "call_0_1": results["teleport"]["output"],
        }

    async def test_a_failing_tool_gives_an_error_result(self, alice: Api):
        await alice.agent("divider", [calls(("calculator", {"expression": "1/0"})),
                                      step("Cannot divide.")], [CALCULATOR])
        session_id = await alice.session("divider")
        run = await alice.wait((await alice.start(session_id, "hi"))["id"])
        assert run["status"] == "completed"
        [result] = of_type(await alice.events(run["id"]), "tool.completed")
        assert result["data"]["is_error"] is True

    async def test_tools_of_one_turn_run_in_parallel(self, alice: Api):
        pause = ("sleep", {"seconds": 0.5})
        await alice.agent("busy", [calls(pause, pause, pause), step("Rested.")], [SLEEP])
        session_id = await alice.session("busy")
        run = await alice.wait((await alice.start(session_id, "hi"))["id"])
        assert run["status"] == "completed"
        events = await alice.events(run["id"])
        completed = of_type(events, "tool.completed")
        assert [e["data"]["output"] for e in completed] == ["slept 0.5 s"] * 3
        # One after another, the last would end 1 s after the first started.
        first_start = min(moment(e) for e in of_type(events, "tool.started"))
        assert (max(moment(e) for e in completed) - first_start).total_seconds() < 1.0


class TestToolCallFailure:
    async def test_a_call_that_raises_cancels_its_sleeping_siblings(
        self, alice: Api, monkeypatch: pytest.MonkeyPatch,
    ):
        original = RunStore.append_messages
        refused: list[str] = []

        async def refuse_once(self: RunStore, session_id: str, run_id: str,
                              messages: list[dict[str, Any]], tally: Tally,
                              changes: dict[str, Any] | None = None,
                              ) -> list[dict[str, Any]]:
            if not refused and any(m.get("tool_call_id") == "call_0_0" for m in messages):
                refused.append("call_0_0")
                raise RuntimeError("the result cannot be stored")
            return await original(self, session_id, run_id, messages, tally, changes)

        monkeypatch.setattr(RunStore, "append_messages", refuse_once)
        nap = ("sleep", {"seconds": 1})
        await alice.agent("fragile", [calls(("calculator", {"expression": "2+3"}), nap, nap),
                                      step("never")], [CALCULATOR, SLEEP])
        session_id = await alice.session("fragile")
        started = time.monotonic()
        run = await alice.wait((await alice.start(session_id, "hi"))["id"])

        assert time.monotonic() - started < 1  # the sleeping calls were cancelled
        assert refused == ["call_0_0"]
        assert run["status"] == "failed"
        assert run["error"]["code"] == "internal_error"
        results = [m for m in await alice.messages(session_id) if m["role"] == "tool"]
        assert sorted(m["tool_call_id"] for m in results) == ["call_0_0", "call_0_1", "call_0_2"]
        assert {m["content"] for m in results} == {"<cancelled: internal error>"}
        events = await alice.events(run["id"])
        assert_gapless(events)
        completed = of_type(events, "tool.completed")
        assert sorted(e["data"]["tool_call_id"] for e in completed) == [
            "call_0_0", "call_0_1", "call_0_2"]
        assert {e["data"]["output"] for e in completed} == {"<cancelled: internal error>"}
        await asyncio.sleep(1.5)  # past the end of the naps, had they gone on
        assert await alice.events(run["id"]) == events  # nothing after the terminal event
        assert [m for m in await alice.messages(session_id) if m["role"] == "tool"] == results
        assert (await alice.get_session(session_id))["status"] == "idle"


class TestTimeout:
    async def test_a_run_over_its_timeout_fails_with_run_timeout(self, alice: Api):
        await alice.agent("sleepy", [calls(("sleep", {"seconds": 30})), step("never")],
                          [SLEEP, CURRENT_TIME])
        session_id = await alice.session("sleepy")
        started = time.monotonic()
        created = await alice.start(session_id, "hi", overrides={"timeout_s": 1})
        run = await alice.wait(created["id"])

        assert time.monotonic() - started < 3
        assert run["status"] == "failed"
        assert run["error"]["code"] == "run_timeout"
        assert run["turns"] == 1
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert events[-1]["type"] == "run.failed"
        assert events[-1]["data"]["error"]["code"] == "run_timeout"
        session = await alice.get_session(session_id)
        assert session["status"] == "idle"
        messages = await alice.messages(session_id)
        assert messages[-1]["role"] == "tool"
        assert messages[-1]["content"].startswith("<cancelled:")


def moment(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"])
