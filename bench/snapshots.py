"""Snapshots of a large state, over real HTTP on loopback against `loomd serve` processes.

The state (default 1,000 sessions x 50 messages, one finished run per session with 60
events, one agent, a few hooks) is written straight into a migrated database with SQLAlchemy
Core, for speed. Then a server on that database makes a snapshot with history (create time,
envelope size), and exports it to a file while the script samples the server's VmRSS and
VmHWM every 5 ms (`/proc/<pid>/status`). A second server, on a fresh database, imports the
file (streamed) and restores it (import and restore time, and the counts checked).

Usage: .venv/bin/python bench/snapshots.py [--backend sqlite|postgres|all]
                                           [--sessions N] [--messages N] [--events N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.clock import utcnow
from app.ids import new_id
from app.schemas.agents import AgentSpec
from app.snapshots.codec import AGENT_VERSIONS, AGENTS, HOOKS
from app.store.migrate import upgrade
from app.store.statements import EVENTS, MESSAGES, RUNS, SESSIONS
from bench.common import Row, machine, print_table
from bench.services import ADMIN_TOKEN, LoomdServer, loomd_server, postgres_database

BACKENDS = ("sqlite", "postgres")
OWNER, AGENT = "bench", "bench"
CONFIG = AgentSpec(model="scripted:bench", instructions="You are a benchmark.", max_turns=16,
                   timeout_s=600).model_dump(mode="json")
"""Stored as the service stores an agent's configuration: every field of `AgentSpec`."""
TEXT = ("The quick brown fox jumps over the lazy dog while the benchmark counts every byte "
        "of the envelope it writes. ")
INSERT_ROWS = 2000
HOOK_COUNT = 5
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Sizes:
    sessions: int
    messages: int
    events: int


# -- the state ---------------------------------------------------------------------------------


def _rows_of_session(index: int, sizes: Sizes) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                        dict[str, Any], list[dict[str, Any]]]:
    now = utcnow() - timedelta(seconds=sizes.sessions - index)
    session_id, run_id = new_id("ses"), new_id("run")
    session = {
        "id": session_id, "owner": OWNER, "agent": AGENT, "title": f"session {index}",
        "metadata": {"index": index}, "status": "idle", "active_run_id": None,
        "open_tool_calls": [], "parent_session_id": None, "parent_run_id": None,
        "message_count": sizes.messages, "last_seq": sizes.messages, "prompt_tokens": 1000,
        "completion_tokens": 500, "total_tokens": 1500, "llm_calls": sizes.messages // 2,
        "todos": [], "created_at": now, "updated_at": now,
    }
    messages = [{
        "session_id": session_id, "seq": seq, "role": "user" if seq % 2 else "assistant",
        "content": f"{seq}: {TEXT * 2}", "tool_calls": None, "tool_call_id": None,
        "name": None, "run_id": run_id, "state": "active", "created_at": now,
    } for seq in range(1, sizes.messages + 1)]
    run = {
        "id": run_id, "session_id": session_id, "owner": OWNER, "agent": AGENT,
        "agent_version": 1, "status": "completed", "stop_reason": "end_turn", "error": None,
        "output": TEXT, "turns": 1,
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
                  "llm_calls": 1},
        "required_action": None, "waiting": None, "action_expires_at": None, "decisions": [],
        "pending_input": [], "active_ms": 1200, "depth": 0, "parent_run_id": None,
        "last_seq": sizes.events, "metadata": {},
        "request": {"input": [{"role": "user", "content": TEXT}]}, "config": CONFIG,
        "executor_id": None, "lease_expires_at": None, "created_at": now, "started_at": now,
        "ended_at": now,
    }
    events = [{"run_id": run_id, "seq": seq, "type": "message.delta",
               "data": {"turn": 1, "text": "word "}, "ts": now}
              for seq in range(1, sizes.events + 1)]
    return session, messages, run, events


async def _populate(database_url: str, sizes: Sizes) -> None:
    engine = create_async_engine(database_url)
    now = utcnow()
    agent_id = new_id("agt")
    try:
        async with engine.begin() as connection:
            await connection.execute(sa.insert(AGENTS), [{
                "id": agent_id, "owner": OWNER, "name": AGENT, "version": 1, "config": CONFIG,
                "created_at": now, "updated_at": now}])
            await connection.execute(sa.insert(AGENT_VERSIONS), [{
                "agent_id": agent_id, "version": 1, "config": CONFIG, "created_at": now}])
            await connection.execute(sa.insert(HOOKS), [{
                "id": new_id("hook"), "owner": OWNER, "all_owners": False, "name": f"h{i}",
                "phase": "event", "url": f"https://hooks.example.com/{i}", "agents": [],
                "tools": [], "events": ["run.completed"], "timeout_ms": 5000,
                "failure_mode": "open", "enabled": True, "secret": "whsec_x",
                "circuit": "closed", "failures": 0, "circuit_until": None,
                "created_at": now, "updated_at": now} for i in range(HOOK_COUNT)])
        pending: dict[str, list[dict[str, Any]]] = {"s": [], "m": [], "r": [], "e": []}

        async def flush() -> None:
            async with engine.begin() as connection:
                for key, table in (("s", SESSIONS), ("m", MESSAGES), ("r", RUNS),
                                   ("e", EVENTS)):
                    if pending[key]:
                        await connection.execute(sa.insert(table), pending[key])
                        pending[key] = []

        for index in range(sizes.sessions):
            session, messages, run, events = _rows_of_session(index, sizes)
            pending["s"].append(session)
            pending["m"] += messages
            pending["r"].append(run)
            pending["e"] += events
            if len(pending["m"]) + len(pending["e"]) >= INSERT_ROWS:
                await flush()
        await flush()
    finally:
        await engine.dispose()


