"""Tool call latency and batches, over real HTTP on loopback against a `loomd serve` it starts.

Scenarios (see bench/README.md for what each one measures and how):
  http-tool  an `http` tool call in a run, against a direct signed POST to the same receiver
  mcp-tool   an MCP tool call in a run, against a direct call with the `mcp` SDK's client
  batch-32   POST /v1/runs/batch with 32 short runs (join), against a batch of 1, 32 single
             runs one after another and 32 single runs at once

The receiver of the `http` tool and the MCP server run in processes of their own, started
from this file (`--serve receiver|mcp`). Nothing here asserts a time: the script prints the
machine, then one row of figures per scenario and backend.

Usage: .venv/bin/python bench/tools.py [--scenario NAME ...] [--backend sqlite|postgres|all]
                                       [--code REV] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.client import (
    CALCULATOR,
    CALCULATOR_STEPS,
    QUESTION,
    StreamedRun,
    create_agent,
    loomd_client,
    scripted_options,
    stream_run,
)
from bench.common import (
    BACKENDS,
    CpuCounter,
    Rounds,
    answer,
    argument_parser,
    chosen,
    differences,
    exit_status,
    ms,
    percentile,
    print_markdown,
    print_preamble,
    read_body,
    run_backends,
    run_event_loop,
    run_scenarios,
    signed_headers,
    spread,
    stop_on_sigterm,
    timed,
)
from bench.services import Helper, LoomdServer, backend_server, helper_process

SECRET_VARIABLE = "LOOMD_BENCH_TOOL_SECRET"
"""How the receiver process gets the tool secret (not on its command line)."""
LOOKUP_ARGUMENTS = {"id": "1"}
ADD_ARGUMENTS = {"a": 2, "b": 3}
BATCH_SIZE = 32


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does; `quick()` is for a smoke run of the script itself."""

    samples: int = 200
    warmup: int = 20
    batch_rounds: int = 10
    """Rounds of the batch measures, after one round of warm-up."""

    @classmethod
    def quick(cls) -> Sizes:
        return cls(samples=20, warmup=3, batch_rounds=2)


# --- the processes on the other side of the tools -------------------------------------------

class ToolReceiver:
    """ASGI app: the `lookup` tool's endpoint. A POST answers `{"output": "ok"}` after
    verifying its Standard Webhooks signature (401 when it does not verify); `GET /stats`
    counts the calls; any other GET is the readiness probe."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.calls = self.bad_signatures = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["method"] == "GET":
            await answer(send, 200, {"calls": self.calls, "bad_signatures": self.bad_signatures}
                         if scope["path"] == "/stats" else {"ready": True})
            return
        self.calls += 1
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self.webhook.verify(body, headers)
        except WebhookVerificationError:
            self.bad_signatures += 1
            await answer(send, 401, {"output": "bad signature", "is_error": True})
            return
        await answer(send, 200, {"output": "ok"})


class CountingMcp:
    """ASGI middleware before the MCP app: counts requests by JSON-RPC method (and DELETEs,
    which end sessions), answers `GET /stats` with the counts and `GET /ready`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.counts: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] == "/mcp" and scope["method"] == "GET"):
            await self.app(scope, receive, send)
            return
        if scope["path"] in ("/stats", "/ready"):
            await answer(send, 200, self.counts if scope["path"] == "/stats" else {})
            return
        body = await read_body(receive) if scope["method"] == "POST" else b""
        key = _rpc_method(body) if scope["method"] == "POST" else scope["method"]
        self.counts[key] = self.counts.get(key, 0) + 1
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _rpc_method(body: bytes) -> str:
    try:
        message = json.loads(body)
    except ValueError:
        return "(not JSON)"
    method = message.get("method") if isinstance(message, dict) else None
    return method if isinstance(method, str) else "(response)"


def mcp_app() -> CountingMcp:
    """The MCP server (streamable HTTP on /mcp) with one tool, `add`."""
    server = MCPServer("loomd-bench", log_level="WARNING")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    return CountingMcp(server.streamable_http_app())


