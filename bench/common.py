"""Shared pieces of the benchmark scripts: the machine, percentiles, process CPU, the table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

from standardwebhooks.webhooks import Webhook
from starlette.types import Receive, Send

from bench.profile import summarize
from bench.services import describe_code, export_revision

try:
    import uvloop

    HAS_UVLOOP = True
except ImportError:
    HAS_UVLOOP = False

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
BACKENDS = ("sqlite", "postgres")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def machine() -> str:
    """CPU model, cores, Python, kernel and date: the line every benchmark table starts with."""
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{platform.node()}: {cpu_model()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}, {date}")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q` quantile (0 < q ≤ 1) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by every thread of process `pid`.

    Fields 14 and 15 of /proc/PID/stat, counted after the `(comm)` field, which may hold spaces.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_S


def own_cpu_s() -> float:
    """User + system CPU seconds used so far by this process (all threads)."""
    return sum(os.times()[:2])


def host_busy_s() -> float:
    """CPU seconds all cores of the host have been busy since boot (/proc/stat, idle and
    iowait left out)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S


def postgres_backends(database: str) -> list[int]:
    """The Postgres server processes serving `database`, found by their process title
    (`postgres: 15/main: postgres <database> 127.0.0.1(port) idle`)."""
    marker = f" {database} ".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres:") and marker in title:
            pids.append(int(entry.name))
    return pids


class CpuCounter:
    """CPU seconds used by some processes since the counter was made.

    The processes are `pids` plus those `find` returns at each reading; one that started in
    between counts whole, one that ended in between is lost.
    """

    def __init__(self, pids: list[int], find: Callable[[], list[int]] | None = None) -> None:
        self.pids = pids
        self.find = find
        self._start = self._read()

    @classmethod
    def with_database(cls, pids: list[int], database: str | None) -> CpuCounter:
        """`pids` and, on Postgres (`database` not None), the backends serving `database`."""
        if database is None:
            return cls(pids)
        return cls(pids, lambda: postgres_backends(database))

    def _read(self) -> dict[int, float]:
        cpu = {}
        for pid in {*self.pids, *(self.find() if self.find else [])}:
            try:
                cpu[pid] = process_cpu_s(pid)
            except OSError:
                continue
        return cpu

    def seconds(self) -> float:
        return sum(used - self._start.get(pid, 0.0) for pid, used in self._read().items())


class OtherLoad:
    """How many cores processes other than ours kept busy while a scenario ran.

    Ours: this script, the server, the mock, and the Postgres backends serving the benchmark's
    database. The machine is shared: this is the noise figure that belongs beside every result.
    """

    def __init__(self, ours: CpuCounter) -> None:
        self.ours = ours
        self._start = time.monotonic(), host_busy_s(), own_cpu_s()

    def cores(self) -> float:
        """Cores used by others since this meter was made."""
        wall0, host0, self0 = self._start
        ours = self.ours.seconds() + own_cpu_s() - self0
        wall = max(time.monotonic() - wall0, 1e-9)
        return max(0.0, host_busy_s() - host0 - ours) / wall


def pass_mark(passed: bool | None) -> str:
    """How a table shows whether a row met its target (None: it has none)."""
    return {True: "pass", False: "MISS", None: "-"}[passed]


@dataclass
class Row:
    """One line of a result table: a scenario on a backend, its figures and its target."""

    backend: str
    scenario: str
    result: str
    target: str
    passed: bool | None = None
    others: str = ""

    @property
    def mark(self) -> str:
        return pass_mark(self.passed)

    @property
    def progress(self) -> str:
        """The row as the progress line on stderr gives it."""
        return f"{self.result} [{self.mark}]"