# -- measuring -----------------------------------------------------------------------------------


class MemorySampler:
    """Samples a process's VmRSS and VmHWM (kB) in a thread until stopped."""

    def __init__(self, pid: int, period_s: float = 0.005) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.period_s = period_s
        self.peak_rss_kb = 0
        self.hwm_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> tuple[int, int]:
        values = {}
        for line in self.path.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
        return values.get("VmRSS", 0), values.get("VmHWM", 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, hwm = self.read()
            self.peak_rss_kb, self.hwm_kb = max(self.peak_rss_kb, rss), max(self.hwm_kb, hwm)
            time.sleep(self.period_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _mib(kb: int) -> str:
    return f"{kb / 1024:.0f} MiB"


def _client(server: LoomdServer) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=TIMEOUT_S,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def _file_parts(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while data := file.read(1024 * 1024):
            yield data


@contextmanager
def _database(backend: str, workdir: Path, name: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / name}.db"
        return
    with postgres_database() as database:
        yield database.url


def bench(backend: str, sizes: Sizes, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    envelope = workdir / f"{backend}-envelope.json"
    with ExitStack() as stack:
        source_url = stack.enter_context(_database(backend, workdir, "source"))
        upgrade(source_url)
        started = time.perf_counter()
        asyncio.run(_populate(source_url, sizes))
        print(f"{backend}: state written in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
        server = stack.enter_context(loomd_server(workdir, source_url))
        with _client(server) as http:
            started = time.perf_counter()
            response = http.post("/v1/snapshots", json={"include_history": True})
            create_s = time.perf_counter() - started
            response.raise_for_status()
            meta = response.json()
            sampler = MemorySampler(server.pid)
            rss_before, _ = sampler.read()
            started = time.perf_counter()
            with sampler, http.stream("GET", f"/v1/snapshots/{meta['id']}/export") as export, \
                    envelope.open("wb") as file:
                export.raise_for_status()
                for part in export.iter_bytes():
                    file.write(part)
            export_s = time.perf_counter() - started
        counts = meta["counts"]
        rows.append(Row(backend, "create (include_history)",
                        f"{create_s:.2f} s; {meta['byte_size'] / 2**20:.1f} MiB; "
                        f"{counts['sessions']} sessions, {counts['messages']} messages, "
                        f"{counts['events']} events", "-"))
        rows.append(Row(backend, "export",
                        f"{export_s:.2f} s; server RSS {_mib(rss_before)} before, peak "
                        f"{_mib(sampler.peak_rss_kb)} (VmHWM {_mib(sampler.hwm_kb)})", "-"))

        target_url = stack.enter_context(_database(backend, workdir, "target"))
        target = stack.enter_context(loomd_server(workdir, target_url))
        with _client(target) as http:
            sampler = MemorySampler(target.pid)
            started = time.perf_counter()
            with sampler:
                response = http.post("/v1/snapshots/import", content=_file_parts(envelope))
            import_s = time.perf_counter() - started
            if response.status_code != 201:
                raise SystemExit(f"the import was refused: {response.text}")
            imported = response.json()
            assert imported["sha256"] == meta["sha256"], (imported, meta)
            rows.append(Row(backend, "import", f"{import_s:.2f} s; server RSS peak "
                            f"{_mib(sampler.peak_rss_kb)}", "-"))
            sampler = MemorySampler(target.pid)
            started = time.perf_counter()
            with sampler:
                response = http.post(f"/v1/snapshots/{imported['id']}/restore", json={})
            restore_s = time.perf_counter() - started
            response.raise_for_status()
            result = response.json()
            assert result["created"] == counts, (result["created"], counts)
            rows.append(Row(backend, "restore into a fresh instance",
                            f"{restore_s:.2f} s; server RSS peak {_mib(sampler.peak_rss_kb)}",
                            "-"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50, help="per session")
    parser.add_argument("--events", type=int, default=60, help="per run (one run a session)")
    parser.add_argument("--quick", action="store_true", help="100 sessions, to check the script")
    args = parser.parse_args()
    sizes = Sizes(100 if args.quick else args.sessions, args.messages, args.events)
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="loomd-bench-") as tmp:
        for backend in backends:
            rows += bench(backend, sizes, Path(tmp))
    print(f"machine: {machine()}")
    print(f"state: {sizes.sessions} sessions x {sizes.messages} messages, one run each with "
          f"{sizes.events} events, 1 agent, {HOOK_COUNT} hooks\n")
    print_table(rows)


if __name__ == "__main__":
    main()