def serve(kind: str, port: int) -> None:
    """Serve the receiver or the MCP server on 127.0.0.1:`port` until SIGTERM."""
    app: Any = ToolReceiver(os.environ[SECRET_VARIABLE]) if kind == "receiver" else mcp_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning",
                lifespan="on" if kind == "mcp" else "off", timeout_graceful_shutdown=1)


def tool_helper(kind: str, workdir: Path, secret: str = "") -> AbstractContextManager[Helper]:
    """Start `bench/tools.py --serve kind` on a free port; stop it afterwards."""
    return helper_process(str(Path(__file__).resolve()), kind, workdir,
                          {**os.environ, SECRET_VARIABLE: secret})


# --- what the scenarios share ----------------------------------------------------------------

@dataclass
class Bench:
    """One backend's server, the helpers and what the scenarios need to talk to them."""

    backend: str
    server: LoomdServer
    http: httpx.AsyncClient
    sizes: Sizes
    secret: str
    receiver: Helper | None
    mcp: Helper | None
    database: str | None

    def ours(self) -> CpuCounter:
        """The processes the benchmark started (the script aside) and its Postgres backends."""
        pids = [self.server.pid, *(h.pid for h in (self.receiver, self.mcp) if h is not None)]
        return CpuCounter.with_database(pids, self.database)


@dataclass
class Figures:
    """One row of the table: a scenario on a backend."""

    backend: str
    scenario: str
    loomd: str
    reference: str
    comparison: str
    others: str = ""
    error: bool = False

    @property
    def progress(self) -> str:
        """The row as the progress line on stderr gives it."""
        return f"{self.loomd} | {self.comparison}"


@dataclass
class ToolRun:
    """A streamed run that made one tool call: its wall time and its `tool.completed`."""

    wall_ms: float
    duration_ms: int


async def tool_run(http: httpx.AsyncClient, agent: str, expected: str) -> ToolRun:
    """Stream a run of `agent` (one tool call, then an answer) to its end; raise unless it
    completed with the tool's output `expected`."""
    run: StreamedRun = await stream_run(http, agent)
    completed = run.first("tool.completed")
    if not run.completed or run.terminal is None or completed is None:
        raise RuntimeError(f"run {run.run_id}: {run.outcome()}")
    data = completed.json()["data"]
    if data["is_error"] or data["output"] != expected:
        raise RuntimeError(f"run {run.run_id}: the tool answered {data['output']!r}, "
                           f"is_error {data['is_error']}")
    return ToolRun(ms(run.terminal.received - run.sent), data["duration_ms"])


def run_measure(bench: Bench, agent: str, expected: str,
                kept: list[ToolRun]) -> Callable[[], Awaitable[float]]:
    """A measure for `Rounds`: one run of `agent`, its wall time; the run goes to `kept`."""
    async def measure() -> float:
        run = await tool_run(bench.http, agent, expected)
        kept.append(run)
        return run.wall_ms
    return measure


async def tool_agents(bench: Bench, name: str, tools: list[dict[str, Any]], call: str,
                      arguments: dict[str, Any]) -> tuple[str, str]:
    """Two agents with the same tools (`tools` and the calculator): one calls `call`, the
    other the calculator; both then answer `done`."""
    every = [*tools, *CALCULATOR]

    def script(tool: str, args: dict[str, Any]) -> dict[str, Any]:
        return scripted_options([{"tool_calls": [{"name": tool, "arguments": args}]},
                                 {"text": "done"}])

    measured = await create_agent(bench.http, f"bench-{name}", "scripted:bench", every,
                                  script(call, arguments))
    builtin = await create_agent(bench.http, f"bench-{name}-builtin", "scripted:bench", every,
                                 script("calculator", {"expression": "2+3"}))
    return measured, builtin


