"""Scenarios on the `scripted` provider (API.md §8): no network behind loomd, only loomd."""

from __future__ import annotations

import asyncio
import itertools

from bench.client import (
    CALCULATOR,
    CALCULATOR_STEPS,
    create_agent,
    run_pool,
    scripted_options,
    stream_run,
    words,
)
from bench.common import Row, percentile
from bench.context import Context, CpuMeter

EVENTS_PER_S_TARGET = 30_000
PACED_P99_TARGET_MS = 30.0
SCRIPTED_RUNS_PER_S_TARGET = 150.0


async def _persisted_seqs(ctx: Context, run_id: str) -> list[int]:
    """Every stored event's seq, read through the JSON events pages."""
    seqs: list[int] = []
    cursor: str | None = "0"
    while cursor is not None:
        page = await ctx.http.get(f"/v1/runs/{run_id}/events", params={"after": cursor,
                                                                         "limit": 200},
                                  headers={"Accept": "application/json"})
        page.raise_for_status()
        body = page.json()
        seqs += [item["seq"] for item in body["items"]]
        cursor = body["next_cursor"]
    return seqs


async def big_stream(ctx: Context) -> Row:
    """One run streaming 10,000 deltas unpaced: events/s from POST to the terminal frame.

    Then checks that the SSE client saw seq 1..n without a gap, that the JSON events pages hold
    exactly those events, and that the run's `last_seq` is n.
    """
    deltas = ctx.sizes.big_deltas
    warmup = await create_agent(ctx.http, "bench-big-warmup", "scripted:bench",
                                provider_options=scripted_options([{"text": words(200)}]))
    await stream_run(ctx.http, warmup, "go")
    agent = await create_agent(ctx.http, "bench-big", "scripted:bench",
                               provider_options=scripted_options([{"text": words(deltas)}]))
    with ctx.profiled("big-stream"):
        run = await stream_run(ctx.http, agent, "go")
    if not run.completed or run.terminal is None:
        raise RuntimeError(f"run {run.run_id}: {run.outcome()}")
    elapsed = run.terminal.received - run.sent
    count = len(run.frames)
    rate = count / elapsed

    seen = [frame.seq for frame in run.frames]
    stored = await _persisted_seqs(ctx, run.run_id)
    last_seq = (await ctx.http.get(f"/v1/runs/{run.run_id}")).json()["last_seq"]
    received_deltas = sum(frame.type == "message.delta" for frame in run.frames)
    problems = []
    if seen != list(range(1, count + 1)):
        problems.append("SSE seqs not 1..n")
    if received_deltas != deltas:
        problems.append(f"{received_deltas} of {deltas} deltas received")
    if stored != seen:
        problems.append(f"{len(stored)} of {count} events stored")
    if last_seq != count:
        problems.append(f"last_seq {last_seq}, {count} events")
    persisted = "; ".join(problems) or "all persisted"
    return Row(ctx.backend, f"one run, scripted, {deltas:,} deltas, no pacing",
               f"{rate:,.0f} events/s ({count:,} events in {elapsed:.2f} s), {persisted}",
               f"≥ {EVENTS_PER_S_TARGET:,} events/s, all persisted",
               rate >= EVENTS_PER_S_TARGET and not problems)


async def paced_streams(ctx: Context) -> Row:
    """200 streams at once, 100 deltas each, paced: the delay between deltas beyond the pacing.

    For each stream, each gap between the arrival of consecutive `message.delta` frames minus
    the pacing is one sample (clamped at 0: a delta that arrives early after a late one only
    makes up for it). The first delta of each stream is not a sample, so the burst of 200
    creations is not counted. Arrival times are taken by this client's event loop, which
    itself reads 200 streams.
    """
    sizes = ctx.sizes
    agent = await create_agent(
        ctx.http, "bench-paced", "scripted:bench",
        provider_options=scripted_options([{"text": words(sizes.paced_deltas)}],
                                          chunk_delay_ms=sizes.pace_ms))
    with ctx.profiled("paced-streams"):
        runs = await asyncio.gather(*(stream_run(ctx.http, agent, "go")
                                      for _ in range(sizes.paced_streams)))
    failed = [run for run in runs if not run.completed]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} runs did not complete; "
                           f"first: {failed[0].outcome()}")
    added: list[float] = []
    for run in runs:
        arrivals = [frame.received for frame in run.frames if frame.type == "message.delta"]
        if len(arrivals) != sizes.paced_deltas:
            raise RuntimeError(f"run {run.run_id}: {len(arrivals)} of {sizes.paced_deltas} "
                               "deltas received")
        added += [max(0.0, 1000 * (later - earlier) - sizes.pace_ms)
                  for earlier, later in itertools.pairwise(arrivals)]
    p99 = percentile(added, 0.99)
    return Row(ctx.backend,
               f"{sizes.paced_streams} streams x {sizes.paced_deltas} deltas, "
               f"{sizes.pace_ms} ms pacing",
               f"added delay p50 {percentile(added, 0.5):.1f} ms, p99 {p99:.1f} ms, "
               f"max {max(added):.1f} ms ({len(added):,} gaps)",
               f"p99 < {PACED_P99_TARGET_MS:.0f} ms", p99 < PACED_P99_TARGET_MS)


async def short_scripted(ctx: Context) -> Row:
    """32 clients, 200 runs after 20 warm-up, one tool call and an answer each: runs/s."""
    sizes = ctx.sizes
    agent = await create_agent(ctx.http, "bench-short-scripted", "scripted:bench", CALCULATOR,
                               scripted_options(CALCULATOR_STEPS))

    async def job() -> str | None:
        run = await stream_run(ctx.http, agent)
        return None if run.completed else run.outcome()

    await run_pool(sizes.short_warmup, sizes.scripted_clients, job)
    cpu = CpuMeter(ctx)
    await cpu.start()
    with ctx.profiled("short-scripted"):
        elapsed = await run_pool(sizes.short_runs, sizes.scripted_clients, job)
    await cpu.stop()
    rate = sizes.short_runs / elapsed
    return Row(ctx.backend, f"short runs, scripted, {sizes.scripted_clients} clients",
               f"{rate:.1f} runs/s; {cpu.describe(sizes.short_runs)}",
               f"≥ {SCRIPTED_RUNS_PER_S_TARGET:.0f} runs/s", rate >= SCRIPTED_RUNS_PER_S_TARGET)
