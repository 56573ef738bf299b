"""What every scenario gets: the server, an HTTP client, the mock, the sizes, a CPU meter."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import process_cpu_s
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

    def profiled(self, scenario: str) -> AbstractContextManager[None]:
        """py-spy on the server for the block, when the script was asked to profile."""
        return py_spy(self.server.pid, self.profile_path(scenario))

    def profile_path(self, scenario: str) -> Path | None:
        """Where the profile of `scenario` on this backend goes, or None when not profiling."""
        if self.profile_dir is None:
            return None
        return self.profile_dir / f"{scenario}-{self.backend}.txt"


class CpuMeter:
    """Server CPU (all threads) spent between `start` and `stop`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = 0.0
        self.seconds = 0.0

    async def start(self) -> None:
        await asyncio.sleep(SETTLE_S)
        self.before = process_cpu_s(self.pid)

    async def stop(self) -> None:
        await asyncio.sleep(SETTLE_S)
        self.seconds = process_cpu_s(self.pid) - self.before

    def ms_per(self, count: int) -> float:
        return 1000 * self.seconds / count
