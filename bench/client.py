"""Client-side building blocks of the run scenarios: agents, streamed runs, client pools."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.services import ADMIN_TOKEN
from bench.sse import Frame, frames

CALCULATOR = [{"type": "builtin", "name": "calculator"}]
CALCULATOR_STEPS: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+3"}}]},
    {"text": "5"}]
"""The scripted provider's steps of a short run: call the calculator, then answer `5`."""
QUESTION = "What is 2+3? Use the calculator."


def loomd_client(base_url: str) -> httpx.AsyncClient:
    """One HTTP client for every simulated user; no connection limit, so 200 streams fit."""
    return httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=httpx.Timeout(120),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))


async def create_agent(http: httpx.AsyncClient, name: str, model: str,
                       tools: list[dict[str, Any]] | None = None,
                       provider_options: dict[str, Any] | None = None) -> str:
    """Create an agent (201) and return its name."""
    body: dict[str, Any] = {"name": name, "model": model, "tools": tools or []}
    if provider_options is not None:
        body["provider_options"] = provider_options
    response = await http.post("/v1/agents", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"creating agent {name}: {response.status_code} {response.text[:500]}")
    return name


def scripted_options(steps: list[dict[str, Any]], chunk_delay_ms: int = 0) -> dict[str, Any]:
    return {"script": steps, "chunk_delay_ms": chunk_delay_ms}


def words(count: int) -> str:
    """`count` distinct words: the scripted provider streams one delta per word."""
    return " ".join(f"w{i}" for i in range(count))


@dataclass
class StreamedRun:
    """A run created with `stream=true`, read to its terminal event."""

    run_id: str
    sent: float
    frames: list[Frame] = field(default_factory=list)

    @property
    def terminal(self) -> Frame | None:
        return self.frames[-1] if self.frames and self.frames[-1].terminal else None

    @property
    def completed(self) -> bool:
        terminal = self.terminal
        return terminal is not None and terminal.type == "run.completed"

    def first(self, event_type: str) -> Frame | None:
        return next((f for f in self.frames if f.type == event_type), None)

    def outcome(self) -> str:
        terminal = self.terminal
        if terminal is None:
            last = (f"last seq {self.frames[-1].seq} ({self.frames[-1].type})" if self.frames
                    else "no event")
            return f"stream ended without a terminal event after {len(self.frames)} events, {last}"
        return terminal.type if terminal.type == "run.completed" else (
            f"{terminal.type}: {terminal.data[:300].decode(errors='replace')}")


async def stream_run(http: httpx.AsyncClient, agent: str, text: str = QUESTION) -> StreamedRun:
    """POST /v1/runs with stream=true and read every event to the terminal one."""
    body = {"agent": agent, "input": text, "stream": True}
    sent = time.perf_counter()
    async with http.stream("POST", "/v1/runs", json=body) as response:
        run_id = response.headers.get("content-location", "").rsplit("/", 1)[-1]
        run = StreamedRun(run_id, sent)
        async for frame in frames(response):
            run.frames.append(frame)
            if frame.terminal:
                break
    return run


async def run_pool(total: int, clients: int, job: Callable[[], Awaitable[str | None]]) -> float:
    """Run `job` `total` times from `clients` concurrent workers; the seconds it took.

    A job returns None when its run completed, else what went wrong; any failure raises
    `RunsFailed` once the pool is done.
    """
    remaining = total
    failures: list[str] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            failure = await job()
            if failure is not None:
                failures.append(failure)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    if failures:
        raise RunsFailed(f"{len(failures)} of {total} runs did not complete; "
                         f"first: {failures[0]}")
    return elapsed


class RunsFailed(RuntimeError):
    """Some runs did not complete, so the figures of their scenario mean nothing."""
