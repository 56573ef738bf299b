"""Hooks (API.md §6), over real HTTP on loopback against a `loomd serve` it starts.

Scenarios (see bench/README.md for what each one measures and how):
  pre-tool-hook                   what one `pre_tool` hook adds to a run's tool call, against
                                  a direct signed POST to the same receiver
  event-deliveries                event deliveries/s of one event hook, every event arrived
                                  in order
  run-throughput-with-event-hook  short scripted runs/s with an event hook on every event
                                  type, against none, in the same run

Every hook points at one receiver, a process of its own started from this file
(`--serve receiver`), which verifies each request's signature and records its arrival.
Nothing here asserts a time: the script prints the machine, then one row per scenario and
backend with its target.

Usage: .venv/bin/python bench/hooks.py [--scenario NAME ...] [--backend sqlite|postgres|all]
                                       [--code REV] [--quick] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.types import Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.client import (
    CALCULATOR,
    CALCULATOR_STEPS,
    StreamedRun,
    create_agent,
    loomd_client,
    run_pool,
    scripted_options,
    stream_run,
    words,
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
    fresh_profile_paths,
    pass_mark,
    percentile,
    print_markdown,
    print_preamble,
    print_profile_summaries,
    profile_path,
    read_body,
    run_backends,
    run_event_loop,
    run_scenarios,
    signed_headers,
    spread,
    stop_on_sigterm,
    timed,
)
from bench.context import SETTLE_S
from bench.profile import py_spy
from bench.services import Helper, LoomdServer, backend_server, helper_process

PRE_TOOL_P50_TARGET_MS = 3.0
DELIVERIES_PER_S_TARGET = 2_000.0
HOOKED_AGENT = "hooked"
EVENT_TYPES = ["run.created", "run.started", "turn.started", "message.delta",
               "message.completed", "usage", "tool.started", "tool.completed",
               "turn.completed", "run.completed"]
"""Every type a scripted run of the scenarios emits: the event hooks listen to all of them."""
DIRECT_RUN_ID = "run_" + "r" * 20
"""The run id of the script's own POSTs: the length of loomd's ids, and none of them."""
QUIET_S = 15.0
"""How long a receiver may see no new delivery before the script stops waiting for more."""


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does; `quick()` is for a smoke run of the script itself."""

    rounds: int = 200
    warmup: int = 20
    cpu_runs: int = 100
    """Runs of each agent, one after another, whose server CPU is compared."""
    deltas: int = 5_000
    direct_posts: int = 1_000
    short_runs: int = 200
    short_warmup: int = 20
    clients: int = 32

    @classmethod
    def quick(cls) -> Sizes:
        return cls(rounds=20, warmup=3, cpu_runs=10, deltas=500, direct_posts=100, short_runs=40,
                   short_warmup=5)


# --- the receiver: one process behind every hook ---------------------------------------------

