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

import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.client import loomd_client
from bench.common import (
    BACKENDS,
    CpuCounter,
    Row,
    argument_parser,
    chosen,
    exit_status,
    fresh_profile_paths,
    print_preamble,
    print_profile_summaries,
    print_table,
    run_event_loop,
    run_scenarios,
    stop_on_sigterm,
    workspace,
)
from bench.context import Context, Sizes
from bench.openai_runs import first_delta, short_openai
from bench.scripted_runs import big_stream, paced_streams, short_scripted
from bench.services import (
    LoomdServer,
    Mock,
    PostgresDatabase,
    aimock,
    backend_server,
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
        return CpuCounter.with_database(pids, self.database.name if self.database else None)


async def run_on_server(setup: Setup, names: list[str]) -> list[Row]:
    backend = setup.backend
    async with loomd_client(setup.server.base_url) as http:
        ctx = Context(backend, setup.server, http, setup.mock.base_url if setup.mock else None,
                      setup.sizes, setup.profile_dir,
                      setup.database.name if setup.database else None)
        return await run_scenarios(backend, names, lambda name: SCENARIOS[name](ctx), setup.ours,
                                   lambda name, error: Row(backend, name, error, "", False))


def bench_backend(backend: str, names: list[str], workdir: Path, code: Path | None,
                  mock: Mock | None, sizes: Sizes, profile_dir: Path | None,
                  notes: list[str]) -> list[Row]:
    """Start loomd on `backend`, run the scenarios against it, stop it (and drop its database)."""
    with backend_server(backend, workdir, code, notes,
                        openai_url=mock.base_url if mock else None) as (server, database):
        setup = Setup(backend, server, mock, database, sizes, profile_dir)
        return run_event_loop(run_on_server(setup, names))


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "node missing"


def main() -> int:
    args = argument_parser(__doc__, SCENARIOS, profile=True).parse_args()
    names = chosen(args.scenario, SCENARIOS)
    backends = chosen(args.backend, BACKENDS)
    sizes = Sizes.quick() if args.quick else Sizes()
    stop_on_sigterm()
    profiles = fresh_profile_paths(args.profile, backends, names)

    rows: list[Row] = []
    notes: list[str] = []
    interrupted = False
    try:
        with workspace("loomd-bench-", args.code, notes) as (tmp, code), ExitStack() as stack:
            mock = None
            if NEEDS_MOCK & set(names):
                mock = stack.enter_context(aimock(tmp))
                notes.append(f"mock: aimock 1.43.0 on {mock.base_url} (node {_node_version()})")
            for backend in backends:
                rows += bench_backend(backend, names, tmp / backend, code, mock,
                                      sizes, args.profile, notes)
    except KeyboardInterrupt:
        interrupted = True

    print_preamble(notes, "the targets assume" if args.quick else None, "the mock")
    print_table(rows)
    print_profile_summaries(profiles)
    return exit_status(interrupted, all(row.passed for row in rows))


if __name__ == "__main__":
    sys.exit(main())
