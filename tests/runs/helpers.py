"""Helpers shared by the runs tests: agents with scripts, runs, events and messages over HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

CALCULATOR = {"type": "builtin", "name": "calculator"}
CURRENT_TIME = {"type": "builtin", "name": "current_time"}
SLEEP = {"type": "builtin", "name": "sleep"}
TERMINAL_EVENTS = ("run.completed", "run.failed", "run.cancelled", "run.interrupted")
JSON = {"Accept": "application/json"}


def step(text: str | None = None, **fields: Any) -> dict[str, Any]:
    """One step of a scripted provider's script."""
    return {"text": text, **fields} if text is not None else fields


def calls(*pairs: tuple[str, dict[str, Any]], text: str | None = None) -> dict[str, Any]:
    """A script step answering with tool calls `(name, arguments)`."""
    tool_calls = [{"name": name, "arguments": arguments} for name, arguments in pairs]
    return step(text, tool_calls=tool_calls)


def error(status: int, message: str = "scripted error") -> dict[str, Any]:
    return {"error": {"status": status, "message": message}}


def agent_body(
    name: str, script: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    options = {"script": script, **fields.pop("options", {})}
    return {"name": name, "model": "scripted:test", "tools": tools or [],
            "provider_options": options, **fields}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with the stable `code`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code, body
    return body


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == type_]


def assert_gapless(events: list[dict[str, Any]]) -> None:
    """Seq 1..n without gaps; one terminal event, last."""
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "run.created"
    terminal = [event for event in events if event["type"] in TERMINAL_EVENTS]
    assert terminal == [events[-1]], types(events)


def arguments(message: dict[str, Any], index: int = 0) -> Any:
    return json.loads(message["tool_calls"][index]["function"]["arguments"])


class Api:
    """A client's view of agents, sessions and runs, with assertions on the happy path."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def agent(self, name: str, script: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
        response = await self.client.post("/v1/agents",
                                          json=agent_body(name, script, tools, **fields))
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def session(self, agent: str, **fields: Any) -> str:
        response = await self.client.post("/v1/sessions", json={"agent": agent, **fields})
        assert response.status_code == 201, response.text
        session_id: str = response.json()["id"]
        return session_id

    async def get_session(self, session_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/sessions/{session_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def post_run(self, session_id: str, input: Any = "hi", **body: Any) -> httpx.Response:
        return await self.client.post(f"/v1/sessions/{session_id}/runs",
                                      json={"input": input, **body})

    async def start(self, session_id: str, input: Any = "hi", **body: Any) -> dict[str, Any]:
        """Create a run (stream=false); asserts 202 and the Location header."""
        response = await self.post_run(session_id, input, **body)
        assert response.status_code == 202, response.text
        run: dict[str, Any] = response.json()
        assert response.headers["location"] == f"/v1/runs/{run['id']}"
        return run

    async def get_run(self, run_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait(self, run_id: str, timeout_s: float = 30) -> dict[str, Any]:
        """The run once it ended (fails the test when it did not within `timeout_s`)."""
        response = await self.client.get(f"/v1/runs/{run_id}/wait",
                                         params={"timeout_s": timeout_s})
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        assert run["status"] not in ("queued", "running"), run
        return run

    async def events(self, run_id: str, after: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """Every event after `after`, read as JSON pages."""
        items: list[dict[str, Any]] = []
        while True:
            response = await self.client.get(f"/v1/runs/{run_id}/events", headers=JSON,
                                             params={"after": after, "limit": limit})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/json")
            page = response.json()
            items += page["items"]
            if page["next_cursor"] is None:
                return items
            after = int(page["next_cursor"])

    async def until(self, run_id: str, type_: str, timeout_s: float = 20) -> list[dict[str, Any]]:
        """Poll the run's events until one of `type_` is persisted; returns them all."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            events = await self.events(run_id)
            if type_ in types(events):
                return events
            assert asyncio.get_running_loop().time() < deadline, (type_, types(events))
            await asyncio.sleep(0.02)

    async def messages(self, session_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/v1/sessions/{session_id}/messages",
                                         params={"limit": 200})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def cancel(self, run_id: str, **body: Any) -> dict[str, Any]:
        response = await self.client.post(f"/v1/runs/{run_id}/cancel", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result
