"""Time from `loomd serve` to the first 200 on /readyz, and request latency of a few routes.

Run from the repository root with the dev install: `.venv/bin/python bench/startup.py`.
Prints a table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, percentile
from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url
from tests.e2e.server import loomd_env, start_loomd

TOKEN = "bench-admin-token"


async def latency(base_url: str, requests: int) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timings: dict[str, list[float]] = {"GET /healthz": [], "POST /v1/sessions": [],
                                       "GET /v1/sessions": []}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
        await http.post("/v1/agents", json={"name": "bench", "model": "scripted:bench"})
        for _ in range(requests):
            for name, call in (
                ("GET /healthz", lambda: http.get("/healthz")),
                ("POST /v1/sessions", lambda: http.post("/v1/sessions", json={"agent": "bench"})),
                ("GET /v1/sessions", lambda: http.get("/v1/sessions?limit=50")),
            ):
                started = time.perf_counter()
                response = await call()
                timings[name].append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
    return timings


def bench(backend: str, rounds: int, requests: int) -> list[tuple[str, str, str]]:
    rows = []
    startups = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            database = None
            if backend == "sqlite":
                url = f"sqlite+aiosqlite:///{tmp}/loomd.db"
            else:
                database = create_postgres_database()
                url = postgres_url(database)
            server = start_loomd(Path(tmp), loomd_env(LOOMD_DATABASE_URL=url,
                                                      LOOMD_ADMIN_TOKEN=TOKEN))
            try:
                startups.append(server.wait_ready())
                if len(startups) == rounds:
                    timings = asyncio.run(latency(server.base_url, requests))
            finally:
                server.stop()
                if database:
                    drop_postgres_database(database)
    rows.append((backend, "serve → first 200 /readyz (empty db, migrations included)",
                 f"median {statistics.median(startups) * 1000:.0f} ms, "
                 f"max {max(startups) * 1000:.0f} ms over {rounds}"))
    for name, values in timings.items():
        rows.append((backend, f"{name} latency ({requests} sequential)",
                     f"p50 {percentile(values, 0.5):.1f} ms, "
                     f"p99 {percentile(values, 0.99):.1f} ms"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    rows = [row for backend in backends for row in bench(backend, args.rounds, args.requests)]
    print(f"machine: {machine()}\n")
    print(f"| {'backend':<8} | {'measure':<60} | {'result':<42} |")
    print(f"|{'-' * 10}|{'-' * 62}|{'-' * 44}|")
    for backend, measure, result in rows:
        print(f"| {backend:<8} | {measure:<60} | {result:<42} |")


if __name__ == "__main__":
    main()
