"""`pre_tool` and `post_tool` hooks (§6) around the tool calls of runs, through the public
API, against receivers on loopback that verify every request with `standardwebhooks`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.config import Settings
from tests.conftest import make_settings
from tests.runs.helpers import CALCULATOR, Api, assert_gapless, calls, of_type, step, types
from tests.tools.receivers import Received, Receiver, Reply


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, llm_retry_base_s=0.01, allow_private_urls="127.0.0.1")


class Hooked:
    """A receiver that answers each verified request with `respond(payload)`."""

    def __init__(self, respond: Callable[[dict[str, Any]], Reply | None]) -> None:
        self.respond = respond
        self.secret = ""
        self.payloads: list[dict[str, Any]] = []
        self.message_ids: list[str] = []
        self.receiver = Receiver(self.handle)

    async def handle(self, request: Received) -> Reply:
        try:
            payload = Webhook(self.secret).verify(request.body, request.headers)
        except WebhookVerificationError as exc:
            return Reply.text(f"bad signature: {exc}", status=401)
        self.payloads.append(payload)
        self.message_ids.append(request.headers["webhook-id"])
        reply = self.respond(payload)
        return reply if reply is not None else Reply(204)

    async def register(self, api: Api, phase: str = "pre_tool", **fields: Any) -> str:
        name = fields.pop("name", f"{phase}-hook")
        response = await api.client.post("/v1/hooks", json={
            "name": name, "phase": phase, "url": self.receiver.url("/hook"), **fields})
        assert response.status_code == 201, response.text
        hook = response.json()
        self.secret = hook["secret"]
        return str(hook["id"])


def decision(value: dict[str, Any]) -> Callable[[dict[str, Any]], Reply]:
    return lambda _payload: Reply.json(value)


async def calculate(api: Api, expression: str = "2+3") -> tuple[dict[str, Any], list[str]]:
    """A run whose model calls the calculator once; the run and its tool results."""
    await api.agent("calc", [calls(("calculator", {"expression": expression})),
                             step("done")], tools=[CALCULATOR])
    session_id = await api.session("calc")
    run = await api.wait((await api.start(session_id))["id"])
    results = [m["content"] for m in await api.messages(session_id) if m["role"] == "tool"]
    return run, results


class TestPreTool:
    async def test_an_empty_answer_allows_the_call(self, alice: Api):
        hooked = Hooked(lambda _p: None)
        async with hooked.receiver:
            hook_id = await hooked.register(alice)
            run, results = await calculate(alice)
        assert results == ["5"]
        (payload,) = hooked.payloads
        assert payload["type"] == "pre_tool" and payload["hook_id"] == hook_id
        assert payload["run_id"] == run["id"] and payload["agent"] == "calc"
        assert payload["owner"] == "alice" and payload["turn"] == 1
        assert payload["tool_call"]["name"] == "calculator"
        assert payload["tool_call"]["arguments"] == {"expression": "2+3"}
        events = await alice.events(run["id"])
        assert_gapless(events)
        (decided,) = of_type(events, "hook.decision")
        assert decided["data"]["decision"] == "allow" and decided["data"]["hook_id"] == hook_id
        assert decided["data"]["phase"] == "pre_tool"
        kinds = types(events)
        assert kinds.index("hook.decision") < kinds.index("tool.started")

    async def test_deny_becomes_an_error_result_and_tool_denied(self, alice: Api):
        hooked = Hooked(decision({"decision": "deny", "reason": "not today"}))
        async with hooked.receiver:
            await hooked.register(alice)
            run, results = await calculate(alice)
        assert results == ["<denied: not today>"]
        denied = of_type(await alice.events(run["id"]), "tool.denied")[0]["data"]
        assert denied["by"] == "hook" and denied["reason"] == "not today"

    async def test_modify_replaces_the_arguments_and_feeds_the_next_hook(self, alice: Api):
        first = Hooked(decision({"decision": "modify", "arguments": {"expression": "6*7"}}))
        second = Hooked(lambda p: Reply.json({"decision": "modify", "arguments": {
            "expression": p["tool_call"]["arguments"]["expression"] + "+1"}}))
        async with first.receiver, second.receiver:
            await first.register(alice, name="first")
            await second.register(alice, name="second")
            run, results = await calculate(alice)
        assert results == ["43"]
        assert second.payloads[0]["tool_call"]["arguments"] == {"expression": "6*7"}
        started = of_type(await alice.events(run["id"]), "tool.started")[0]["data"]
        assert started["arguments"] == {"expression": "6*7+1"}

    async def test_ask_waits_for_a_human_approval(self, alice: Api):
        hooked = Hooked(decision({"decision": "ask"}))
        async with hooked.receiver:
            await hooked.register(alice)
            await alice.agent("calc", [calls(("calculator", {"expression": "1+1"})),
                                       step("done")], tools=[CALCULATOR])
            session_id = await alice.session("calc")
            run = await alice.wait((await alice.start(session_id))["id"])
            assert run["status"] == "requires_action"
            assert run["required_action"]["type"] == "approve_tool_calls"
            call_id = run["required_action"]["tool_calls"][0]["id"]
            response = await alice.client.post(f"/v1/runs/{run['id']}/approvals", json={
                "decisions": [{"tool_call_id": call_id, "approve": True}]})
            assert response.status_code == 200, response.text
            done = await alice.wait(run["id"])
        assert done["status"] == "completed"
        assert len(hooked.payloads) == 1  # an approved call is not asked about again

    async def test_only_matching_tools_reach_the_hook(self, alice: Api):
        hooked = Hooked(decision({"decision": "deny", "reason": "no"}))
        async with hooked.receiver:
            await hooked.register(alice, tools=["http_*"])
            _, results = await calculate(alice)
        assert results == ["5"] and hooked.payloads == []


class TestFailures:
    @pytest.mark.parametrize(("mode", "allowed"), [("closed", False), ("open", True)])
    async def test_a_500_follows_the_failure_mode(self, alice: Api, mode: str,
                                                  allowed: bool):
        hooked = Hooked(lambda _p: Reply.text("boom", status=500))
        async with hooked.receiver:
            hook_id = await hooked.register(alice, failure_mode=mode)
            run, results = await calculate(alice)
        assert (results == ["5"]) is allowed
        if not allowed:
            assert results[0].startswith("<denied: the hook") and "500" in results[0]
        decided = of_type(await alice.events(run["id"]), "hook.decision")[0]["data"]
        assert decided["decision"] == ("allow" if allowed else "deny")
        deliveries = (await alice.client.get(f"/v1/hooks/{hook_id}/deliveries")).json()
        assert deliveries["items"][0]["status_code"] == 500

    @pytest.mark.parametrize(("mode", "allowed"), [("closed", False), ("open", True)])
    async def test_a_timeout_follows_the_failure_mode(self, alice: Api, mode: str,
                                                      allowed: bool):
        async def slow(_request: Received) -> Reply:
            await asyncio.sleep(2)
            return Reply(204)

        receiver = Receiver(slow)
        async with receiver:
            response = await alice.client.post("/v1/hooks", json={
                "name": "slow", "phase": "pre_tool", "url": receiver.url("/hook"),
                "timeout_ms": 200, "failure_mode": mode})
            assert response.status_code == 201, response.text
            run, results = await calculate(alice)
        assert (results == ["5"]) is allowed
        decided = of_type(await alice.events(run["id"]), "hook.decision")[0]["data"]
        assert "200 ms" in decided["error"] and decided["duration_ms"] >= 150

    @pytest.mark.parametrize("answer", [{"decision": "maybe"}, {"decision": "modify"},
                                        ["allow"]])
    async def test_an_invalid_answer_is_a_failure(self, alice: Api, answer: Any):
        hooked = Hooked(lambda _p: Reply.json(answer))
        async with hooked.receiver:
            await hooked.register(alice)  # closed by default for pre_tool
            _, results = await calculate(alice)
        assert results[0].startswith("<denied: the hook")


class TestPostTool:
    async def test_post_hooks_run_in_reverse_creation_order_and_may_replace_the_output(
        self, alice: Api,
    ):
        order: list[str] = []

        def named(name: str, output: str | None) -> Callable[[dict[str, Any]], Reply | None]:
            def respond(payload: dict[str, Any]) -> Reply | None:
                order.append(name)
                if output is None:
                    return None
                return Reply.json({"decision": "modify",
                                   "output": f"{payload['result']['output']}{output}"})
            return respond

        older = Hooked(named("older", "!"))
        newer = Hooked(named("newer", "?"))
        async with older.receiver, newer.receiver:
            await older.register(alice, phase="post_tool", name="older")
            await newer.register(alice, phase="post_tool", name="newer")
            run, results = await calculate(alice)
        assert order == ["newer", "older"]
        assert results == ["5?!"]
        assert newer.payloads[0]["result"] == {"output": "5", "is_error": False}
        completed = of_type(await alice.events(run["id"]), "tool.completed")[0]["data"]
        assert completed["output"] == "5?!"

    @pytest.mark.parametrize("failure", ["500", "timeout"])
    async def test_a_failing_closed_post_hook_withholds_the_output(self, alice: Api,
                                                                   failure: str):
        async def fail(_request: Received) -> Reply:
            if failure == "timeout":
                await asyncio.sleep(2)
            return Reply.text("boom", status=500)

        receiver = Receiver(fail)
        async with receiver:
            response = await alice.client.post("/v1/hooks", json={
                "name": "post", "phase": "post_tool", "url": receiver.url("/hook"),
                "timeout_ms": 200, "failure_mode": "closed"})
            assert response.status_code == 201, response.text
            run, results = await calculate(alice)
        assert results[0].startswith("<withheld: the hook")
        completed = of_type(await alice.events(run["id"]), "tool.completed")[0]["data"]
        assert completed["is_error"] is True
        decided = of_type(await alice.events(run["id"]), "hook.decision")[0]["data"]
        assert decided["phase"] == "post_tool" and decided["decision"] == "deny"

    async def test_a_failing_post_hook_is_open_by_default(self, alice: Api):
        hooked = Hooked(lambda _p: Reply.text("down", status=503))
        async with hooked.receiver:
            await hooked.register(alice, phase="post_tool")
            _, results = await calculate(alice)
        assert results == ["5"]


class TestCircuit:
    async def test_a_failing_hook_opens_its_circuit_and_is_no_longer_called(self, alice: Api):
        hooked = Hooked(lambda _p: Reply.text("boom", status=500))
        async with hooked.receiver:
            hook_id = await hooked.register(alice, failure_mode="open")
            await alice.agent("calc", [calls(*[("calculator", {"expression": f"{i}+0"})
                                               for i in range(5)]), step("done")],
                              tools=[CALCULATOR], tool_policy={"max_parallel": 1})
            await alice.wait((await alice.start(await alice.session("calc")))["id"])
            deadline = asyncio.get_running_loop().time() + 5
            while (await alice.client.get(f"/v1/hooks/{hook_id}")).json()["circuit"] != "open":
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.1)  # the hooks a run reads are kept for a second
            called = len(hooked.payloads)
            run = await alice.wait((await alice.start(await alice.session("calc")))["id"])
        assert len(hooked.payloads) == called  # the open circuit kept the hook out
        decisions = of_type(await alice.events(run["id"]), "hook.decision")
        assert decisions and all("circuit is open" in d["data"]["error"] for d in decisions)
        assert run["status"] == "completed"
