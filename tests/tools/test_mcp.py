"""MCP tools against a real MCP server (streamable HTTP) on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import mcp_types as types
import pytest

from app.schemas.tools import McpTool
from app.tools.base import Tool, ToolContext, ToolResult
from app.tools.mcp import (
    HTTP_TIMEOUT,
    McpClients,
    McpDuplicateTool,
    McpUnavailable,
    offered_tools,
    result_text,
)
from tests.tools.mcp_server import PNG_BYTES, McpTestServer

CONTEXT = ToolContext(run_id="run_1", session_id="ses_1", owner="alice", tool_call_id="call_1")
SERVED = ["add", "echo", "whoami", "fail", "slow", "picture"]


def mcp_spec(url: str, **fields: Any) -> McpTool:
    return McpTool.model_validate({"type": "mcp", "server_url": url, **fields})


@pytest.fixture
async def server() -> AsyncIterator[McpTestServer]:
    """A server of the current (stateless) protocol revision."""
    started = McpTestServer()
    await started.start()
    yield started
    await started.stop()


@pytest.fixture(params=["stateless", "legacy"])
async def any_server(request: pytest.FixtureRequest) -> AsyncIterator[McpTestServer]:
    """A server of the current revision, and one of the 2025 revisions (with sessions)."""
    started = McpTestServer(legacy=request.param == "legacy")
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
async def clients() -> AsyncIterator[McpClients]:
    opened = McpClients()
    yield opened
    await opened.aclose()


def by_name(tools: list[Tool]) -> dict[str, Tool]:
    return {tool.name: tool for tool in tools}


async def call(tools: list[Tool], name: str, **arguments: Any) -> ToolResult:
    return await by_name(tools)[name].call(arguments, CONTEXT)


async def test_lists_the_servers_tools_with_their_schemas(
    any_server: McpTestServer, clients: McpClients,
) -> None:
    tools = await clients.tools(mcp_spec(any_server.url))

    assert [tool.name for tool in tools] == SERVED  # `search.web` is no function name
    add = by_name(tools)["add"]
    assert add.description == "Add two integers."
    assert add.parameters["type"] == "object"
    assert set(add.parameters["properties"]) == {"a", "b"}
    assert sorted(add.parameters["required"]) == ["a", "b"]


async def test_allowed_tools_offers_only_those_the_server_has(
    server: McpTestServer, clients: McpClients,
) -> None:
    spec = mcp_spec(server.url, allowed_tools=["echo", "add", "not_served"])

    tools = await clients.tools(spec)

    assert [tool.name for tool in tools] == ["add", "echo"]


async def test_a_call_returns_the_tools_text(any_server: McpTestServer,
                                             clients: McpClients) -> None:
    tools = await clients.tools(mcp_spec(any_server.url))

    assert await call(tools, "add", a=2, b=3) == ToolResult("5")
    assert await call(tools, "echo", text="héllo\nworld") == ToolResult("héllo\nworld")


async def test_the_specs_headers_reach_the_server_on_every_request(
    any_server: McpTestServer, clients: McpClients,
) -> None:
    spec = mcp_spec(any_server.url, headers={"Authorization": "Bearer s3cret"})
    tools = await clients.tools(spec)

    assert await call(tools, "whoami") == ToolResult("Bearer s3cret")
    assert any_server.received
    assert {r.headers.get("authorization") for r in any_server.received} == {"Bearer s3cret"}


async def test_a_refused_token_makes_the_server_unavailable(clients: McpClients) -> None:
    guarded = McpTestServer(token="right")
    await guarded.start()
    try:
        spec = mcp_spec(guarded.url, headers={"Authorization": "Bearer wrong"})
        with pytest.raises(McpUnavailable) as raised:
            await clients.tools(spec)
        assert guarded.url in raised.value.message
        assert "HTTP 401" in raised.value.message

        right = mcp_spec(guarded.url, headers={"Authorization": "Bearer right"})
        assert [tool.name for tool in await clients.tools(right)] == SERVED
    finally:
        await guarded.stop()


async def test_a_failing_tool_gives_an_error_result(any_server: McpTestServer,
                                                    clients: McpClients) -> None:
    tools = await clients.tools(mcp_spec(any_server.url))

    assert await call(tools, "fail", message="no such order") == ToolResult(
        "Error executing tool fail: no such order", is_error=True)


async def test_a_tool_the_server_no_longer_has_gives_an_error_result(
    server: McpTestServer, clients: McpClients,
) -> None:
    result = await clients.call(mcp_spec(server.url), "gone", {})

    assert result.is_error
    assert "gone" in result.output


async def test_images_are_described(server: McpTestServer, clients: McpClients) -> None:
    tools = await clients.tools(mcp_spec(server.url))

    result = await call(tools, "picture")

    assert result == ToolResult(f"a caption\n[image: image/png, {len(PNG_BYTES)} bytes]")


async def test_a_stopped_server_gives_error_results_not_exceptions(
    any_server: McpTestServer, clients: McpClients,
) -> None:
    tools = await clients.tools(mcp_spec(any_server.url))
    assert await call(tools, "add", a=1, b=1) == ToolResult("2")

    await any_server.stop()
    first = await call(tools, "add", a=1, b=1)
    second = await call(tools, "add", a=1, b=1)

    for result in (first, second):
        assert result.is_error
        assert any_server.url in result.output
        assert "ConnectError" in result.output


async def test_listing_a_server_that_is_down_raises_unavailable(clients: McpClients) -> None:
    down = McpTestServer()  # never started: nothing listens on its port

    with pytest.raises(McpUnavailable) as raised:
        await clients.tools(mcp_spec(down.url))

    assert down.url in raised.value.message


async def test_a_call_after_the_server_restarted_succeeds(
    any_server: McpTestServer, clients: McpClients,
) -> None:
    tools = await clients.tools(mcp_spec(any_server.url))
    assert await call(tools, "add", a=1, b=2) == ToolResult("3")

    await any_server.restart()

    assert await call(tools, "add", a=2, b=2) == ToolResult("4")
    if any_server.legacy:  # the session the restarted server forgot was replaced
        assert any_server.calls_of("initialize") == 2


async def test_a_call_after_the_server_was_down_and_back_succeeds(
    any_server: McpTestServer, clients: McpClients,
) -> None:
    tools = await clients.tools(mcp_spec(any_server.url))
    await any_server.stop()
    assert (await call(tools, "add", a=1, b=2)).is_error

    await any_server.start()

    assert await call(tools, "add", a=1, b=2) == ToolResult("3")


async def test_calls_share_one_connection(any_server: McpTestServer,
                                          clients: McpClients) -> None:
    tools = await clients.tools(mcp_spec(any_server.url))

    results = await asyncio.gather(*(call(tools, "add", a=n, b=1) for n in range(10)))

    assert results == [ToolResult(str(n + 1)) for n in range(10)]
    handshakes = "initialize" if any_server.legacy else "server/discover"
    assert any_server.calls_of(handshakes) == 1


async def test_a_listing_is_cached_for_the_ttl(server: McpTestServer) -> None:
    clients = McpClients(ttl_s=3600)
    try:
        spec = mcp_spec(server.url)
        first = await clients.tools(spec)
        second = await clients.tools(spec)
    finally:
        await clients.aclose()

    assert [tool.name for tool in second] == [tool.name for tool in first]
    assert server.calls_of("tools/list") == 1


async def test_a_listing_older_than_the_ttl_is_fetched_again(server: McpTestServer) -> None:
    clients = McpClients(ttl_s=0.01)
    try:
        spec = mcp_spec(server.url)
        await clients.tools(spec)
        await asyncio.sleep(0.02)
        await clients.tools(spec)
    finally:
        await clients.aclose()

    assert server.calls_of("tools/list") == 2


async def test_other_headers_are_another_listing(server: McpTestServer,
                                                 clients: McpClients) -> None:
    await clients.tools(mcp_spec(server.url, headers={"Authorization": "Bearer a"}))
    await clients.tools(mcp_spec(server.url, headers={"Authorization": "Bearer b"}))

    assert server.calls_of("tools/list") == 2


async def test_an_expired_listing_is_served_while_the_server_is_down(
    server: McpTestServer,
) -> None:
    clients = McpClients(ttl_s=0.01)
    try:
        spec = mcp_spec(server.url)
        await clients.tools(spec)
        await server.stop()
        await asyncio.sleep(0.02)

        tools = await clients.tools(spec)
    finally:
        await clients.aclose()

    assert [tool.name for tool in tools] == SERVED


async def test_a_call_slower_than_the_timeout_gives_an_error_result(
    server: McpTestServer, clients: McpClients,
) -> None:
    tools = await clients.tools(mcp_spec(server.url, timeout_ms=200))

    result = await call(tools, "slow", seconds=30)

    assert result.is_error
    assert server.url in result.output
    assert "within 0.2 s" in result.output
    assert await call(tools, "add", a=1, b=1) == ToolResult("2")  # the connection still works


async def test_a_per_call_client_factory_makes_the_connection(
    server: McpTestServer, clients: McpClients,
) -> None:
    made: list[dict[str, str]] = []

    def factory(headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
                auth: httpx2.Auth | None = None) -> httpx2.AsyncClient:
        made.append(dict(headers or {}))
        return httpx2.AsyncClient(headers={**(headers or {}), "X-Run": "run_1"},
                                  timeout=timeout or HTTP_TIMEOUT)

    spec = mcp_spec(server.url, headers={"Authorization": "Bearer t"})
    tools = await clients.tools(spec, client_factory=factory)

    assert await call(tools, "add", a=1, b=1) == ToolResult("2")
    assert made == [{"Authorization": "Bearer t"}]
    assert {r.headers.get("x-run") for r in server.received} == {"run_1"}


async def test_aclose_ends_the_sessions(clients: McpClients) -> None:
    legacy = McpTestServer(legacy=True)
    await legacy.start()
    try:
        tools = await clients.tools(mcp_spec(legacy.url))
        assert await call(tools, "add", a=1, b=1) == ToolResult("2")

        await clients.aclose()

        assert [r.method for r in legacy.received].count("DELETE") == 1
        result = await call(tools, "add", a=1, b=1)
        assert result.is_error
        assert "shutting down" in result.output
    finally:
        await legacy.stop()


def listed(name: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, input_schema=schema or {"type": "object"})


def names_offered(spec: McpTool, tools: list[types.Tool]) -> list[str]:
    class Named:
        def __init__(self, tool: types.Tool, parameters: dict[str, Any]) -> None:
            self.name, self.description, self.parameters = tool.name, "", parameters

        async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
            raise AssertionError("not called")

    return [tool.name for tool in offered_tools(spec, tools, Named)]


def test_a_name_listed_twice_is_reported() -> None:
    spec = mcp_spec("https://mcp.example.com/mcp")

    with pytest.raises(McpDuplicateTool) as raised:
        names_offered(spec, [listed("search"), listed("fetch"), listed("search")])

    assert "https://mcp.example.com/mcp" in raised.value.message
    assert "'search'" in raised.value.message
    only_fetch = mcp_spec("https://mcp.example.com/mcp", allowed_tools=["fetch"])
    assert names_offered(only_fetch, [listed("search"), listed("fetch"), listed("search")]) == [
        "fetch"]


def test_tools_without_a_valid_object_schema_or_name_are_skipped() -> None:
    spec = mcp_spec("https://mcp.example.com/mcp")
    tools = [
        listed("ok", {"properties": {"q": {"type": "string"}}}),
        listed("not_an_object", {"type": "string"}),
        listed("broken", {"type": "object", "properties": {"q": {"type": 5}}}),
        listed("a" * 65),
        listed("has space"),
        listed("newline\n"),
    ]

    assert names_offered(spec, tools) == ["ok"]


def test_structured_content_is_the_text_when_there_is_no_text() -> None:
    result = types.CallToolResult(content=[], structured_content={"total": 5, "unit": "€"})

    assert result_text(result) == ToolResult('{"total": 5, "unit": "€"}')


def test_text_wins_over_structured_content() -> None:
    result = types.CallToolResult(content=[types.TextContent(text="5")],
                                  structured_content={"result": 5})

    assert result_text(result) == ToolResult("5")


def test_resources_are_shown_or_described() -> None:
    result = types.CallToolResult(content=[
        types.EmbeddedResource(resource=types.TextResourceContents(
            uri="file:///notes.txt", text="remember")),
        types.EmbeddedResource(resource=types.BlobResourceContents(
            uri="file:///a.bin", mime_type="application/octet-stream", blob="AAAA")),
        types.ResourceLink(uri="https://example.com/r", name="report"),
    ])

    assert result_text(result).output == (
        "[resource: file:///notes.txt]\nremember\n"
        "[resource: file:///a.bin, application/octet-stream, 3 bytes]\n"
        "[resource link: https://example.com/r (report)]")


def test_an_error_without_content_still_says_so() -> None:
    result = result_text(types.CallToolResult(content=[], is_error=True))

    assert result.is_error
    assert result.output