def tool_figures(bench: Bench, scenario: str, rounds: Rounds, runs: dict[str, list[ToolRun]],
                 reference: str, reference_text: str) -> Figures:
    """The row of a tool scenario: the tool call's time in a run (paired difference), the
    reference, and what loomd adds over it at p50 and p99."""
    call = differences(rounds.samples["tool run"], rounds.samples["builtin run"])
    direct = rounds.samples[reference]
    durations = [float(r.duration_ms) for r in runs["tool run"]]
    builtin_durations = [float(r.duration_ms) for r in runs["builtin run"]]
    added_p50 = percentile(call, 0.5) - percentile(direct, 0.5)
    added_p99 = percentile(call, 0.99) - percentile(direct, 0.99)
    return Figures(
        bench.backend, scenario,
        f"tool call {spread(call)} (run with it {spread(rounds.samples['tool run'])}, "
        f"with the calculator instead p50 {percentile(rounds.samples['builtin run'], 0.5):.2f}"
        f"; duration_ms p50 {statistics.median(durations):.0f} vs "
        f"{statistics.median(builtin_durations):.0f})",
        f"{reference_text} {spread(direct)}",
        f"{added_p50:+.2f} ms p50, {added_p99:+.2f} ms p99 ({len(call)} samples)")


# --- scenarios -------------------------------------------------------------------------------

async def http_tool(bench: Bench) -> Figures:
    """An `http` tool call in a run against a direct signed POST to the same receiver."""
    assert bench.receiver is not None
    url = f"{bench.receiver.url}/lookup"
    spec = {"type": "http", "name": "lookup", "url": url, "description": "Look a record up."}
    measured, builtin = await tool_agents(bench, "http", [spec], "lookup", LOOKUP_ARGUMENTS)
    runs: dict[str, list[ToolRun]] = {"tool run": [], "builtin run": []}
    webhook = Webhook(bench.secret)
    # The size of loomd's body: its ids are a prefix and 20 characters.
    body = json.dumps({"tool_call_id": "call_0_0", "run_id": "run_" + "r" * 20,
                       "session_id": "ses_" + "s" * 20, "arguments": LOOKUP_ARGUMENTS},
                      separators=(",", ":"))

    async def post(client: httpx.AsyncClient) -> None:
        response = await client.post(url, content=body.encode(),
                                     headers=signed_headers(webhook, body))
        if response.status_code != 200 or response.json() != {"output": "ok"}:
            raise RuntimeError(f"direct POST: {response.status_code} {response.text[:200]}")

    async with (
        httpx.AsyncClient(timeout=30) as kept_alive,
        httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        as fresh,
    ):
        async def post_with_new_client() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                await post(client)

        rounds = Rounds({
            "tool run": run_measure(bench, measured, "ok", runs["tool run"]),
            "builtin run": run_measure(bench, builtin, "5", runs["builtin run"]),
            "direct, new connection": lambda: timed(lambda: post(fresh)),
            "direct, kept alive": lambda: timed(lambda: post(kept_alive)),
            "direct, new client": lambda: timed(post_with_new_client),
        })
        await rounds.run(bench.sizes.warmup, bench.sizes.samples)
    for key in runs:
        del runs[key][:bench.sizes.warmup]
    stats = (await bench.http.get(f"{bench.receiver.url}/stats")).json()
    row = tool_figures(bench, "http-tool", rounds, runs, "direct, new connection",
                       "direct signed POST (httpx, new connection each)")
    new_client = rounds.samples["direct, new client"]
    row.reference += (f"; kept alive p50 "
                      f"{percentile(rounds.samples['direct, kept alive'], 0.5):.2f} ms; "
                      f"a new httpx.AsyncClient per POST {spread(new_client)}")
    call = differences(rounds.samples["tool run"], rounds.samples["builtin run"])
    row.comparison += (f"; over a new client per POST "
                       f"{percentile(call, 0.5) - percentile(new_client, 0.5):+.2f} ms p50")
    if stats["bad_signatures"]:
        row.error = True
        row.comparison += f"; {stats['bad_signatures']} calls failed verification"
    return row


