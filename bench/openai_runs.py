"""Scenarios through the real `openai` provider against aimock, each beside its direct reference.

The workload of a short run: one user message; a streamed LLM call offered the `calculator`
tool, answered with the call `calculator({"expression": "2+3"})`; the tool; a second streamed
call with the tool result, answered with the text `5`. The reference makes the same two
streamed calls straight from this process with the `openai` SDK (the tool result "5" is
written in, not computed), with the same clients, against the same mock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import openai

from bench.client import CALCULATOR, QUESTION, create_agent, run_pool, stream_run
from bench.common import Row, own_cpu_s, percentile
from bench.context import Context, CpuMeter

MODEL = "bench-model"
CPU_TARGET_MS = {"sqlite": 8.0, "postgres": 10.0}
RATIO_TARGET = 0.5
FIRST_DELTA_MARGIN_MS = 5.0
DIRECT_TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression exactly as written: numbers, + - * / ** %, "
                   "unary minus and parentheses. Returns the result as text, e.g. `2+3` gives `5`.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["expression"],
                   "properties": {"expression": {"type": "string", "maxLength": 1000}}},
}}]


@dataclass
class DirectTimes:
    """When the answer's first text token arrived, from the start of the run and of call two."""

    from_run_start: float
    from_second_call: float


class DirectClient:
    """The two LLM calls of a short run, made with the `openai` SDK as loomd's provider does."""

    def __init__(self, base_url: str) -> None:
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key="bench-key", max_retries=0)

    async def _call(self, messages: list[Any]) -> tuple[dict[str, Any], float | None]:
        """Stream one completion; the assistant message it adds up to and its first token time."""
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        first_token = None
        stream = await self.client.chat.completions.create(
            model=MODEL, messages=messages, tools=DIRECT_TOOLS, stream=True,
            stream_options={"include_usage": True})
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        first_token = first_token or time.perf_counter()
                        text.append(delta.content)
                    for part in delta.tool_calls or []:
                        call = calls.setdefault(
                            part.index, {"id": None, "name": "", "arguments": ""})
                        call["id"] = part.id or call["id"]
                        if part.function is not None:
                            call["name"] += part.function.name or ""
                            call["arguments"] += part.function.arguments or ""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for _, c in sorted(calls.items())]
        return message, first_token

    async def run(self) -> DirectTimes:
        """Both calls; raises when the mock does not answer as the workload expects."""
        started = time.perf_counter()
        messages: list[Any] = [{"role": "user", "content": QUESTION}]
        assistant, _ = await self._call(messages)
        if not assistant.get("tool_calls"):
            raise RuntimeError(f"expected a tool call, got {assistant}")
        messages.append(assistant)
        messages += [{"role": "tool", "tool_call_id": call["id"], "content": "5"}
                     for call in assistant["tool_calls"]]
        second_sent = time.perf_counter()
        answer, first_token = await self._call(messages)
        if first_token is None or answer["content"] != "5":
            raise RuntimeError(f"expected the answer 5, got {answer}")
        return DirectTimes(first_token - started, first_token - second_sent)

    async def aclose(self) -> None:
        await self.client.close()


async def _openai_agent(ctx: Context, name: str) -> str:
    return await create_agent(ctx.http, name, f"openai:{MODEL}", CALCULATOR)


async def short_openai(ctx: Context) -> Row:
    """16 clients, 200 runs after 20 warm-up: loomd's runs/s and CPU/run against the direct SDK."""
    assert ctx.mock_url is not None
    sizes = ctx.sizes
    agent = await _openai_agent(ctx, "bench-short-openai")
    direct = DirectClient(ctx.mock_url)

    async def direct_job() -> None:
        await direct.run()

    async def loomd_job() -> str | None:
        run = await stream_run(ctx.http, agent)
        return None if run.completed else run.outcome()

    try:
        await run_pool(sizes.short_warmup, sizes.openai_clients, direct_job)
        client_cpu = own_cpu_s()
        direct_rate = sizes.short_runs / await run_pool(
            sizes.short_runs, sizes.openai_clients, direct_job)
        client_ms = 1000 * (own_cpu_s() - client_cpu) / sizes.short_runs
    finally:
        await direct.aclose()

    await run_pool(sizes.short_warmup, sizes.openai_clients, loomd_job)
    cpu = CpuMeter(ctx)
    await cpu.start()
    with ctx.profiled("short-openai"):
        elapsed = await run_pool(sizes.short_runs, sizes.openai_clients, loomd_job)
    await cpu.stop()

    rate = sizes.short_runs / elapsed
    ratio = rate / direct_rate
    cpu_ms = cpu.ms_per(sizes.short_runs)
    cpu_target = CPU_TARGET_MS[ctx.backend]
    return Row(
        ctx.backend, f"short runs, openai provider, {sizes.openai_clients} clients",
        f"loomd {rate:.1f} runs/s, direct {direct_rate:.1f} runs/s (SDK client CPU "
        f"{client_ms:.1f} ms/run), ratio {ratio:.2f}; "
        f"{cpu.describe(sizes.short_runs)}",
        f"ratio ≥ {RATIO_TARGET}, CPU ≤ {cpu_target:.0f} ms/run",
        ratio >= RATIO_TARGET and cpu_ms <= cpu_target)


async def first_delta(ctx: Context) -> Row:
    """One client, alternating samples: POST → first message.delta against the direct calls.

    loomd: from sending `POST /v1/runs` (stream=true) to receiving the first `message.delta`
    frame, which carries the answer's first token (the tool call comes before it). Direct:
    from sending the first of the two calls to receiving the first text token of the second,
    so both sides cover the same workload. The second call alone is shown for reference.
    """
    assert ctx.mock_url is not None
    sizes = ctx.sizes
    agent = await _openai_agent(ctx, "bench-first-delta")
    direct = DirectClient(ctx.mock_url)
    through: list[float] = []
    straight: list[DirectTimes] = []
    try:
        for sample in range(sizes.first_delta_warmup + sizes.first_delta_samples):
            run = await stream_run(ctx.http, agent)
            delta = run.first("message.delta")
            if not run.completed or delta is None:
                raise RuntimeError(f"run {run.run_id}: {run.outcome()}")
            times = await direct.run()
            if sample >= sizes.first_delta_warmup:
                through.append(1000 * (delta.received - run.sent))
                straight.append(times)
    finally:
        await direct.aclose()

    whole = [1000 * t.from_run_start for t in straight]
    second = [1000 * t.from_second_call for t in straight]
    loomd_p50, direct_p50 = percentile(through, 0.5), percentile(whole, 0.5)
    return Row(
        ctx.backend, "first message.delta, 1 client",
        f"loomd p50 {loomd_p50:.1f} ms, p99 {percentile(through, 0.99):.1f}; direct p50 "
        f"{direct_p50:.1f} ms, p99 {percentile(whole, 0.99):.1f} (2nd call alone p50 "
        f"{percentile(second, 0.5):.1f}); added p50 {loomd_p50 - direct_p50:+.1f} ms "
        f"({len(through)} samples)",
        f"p50 ≤ direct + {FIRST_DELTA_MARGIN_MS:.0f} ms",
        loomd_p50 <= direct_p50 + FIRST_DELTA_MARGIN_MS)
