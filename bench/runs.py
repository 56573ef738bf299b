"""Run throughput and latency, over real HTTP on loopback against `loomd serve`.

Scenarios (see docs/benchmarks.md):
  1. one run, scripted provider, 10,000 deltas, no pacing: SSE events/s, all persisted
  2. 200 concurrent streaming runs, 100 deltas each, 20 ms pacing: added delay per event
  3. short runs (one tool call + answer), 32 clients: completed runs/s
  4. time to first message.delta through loomd vs straight to fakellm: added latency

Usage: .venv/bin/python bench/runs.py [--backend sqlite|postgres|all] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.startup import machine, percentile
from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url
from tests.e2e.server import Server, free_port, loomd_env, start_loomd

TOKEN = "bench-admin-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[float, dict[str, Any]]]:
    """(receive time, event) for each `data:` frame."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield time.perf_counter(), json.loads(line[5:])


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


async def agent(http: httpx.AsyncClient, name: str, steps: list[dict[str, Any]],
                chunk_delay_ms: int = 0, tools: list[str] | None = None) -> None:
    body = {"name": name, "model": "scripted:bench",
            "tools": [{"type": "builtin", "name": t} for t in tools or []],
            "provider_options": {"script": steps, "chunk_delay_ms": chunk_delay_ms}}
    response = await http.post("/v1/agents", json=body)
    response.raise_for_status()


async def one_big_stream(http: httpx.AsyncClient, deltas: int) -> tuple[str, str]:
    await agent(http, "big", [{"text": words(deltas)}])
    started = time.perf_counter()
    count = 0
    async with http.stream("POST", "/v1/runs", json={"agent": "big", "input": "go",
                                                     "stream": True}) as response:
        async for _, event in sse_events(response):
            count += 1
            run_id = event["run_id"]
    elapsed = time.perf_counter() - started
    page = await http.get(f"/v1/runs/{run_id}/events", params={"after": count - 1},
                          headers={"Accept": "application/json"})
    persisted = page.json()["items"][-1]["seq"] if page.json()["items"] else 0
    return (f"{count / elapsed:,.0f} events/s ({count} events in {elapsed:.2f} s)",
            "all persisted" if persisted == count else f"persisted {persisted} of {count}")


async def paced_streams(http: httpx.AsyncClient, runs: int, deltas: int, pace_ms: int) -> str:
    await agent(http, "paced", [{"text": words(deltas)}], chunk_delay_ms=pace_ms)
    added: list[float] = []

    async def one() -> None:
        last: float | None = None
        async with http.stream("POST", "/v1/runs", json={"agent": "paced", "input": "go",
                                                         "stream": True}) as response:
            async for received, event in sse_events(response):
                if event["type"] != "message.delta":
                    continue
                if last is not None:
                    added.append(max(0.0, (received - last) * 1000 - pace_ms))
                last = received

    await asyncio.gather(*(one() for _ in range(runs)))
    return (f"p50 {percentile(added, 0.5):.1f} ms, p99 {percentile(added, 0.99):.1f} ms "
            f"({len(added)} gaps)")


async def short_runs(http: httpx.AsyncClient, clients: int, seconds: float) -> str:
    await agent(http, "short", [
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+3"}}]},
        {"text": "5"}], tools=["calculator"])
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            created = await http.post("/v1/runs", json={"agent": "short", "input": "2+3?"})
            created.raise_for_status()
            run = (await http.get(f"/v1/runs/{created.json()['id']}/wait",
                                  params={"timeout_s": 60})).json()
            if run["status"] == "completed":
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return f"{done / elapsed:,.1f} runs/s ({done} runs in {elapsed:.1f} s)"


async def first_delta_overhead(http: httpx.AsyncClient, fakellm_url: str, samples: int) -> str:
    await http.post("/v1/agents", json={"name": "remote", "model": "fake:bench-model"})
    direct: list[float] = []
    through: list[float] = []
    body = {"model": "bench-model", "stream": True,
            "messages": [{"role": "user", "content": "hello"}]}
    async with httpx.AsyncClient(base_url=fakellm_url, timeout=30) as fake:
        for _ in range(samples):
            started = time.perf_counter()
            async with fake.stream("POST", "/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:") and '"content"' in line:
                        direct.append((time.perf_counter() - started) * 1000)
                        break
            started = time.perf_counter()
            async with http.stream("POST", "/v1/runs", json={"agent": "remote", "input": "hello",
                                                             "stream": True}) as response:
                async for received, event in sse_events(response):
                    if event["type"] == "message.delta":
                        through.append((received - started) * 1000)
                        break
    added = [t - d for t, d in zip(sorted(through), sorted(direct), strict=True)]
    return (f"p50 {percentile(added, 0.5):.1f} ms, p99 {percentile(added, 0.99):.1f} ms "
            f"(direct p50 {statistics.median(direct):.1f} ms, through loomd "
            f"p50 {statistics.median(through):.1f} ms)")


def start_fakellm(tmp: Path) -> tuple[Any, str]:
    import subprocess

    port = free_port()
    rules = tmp / "rules.yaml"
    rules.write_text("version: 1\ndefaults: {fallback: deterministic_echo}\nrules: []\n")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("fakellm")), "serve", "--host", "127.0.0.1",
         "--port", str(port), "--config", str(rules)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    return process, url


async def scenarios(server: Server, fakellm_url: str, quick: bool) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(base_url=server.base_url, headers=HEADERS,
                                 timeout=httpx.Timeout(120)) as http:
        rate, persisted = await one_big_stream(http, 2_000 if quick else 10_000)
        rows = [("1 run, 10,000 deltas, no pacing: SSE delivery", f"{rate}, {persisted}")]
        rows.append(("200 streams x 100 deltas, 20 ms pacing: added delay",
                     await paced_streams(http, 50 if quick else 200, 100, 20)))
        rows.append(("short runs (tool call + answer), 32 clients",
                     await short_runs(http, 32, 5 if quick else 15)))
        rows.append(("first message.delta: added latency vs fakellm direct",
                     await first_delta_overhead(http, fakellm_url, 20 if quick else 100)))
    return rows


def bench(backend: str, quick: bool) -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        fake, fakellm_url = start_fakellm(Path(tmp))
        database = None
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp}/loomd.db"
        else:
            database = create_postgres_database()
            url = postgres_url(database)
        env = loomd_env(LOOMD_DATABASE_URL=url, LOOMD_ADMIN_TOKEN=TOKEN, LOOMD_LOG_LEVEL="WARNING",
                        LOOMD_ALLOW_PRIVATE_URLS="true", LOOMD_MAX_CONCURRENT_RUNS="256",
                        LOOMD_PROVIDERS=json.dumps({"fake": {"base_url": fakellm_url}}))
        server = start_loomd(Path(tmp), env)
        try:
            server.wait_ready()
            rows = asyncio.run(scenarios(server, fakellm_url, quick))
        finally:
            server.stop()
            fake.terminate()
            if database:
                drop_postgres_database(database)
    return [(backend, name, result) for name, result in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smaller numbers, for a smoke run")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    rows = [row for backend in backends for row in bench(backend, args.quick)]
    print(f"machine: {machine()}\n")
    print(f"| {'backend':<8} | {'scenario':<52} | result")
    print(f"|{'-' * 10}|{'-' * 54}|{'-' * 60}")
    for backend, name, result in rows:
        print(f"| {backend:<8} | {name:<52} | {result}")


if __name__ == "__main__":
    main()