async def mcp_tool(bench: Bench) -> Figures:
    """An MCP tool call in a run against a direct call with the SDK's client session."""
    assert bench.mcp is not None
    url = f"{bench.mcp.url}/mcp"
    spec = {"type": "mcp", "server_url": url, "allowed_tools": ["add"]}
    measured, builtin = await tool_agents(bench, "mcp", [spec], "add", ADD_ARGUMENTS)
    runs: dict[str, list[ToolRun]] = {"tool run": [], "builtin run": []}
    async with AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(streamable_http_client(url))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        client = await stack.enter_async_context(Client(url, cache=None))

        async def direct_session() -> None:
            result = await session.call_tool("add", ADD_ARGUMENTS)
            if result.is_error:
                raise RuntimeError(f"direct MCP call failed: {result}")

        async def direct_client() -> None:
            result = await client.call_tool("add", ADD_ARGUMENTS)
            if result.is_error:
                raise RuntimeError(f"direct MCP call failed: {result}")

        await direct_session()
        await direct_client()  # lists the tools first: from here on, every request is a call
        before = (await bench.http.get(f"{bench.mcp.url}/stats")).json()

        rounds = Rounds({
            "tool run": run_measure(bench, measured, "5", runs["tool run"]),
            "builtin run": run_measure(bench, builtin, "5", runs["builtin run"]),
            "direct, ClientSession": lambda: timed(direct_session),
            "direct, Client": lambda: timed(direct_client),
        })
        await rounds.run(bench.sizes.warmup, bench.sizes.samples)
        after = (await bench.http.get(f"{bench.mcp.url}/stats")).json()
    for key in runs:
        del runs[key][:bench.sizes.warmup]
    row = tool_figures(bench, "mcp-tool", rounds, runs, "direct, ClientSession",
                       "direct call_tool (ClientSession, one session)")
    row.reference += (f"; mcp.Client p50 "
                      f"{percentile(rounds.samples['direct, Client'], 0.5):.2f} ms")
    def sent(*methods: str) -> int:
        return sum(after.get(m, 0) - before.get(m, 0) for m in methods)

    loomd_calls = sent("tools/call") - 2 * (bench.sizes.warmup + bench.sizes.samples)
    row.comparison += (f"; for {loomd_calls} calls loomd connected "
                       f"{sent('initialize', 'server/discover')} times and listed the tools "
                       f"{sent('tools/list')} times")
    return row


async def batch_32(bench: Bench) -> Figures:
    """A batch of 32 short runs (join) against a batch of 1, against 32 single runs one after
    another and against 32 single runs at once (each single run streamed to its end)."""
    agent = await create_agent(bench.http, "bench-batch", "scripted:bench", CALCULATOR,
                               scripted_options(CALCULATOR_STEPS))

    async def batch(size: int) -> None:
        body = {"runs": [{"agent": agent, "input": QUESTION}] * size, "mode": "join"}
        response = await bench.http.post("/v1/runs/batch", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"batch of {size}: {response.status_code} {response.text[:300]}")
        results = response.json()["results"]
        failed = [r for r in results if r["status"] != "completed" or r["output"] != "5"]
        if len(results) != size or failed:
            raise RuntimeError(f"batch of {size}: {len(failed)} runs did not complete; "
                               f"first: {failed[:1]}")

    async def single() -> None:
        run = await stream_run(bench.http, agent)
        if not run.completed:
            raise RuntimeError(f"run {run.run_id}: {run.outcome()}")

    async def sequential() -> None:
        for _ in range(BATCH_SIZE):
            await single()

    async def concurrent() -> None:
        await asyncio.gather(*(single() for _ in range(BATCH_SIZE)))

    rounds = Rounds({
        "batch of 32": lambda: timed(lambda: batch(BATCH_SIZE)),
        "batch of 1": lambda: timed(lambda: batch(1)),
        "at once": lambda: timed(concurrent),
        "one after another": lambda: timed(sequential),
    })
    await rounds.run(1, bench.sizes.batch_rounds)
    big = rounds.samples["batch of 32"]
    big_ms, small_ms, at_once_ms, one_by_one_ms = (
        statistics.median(rounds.samples[name]) for name in rounds.measures)
    return Figures(
        bench.backend, "batch-32",
        f"batch of 32 (join): median {big_ms:.0f} ms (min {min(big):.0f}, max {max(big):.0f})",
        f"batch of 1: median {small_ms:.1f} ms; 32 single runs at once {at_once_ms:.0f} ms; "
        f"one after another {one_by_one_ms:.0f} ms ({len(big)} rounds)",
        f"batch of 32 = {big_ms / small_ms:.1f} x a batch of 1, "
        f"{at_once_ms / big_ms:.2f} x the time of 32 at once, "
        f"{one_by_one_ms / big_ms:.1f} x faster than one after another; "
        f"{big_ms / BATCH_SIZE:.1f} ms per run")

