"""Runs that wait for people: client tools (§7.1), approvals (§4.3, §4.4) and tool policy
(§7.3), through the public API."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.config import Settings
from tests.conftest import make_settings
from tests.runs.helpers import (
    CALCULATOR,
    Api,
    assert_gapless,
    assert_problem,
    calls,
    of_type,
    step,
    types,
)

READ_FILE = {"type": "client", "name": "read_file", "description": "read a local file",
             "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                            "required": ["path"], "additionalProperties": False}}
DEPLOY = {"type": "client", "name": "deploy",
          "parameters": {"type": "object", "properties": {"env": {"type": "string"}},
                         "required": ["env"]}}


async def waiting(api: Api, run_id: str) -> dict[str, Any]:
    """The run once it waits for an answer."""
    run = await api.wait(run_id)
    assert run["status"] == "requires_action", run
    return run


def tool_results(messages: list[dict[str, Any]]) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}


class TestClientTools:
    async def test_submitted_outputs_resume_the_run(self, alice: Api):
        await alice.agent("reader", [calls(("read_file", {"path": "/etc/motd"})),
                                     step("The file says hello.")], tools=[READ_FILE])
        session_id = await alice.session("reader")
        run = await waiting(alice, (await alice.start(session_id, "read it"))["id"])
        action = run["required_action"]
        assert action["type"] == "submit_tool_outputs"
        assert [(c["name"], c["arguments"]) for c in action["tool_calls"]] == [
            ("read_file", {"path": "/etc/motd"})]
        assert action["expires_at"]
        session = await alice.get_session(session_id)
        assert session["active_run_id"] == run["id"]

        call_id = action["tool_calls"][0]["id"]
        response = await alice.client.post(f"/v1/runs/{run['id']}/tool-outputs", json={
            "outputs": [{"tool_call_id": call_id, "output": "hello"}]})
        assert response.status_code == 200, response.text
        assert response.json()["required_action"] is None

        done = await alice.wait(run["id"])
        assert done["status"] == "completed" and done["output"] == "The file says hello."
        assert tool_results(await alice.messages(session_id)) == {call_id: "hello"}
        events = await alice.events(run["id"])
        assert_gapless(events)
        kinds = types(events)
        assert kinds.index("tool.started") < kinds.index("run.requires_action") < kinds.index(
            "run.resumed") < kinds.index("tool.completed")
        completed = of_type(events, "tool.completed")[0]["data"]
        assert completed["output"] == "hello" and completed["is_error"] is False
        assert (await alice.get_session(session_id))["status"] == "idle"

    async def test_an_error_output_reaches_the_model_as_an_error(self, alice: Api):
        await alice.agent("reader", [calls(("read_file", {"path": "/x"})), step("ok")],
                          tools=[READ_FILE])
        run = await waiting(alice, (await alice.start(await alice.session("reader")))["id"])
        call_id = run["required_action"]["tool_calls"][0]["id"]
        response = await alice.client.post(f"/v1/runs/{run['id']}/tool-outputs", json={
            "outputs": [{"tool_call_id": call_id, "output": "no such file", "is_error": True}]})
        assert response.status_code == 200, response.text
        await alice.wait(run["id"])
        completed = of_type(await alice.events(run["id"]), "tool.completed")[0]["data"]
        assert completed["is_error"] is True

    async def test_unknown_missing_and_twice_given_ids_are_refused(self, alice: Api):
        await alice.agent("reader", [calls(("read_file", {"path": "/a"}),
                                           ("read_file", {"path": "/b"})), step("ok")],
                          tools=[READ_FILE])
        session_id = await alice.session("reader")
        run = await waiting(alice, (await alice.start(session_id))["id"])
        first, second = (c["id"] for c in run["required_action"]["tool_calls"])
        url = f"/v1/runs/{run['id']}/tool-outputs"
        for outputs in ([{"tool_call_id": "call_nope", "output": "x"}],
                        [{"tool_call_id": first, "output": "x"}],
                        [{"tool_call_id": first, "output": "x"},
                         {"tool_call_id": first, "output": "y"}]):
            response = await alice.client.post(url, json={"outputs": outputs})
            assert_problem(response, 422, "tool_call_mismatch")
        assert (await alice.get_run(run["id"]))["status"] == "requires_action"
        assert tool_results(await alice.messages(session_id)) == {}
        response = await alice.client.post(url, json={"outputs": [
            {"tool_call_id": second, "output": "b"}, {"tool_call_id": first, "output": "a"}]})
        assert response.status_code == 200, response.text
        assert (await alice.wait(run["id"]))["status"] == "completed"
        assert tool_results(await alice.messages(session_id)) == {first: "a", second: "b"}

    async def test_a_run_not_waiting_or_finished_gets_409(self, alice: Api):
        await alice.agent("plain", [step("done")])
        run = await alice.wait((await alice.start(await alice.session("plain")))["id"])
        response = await alice.client.post(f"/v1/runs/{run['id']}/tool-outputs", json={
            "outputs": [{"tool_call_id": "call_1", "output": "x"}]})
        assert_problem(response, 409, "run_finished")

        await alice.agent("asker", [calls(("deploy", {"env": "dev"})), step("ok")],
                          tools=[DEPLOY], tool_policy={"require_approval": ["deploy"]})
        run = await waiting(alice, (await alice.start(await alice.session("asker")))["id"])
        call_id = run["required_action"]["tool_calls"][0]["id"]
        response = await alice.client.post(f"/v1/runs/{run['id']}/tool-outputs", json={
            "outputs": [{"tool_call_id": call_id, "output": "x"}]})
        assert_problem(response, 409, "run_not_waiting")

    async def test_another_users_run_is_not_found(self, alice: Api, bob: Api):
        await alice.agent("reader", [calls(("read_file", {"path": "/a"})), step("ok")],
                          tools=[READ_FILE])
        run = await waiting(alice, (await alice.start(await alice.session("reader")))["id"])
        call_id = run["required_action"]["tool_calls"][0]["id"]
        response = await bob.client.post(f"/v1/runs/{run['id']}/tool-outputs", json={
            "outputs": [{"tool_call_id": call_id, "output": "x"}]})
        assert_problem(response, 404, "not_found")

    async def test_invalid_arguments_are_answered_without_asking_the_client(self, alice: Api):
        await alice.agent("reader", [calls(("read_file", {"file": 3})), step("retrying")],
                          tools=[READ_FILE])
        session_id = await alice.session("reader")
        run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        (result,) = tool_results(await alice.messages(session_id)).values()
        assert "invalid arguments for 'read_file'" in result

    async def test_a_server_tool_of_the_same_turn_runs_before_the_wait(self, alice: Api):
        await alice.agent("mixed", [calls(("calculator", {"expression": "6*7"}),
                                          ("read_file", {"path": "/a"})), step("ok")],
                          tools=[CALCULATOR, READ_FILE])
        session_id = await alice.session("mixed")
        run = await waiting(alice, (await alice.start(session_id))["id"])
        assert [c["name"] for c in run["required_action"]["tool_calls"]] == ["read_file"]
        assert "42" in tool_results(await alice.messages(session_id)).values()

    async def test_cancelling_a_waiting_run_closes_its_calls(self, alice: Api):
        await alice.agent("reader", [calls(("read_file", {"path": "/a"})), step("ok")],
                          tools=[READ_FILE])
        session_id = await alice.session("reader")
        run = await waiting(alice, (await alice.start(session_id))["id"])
        result = await alice.cancel(run["id"], reason="user left")
        assert result["cancelled"] == 1 and result["run"]["status"] == "cancelled"
        assert result["run"]["required_action"] is None
        (text,) = tool_results(await alice.messages(session_id)).values()
        assert text == "<cancelled: user left>"
        session = await alice.get_session(session_id)
        assert session["status"] == "idle" and session["active_run_id"] is None
        events = await alice.events(run["id"])
        assert_gapless(events)
        assert types(events)[-2:] == ["tool.completed", "run.cancelled"]

    async def test_the_wait_does_not_hold_a_slot(self, database_url: str, users):
        from tests.runs.conftest import running_app

        async with running_app(database_url, max_concurrent_runs=1, max_queued_runs=0) as app:
            import httpx

            from tests.conftest import ADMIN_TOKEN
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://loomd",
                                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                                         ) as client:
                api = Api(client)
                await api.agent("reader", [calls(("read_file", {"path": "/a"})), step("ok")],
                                tools=[READ_FILE])
                await api.agent("plain", [step("done")])
                first = await waiting(api, (await api.start(await api.session("reader")))["id"])
                other = await api.wait((await api.start(await api.session("plain")))["id"])
                assert other["status"] == "completed"
                call_id = first["required_action"]["tool_calls"][0]["id"]
                response = await client.post(f"/v1/runs/{first['id']}/tool-outputs", json={
                    "outputs": [{"tool_call_id": call_id, "output": "x"}]})
                assert response.status_code == 200, response.text
                assert (await api.wait(first["id"]))["status"] == "completed"


class TestApprovals:
    async def agent(self, api: Api, **policy: Any) -> str:
        await api.agent("calc", [calls(("calculator", {"expression": "2+2"})),
                                 step("answered")], tools=[CALCULATOR],
                        tool_policy={"require_approval": ["calculator"], **policy})
        return await api.session("calc")

    async def test_an_approved_call_runs(self, alice: Api):
        session_id = await self.agent(alice)
        run = await waiting(alice, (await alice.start(session_id))["id"])
        action = run["required_action"]
        assert action["type"] == "approve_tool_calls"
        assert tool_results(await alice.messages(session_id)) == {}
        call_id = action["tool_calls"][0]["id"]
        response = await alice.client.post(f"/v1/runs/{run['id']}/approvals", json={
            "decisions": [{"tool_call_id": call_id, "approve": True, "reason": "fine"}]})
        assert response.status_code == 200, response.text
        (approval,) = response.json()["approvals"]
        assert approval["decided_by"] == "alice" and approval["approve"] is True
        assert approval["decided_at"] and approval["reason"] == "fine"
        done = await alice.wait(run["id"])
        assert done["status"] == "completed" and done["approvals"] == [approval]
        assert tool_results(await alice.messages(session_id)) == {call_id: "4"}
        events = await alice.events(run["id"])
        assert_gapless(events)
        decided = of_type(events, "approval.decided")[0]["data"]
        assert decided["tool_call_id"] == call_id and decided["decided_by"] == "alice"
        kinds = types(events)
        assert kinds.index("run.requires_action") < kinds.index("approval.decided") < (
            kinds.index("run.resumed")) < kinds.index("tool.started")

    async def test_a_denied_call_gets_an_error_result(self, alice: Api):
        session_id = await self.agent(alice)
        run = await waiting(alice, (await alice.start(session_id))["id"])
        call_id = run["required_action"]["tool_calls"][0]["id"]
        response = await alice.client.post(f"/v1/runs/{run['id']}/approvals", json={
            "decisions": [{"tool_call_id": call_id, "approve": False, "reason": "too risky"}]})
        assert response.status_code == 200, response.text
        assert (await alice.wait(run["id"]))["status"] == "completed"
        assert tool_results(await alice.messages(session_id)) == {
            call_id: "<denied: too risky>"}
        denied = of_type(await alice.events(run["id"]), "tool.denied")[0]["data"]
        assert denied["by"] == "approval" and denied["reason"] == "too risky"

    async def test_an_approval_may_replace_the_arguments(self, alice: Api):
        session_id = await self.agent(alice)
        run = await waiting(alice, (await alice.start(session_id))["id"])
        call_id = run["required_action"]["tool_calls"][0]["id"]
        url = f"/v1/runs/{run['id']}/approvals"
        response = await alice.client.post(url, json={"decisions": [
            {"tool_call_id": call_id, "approve": True, "arguments": {"expr": "1"}}]})
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["body", "decisions", 0, "arguments"]
        response = await alice.client.post(url, json={"decisions": [
            {"tool_call_id": call_id, "approve": True, "arguments": {"expression": "3*3"}}]})
        assert response.status_code == 200, response.text
        assert response.json()["approvals"][0]["arguments_replaced"] is True
        await alice.wait(run["id"])
        assert tool_results(await alice.messages(session_id)) == {call_id: "9"}
        started = of_type(await alice.events(run["id"]), "tool.started")[0]["data"]
        assert started["arguments"] == {"expression": "3*3"}

    async def test_decisions_may_come_one_at_a_time(self, alice: Api):
        await alice.agent("calc2", [calls(("calculator", {"expression": "1+1"}),
                                          ("calculator", {"expression": "2+2"})),
                                    step("answered")], tools=[CALCULATOR],
                          tool_policy={"require_approval": ["calc*"]})
        session_id = await alice.session("calc2")
        run = await waiting(alice, (await alice.start(session_id))["id"])
        first, second = (c["id"] for c in run["required_action"]["tool_calls"])
        url = f"/v1/runs/{run['id']}/approvals"
        response = await alice.client.post(url, json={"decisions": [
            {"tool_call_id": first, "approve": True}]})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "requires_action"
        remaining = response.json()["required_action"]["tool_calls"]
        assert [c["id"] for c in remaining] == [second]
        response = await alice.client.post(url, json={"decisions": [
            {"tool_call_id": first, "approve": False}]})
        assert_problem(response, 422, "tool_call_mismatch")
        response = await alice.client.post(url, json={"decisions": [
            {"tool_call_id": second, "approve": False}]})
        assert response.status_code == 200, response.text
        assert (await alice.wait(run["id"]))["status"] == "completed"
        results = tool_results(await alice.messages(session_id))
        assert results[first] == "2" and results[second].startswith("<denied")

    async def test_an_approved_client_call_then_waits_for_its_output(self, alice: Api):
        await alice.agent("deployer", [calls(("deploy", {"env": "production"}),
                                             ("read_file", {"path": "/a"})), step("shipped")],
                          tools=[DEPLOY, READ_FILE], tool_policy={"rules": [
                              {"tool": "deploy", "argument": "env", "equals": "production",
                               "action": "require_approval", "reason": "production deploy"}]})
        session_id = await alice.session("deployer")
        run = await waiting(alice, (await alice.start(session_id))["id"])
        assert run["required_action"]["type"] == "approve_tool_calls"
        (deploy,) = run["required_action"]["tool_calls"]
        response = await alice.client.post(f"/v1/runs/{run['id']}/approvals", json={
            "decisions": [{"tool_call_id": deploy["id"], "approve": True}]})
        assert response.status_code == 200, response.text
        run = await waiting(alice, run["id"])
        action = run["required_action"]
        assert action["type"] == "submit_tool_outputs"
        assert sorted(c["name"] for c in action["tool_calls"]) == ["deploy", "read_file"]
        outputs = [{"tool_call_id": c["id"], "output": c["name"] + " done"}
                   for c in action["tool_calls"]]
        response = await alice.client.post(f"/v1/runs/{run['id']}/tool-outputs",
                                           json={"outputs": outputs})
        assert response.status_code == 200, response.text
        assert (await alice.wait(run["id"]))["output"] == "shipped"

    async def test_cancel_while_waiting_denies_the_open_approvals(self, alice: Api):
        session_id = await self.agent(alice)
        run = await waiting(alice, (await alice.start(session_id))["id"])
        result = await alice.cancel(run["id"])
        assert result["cancelled"] == 1
        events = await alice.events(run["id"])
        assert_gapless(events)
        denied = of_type(events, "tool.denied")[0]["data"]
        assert denied["by"] == "approval" and denied["reason"].startswith("<cancelled")
        response = await alice.client.post(f"/v1/runs/{run['id']}/approvals", json={
            "decisions": [{"tool_call_id": denied["tool_call_id"], "approve": True}]})
        assert_problem(response, 409, "run_finished")
        assert (await alice.get_session(session_id))["status"] == "idle"

    async def test_a_new_run_interrupting_a_waiting_one_ends_it(self, alice: Api):
        session_id = await self.agent(alice)
        run = await waiting(alice, (await alice.start(session_id))["id"])
        second = await alice.start(session_id, "never mind", if_busy="interrupt")
        assert (await alice.get_run(run["id"]))["status"] == "cancelled"
        assert (await alice.wait(second["id"]))["status"] == "completed"

    async def test_waiting_time_does_not_count_toward_the_timeout(self, alice: Api):
        await alice.agent("slowcalc", [calls(("calculator", {"expression": "2+2"})),
                                       step("answered")], tools=[CALCULATOR],
                          timeout_s=1, tool_policy={"require_approval": ["calculator"]})
        run = await waiting(alice, (await alice.start(await alice.session("slowcalc")))["id"])
        await alice.client.get(f"/v1/runs/{run['id']}/wait", params={"timeout_s": 1.2})
        call_id = run["required_action"]["tool_calls"][0]["id"]
        response = await alice.client.post(f"/v1/runs/{run['id']}/approvals", json={
            "decisions": [{"tool_call_id": call_id, "approve": True}]})
        assert response.status_code == 200, response.text
        assert (await alice.wait(run["id"]))["status"] == "completed"


class TestExpiry:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return make_settings(database_url, llm_retry_base_s=0.01, action_timeout_s=0.5)

    async def test_client_calls_get_an_error_result(self, alice: Api):
        await alice.agent("reader", [calls(("read_file", {"path": "/a"})), step("gave up")],
                          tools=[READ_FILE])
        session_id = await alice.session("reader")
        run = await waiting(alice, (await alice.start(session_id))["id"])
        await alice.until(run["id"], "run.completed")
        done = await alice.get_run(run["id"])
        assert done["status"] == "completed" and done["output"] == "gave up"
        (text,) = tool_results(await alice.messages(session_id)).values()
        assert text == "no output submitted within 0.5 s"

    @pytest.mark.parametrize(("default", "result"), [("deny", "<denied: no decision within "
                                                                "0.5 s>"), ("approve", "4")])
    async def test_approvals_get_the_policy_default(self, alice: Api, default: str,
                                                    result: str):
        await alice.agent("calc", [calls(("calculator", {"expression": "2+2"})),
                                   step("answered")], tools=[CALCULATOR],
                          tool_policy={"require_approval": ["calculator"],
                                       "approval_default": default})
        session_id = await alice.session("calc")
        run = await waiting(alice, (await alice.start(session_id))["id"])
        await alice.until(run["id"], "run.completed")
        done = await alice.get_run(run["id"])
        (approval,) = done["approvals"]
        assert approval["decided_by"] == "expiry" and approval["approve"] is (
            default == "approve")
        assert list(tool_results(await alice.messages(session_id)).values()) == [result]


class TestPolicy:
    async def test_a_denied_tool_gets_an_error_result_and_an_event(self, alice: Api):
        await alice.agent("calc", [calls(("calculator", {"expression": "1"})), step("ok")],
                          tools=[CALCULATOR], tool_policy={"deny": ["calc*"]})
        session_id = await alice.session("calc")
        run = await alice.wait((await alice.start(session_id))["id"])
        denied = of_type(await alice.events(run["id"]), "tool.denied")[0]["data"]
        assert denied["by"] == "policy" and "calculator" in denied["reason"]
        (text,) = tool_results(await alice.messages(session_id)).values()
        assert text.startswith("<denied:")

    async def test_a_tool_outside_allow_is_denied(self, alice: Api):
        await alice.agent("calc", [calls(("calculator", {"expression": "1"})), step("ok")],
                          tools=[CALCULATOR], tool_policy={"allow": ["current_*"]})
        run = await alice.wait((await alice.start(await alice.session("calc")))["id"])
        assert of_type(await alice.events(run["id"]), "tool.denied")[0]["data"]["by"] == (
            "policy")

    async def test_an_argument_rule_denies_with_its_reason(self, alice: Api):
        await alice.agent("calc", [calls(("calculator", {"expression": "6*7"}),
                                         ("calculator", {"expression": "1+1"})), step("ok")],
                          tools=[CALCULATOR], tool_policy={"rules": [
                              {"tool": "calculator", "argument": "expression", "equals": "6*7",
                               "action": "deny", "reason": "no answers to everything"}]})
        session_id = await alice.session("calc")
        run = await alice.wait((await alice.start(session_id))["id"])
        (denied,) = of_type(await alice.events(run["id"]), "tool.denied")
        assert denied["data"]["reason"] == "no answers to everything"
        assert sorted(tool_results(await alice.messages(session_id)).values()) == [
            "2", "<denied: no answers to everything>"]

    async def test_a_rate_limit_denies_calls_beyond_it(self, alice: Api):
        await alice.agent("calc", [calls(*[("calculator", {"expression": f"{i}+0"})
                                           for i in range(3)]), step("ok")],
                          tools=[CALCULATOR],
                          tool_policy={"rate_limits": {"calculator": {"per_minute": 2}}})
        session_id = await alice.session("calc")
        run = await alice.wait((await alice.start(session_id))["id"])
        (denied,) = of_type(await alice.events(run["id"]), "tool.denied")
        assert denied["data"]["by"] == "rate_limit"
        assert "2 times per minute" in denied["data"]["reason"]
        results = tool_results(await alice.messages(session_id))
        assert sum(1 for text in results.values() if text.startswith("<denied")) == 1
        # The next run of the agent is still within the same minute.
        run = await alice.wait((await alice.start(
            await alice.session("calc")))["id"])
        assert len(of_type(await alice.events(run["id"]), "tool.denied")) == 3

    async def test_max_parallel_bounds_concurrent_calls(self, alice: Api):
        sleep = {"type": "builtin", "name": "sleep"}
        await alice.agent("sleepy", [calls(*[("sleep", {"seconds": 0.2})] * 4), step("ok")],
                          tools=[sleep], tool_policy={"max_parallel": 1})
        run = await alice.wait((await alice.start(await alice.session("sleepy")))["id"])
        events = [e for e in await alice.events(run["id"])
                  if e["type"] in ("tool.started", "tool.completed")]
        # One at a time: every start follows the previous call's completion.
        assert [e["type"] for e in events] == ["tool.started", "tool.completed"] * 4
        assert json.dumps(run["status"]) == '"completed"'


class TestRestart:
    async def test_a_wait_outlives_the_process_and_is_answered_after_it(self, database_url):
        import httpx

        from tests.conftest import ADMIN_TOKEN
        from tests.runs.conftest import running_app

        def client_of(app) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://loomd",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

        async with running_app(database_url) as first, client_of(first) as client:
            api = Api(client)
            await api.agent("reader", [calls(("read_file", {"path": "/a"})), step("read")],
                            tools=[READ_FILE])
            session_id = await api.session("reader")
            run = await waiting(api, (await api.start(session_id))["id"])
        async with running_app(database_url) as second, client_of(second) as client:
            api = Api(client)
            assert (await api.get_run(run["id"]))["status"] == "requires_action"
            call_id = run["required_action"]["tool_calls"][0]["id"]
            response = await client.post(f"/v1/runs/{run['id']}/tool-outputs", json={
                "outputs": [{"tool_call_id": call_id, "output": "contents"}]})
            assert response.status_code == 200, response.text
            done = await api.wait(run["id"])
            assert done["status"] == "completed" and done["output"] == "read"
            assert_gapless(await api.events(run["id"]))


class TestPendingCallsThatWait:
    async def test_a_resumed_call_needing_approval_keeps_the_input_for_after_it(
        self, alice: Api,
    ):
        await alice.agent("calc", [step("the answer is 4")], tools=[CALCULATOR],
                          tool_policy={"require_approval": ["calculator"]})
        session_id = await alice.session("calc")
        call = {"id": "call_open", "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}
        response = await alice.client.post(f"/v1/sessions/{session_id}/messages", json={
            "messages": [{"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": None, "tool_calls": [call]}]})
        assert response.status_code in (200, 201), response.text
        run = await waiting(alice, (await alice.start(session_id, "go on",
                                                      on_pending="resume"))["id"])
        assert run["required_action"]["tool_calls"][0]["id"] == "call_open"
        response = await alice.client.post(f"/v1/runs/{run['id']}/approvals", json={
            "decisions": [{"tool_call_id": "call_open", "approve": True}]})
        assert response.status_code == 200, response.text
        done = await alice.wait(run["id"])
        assert done["status"] == "completed" and done["output"] == "the answer is 4"
        messages = await alice.messages(session_id)
        assert [(m["role"], m["content"]) for m in messages] == [
            ("user", "2+2?"), ("assistant", None), ("tool", "4"), ("user", "go on"),
            ("assistant", "the answer is 4")]
        assert_gapless(await alice.events(run["id"]))
