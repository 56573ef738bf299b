"""The loop step by step, with a function provider and in-memory ports (no database)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app.loop.engine import NUDGE
from app.loop.hooks import LifecycleHooks, ToolDenial
from app.loop.steps import AwaitInput, Continue, Failed, Final, Step
from app.providers.base import (
    Completion,
    LLMRequest,
    ProviderError,
    ToolCallOut,
)
from app.providers.function import Answer
from app.tools.base import ToolResult
from tests.loop.fakes import FunctionTool, Harness, StoreRefused

ANSWER = "The answer is 5."
ADD = ("calculator", {"expression": "2+3"})


def tool_then_answer(request: LLMRequest) -> Answer:
    if request.call_index == 0:
        return Answer(tool_calls=[ADD])
    return Answer(text=ANSWER, deltas=["The answer ", "is 5."])


class TestFinal:
    async def test_an_answer_without_tool_calls_ends_the_turn(self):
        harness = Harness(lambda request: "Hello there.")

        step = await harness.run()

        assert step == Final("end_turn", "Hello there.")
        assert harness.sink.types() == ["turn.started", "message.delta", "message.completed",
                                        "usage", "turn.completed"]
        [completed] = harness.sink.of_type("message.completed")
        assert completed["finish_reason"] == "stop"
        assert completed["message"]["content"] == "Hello there."
        assert [m["role"] for m in harness.store.messages] == ["user", "assistant"]
        assert harness.loop.turns == 1 and harness.loop.usage["llm_calls"] == 1

    async def test_tool_results_reach_the_model_in_the_next_turn(self):
        seen: list[list[dict[str, Any]]] = []

        def answer(request: LLMRequest) -> Answer:
            seen.append(request.messages)
            return tool_then_answer(request)

        harness = Harness(answer, instructions="Be brief.")
        step = await harness.run("What is 2+3?")

        assert step == Final("end_turn", ANSWER)
        assert harness.sink.types() == [
            "turn.started", "message.completed", "usage", "tool.started", "tool.completed",
            "turn.completed",
            "turn.started", "message.delta", "message.delta", "message.completed", "usage",
            "turn.completed",
        ]
        assert harness.sink.of_type("tool.started")[0] == {
            "turn": 1, "tool_call_id": "call_0_0", "name": "calculator",
            "arguments": {"expression": "2+3"}}
        assert harness.sink.of_type("tool.completed")[0]["output"] == "5"
        assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "tool"]
        assert seen[1][0]["content"] == "Be brief."
        assert seen[1][-1] == {"role": "tool", "content": "5", "tool_call_id": "call_0_0"}
        assert harness.store.results("call_0_0") == ["5"]
        usage = harness.loop.usage
        assert usage["llm_calls"] == 2
        assert usage["total_tokens"] == harness.store.tokens > 0

    async def test_max_turns_ends_with_the_last_text(self):
        harness = Harness(lambda request: Answer(text="Once more.", tool_calls=[ADD]),
                          max_turns=2)

        step = await harness.run()

        assert step == Final("max_turns", "Once more.")
        assert harness.loop.turns == 2
        assert harness.sink.types().count("turn.started") == 2
        assert harness.store.calls == 2

    async def test_length_gets_two_nudges_then_max_tokens(self):
        parts = ["Part one ", "part two ", "part three."]
        requests: list[LLMRequest] = []

        def answer(request: LLMRequest) -> Answer:
            requests.append(request)
            return Answer(text=parts[request.call_index], finish_reason="length")

        harness = Harness(answer)
        step = await harness.run("tell me")

        assert step == Final("max_tokens", "part three.")
        assert harness.loop.turns == 1 and harness.loop.usage["llm_calls"] == 3
        assert [m["content"] for m in harness.store.messages] == ["tell me", *parts]
        assert requests[0].messages[-1]["role"] == "user"
        assert [r.messages[-1] for r in requests[1:]] == [NUDGE, NUDGE]
        assert [d["finish_reason"] for d in harness.sink.of_type("message.completed")] == [
            "length"] * 3

    async def test_an_answer_after_a_nudge_ends_the_turn(self):
        harness = Harness(lambda request: Answer(text="Half", finish_reason="length")
                          if request.call_index == 0 else " done.")
        assert await harness.run() == Final("end_turn", " done.")


class TestProviderErrors:
    async def test_a_transient_error_is_retried_with_an_llm_retry_event(self):
        def answer(request: LLMRequest) -> str:
            if request.call_index == 0:
                raise ProviderError("slow down", retryable=True, status=429)
            return "Recovered."

        harness = Harness(answer, max_attempts=3)
        step = await harness.run()

        assert step == Final("end_turn", "Recovered.")
        [retry] = harness.sink.of_type("llm.retry")
        assert (retry["attempt"], retry["max_attempts"], retry["error"]) == (1, 3, "slow down")
        assert retry["wait_ms"] >= 0
        assert harness.sink.types()[:3] == ["turn.started", "llm.retry", "message.delta"]
        assert harness.loop.usage["llm_calls"] == 2

    async def test_the_last_failed_attempt_fails_the_run(self):
        def answer(request: LLMRequest) -> str:
            raise ProviderError("boom", retryable=True, status=500)

        harness = Harness(answer, max_attempts=3)
        step = await harness.run()

        assert isinstance(step, Failed)
        assert step.code == "provider_error"
        assert "after 3 attempts" in step.detail and "boom" in step.detail
        assert [r["attempt"] for r in harness.sink.of_type("llm.retry")] == [1, 2]
        assert "turn.completed" not in harness.sink.types()
        assert harness.loop.usage["llm_calls"] == 3
        assert [m["role"] for m in harness.store.messages] == ["user"]

    async def test_a_client_error_fails_at_once(self):
        def answer(request: LLMRequest) -> str:
            raise ProviderError("bad request", retryable=False, status=400)

        harness = Harness(answer)
        assert await harness.run() == Failed("provider_error", "bad request")
        assert harness.sink.types() == ["turn.started"]


def gate(parties: int, *, peak: list[int]) -> FunctionTool:
    """A tool whose calls each wait until `parties` of them run at once."""
    barrier = asyncio.Barrier(parties)
    running = [0]

    async def meet(arguments: dict[str, Any]) -> str:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        try:
            await barrier.wait()
        finally:
            running[0] -= 1
        return "met"

    return FunctionTool("meet", meet)


class TestToolCalls:
    async def test_the_calls_of_a_turn_run_concurrently(self):
        peak = [0]

        def answer(request: LLMRequest) -> Answer | str:
            if request.call_index == 0:
                return Answer(tool_calls=[("meet", {})] * 3)
            return "All met."

        # One call after another, the first would wait for the others until its timeout.
        harness = Harness(answer, [gate(3, peak=peak)], tool_timeout_s=2)
        step = await harness.run()

        assert step == Final("end_turn", "All met.")
        assert peak == [3]
        assert [d["output"] for d in harness.sink.of_type("tool.completed")] == ["met"] * 3
        assert all(harness.store.results(f"call_0_{i}") == ["met"] for i in range(3))

    async def test_max_parallel_bounds_the_calls_running_at_once(self):
        running, peak = [0], [0]

        async def nap(arguments: dict[str, Any]) -> str:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            await asyncio.sleep(0.01)
            running[0] -= 1
            return "rested"

        def answer(request: LLMRequest) -> Answer | str:
            return Answer(tool_calls=[("nap", {})] * 4) if request.call_index == 0 else "ok"

        harness = Harness(answer, [FunctionTool("nap", nap)], tool_policy={"max_parallel": 2})
        assert await harness.run() == Final("end_turn", "ok")
        assert peak == [2]
        assert len(harness.sink.of_type("tool.completed")) == 4

    async def test_a_result_that_cannot_be_stored_cancels_the_siblings(self):
        cancelled = asyncio.Event()
        at_failure: list[tuple[str, dict[str, Any]]] = []

        async def quick(arguments: dict[str, Any]) -> str:
            return "quick result"

        async def slow(arguments: dict[str, Any]) -> str:
            await asyncio.sleep(0.05)
            return "never stored"

        async def sleeper(arguments: dict[str, Any]) -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never reached"

        def refuse(message: dict[str, Any]) -> bool:
            if message.get("tool_call_id") != "call_0_1":
                return False
            at_failure.extend(harness.sink.events)
            return True

        def answer(request: LLMRequest) -> Answer:
            return Answer(tool_calls=[("quick", {}), ("slow", {}), ("sleeper", {})])

        tools = [FunctionTool("quick", quick), FunctionTool("slow", slow),
                 FunctionTool("sleeper", sleeper)]
        harness = Harness(answer, tools, refuse=refuse)

        with pytest.raises(StoreRefused):  # the store's own error, not a group of them
            await asyncio.wait_for(harness.run(), timeout=5)

        assert cancelled.is_set()
        assert harness.store.results("call_0_0") == ["quick result"]
        assert harness.store.results("call_0_1") == []
        assert harness.store.results("call_0_2") == []
        await asyncio.sleep(0.1)
        assert harness.sink.events == at_failure  # nothing after the failure, then or later
        completed = [d["tool_call_id"] for d in harness.sink.of_type("tool.completed")]
        assert completed == ["call_0_0"]
        assert "turn.completed" not in harness.sink.types()

    async def test_a_failing_hook_cancels_the_siblings_too(self):
        cancelled = asyncio.Event()

        async def sleeper(arguments: dict[str, Any]) -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never reached"

        class Broken(LifecycleHooks):
            async def on_tool_end(self, turn: int, call: ToolCallOut, result: ToolResult,
                                  seconds: float) -> None:
                raise RuntimeError("hook failed")

        harness = Harness(lambda request: Answer(tool_calls=[("sleeper", {}), ADD]),
                          [FunctionTool("sleeper", sleeper)], hooks=Broken())
        with pytest.raises(RuntimeError, match="hook failed"):
            await asyncio.wait_for(harness.run(), timeout=5)
        assert cancelled.is_set()
        assert [m["role"] for m in harness.store.messages] == ["user", "assistant"]
        assert "tool.completed" not in harness.sink.types()


class Recorder(LifecycleHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def on_llm_start(self, turn: int, request: LLMRequest) -> None:
        self.calls.append(("llm_start", turn, request.call_index))

    async def on_llm_end(self, turn: int, request: LLMRequest,
                         result: Completion | ProviderError, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(("llm_end", turn, type(result).__name__))

    async def before_tool_call(self, turn: int, call: ToolCallOut) -> ToolCallOut | ToolDenial:
        self.calls.append(("before_tool_call", turn, call.name))
        return call

    async def on_tool_start(self, turn: int, call: ToolCallOut) -> None:
        self.calls.append(("tool_start", turn, call.name))

    async def on_tool_end(self, turn: int, call: ToolCallOut, result: ToolResult,
                          seconds: float) -> None:
        self.calls.append(("tool_end", turn, call.name, result.output))


class TestLifecycleHooks:
    async def test_hooks_are_called_around_llm_and_tool_calls(self):
        def answer(request: LLMRequest) -> Answer | str:
            if request.call_index == 0:
                raise ProviderError("busy", retryable=True, status=503)
            return Answer(tool_calls=[ADD]) if request.call_index == 1 else ANSWER

        hooks = Recorder()
        harness = Harness(answer, hooks=hooks)
        assert await harness.run() == Final("end_turn", ANSWER)

        assert hooks.calls == [
            ("llm_start", 1, 0), ("llm_end", 1, "ProviderError"),
            ("llm_start", 1, 1), ("llm_end", 1, "Completion"),
            ("before_tool_call", 1, "calculator"), ("tool_start", 1, "calculator"),
            ("tool_end", 1, "calculator", "5"),
            ("llm_start", 2, 2), ("llm_end", 2, "Completion"),
        ]

    async def test_before_tool_call_may_change_the_arguments_or_deny_the_call(self):
        ran: list[str] = []

        async def wipe(arguments: dict[str, Any]) -> str:
            ran.append("wipe")
            return "wiped"

        class Guard(LifecycleHooks):
            async def before_tool_call(self, turn: int,
                                       call: ToolCallOut) -> ToolCallOut | ToolDenial:
                if call.name == "wipe":
                    return ToolDenial("not on a Friday", by="policy")
                return ToolCallOut(call.id, call.name, json.dumps({"expression": "2*3"}))

        def answer(request: LLMRequest) -> Answer | str:
            if request.call_index == 0:
                return Answer(tool_calls=[ADD, ("wipe", {})])
            return "Done."

        harness = Harness(answer, [FunctionTool("wipe", wipe)], hooks=Guard())
        assert await harness.run() == Final("end_turn", "Done.")

        assert ran == []
        assert harness.sink.of_type("tool.denied") == [{
            "turn": 1, "tool_call_id": "call_0_1", "name": "wipe", "by": "policy",
            "reason": "not on a Friday"}]
        [started] = harness.sink.of_type("tool.started")
        assert started["arguments"] == {"expression": "2*3"}
        assert harness.store.results("call_0_0") == ["6"]
        assert harness.store.results("call_0_1") == ["<denied: not on a Friday>"]

    async def test_without_hooks_the_defaults_do_nothing(self):
        harness = Harness(tool_then_answer)
        assert type(harness.ports.hooks) is LifecycleHooks
        assert await harness.run() == Final("end_turn", ANSWER)
        call = ToolCallOut("call_1", "calculator", "{}")
        assert await LifecycleHooks().before_tool_call(1, call) is call


class TestDriver:
    async def test_an_await_input_step_goes_back_to_the_caller(self):
        awaited = AwaitInput("submit_tool_outputs", (ToolCallOut("call_x", "pick", "{}"),), 2)
        steps: list[Step] = [Continue(1), awaited, Final("end_turn", "never")]
        harness = Harness(lambda request: "unused")

        async def next_step() -> Step:
            return steps.pop(0)

        harness.loop.step = next_step  # type: ignore[method-assign]
        assert await harness.loop.run([]) is awaited
        assert steps == [Final("end_turn", "never")]

    async def test_a_resumed_run_stores_the_results_and_goes_on(self):
        seen: list[list[dict[str, Any]]] = []

        def answer(request: LLMRequest) -> str:
            seen.append(request.messages)
            return "You picked blue."

        harness = Harness(answer)
        call = ToolCallOut("call_x", "pick_color", "{}")
        await harness.store.append_messages([
            {"role": "user", "content": "pick one"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}]},
        ])
        awaited = AwaitInput("submit_tool_outputs", (call,), 1)

        step = await harness.loop.resume(awaited, {"call_x": ToolResult("blue")},
                                         history=list(harness.store.messages))

        assert step == Final("end_turn", "You picked blue.")
        assert harness.store.results("call_x") == ["blue"]
        assert harness.sink.types()[:3] == ["tool.completed", "turn.completed", "turn.started"]
        assert harness.sink.of_type("turn.started") == [{"turn": 2}]
        assert seen[0][-1] == {"role": "tool", "content": "blue", "tool_call_id": "call_x"}

    async def test_resuming_without_every_result_stores_nothing(self):
        harness = Harness(lambda request: "unused")
        calls = (ToolCallOut("call_a", "pick", "{}"), ToolCallOut("call_b", "pick", "{}"))
        with pytest.raises(ValueError, match="call_b"):
            await harness.loop.resume(AwaitInput("submit_tool_outputs", calls, 1),
                                      {"call_a": ToolResult("red")}, history=[])
        assert harness.store.messages == [] and harness.sink.events == []

    async def test_a_stop_request_is_honoured_between_steps(self):
        harness = Harness(lambda request: Answer(tool_calls=[ADD]))
        with pytest.raises(asyncio.CancelledError):
            await harness.loop.run([{"role": "user", "content": "hi"}],
                                   should_stop=lambda: harness.loop.turns >= 1)
        assert harness.loop.turns == 1
        assert harness.sink.types()[-1] == "turn.completed"


class TestStreaming:
    async def test_a_streaming_function_streams_its_deltas(self):
        async def answer(request: LLMRequest) -> Any:
            yield "think"
            yield "ing "
            yield "aloud"

        harness = Harness(answer)
        assert await harness.run() == Final("end_turn", "thinking aloud")
        assert [d["text"] for d in harness.sink.of_type("message.delta")] == [
            "think", "ing ", "aloud"]
