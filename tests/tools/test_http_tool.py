"""The `http` tool: a signed POST to the owner's endpoint, whose answer is the result."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import PrivateUrls
from app.schemas.tools import HttpTool
from app.services.tool_secrets import new_secret
from app.tools.base import ToolContext, ToolResult
from app.tools.http_tool import http_tool
from app.tools.net import HostPolicy
from tests.tools.receivers import Receiver, Reply, answer, hang, raw, redirect, tool_endpoint

SECRET = new_secret()
LOOPBACK = HostPolicy(private=PrivateUrls.parse("127.0.0.1"))


def context(hosts: HostPolicy | None = LOOPBACK) -> ToolContext:
    return ToolContext(run_id="run_1", session_id="ses_1", owner="alice",
                       tool_call_id="call_7", hosts=hosts)


def spec(url: str, **fields: Any) -> HttpTool:
    return HttpTool.model_validate({"type": "http", "name": "lookup_order", "url": url,
                                    "description": "Look an order up.", **fields})


async def call(url: str, secret: str | None = SECRET, hosts: HostPolicy | None = LOOPBACK,
               **fields: Any) -> ToolResult:
    return await http_tool(spec(url, **fields), secret).call({"order": "A-17"}, context(hosts))


def shipped(payload: Any) -> Reply:
    return Reply.json({"output": f"order {payload['arguments']['order']} shipped"})


class TestAnswers:
    async def test_a_signed_call_and_its_json_answer(self):
        async with Receiver(tool_endpoint(SECRET, shipped)) as endpoint:
            result = await call(endpoint.url("/orders"))
        assert result == ToolResult("order A-17 shipped")
        [request] = endpoint.requests
        assert (request.method, request.target) == ("POST", "/orders")
        assert request.headers["content-type"] == "application/json"
        assert request.json() == {"tool_call_id": "call_7", "run_id": "run_1",
                                  "session_id": "ses_1", "arguments": {"order": "A-17"}}
        assert request.headers["webhook-id"].startswith("msg_")
        assert request.headers["webhook-signature"].startswith("v1,")

    async def test_a_call_signed_with_another_secret_fails_verification(self):
        async with Receiver(tool_endpoint(new_secret(), shipped)) as endpoint:
            result = await call(endpoint.url("/orders"))
        assert result.is_error
        assert "HTTP 401 Unauthorized" in result.output
        assert "bad signature" in result.output

    async def test_the_endpoint_may_answer_an_error_result(self):
        reply = Reply.json({"output": "no such order", "is_error": True})
        async with Receiver(tool_endpoint(SECRET, lambda _payload: reply)) as endpoint:
            result = await call(endpoint.url())
        assert result == ToolResult("no such order", is_error=True)

    async def test_an_output_that_is_not_text_is_given_as_json(self):
        reply = Reply.json({"output": {"status": "shipped", "items": 2}})
        async with Receiver(answer(reply)) as endpoint:
            result = await call(endpoint.url())
        assert result == ToolResult('{"status": "shipped", "items": 2}')

    @pytest.mark.parametrize(("body", "content_type", "expected"), [
        ("shipped on Monday", "text/plain; charset=utf-8", "shipped on Monday"),
        ("livré", "text/plain; charset=iso-8859-1", "livré"),
        ('{"output": "not parsed"}', "text/plain", '{"output": "not parsed"}'),
    ])
    async def test_a_text_answer_is_the_output(self, body, content_type, expected):
        async with Receiver(answer(Reply.text(body, content_type=content_type))) as endpoint:
            result = await call(endpoint.url())
        assert result == ToolResult(expected)

    async def test_an_empty_answer_is_an_empty_output(self):
        async with Receiver(answer(Reply(204))) as endpoint:
            result = await call(endpoint.url())
        assert result == ToolResult("")


class TestFailures:
    @pytest.mark.parametrize(("status", "phrase"), [
        (500, "Internal Server Error"), (404, "Not Found"), (429, "Too Many Requests")])
    async def test_a_non_2xx_answer_is_an_error_result(self, status, phrase):
        async with Receiver(answer(Reply.text("database down", status=status))) as endpoint:
            result = await call(endpoint.url())
        assert result.is_error
        assert f"its endpoint answered HTTP {status} {phrase}: database down" in result.output

    async def test_a_redirect_is_not_followed(self):
        async with (
            Receiver(tool_endpoint(SECRET, shipped)) as elsewhere,
            Receiver(redirect(elsewhere.url(), status=307)) as endpoint,
        ):
            result = await call(endpoint.url())
        assert result.is_error
        assert "HTTP 307" in result.output
        assert elsewhere.connections == 0

    async def test_an_endpoint_that_does_not_answer_in_time(self):
        async with Receiver(hang()) as endpoint:
            result = await call(endpoint.url(), timeout_ms=200)
        assert result.is_error
        assert "timed out after 0.2 s" in result.output
        assert len(endpoint.requests) == 1

    @pytest.mark.parametrize(("reply", "reason"), [
        (Reply(200, b'{"output": ', {"Content-Type": "application/json"}), "does not parse"),
        (Reply.json(["a list"]), "is not"),
        (Reply.json({"result": "no output field"}), "is not"),
        (Reply.json({"output": "x", "is_error": "yes"}), "is not"),
    ])
    async def test_json_that_is_not_a_result_is_an_error(self, reply, reason):
        async with Receiver(answer(reply)) as endpoint:
            result = await call(endpoint.url())
        assert result.is_error
        assert reason in result.output

    async def test_an_answer_that_is_not_http_is_an_error(self):
        async with Receiver(raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as endpoint:
            result = await call(endpoint.url())
        assert result.is_error
        assert "not valid HTTP" in result.output

    async def test_an_answer_over_1_mib_is_an_error(self):
        big = Reply.text("x" * (1024 * 1024 + 1))
        async with Receiver(answer(big)) as endpoint:
            result = await call(endpoint.url())
        assert result.is_error
        assert "larger than 1 MiB" in result.output


class TestRefusals:
    async def test_without_a_secret_nothing_is_sent(self):
        async with Receiver(tool_endpoint(SECRET, shipped)) as endpoint:
            result = await call(endpoint.url(), secret=None)
        assert result.is_error
        assert "'alice' has no tool secret" in result.output
        assert "POST /v1/tool-secret" in result.output
        assert endpoint.connections == 0

    async def test_without_network_nothing_is_sent(self):
        async with Receiver(tool_endpoint(SECRET, shipped)) as endpoint:
            result = await call(endpoint.url(), hosts=None)
        assert result.is_error
        assert "may not use the network" in result.output
        assert endpoint.connections == 0

    async def test_a_host_outside_the_allowed_hosts_is_not_reached(self):
        hosts = HostPolicy(hosts=("tools.example.com",), private=PrivateUrls(everything=True))
        async with Receiver(tool_endpoint(SECRET, shipped)) as endpoint:
            result = await call(endpoint.url(), hosts=hosts)
        assert result.is_error
        assert "127.0.0.1 is not among the hosts this run may reach" in result.output
        assert endpoint.connections == 0

    async def test_a_private_address_that_is_not_allowed_is_not_reached(self):
        async with Receiver(tool_endpoint(SECRET, shipped), host="127.0.0.2") as endpoint:
            result = await call(endpoint.url())
        assert result.is_error
        assert "refused: 127.0.0.2, a private address" in result.output
        assert endpoint.connections == 0


def test_the_tool_shows_the_spec_to_the_model():
    schema = {"type": "object", "properties": {"order": {"type": "string"}}}
    tool = http_tool(spec("https://tools.example.com/x", parameters=schema), SECRET)
    assert (tool.name, tool.description, tool.parameters) == (
        "lookup_order", "Look an order up.", schema)