class HookReceiver:
    """ASGI app behind every hook of the benchmark, one path per hook.

    `PUT /secrets/{name}` (body: the hook's `whsec_…` secret) sets the secret of the path
    `POST /hooks/{name}`, which verifies each request's Standard Webhooks signature (401 and
    a count when it does not verify), keeps its arrival time (`time.perf_counter()`, the
    system's monotonic clock on Linux, so the script can compare it with its own) and its
    body, and answers 204: that allows a `pre_tool` call and acknowledges an event.
    `GET /count/{name}` gives how many requests verified; `GET /received/{name}` the
    arrivals, decoded; any other GET is the readiness probe. Bodies are decoded only when
    asked, so that a delivery costs the receiver as little as it can.
    """

    def __init__(self) -> None:
        self.webhooks: dict[str, Webhook] = {}
        self.arrivals: dict[str, list[tuple[float, str, bytes, int]]] = {}
        self.bad_signatures = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        arrived = time.perf_counter()
        kind, _, name = str(scope["path"]).lstrip("/").partition("/")
        method = scope["method"]
        if method == "POST" and kind == "hooks":
            await self._hook(scope, name, body, arrived, send)
        elif method == "PUT" and kind == "secrets":
            self.webhooks[name] = Webhook(body.decode())
            self.arrivals.setdefault(name, [])
            await answer(send, 204)
        elif method == "GET" and kind == "count":
            await answer(send, 200, {"count": len(self.arrivals.get(name, ())),
                                      "bad_signatures": self.bad_signatures})
        elif method == "GET" and kind == "received":
            await answer(send, 200, {"received": [_arrival(*a) for a in
                                                   self.arrivals.get(name, ())],
                                      "bad_signatures": self.bad_signatures})
        else:
            await answer(send, 200, {"ready": True})

    async def _hook(self, scope: Scope, name: str, body: bytes, arrived: float,
                    send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        webhook = self.webhooks.get(name)
        try:
            if webhook is None:
                raise WebhookVerificationError("no secret for this path")
            webhook.verify(body, headers)
        except WebhookVerificationError:
            self.bad_signatures += 1
            await answer(send, 401, {"error": "bad signature"})
            return
        client = scope.get("client") or ("", 0)
        self.arrivals[name].append((arrived, headers.get("webhook-id", ""), body, client[1]))
        await answer(send, 204)


def _arrival(arrived: float, message_id: str, body: bytes, port: int) -> dict[str, Any]:
    """One request as the script reads it: arrival, webhook-id, the event's run, seq and
    type (for a `pre_tool` call: its run and `pre_tool`), and the sender's port (one per
    connection)."""
    payload = json.loads(body)
    event = payload.get("event") if payload.get("type") == "event" else None
    source = event if isinstance(event, dict) else payload
    return {"at": arrived, "id": message_id, "run_id": source.get("run_id"),
            "seq": source.get("seq"), "type": source.get("type"), "port": port}


def serve_receiver(port: int) -> None:
    """Serve the receiver on 127.0.0.1:`port` until SIGTERM (uvicorn on httptools and uvloop
    when installed, as `uvicorn.run` picks them)."""
    uvicorn.run(HookReceiver(), host="127.0.0.1", port=port, log_level="warning",
                lifespan="off", access_log=False, timeout_graceful_shutdown=1)


def receiver_process(workdir: Path) -> AbstractContextManager[Helper]:
    """Start `bench/hooks.py --serve receiver` on a free port; stop it afterwards."""
    return helper_process(str(Path(__file__).resolve()), "receiver", workdir)


# --- what the scenarios share ----------------------------------------------------------------

@dataclass
class Bench:
    """One backend's server, the receiver and what the scenarios need to talk to them."""

    backend: str
    server: LoomdServer
    http: httpx.AsyncClient
    receiver: Helper
    control: httpx.AsyncClient
    """The receiver's own endpoints (secrets, counts), without loomd's admin token."""
    sizes: Sizes
    database: str | None
    profile_dir: Path | None

    def ours(self) -> CpuCounter:
        """The processes the benchmark started (the script aside) and its Postgres backends."""
        return CpuCounter.with_database([self.server.pid, self.receiver.pid], self.database)

    def server_cpu(self) -> CpuCounter:
        """The server's CPU (all threads)."""
        return CpuCounter([self.server.pid])

    def database_cpu(self) -> CpuCounter | None:
        """The CPU of the Postgres backends serving the benchmark's database; None on
        SQLite."""
        if self.database is None:
            return None
        return CpuCounter.with_database([], self.database)

    def profiled(self, scenario: str) -> AbstractContextManager[None]:
        """py-spy on the server for the block, when the script was asked to profile."""
        return py_spy(self.server.pid, profile_path(self.profile_dir, scenario, self.backend))


@dataclass
class Figures:
    """One row of the table: a scenario on a backend, loomd's figures, the reference and
    the target."""

    backend: str
    scenario: str
    loomd: str
    reference: str
    target: str
    passed: bool | None = None
    others: str = ""

    @property
    def mark(self) -> str:
        return pass_mark(self.passed)

    @property
    def progress(self) -> str:
        """The row as the progress line on stderr gives it."""
        return f"{self.loomd} | {self.reference} [{self.mark}]"


@dataclass
class Hook:
    """A hook made for the benchmark: its id, its secret and the receiver path it calls."""

    id: str
    secret: str
    name: str
    url: str


async def create_hook(bench: Bench, name: str, phase: str, agents: list[str],
                      **fields: Any) -> Hook:
    """POST /v1/hooks (201) to the receiver's `/hooks/{name}`, and give the receiver the
    hook's secret."""
    url = f"{bench.receiver.url}/hooks/{name}"
    body = {"name": name, "phase": phase, "url": url, "agents": agents, **fields}
    response = await bench.http.post("/v1/hooks", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"creating hook {name}: {response.status_code} {response.text[:500]}")
    created = response.json()
    hook = Hook(created["id"], created["secret"], name, url)
    answer = await bench.control.put(f"/secrets/{name}", content=hook.secret.encode())
    answer.raise_for_status()
    return hook


async def delete_hook(bench: Bench, hook: Hook) -> None:
    """DELETE /v1/hooks/{id}, so that the next scenario runs without it."""
    response = await bench.http.delete(f"/v1/hooks/{hook.id}")
    if response.status_code != 204:
        raise RuntimeError(f"deleting hook {hook.name}: {response.status_code} "
                           f"{response.text[:300]}")


@asynccontextmanager
async def event_hook(bench: Bench, name: str, agents: list[str]) -> AsyncIterator[Hook]:
    """An event hook on `EVENT_TYPES` for the block; deleted afterwards."""
    hook = await create_hook(bench, name, "event", agents, events=EVENT_TYPES)
    try:
        yield hook
    finally:
        await delete_hook(bench, hook)


async def direct_post(client: httpx.AsyncClient, hook: Hook, body: str) -> None:
    """A signed POST of `body` to the hook's path; raise unless the receiver verified it."""
    response = await client.post(hook.url, content=body.encode(),
                                 headers=signed_headers(Webhook(hook.secret), body))
    if response.status_code != 204:
        raise RuntimeError(f"direct POST: {response.status_code} {response.text[:200]}")


async def received_count(bench: Bench, name: str) -> tuple[int, int]:
    """(requests that verified on the path, requests that did not, all paths)."""
    body = (await bench.control.get(f"/count/{name}")).json()
    return int(body["count"]), int(body["bad_signatures"])


async def received(bench: Bench, name: str) -> tuple[list[dict[str, Any]], int]:
    """Every request the path got, in arrival order, and the count of bad signatures."""
    body = (await bench.control.get(f"/received/{name}")).json()
    return body["received"], int(body["bad_signatures"])


async def wait_for_deliveries(bench: Bench, name: str, expected: int) -> int:
    """Poll the receiver until the path has `expected` requests or none came for `QUIET_S`;
    how many it has."""
    count, _ = await received_count(bench, name)
    last_change = time.monotonic()
    while count < expected and time.monotonic() - last_change < QUIET_S:
        await asyncio.sleep(0.05)
        now_count, _ = await received_count(bench, name)
        if now_count != count:
            count, last_change = now_count, time.monotonic()
    return count


async def recorded_durations(bench: Bench, hook: Hook) -> list[float]:
    """The `duration_ms` loomd recorded for the hook's newest deliveries (one page, 200):
    how long each POST took, to the millisecond."""
    response = await bench.http.get(f"/v1/hooks/{hook.id}/deliveries", params={"limit": 200})
    response.raise_for_status()
    return [float(item["duration_ms"]) for item in response.json()["items"]
            if item["duration_ms"] is not None]


@dataclass
class CpuMeter:
    """CPU of the server and (Postgres) its database backends over a phase, read `SETTLE_S`
    after its start and at its end."""

    bench: Bench
    server: CpuCounter | None = None
    database: CpuCounter | None = None

    async def start(self) -> None:
        await asyncio.sleep(SETTLE_S)
        self.server, self.database = self.bench.server_cpu(), self.bench.database_cpu()

    def per(self, count: int, unit: str = "run") -> str:
        """`server CPU x ms/<unit>` (and the Postgres backends') over `count` units so far."""
        assert self.server is not None
        text = f"server CPU {1000 * self.server.seconds() / count:.2f} ms/{unit}"
        if self.database is not None:
            text += f" (+ Postgres {1000 * self.database.seconds() / count:.2f})"
        return text


def hook_events(runs: list[StreamedRun]) -> int:
    """How many events of `runs` an event hook on `EVENT_TYPES` gets."""
    return sum(frame.type in EVENT_TYPES for run in runs for frame in run.frames)


def order_problems(arrivals: list[dict[str, Any]]) -> tuple[int, int, list[str]]:
    """(distinct events, duplicates, runs out of order) of event deliveries: per run the seqs
    must arrive increasing, duplicates aside (delivery is at least once). A run out of order
    is described by its first event that came after a later one."""
    seen: set[tuple[str, int]] = set()
    latest: dict[str, tuple[int, str]] = {}
    duplicates = 0
    out_of_order: dict[str, str] = {}
    for arrival in arrivals:
        run_id, seq = arrival["run_id"], arrival["seq"]
        if (run_id, seq) in seen:
            duplicates += 1
            continue
        seen.add((run_id, seq))
        later = latest.get(run_id, (0, ""))
        if seq < later[0]:
            out_of_order.setdefault(run_id, f"{run_id}: seq {seq} ({arrival['type']}) after "
                                            f"seq {later[0]} ({later[1]})")
        else:
            latest[run_id] = (seq, arrival["type"])
    return len(seen), duplicates, list(out_of_order.values())


# --- scenarios -------------------------------------------------------------------------------

async def pre_tool_hook(bench: Bench) -> Figures:
    """One `pre_tool` hook's cost to a run, against a direct signed POST to the receiver.

    Each round streams a run of `hooked` (gated by the hook) and one of `plain` (the same
    agent under another name, which no hook matches); their difference is the hook's cost.
    """
    hook = await create_hook(bench, "pre", "pre_tool", [HOOKED_AGENT], tools=["calculator"])
    try:
        return await _pre_tool_hook(bench, hook)
    finally:
        await delete_hook(bench, hook)


async def _pre_tool_hook(bench: Bench, hook: Hook) -> Figures:
    """`pre_tool_hook` with its hook made."""
    options = scripted_options(CALCULATOR_STEPS)
    hooked = await create_agent(bench.http, HOOKED_AGENT, "scripted:bench", CALCULATOR, options)
    plain = await create_agent(bench.http, "plain", "scripted:bench", CALCULATOR, options)
    decisions: list[float] = []
    # loomd's body, with ids of the same lengths (a prefix and 20 characters).
    body = json.dumps({"type": "pre_tool", "hook_id": hook.id, "run_id": DIRECT_RUN_ID,
                       "session_id": "ses_" + "s" * 20, "agent": HOOKED_AGENT,
                       "owner": "admin", "turn": 1,
                       "tool_call": {"id": "call_0_0", "name": "calculator",
                                     "arguments": {"expression": "2+3"}}},
                      ensure_ascii=False, separators=(",", ":"))

    async def run(agent: str) -> float:
        streamed = await stream_run(bench.http, agent)
        completed = streamed.first("tool.completed")
        if not streamed.completed or streamed.terminal is None or completed is None:
            raise RuntimeError(f"run {streamed.run_id}: {streamed.outcome()}")
        if completed.json()["data"]["output"] != "5":
            raise RuntimeError(f"run {streamed.run_id}: {completed.json()['data']}")
        decision = streamed.first("hook.decision")
        if (decision is None) != (agent == plain):
            raise RuntimeError(f"run {streamed.run_id} of {agent}: hook.decision "
                               f"{'missing' if decision is None else 'unexpected'}")
        if decision is not None:
            data = decision.json()["data"]
            if data["decision"] != "allow":
                raise RuntimeError(f"run {streamed.run_id}: the hook decided {data}")
            decisions.append(float(data["duration_ms"]))
        return 1000 * (streamed.terminal.received - streamed.sent)

    async with (
        httpx.AsyncClient(timeout=30) as kept_alive,
        httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        as fresh,
    ):
        rounds = Rounds({
            "hooked run": lambda: run(hooked),
            "plain run": lambda: run(plain),
            "direct, kept alive": lambda: timed(lambda: direct_post(kept_alive, hook, body)),
            "direct, new connection": lambda: timed(lambda: direct_post(fresh, hook, body)),
        })
        with bench.profiled("pre-tool-hook"):
            await rounds.run(bench.sizes.warmup, bench.sizes.rounds)
    cpu: dict[str, str] = {}
    for agent in (hooked, plain):
        meter = CpuMeter(bench)
        await meter.start()
        for _ in range(bench.sizes.cpu_runs):
            await run(agent)
        cpu[agent] = meter.per(bench.sizes.cpu_runs)
    arrivals, bad = await received(bench, hook.name)
    calls = [a for a in arrivals if a["run_id"] != DIRECT_RUN_ID]
    connections = len({a["port"] for a in calls})
    runs = bench.sizes.warmup + bench.sizes.rounds
    hooks_calls = len(calls) - bench.sizes.cpu_runs
    decisions = decisions[bench.sizes.warmup:runs]
    added = differences(rounds.samples["hooked run"], rounds.samples["plain run"])
    kept = rounds.samples["direct, kept alive"]
    p50 = percentile(added, 0.5)
    checks = (f"{hooks_calls} hook calls for {runs} runs, on {connections} connection"
              f"{'s' if connections != 1 else ''}")
    if bad:
        checks += f", {bad} bad signatures"
    return Figures(
        bench.backend, "pre-tool-hook",
        f"added {spread(added)} (hooked run p50 "
        f"{percentile(rounds.samples['hooked run'], 0.5):.2f}, plain run p50 "
        f"{percentile(rounds.samples['plain run'], 0.5):.2f}); hook.decision duration_ms p50 "
        f"{statistics.median(decisions):.0f}, p99 {percentile(decisions, 0.99):.0f}; "
        f"{bench.sizes.cpu_runs} runs one after another: hooked {cpu[hooked]}, plain "
        f"{cpu[plain]}; {checks}",
        f"direct signed POST, kept alive {spread(kept)}; new connection "
        f"{spread(rounds.samples['direct, new connection'])}; loomd - kept alive "
        f"{p50 - percentile(kept, 0.5):+.2f} ms p50 ({len(added)} rounds)",
        f"added p50 < {PRE_TOOL_P50_TARGET_MS:.0f} ms",
        p50 < PRE_TOOL_P50_TARGET_MS and not bad and hooks_calls == runs)


async def event_deliveries(bench: Bench) -> Figures:
    """One event hook, one scripted run of `deltas` words: deliveries/s at the receiver,
    from the first delivery to the last, and whether every event arrived in order."""
    async with event_hook(bench, "events", ["bench-deliveries*"]) as hook:
        return await _event_deliveries(bench, hook)


async def _event_deliveries(bench: Bench, hook: Hook) -> Figures:
    """`event_deliveries` with its hook made."""
    sizes = bench.sizes
    warm = await create_agent(bench.http, "bench-deliveries-warmup", "scripted:bench",
                              provider_options=scripted_options([{"text": words(200)}]))
    agent = await create_agent(bench.http, "bench-deliveries", "scripted:bench",
                               provider_options=scripted_options([{"text": words(sizes.deltas)}]))
    warmup = await stream_run(bench.http, warm, "go")
    await wait_for_deliveries(bench, hook.name, hook_events([warmup]))

    with bench.profiled("event-deliveries"):
        cpu = CpuMeter(bench)
        await cpu.start()
        run = await stream_run(bench.http, agent, "go")
        if not run.completed or run.terminal is None:
            raise RuntimeError(f"run {run.run_id}: {run.outcome()}")
        expected = hook_events([run])
        await wait_for_deliveries(bench, hook.name, hook_events([warmup]) + expected)
    arrivals, bad = await received(bench, hook.name)
    mine = [a for a in arrivals if a["run_id"] == run.run_id]
    distinct, duplicates, disorder = order_problems(mine)
    elapsed = mine[-1]["at"] - mine[0]["at"] if len(mine) > 1 else float("nan")
    rate = (len(mine) - 1) / elapsed
    posts = await recorded_durations(bench, hook)
    stream_s = run.terminal.received - run.sent
    lag = mine[-1]["at"] - run.terminal.received if mine else float("nan")
    problems = [f"{distinct} of {expected} events arrived"] if distinct != expected else []
    problems += [f"out of order: {disorder[0]}"] if disorder else []
    problems += [f"{bad} bad signatures"] if bad else []
    check = "; ".join(problems) or f"all {expected:,} arrived, in seq order"
    connections = len({a["port"] for a in mine})

    delta = {"type": "event", "hook_id": hook.id, "event": {
        "type": "message.delta", "seq": 1234, "run_id": DIRECT_RUN_ID,
        "session_id": "ses_" + "s" * 20, "ts": "2026-01-01T00:00:00.000Z",
        "data": {"turn": 1, "text": " w1234"}}}
    body = json.dumps(delta, ensure_ascii=False, separators=(",", ":"))
    async with httpx.AsyncClient(timeout=30) as client:
        await direct_post(client, hook, body)
        started = time.perf_counter()
        for _ in range(sizes.direct_posts):
            await direct_post(client, hook, body)
        direct_rate = sizes.direct_posts / (time.perf_counter() - started)
    return Figures(
        bench.backend, "event-deliveries",
        f"{rate:,.0f} deliveries/s ({len(mine):,} in {elapsed:.2f} s, first to last at the "
        f"receiver; {duplicates} duplicates, {connections} connections); {check}; "
        f"the run streamed in {stream_s:.2f} s, "
        f"its last delivery {lag:.2f} s after its end; {cpu.per(len(mine), 'delivery')}; "
        f"the POST itself (`duration_ms` of the last {len(posts)} deliveries) mean "
        f"{statistics.fmean(posts):.2f} ms of the {1000 / rate:.2f} ms between deliveries",
        f"the script's signed POSTs of a delta's body, one after another on one kept-alive "
        f"connection: {direct_rate:,.0f}/s ({sizes.direct_posts:,})",
        f"≥ {DELIVERIES_PER_S_TARGET:,.0f}/s, all in order",
        rate >= DELIVERIES_PER_S_TARGET and not problems)


async def run_throughput_with_event_hook(bench: Bench) -> Figures:
    """Short scripted runs/s (32 clients) with no hook at all, then with one event hook on
    every event type the runs emit; the same agent, server and database."""
    sizes = bench.sizes
    agent = await create_agent(bench.http, "bench-short", "scripted:bench", CALCULATOR,
                               scripted_options(CALCULATOR_STEPS))
    hooked_runs: list[StreamedRun] = []

    def job(kept: list[StreamedRun] | None) -> Callable[[], Awaitable[str | None]]:
        async def one() -> str | None:
            run = await stream_run(bench.http, agent)
            if kept is not None:
                kept.append(run)
            return None if run.completed else run.outcome()
        return one

    await run_pool(sizes.short_warmup, sizes.clients, job(None))
    plain_cpu = CpuMeter(bench)
    await plain_cpu.start()
    plain_s = await run_pool(sizes.short_runs, sizes.clients, job(None))
    plain_cost = plain_cpu.per(sizes.short_runs)

    async with event_hook(bench, "short", []) as hook:
        await run_pool(sizes.short_warmup, sizes.clients, job(hooked_runs))
        await wait_for_deliveries(bench, hook.name, hook_events(hooked_runs))
        before = len(hooked_runs)
        with bench.profiled("run-throughput-with-event-hook"):
            hooked_cpu = CpuMeter(bench)
            await hooked_cpu.start()
            hooked_s = await run_pool(sizes.short_runs, sizes.clients, job(hooked_runs))
            hooked_cost = hooked_cpu.per(sizes.short_runs)
            expected = hook_events(hooked_runs)
            await wait_for_deliveries(bench, hook.name, expected)
            drained_cost = hooked_cpu.per(sizes.short_runs)
        arrivals, bad = await received(bench, hook.name)
    measured = {run.run_id for run in hooked_runs[before:]}
    mine = [a for a in arrivals if a["run_id"] in measured]
    distinct, duplicates, disorder = order_problems(arrivals)
    last_end = max(run.terminal.received for run in hooked_runs[before:]
                   if run.terminal is not None)
    lag = mine[-1]["at"] - last_end if mine else float("nan")
    delivery_s = mine[-1]["at"] - mine[0]["at"] if len(mine) > 1 else float("nan")
    problems = [f"{distinct} of {expected} events arrived"] if distinct != expected else []
    runs = len({a["run_id"] for a in arrivals})
    problems += [f"{len(disorder)} of {runs} runs out of order (first: {disorder[0]})"
                 ] if disorder else []
    problems += [f"{bad} bad signatures"] if bad else []
    plain_rate, hooked_rate = sizes.short_runs / plain_s, sizes.short_runs / hooked_s
    return Figures(
        bench.backend, "run-throughput-with-event-hook",
        f"with the hook {hooked_rate:.1f} runs/s ({hooked_cost}; {drained_cost} until the "
        f"last delivery); {len(mine):,} deliveries ({duplicates} duplicates, "
        f"{len({a['port'] for a in mine})} connections) at "
        f"{(len(mine) - 1) / delivery_s:,.0f}/s, the last {lag:.2f} s after the last run "
        f"ended; {'; '.join(problems) or 'all arrived, in seq order per run'}",
        f"no hook: {plain_rate:.1f} runs/s ({plain_cost})",
        f"none for runs/s ({hooked_rate / plain_rate:.2f} x the rate without); every event "
        "delivered, in order per run",
        None if not problems else False)


Scenario = Callable[[Bench], Awaitable[Figures]]
SCENARIOS: dict[str, Scenario] = {
    "pre-tool-hook": pre_tool_hook,
    "event-deliveries": event_deliveries,
    "run-throughput-with-event-hook": run_throughput_with_event_hook,
}


# --- running them ----------------------------------------------------------------------------

async def run_on_server(base_url: str, receiver: Helper,
                        bench_of: Callable[[httpx.AsyncClient, httpx.AsyncClient], Bench],
                        names: list[str]) -> list[Figures]:
    async with (loomd_client(base_url) as http,
                httpx.AsyncClient(base_url=receiver.url, timeout=30) as control):
        bench = bench_of(http, control)
        return await run_scenarios(
            bench.backend, names, lambda name: SCENARIOS[name](bench), bench.ours,
            lambda name, error: Figures(bench.backend, name, error, "", "", False))


def bench_backend(backend: str, names: list[str], workdir: Path, code: Path | None,
                  sizes: Sizes, profile_dir: Path | None, notes: list[str]) -> list[Figures]:
    """Start loomd and the receiver on `backend`, run the scenarios, stop both (and drop the
    database)."""
    with (backend_server(backend, workdir, code, notes,
                         LOOMD_ALLOW_PRIVATE_URLS="127.0.0.1") as (server, database),
          receiver_process(workdir) as receiver):
        name = database.name if database else None

        def bench_of(http: httpx.AsyncClient, control: httpx.AsyncClient) -> Bench:
            return Bench(backend, server, http, receiver, control, sizes, name, profile_dir)

        return run_event_loop(run_on_server(server.base_url, receiver, bench_of, names))


def print_figures(rows: list[Figures]) -> None:
    """A Markdown table, one row per scenario and backend."""
    print_markdown(("backend", "scenario", "loomd", "reference", "target", "", "others"),
                   ((r.backend, r.scenario, r.loomd, r.reference, r.target, r.mark, r.others)
                    for r in rows))


def main() -> int:
    parser = argument_parser(__doc__, SCENARIOS, profile=True)
    parser.add_argument("--serve", choices=["receiver"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_receiver(args.port)
        return 0
    names = chosen(args.scenario, SCENARIOS)
    backends = chosen(args.backend, BACKENDS)
    sizes = Sizes.quick() if args.quick else Sizes()
    stop_on_sigterm()
    profiles = fresh_profile_paths(args.profile, backends, names)

    notes: list[str] = []
    rows, interrupted = run_backends(
        "loomd-bench-hooks-", args.code, backends, notes,
        lambda backend, workdir, code: bench_backend(backend, names, workdir, code, sizes,
                                                     args.profile, notes))

    receiver = ("receiver: raw ASGI app on uvicorn (httptools, uvloop) in its own process; it "
                "verifies every request's signature and answers 204")
    print_preamble([*notes, receiver], "the figures in docs/benchmarks.md" if args.quick else None,
                   "the receiver")
    print_figures(rows)
    print_profile_summaries(profiles)
    return exit_status(interrupted, all(row.passed is not False for row in rows))


if __name__ == "__main__":
    sys.exit(main())
