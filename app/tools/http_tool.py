"""The `http` tool (§7.1): POST the call to the owner's endpoint, signed per Standard Webhooks.

The body is `{"tool_call_id", "run_id", "session_id", "arguments"}`, signed with the
owner's tool secret (`POST /v1/tool-secret`) in the `webhook-id`, `webhook-timestamp` and
`webhook-signature` headers. A 2xx JSON answer `{"output", "is_error"?}` or a 2xx text
answer is the result; anything else is an error result.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2

from app.hooks.signing import signed_headers
from app.ids import new_id
from app.schemas.tools import HttpTool
from app.tools import net
from app.tools.base import Tool, ToolContext, ToolResult

EXCERPT_CHARS = 500


class HttpEndpointTool:
    """A tool whose calls an HTTP endpoint of the agent's owner answers."""

    def __init__(
        self, spec: HttpTool, secret: str | None, resolver: net.Resolver | None = None,
    ) -> None:
        self.name = spec.name
        self.description = spec.description or ""
        self.parameters: dict[str, Any] = spec.parameters
        self.url = str(spec.url)
        self.timeout_s = spec.timeout_ms / 1000
        self._secret = secret
        self._resolver = resolver

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """POST the signed call; never raises for a failing endpoint."""
        if self._secret is None:
            return _error(f"the tool {self.name!r} cannot be called: its owner "
                          f"{context.owner!r} has no tool secret to sign calls with; the owner "
                          "creates one with POST /v1/tool-secret")
        if context.hosts is None:
            return _error(f"the tool {self.name!r} cannot be called: this run may not use "
                          "the network")
        body = json.dumps({"tool_call_id": context.tool_call_id, "run_id": context.run_id,
                           "session_id": context.session_id, "arguments": arguments},
                          ensure_ascii=False, separators=(",", ":"))
        headers = signed_headers(self._secret, new_id("msg"), body)
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                net.client(context.hosts, self.timeout_s, resolver=self._resolver,
                           follow_redirects=False) as client,
                client.stream("POST", self.url, content=body.encode(), headers=headers
                              ) as response,
            ):
                answer, truncated = await net.read_capped(response)
        except (net.BlockedUrl, httpx2.HTTPError, httpx2.InvalidURL, TimeoutError) as exc:
            return _error(f"the tool {self.name!r} failed: "
                          f"{net.failure_text(exc, self.timeout_s)}")
        return self._result(response, answer, truncated)

    def _result(self, response: httpx2.Response, answer: bytes, truncated: bool) -> ToolResult:
        text = net.body_text(answer, response)
        if not response.is_success:
            status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
            excerpt = f": {text[:EXCERPT_CHARS]}" if text.strip() else ""
            return _error(f"the tool {self.name!r} failed: its endpoint answered {status}"
                          f"{excerpt}")
        if truncated:
            return _error(f"the tool {self.name!r} failed: its endpoint's answer is larger "
                          f"than {net.MAX_BODY_BYTES // (1024 * 1024)} MiB")
        if not net.is_json(response):
            return ToolResult(text)
        return self._json_result(text)

    def _json_result(self, text: str) -> ToolResult:
        junk = (f"the tool {self.name!r} failed: its endpoint answered JSON that is not "
                '{"output": …, "is_error": true|false}')
        try:
            answer = json.loads(text)
        except ValueError:
            return _error(f"the tool {self.name!r} failed: its endpoint's JSON answer does "
                          f"not parse: {text[:EXCERPT_CHARS]}")
        if not isinstance(answer, dict) or "output" not in answer:
            return _error(junk)
        is_error = answer.get("is_error", False)
        if not isinstance(is_error, bool):
            return _error(junk)
        output = answer["output"]
        if not isinstance(output, str):
            output = json.dumps(output, ensure_ascii=False)
        return ToolResult(output, is_error=is_error)


def _error(text: str) -> ToolResult:
    return ToolResult(text, is_error=True)


def http_tool(spec: HttpTool, secret: str | None, resolver: net.Resolver | None = None) -> Tool:
    """The tool of an `http` spec; `secret` is the owner's tool secret (None: it has none,
    and every call is an error result saying how to create one)."""
    return HttpEndpointTool(spec, secret, resolver)
