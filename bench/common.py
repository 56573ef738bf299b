"""Shared pieces of the benchmark scripts: the machine, percentiles, process CPU, the table."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


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
        return {True: "pass", False: "MISS", None: "-"}[self.passed]


def print_table(rows: list[Row]) -> None:
    """A Markdown table, one row per scenario and backend."""
    headers = ("backend", "scenario", "result", "target", "", "others")
    cells = [headers, *((r.backend, r.scenario, r.result, r.target, r.mark, r.others)
                        for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))
