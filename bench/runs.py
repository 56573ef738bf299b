"""Run throughput and latency, over real HTTP on loopback against a `loomd serve` it starts.

Scenarios (targets of issue 7; see bench/README.md for what each one measures):
  short-openai    short runs through the `openai` provider against aimock, 16 clients:
                  runs/s against the same two LLM calls made directly with the SDK, and
                  loomd's server CPU per run
  first-delta     1 client: POST /v1/runs → first message.delta, against the direct calls
  short-scripted  short runs (tool call + answer), scripted provider, 32 clients: runs/s
  big-stream      one run, scripted, 10,000 deltas, no pacing: events/s over SSE, all stored
  paced-streams   200 streams x 100 deltas at 20 ms pacing: added delay between deltas

Usage: .venv/bin/python bench/runs.py [--scenario NAME ...] [--backend sqlite|postgres|all]
                                      [--code REV] [--quick] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

try:
    import uvloop

    HAS_UVLOOP = True
except ImportError:
    HAS_UVLOOP = False

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.client import loomd_client
from bench.common import CpuCounter, OtherLoad, Row, machine, postgres_backends, print_table
from bench.context import Context, Sizes
from bench.openai_runs import first_delta, short_openai
from bench.profile import summarize
from bench.scripted_runs import big_stream, paced_streams, short_scripted
from bench.services import (
    LoomdServer,
    Mock,
    PostgresDatabase,
    aimock,
    describe_code,
    export_revision,
    loomd_server,
    postgres_database,
)

Scenario = Callable[[Context], Awaitable[Row]]
SCENARIOS: dict[str, Scenario] = {
    "short-openai": short_openai,
    "first-delta": first_delta,
    "short-scripted": short_scripted,
    "big-stream": big_stream,
    "paced-streams": paced_streams,
}
NEEDS_MOCK = {"short-openai", "first-delta"}
BACKENDS = ("sqlite", "postgres")
UNUSED_OPENAI_URL = "http://127.0.0.1:9/v1"


@dataclass
class Setup:
    """What one backend's scenarios run against, and with which sizes."""

    backend: str
    server: LoomdServer
    mock: Mock | None
    database: PostgresDatabase | None
    sizes: Sizes
    profile_dir: Path | None

    def ours(self) -> CpuCounter:
        """A CPU counter of the processes the benchmark started (the script itself aside)."""
        pids = [self.server.pid, *([self.mock.pid] if self.mock else [])]
        name = self.database.name if self.database else None
        return CpuCounter(pids, (lambda: postgres_backends(name)) if name else None)


async def _run_scenarios(setup: Setup, names: list[str]) -> list[Row]:
    rows = []
    backend = setup.backend
    async with loomd_client(setup.server.base_url) as http:
        ctx = Context(backend, setup.server, http, setup.mock.base_url if setup.mock else None,
                      setup.sizes, setup.profile_dir,
                      setup.database.name if setup.database else None)
        for name in names:
            print(f"[{backend}] {name} …", file=sys.stderr, flush=True)
            others = OtherLoad(setup.ours())
            try:
                row = await SCENARIOS[name](ctx)
            except Exception as exc:
                traceback.print_exc()
                row = Row(backend, name, f"error: {exc}"[:300], "", False)
            row.others = f"{others.cores():.2f} cores"
            print(f"[{backend}] {name}: {row.result} [{row.mark}]", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def bench_backend(backend: str, names: list[str], workdir: Path, code: Path | None,
                  mock: Mock | None, sizes: Sizes, profile_dir: Path | None,
                  notes: list[str]) -> list[Row]:
    """Start loomd on `backend`, run the scenarios against it, stop it (and drop its database)."""
    workdir.mkdir()
    with ExitStack() as stack:
        database = None
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{workdir}/loomd.db"
        else:
            database = stack.enter_context(postgres_database())
            url = database.url
            notes.append(f"postgres: PostgreSQL {database.server_version}, same host, "
                         "fresh database per run")
        server = stack.enter_context(loomd_server(
            workdir, url, code, LOOMD_MAX_CONCURRENT_RUNS="256",
            OPENAI_BASE_URL=mock.base_url if mock else UNUSED_OPENAI_URL,
            OPENAI_API_KEY="bench-key"))
        setup = Setup(backend, server, mock, database, sizes, profile_dir)
        rows = run_event_loop(_run_scenarios(setup, names))
    return rows


def run_event_loop(main: Coroutine[Any, Any, list[Row]]) -> list[Row]:
    """Run the client on uvloop when it is installed, as loomd's uvicorn does: the less CPU
    the client takes from the shared cores, the more the figures are loomd's."""
    if HAS_UVLOOP:
        return uvloop.run(main)
    return asyncio.run(main)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so every `finally` stops what it started


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "node missing"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"],
                        help="scenario to run; repeat for several (default: all)")
    parser.add_argument("--backend", action="append", choices=[*BACKENDS, "all"],
                        help="database to run on; repeat for both (default: all)")
    parser.add_argument("--code", metavar="REV",
                        help="serve this git revision's app/ instead of the working tree")
    parser.add_argument("--quick", action="store_true",
                        help="smaller numbers, to check the script itself")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record the server with py-spy during each measured phase into "
                             "DIR/<scenario>-<backend>.txt and print a summary (skews figures)")
    args = parser.parse_args()
    names = list(SCENARIOS) if not args.scenario or "all" in args.scenario else [
        name for name in SCENARIOS if name in args.scenario]
    backends = list(BACKENDS) if not args.backend or "all" in args.backend else [
        backend for backend in BACKENDS if backend in args.backend]
    sizes = Sizes.quick() if args.quick else Sizes()
    signal.signal(signal.SIGTERM, _terminate)
    profiles = [args.profile / f"{name}-{backend}.txt" for backend in backends for name in names
                ] if args.profile is not None else []
    for stale in profiles:
        stale.unlink(missing_ok=True)

    rows: list[Row] = []
    notes: list[str] = []
    interrupted = False
    try:
        with tempfile.TemporaryDirectory(prefix="loomd-bench-") as tmp, ExitStack() as stack:
            notes.append(f"code: {describe_code(args.code)}; client event loop: "
                         f"{'uvloop' if HAS_UVLOOP else 'asyncio'}")
            code = export_revision(args.code, Path(tmp) / "code") if args.code else None
            mock = None
            if NEEDS_MOCK & set(names):
                mock = stack.enter_context(aimock(Path(tmp)))
                notes.append(f"mock: aimock 1.43.0 on {mock.base_url} (node {_node_version()})")
            for backend in backends:
                rows += bench_backend(backend, names, Path(tmp) / backend, code, mock,
                                      sizes, args.profile, notes)
    except KeyboardInterrupt:
        interrupted = True

    print(f"\nmachine: {machine()}")
    for note in notes:
        print(note)
    if args.quick:
        print("sizes: --quick (smaller than the targets assume)")
    print("others: cores kept busy by other processes of the host while each scenario ran "
          "(not this script, loomd, the mock or the benchmark database's Postgres backends)")
    print()
    print_table(rows)
    for path in profiles:
        if path.exists():
            print(f"\n{summarize(path)}")
    if interrupted:
        print("\ninterrupted: the table holds the scenarios that finished", file=sys.stderr)
        return 130
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