Scenario = Callable[[Bench], Awaitable[Figures]]
SCENARIOS: dict[str, Scenario] = {"http-tool": http_tool, "mcp-tool": mcp_tool,
                                  "batch-32": batch_32}


# --- running them ----------------------------------------------------------------------------

async def create_tool_secret(base_url: str) -> str:
    """The admin's tool secret, made with POST /v1/tool-secret."""
    async with loomd_client(base_url) as http:
        response = await http.post("/v1/tool-secret")
        if response.status_code != 201:
            raise RuntimeError(f"POST /v1/tool-secret: {response.status_code} {response.text}")
        secret: str = response.json()["secret"]
        return secret


async def run_on_server(base_url: str, bench_of: Callable[[httpx.AsyncClient], Bench],
                        names: list[str]) -> list[Figures]:
    async with loomd_client(base_url) as http:
        bench = bench_of(http)
        return await run_scenarios(
            bench.backend, names, lambda name: SCENARIOS[name](bench), bench.ours,
            lambda name, error: Figures(bench.backend, name, error, "", "", error=True))


def bench_backend(backend: str, names: list[str], workdir: Path, code: Path | None,
                  sizes: Sizes, notes: list[str]) -> list[Figures]:
    """Start loomd (and the helpers the scenarios need) on `backend`, run the scenarios,
    stop everything (and drop the database)."""
    with ExitStack() as stack:
        server, database = stack.enter_context(backend_server(
            backend, workdir, code, notes, LOOMD_ALLOW_PRIVATE_URLS="127.0.0.1"))
        secret = asyncio.run(create_tool_secret(server.base_url))
        receiver = (stack.enter_context(tool_helper("receiver", workdir, secret))
                    if "http-tool" in names else None)
        mcp = stack.enter_context(tool_helper("mcp", workdir)) if "mcp-tool" in names else None
        name = database.name if database else None

        def bench_of(http: httpx.AsyncClient) -> Bench:
            return Bench(backend, server, http, sizes, secret, receiver, mcp, name)

        return run_event_loop(run_on_server(server.base_url, bench_of, names))


def print_figures(rows: list[Figures]) -> None:
    """A Markdown table, one row per scenario and backend."""
    print_markdown(("backend", "scenario", "loomd", "reference", "comparison", "others"),
                   ((r.backend, r.scenario, r.loomd, r.reference, r.comparison, r.others)
                    for r in rows))


def main() -> int:
    parser = argument_parser(__doc__, SCENARIOS, profile=False)
    parser.add_argument("--serve", choices=["receiver", "mcp"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    names = chosen(args.scenario, SCENARIOS)
    backends = chosen(args.backend, BACKENDS)
    sizes = Sizes.quick() if args.quick else Sizes()
    stop_on_sigterm()

    notes: list[str] = []
    rows, interrupted = run_backends(
        "loomd-bench-tools-", args.code, backends, notes,
        lambda backend, workdir, code: bench_backend(backend, names, workdir, code, sizes, notes))

    print_preamble(notes, "the figures in docs/benchmarks.md" if args.quick else None,
                   "the receiver, the MCP server")
    print_figures(rows)
    return exit_status(interrupted, not any(row.error for row in rows))


if __name__ == "__main__":
    sys.exit(main())
