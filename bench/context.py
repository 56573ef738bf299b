"""What every scenario gets: the server, an HTTP client, the mock, the sizes, a CPU meter."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import CpuCounter, profile_path
from bench.profile import py_spy
from bench.services import LoomdServer

SETTLE_S = 0.25
"""Pause before reading the server's CPU, so work left from the runs before is not counted."""


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does; `quick()` is for a smoke run of the script itself."""

    short_runs: int = 200
    short_warmup: int = 20
    openai_clients: int = 16
    scripted_clients: int = 32
    first_delta_samples: int = 50
    first_delta_warmup: int = 5
    big_deltas: int = 10_000
    paced_streams: int = 200
    paced_deltas: int = 100
    pace_ms: int = 20

    @classmethod
    def quick(cls) -> Sizes:
        return cls(short_runs=40, short_warmup=5, first_delta_samples=10, first_delta_warmup=2,
                   big_deltas=2_000, paced_streams=50)


@dataclass
class Context:
    """One backend's running server and what the scenarios need to talk to it."""

    backend: str
    server: LoomdServer
    http: httpx.AsyncClient
    mock_url: str | None
    sizes: Sizes
    profile_dir: Path | None
    database: str | None = None
    """The Postgres database's name; None on SQLite."""

    def database_cpu(self) -> CpuCounter | None:
        """A CPU counter of the Postgres backends serving this benchmark, or None on SQLite."""
        if self.database is None:
            return None
        return CpuCounter.with_database([], self.database)

    def profiled(self, scenario: str) -> AbstractContextManager[None]:
        """py-spy on the server for the block, when the script was asked to profile."""
        return py_spy(self.server.pid, profile_path(self.profile_dir, scenario, self.backend))


class CpuMeter:
    """CPU spent between `start` and `stop` by the server (all threads) and, on Postgres, by
    the database's backends."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.counters: tuple[CpuCounter, CpuCounter | None] | None = None
        self.server_s = self.database_s = 0.0

    async def start(self) -> None:
        await asyncio.sleep(SETTLE_S)
        self.counters = CpuCounter([self.ctx.server.pid]), self.ctx.database_cpu()

    async def stop(self) -> None:
        await asyncio.sleep(SETTLE_S)
        assert self.counters is not None, "stop() before start()"
        server, database = self.counters
        self.server_s = server.seconds()
        self.database_s = database.seconds() if database else 0.0

    def ms_per(self, count: int) -> float:
        """The server's CPU milliseconds per `count`."""
        return 1000 * self.server_s / count

    def describe(self, runs: int) -> str:
        """`server CPU x ms/run`, and the database's on Postgres."""
        text = f"server CPU {self.ms_per(runs):.1f} ms/run"
        if self.ctx.database is not None:
            text += f" (+ Postgres {1000 * self.database_s / runs:.1f})"
        return text