def print_markdown(headers: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
    """A Markdown table, each column as wide as its widest cell."""
    cells = [headers, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


def print_table(rows: list[Row]) -> None:
    """A Markdown table, one row per scenario and backend."""
    print_markdown(("backend", "scenario", "result", "target", "", "others"),
                   ((r.backend, r.scenario, r.result, r.target, r.mark, r.others)
                    for r in rows))


# --- measuring ---------------------------------------------------------------------------------

def ms(seconds: float) -> float:
    return 1000 * seconds


def spread(values: list[float]) -> str:
    """`p50 x, p99 y ms` of millisecond samples."""
    return f"p50 {percentile(values, 0.5):.2f}, p99 {percentile(values, 0.99):.2f} ms"


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    """Milliseconds `call` took."""
    started = time.perf_counter()
    await call()
    return ms(time.perf_counter() - started)


@dataclass
class Rounds:
    """Samples of several measures taken in rounds, one of each per round, in an order that
    rotates from round to round, so that the machine's weather touches each alike."""

    measures: dict[str, Callable[[], Awaitable[float]]]
    samples: dict[str, list[float]] = field(default_factory=dict)

    async def run(self, warmup: int, count: int) -> None:
        names = list(self.measures)
        self.samples = {name: [] for name in names}
        for index in range(warmup + count):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                value = await self.measures[name]()
                if index >= warmup:
                    self.samples[name].append(value)


def differences(minuends: list[float], subtrahends: list[float]) -> list[float]:
    """Per round, one measure's sample minus another's."""
    return [a - b for a, b in zip(minuends, subtrahends, strict=True)]


# --- the receivers' side of a signed POST ------------------------------------------------------

def signed_headers(webhook: Webhook, body: str) -> dict[str, str]:
    """Standard Webhooks headers of `body`, as loomd signs it."""
    message_id = f"msg_{time.perf_counter_ns()}"
    moment = datetime.now(UTC)
    return {"content-type": "application/json", "webhook-id": message_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": webhook.sign(message_id, moment, body)}


async def read_body(receive: Receive) -> bytes:
    """The whole body of an ASGI request."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def answer(send: Send, status: int, value: Any = None) -> None:
    """An ASGI response: `value` as JSON, or no body when it is None."""
    body = b"" if value is None else json.dumps(value).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    if value is not None:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- a script's run: options, backends one after another, the report ---------------------------

def argument_parser(description: str, scenarios: Iterable[str],
                    profile: bool) -> argparse.ArgumentParser:
    """The options of a scenario script: --scenario, --backend, --code, --quick and, for a
    script that can profile the server, --profile."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=[*scenarios, "all"],
                        help="scenario to run; repeat for several (default: all)")
    parser.add_argument("--backend", action="append", choices=[*BACKENDS, "all"],
                        help="database to run on; repeat for both (default: all)")
    parser.add_argument("--code", metavar="REV",
                        help="serve this git revision's app/ instead of the working tree")
    parser.add_argument("--quick", action="store_true",
                        help="smaller numbers, to check the script itself")
    if profile:
        parser.add_argument("--profile", type=Path, metavar="DIR",
                            help="record the server with py-spy during each measured phase "
                                 "into DIR/<scenario>-<backend>.txt and print a summary (skews "
                                 "figures)")
    return parser


def chosen(requested: list[str] | None, known: Iterable[str]) -> list[str]:
    """The `known` names that were requested, in their own order; all of them when none or
    `all` was."""
    if not requested or "all" in requested:
        return list(known)
    return [name for name in known if name in requested]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so every `finally` stops what it started


def stop_on_sigterm() -> None:
    """Make SIGTERM stop the script as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _terminate)


def profile_path(profile_dir: Path | None, scenario: str, backend: str) -> Path | None:
    """Where the profile of `scenario` on `backend` goes, or None when not profiling."""
    if profile_dir is None:
        return None
    return profile_dir / f"{scenario}-{backend}.txt"


def fresh_profile_paths(profile_dir: Path | None, backends: list[str],
                        names: list[str]) -> list[Path]:
    """The profiles this run may write, with those of an earlier run removed."""
    paths = [path for backend in backends for name in names
             if (path := profile_path(profile_dir, name, backend)) is not None]
    for stale in paths:
        stale.unlink(missing_ok=True)
    return paths


def print_profile_summaries(paths: list[Path]) -> None:
    """The summary of each of `paths` that a profile was written to."""
    for path in paths:
        if path.exists():
            print(f"\n{summarize(path)}")


T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the client on uvloop when it is installed, as loomd's uvicorn does: the less CPU
    the client takes from the shared cores, the more the figures are loomd's."""
    if HAS_UVLOOP:
        return uvloop.run(main)
    return asyncio.run(main)


class ScenarioRow(Protocol):
    """What `run_scenarios` needs of a script's table row."""

    others: str

    @property
    def progress(self) -> str: ...


RowT = TypeVar("RowT", bound=ScenarioRow)


async def run_scenarios(backend: str, names: list[str],
                        scenario: Callable[[str], Awaitable[RowT]],
                        ours: Callable[[], CpuCounter],
                        failed: Callable[[str, str], RowT]) -> list[RowT]:
    """Run the scenarios `names` on `backend` one after another, each row with the load of
    other processes beside it; a scenario that raises gives the row `failed(name, error)`.

    `ours` counts the processes the benchmark started, which are not the others' load.
    """
    rows = []
    for name in names:
        print(f"[{backend}] {name} …", file=sys.stderr, flush=True)
        others = OtherLoad(ours())
        try:
            row = await scenario(name)
        except Exception as exc:
            traceback.print_exc()
            row = failed(name, f"error: {exc}"[:300])
        row.others = f"{others.cores():.2f} cores"
        print(f"[{backend}] {name}: {row.progress}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


@contextmanager
def workspace(prefix: str, revision: str | None,
              notes: list[str]) -> Iterator[tuple[Path, Path | None]]:
    """A temporary directory for the run, removed afterwards, and the code to serve: the
    exported `revision`, or None for the working tree; which it is goes to `notes`."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        notes.append(f"code: {describe_code(revision)}; client event loop: "
                     f"{'uvloop' if HAS_UVLOOP else 'asyncio'}")
        code = export_revision(revision, Path(tmp) / "code") if revision else None
        yield Path(tmp), code


def run_backends(prefix: str, revision: str | None, backends: list[str], notes: list[str],
                 bench_backend: Callable[[str, Path, Path | None], list[T]],
                 ) -> tuple[list[T], bool]:
    """`bench_backend(backend, its workdir, code)` for each backend, in a `workspace`: the
    rows, and whether Ctrl-C or SIGTERM cut the run short (the rows are then those of the
    backends that finished)."""
    rows: list[T] = []
    try:
        with workspace(prefix, revision, notes) as (tmp, code):
            for backend in backends:
                rows += bench_backend(backend, tmp / backend, code)
    except KeyboardInterrupt:
        return rows, True
    return rows, False


def print_preamble(notes: list[str], quick: str | None, ours: str) -> None:
    """What comes before the table: the machine, the notes, the sizes when not the full ones
    (`quick`: what they are smaller than) and what the `others` column leaves out
    (`ours`: the helper processes, besides the script and loomd)."""
    print(f"\nmachine: {machine()}")
    for note in notes:
        print(note)
    if quick is not None:
        print(f"sizes: --quick (smaller than {quick})")
    print("others: cores kept busy by other processes of the host while each scenario ran "
          f"(not this script, loomd, {ours} or the benchmark database's Postgres backends)")
    print()


def exit_status(interrupted: bool, passed: bool) -> int:
    """130 after Ctrl-C or SIGTERM (said on stderr), else 0 when every row passed."""
    if interrupted:
        print("\ninterrupted: the table holds the scenarios that finished", file=sys.stderr)
        return 130
    return 0 if passed else 1
