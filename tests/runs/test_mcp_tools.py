"""MCP tools in runs, through the public API, against a real MCP server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.config import Settings
from tests.conftest import make_settings
from tests.runs.helpers import CALCULATOR, Api, calls, of_type, step
from tests.tools.mcp_server import McpTestServer


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Only the MCP server's loopback address is allowed of the private ones."""
    return make_settings(database_url, llm_retry_base_s=0.01, allow_private_urls="127.0.0.1")


@pytest.fixture(params=["stateless", "legacy"])
async def mcp_server(request: pytest.FixtureRequest) -> AsyncIterator[McpTestServer]:
    server = McpTestServer(legacy=request.param == "legacy")
    await server.start()
    yield server
    await server.stop()


def mcp(server: McpTestServer, **fields: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_url": server.url, **fields}


def tool_results(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


class TestMcpTools:
    async def test_a_call_goes_to_the_server_and_survives_its_restart(
        self, alice: Api, mcp_server: McpTestServer,
    ):
        await alice.agent("mcp", [calls(("add", {"a": 2, "b": 3})),
                                  calls(("add", {"a": 40, "b": 2})), step("done")],
                          tools=[mcp(mcp_server, allowed_tools=["add", "echo"])])
        session_id = await alice.session("mcp")
        run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        assert tool_results(await alice.messages(session_id)) == ["5", "42"]

        await mcp_server.restart()
        await alice.agent("mcp2", [calls(("echo", {"text": "again"})), step("done")],
                          tools=[mcp(mcp_server)])
        session_id = await alice.session("mcp2")
        run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        assert tool_results(await alice.messages(session_id)) == ["again"]

    async def test_the_model_is_offered_only_the_allowed_tools(
        self, alice: Api, mcp_server: McpTestServer,
    ):
        await alice.agent("mcp", [calls(("fail", {"message": "x"})), step("done")],
                          tools=[mcp(mcp_server, allowed_tools=["add"])])
        session_id = await alice.session("mcp")
        await alice.wait((await alice.start(session_id))["id"])
        (result,) = tool_results(await alice.messages(session_id))
        assert result == "unknown tool 'fail'; available tools: add"

    async def test_the_specs_headers_reach_the_server(self, alice: Api,
                                                      mcp_server: McpTestServer):
        await alice.agent("mcp", [calls(("whoami", {})), step("done")],
                          tools=[mcp(mcp_server, headers={"Authorization": "Bearer s3cret"})])
        session_id = await alice.session("mcp")
        await alice.wait((await alice.start(session_id))["id"])
        assert tool_results(await alice.messages(session_id)) == ["Bearer s3cret"]

    async def test_a_failing_tool_and_a_stopped_server_are_error_results(
        self, alice: Api, mcp_server: McpTestServer,
    ):
        await alice.agent("mcp", [calls(("fail", {"message": "broken"})), step("done")],
                          tools=[mcp(mcp_server)])
        session_id = await alice.session("mcp")
        run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        (failed,) = (e["data"] for e in of_type(await alice.events(run["id"]),
                                                "tool.completed"))
        assert failed["is_error"] and "broken" in failed["output"], failed

        await mcp_server.stop()  # its listing is still cached: the call is tried
        await alice.agent("mcp2", [calls(("echo", {"text": "x"})), step("done")],
                          tools=[mcp(mcp_server)])
        session_id = await alice.session("mcp2")
        run = await alice.wait((await alice.start(session_id))["id"])
        assert run["status"] == "completed"
        (unreachable,) = (e["data"] for e in of_type(await alice.events(run["id"]),
                                                     "tool.completed"))
        assert unreachable["is_error"] and mcp_server.url in unreachable["output"], unreachable

    async def test_a_name_collision_fails_the_run_clearly(self, alice: Api,
                                                          mcp_server: McpTestServer):
        calculator_named_add = {"type": "client", "name": "add"}
        await alice.agent("mcp", [step("never")],
                          tools=[CALCULATOR, calculator_named_add, mcp(mcp_server)])
        run = await alice.wait((await alice.start(await alice.session("mcp")))["id"])
        assert run["status"] == "failed"
        assert run["error"]["code"] == "tool_conflict"
        assert "'add'" in run["error"]["detail"] and mcp_server.url in run["error"]["detail"]

    async def test_a_run_with_no_network_cannot_reach_the_server(
        self, alice: Api, mcp_server: McpTestServer,
    ):
        await alice.agent("mcp", [calls(("add", {"a": 1, "b": 1})), step("done")],
                          tools=[mcp(mcp_server)])
        session_id = await alice.session("mcp")
        run = await alice.wait((await alice.start(session_id,
                                                  overrides={"allowed_hosts": []}))["id"])
        assert run["status"] == "completed"
        (result,) = tool_results(await alice.messages(session_id))
        assert result.startswith("unknown tool 'add'")
        assert mcp_server.calls_of("tools/call") == 0
