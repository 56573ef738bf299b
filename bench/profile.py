"""Sample the server with py-spy during a measured phase, and summarise where its time goes.

py-spy (`.venv/bin/pip install py-spy`) attaches to the running `loomd serve` without pausing it
(`--nonblocking`) and writes collapsed stacks (`--format raw`: one line per distinct stack,
frames root first, then the sample count). It keeps only samples of the thread holding the GIL
(`--gil`): py-spy's idle detection counts threads blocked in `queue.get` and uvloop's wait for
I/O as busy, while the GIL holder is the one running Python. C code that releases the GIL
(sqlite3 executing a statement) is therefore not in the profile; the server's CPU per run is.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STDLIB = sysconfig.get_paths()["stdlib"]
ROOT_FILES = ("app/cli.py", "uvicorn/main.py", "uvicorn/server.py", "loomd",
              "threading.py", "concurrent/futures/thread.py")
"""Frames every sample of a thread passes through: the entry point and thread bootstraps."""
PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*?)(?::\d+)?\)$")


@contextmanager
def py_spy(pid: int, output: Path | None, rate: int = 100) -> Iterator[None]:
    """Record `pid` into `output` (collapsed stacks) while the block runs; no-op without output."""
    if output is None:
        yield
        return
    if PY_SPY is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    log = output.with_suffix(".log").open("wb")
    recorder = subprocess.Popen(
        [PY_SPY, "record", "--pid", str(pid), "--format", "raw", "--output", str(output),
         "--rate", str(rate), "--nonblocking", "--gil", "--full-filenames", "--duration", "3600"],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()


@dataclass(frozen=True)
class Site:
    """Where a frame runs: its function, a short file name, and who the file belongs to."""

    function: str
    file: str
    package: str
    stdlib: bool
    root: bool

    @property
    def label(self) -> str:
        return f"{self.function} ({self.file})"


def _short_file(file: str) -> tuple[str, bool]:
    """The file relative to site-packages, the stdlib or the repository; and whether stdlib."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in file:
            return file.split(marker, 1)[1], False
    if file.startswith(STDLIB + "/"):
        return file[len(STDLIB) + 1:], True
    for package_dir in ("/app/", "/migrations/"):
        if package_dir in file:
            return package_dir[1:] + file.split(package_dir, 1)[1], False
    return file, file.startswith("<frozen")


@cache
def site(frame: str) -> Site:
    """Parse one py-spy frame, `function (file:line)`."""
    match = _FRAME.match(frame)
    function, file = (match["function"], match["file"]) if match else (frame, "")
    short, stdlib = _short_file(file)
    return Site(function, short, package(short), stdlib, short.endswith(ROOT_FILES))


def package(file: str) -> str:
    """Who a file belongs to: `app.<subpackage>`, a third-party package or a stdlib module."""
    if file.startswith("<"):
        return file.strip("<>").split(" ", 1)[0]
    parts = file.split("/")
    if parts[0] == "app" and len(parts) > 1:
        return f"app.{parts[1].removesuffix('.py')}"
    return parts[0].removesuffix(".py") or "?"


def _log(profile: Path) -> str:
    try:
        return profile.with_suffix(".log").read_text(errors="replace")
    except OSError:
        return ""


def read_stacks(path: Path) -> Counter[tuple[str, ...]]:
    """The collapsed stacks of a py-spy raw file, with their sample counts."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def charged_package(sites: list[Site]) -> str:
    """The package a sample's time is charged to: the leaf's, or for a stdlib leaf (json,
    asyncio, ssl …) the nearest caller's outside the stdlib; the event loop's own work, whose
    callers are only the process's entry frames, stays with the stdlib module."""
    leaf = sites[-1]
    if leaf.function == "Runner.run":
        return "event loop (uvloop, C)"
    if not leaf.stdlib:
        return leaf.package
    for caller in reversed(sites):
        if not caller.stdlib:
            return leaf.package if caller.root else caller.package
    return leaf.package


def summarize(path: Path, top: int = 15) -> str:
    """Where the samples went: by function, by package, and inclusive of callees."""
    stacks = read_stacks(path)
    total = sum(stacks.values())
    if not total:
        return f"{path}: no samples"
    views: dict[str, Counter[str]] = {
        "own samples by function (leaf frame)": Counter(),
        "own samples by package, a stdlib leaf charged to its caller's package": Counter(),
        "inclusive samples by package (entry frames left out)": Counter(),
        "inclusive samples by loomd function": Counter(),
    }
    own_function, own_package, inclusive_package, inclusive_app = views.values()
    rootless = 0
    for stack, count in stacks.items():
        sites = [site(frame) for frame in stack]
        rootless += 0 if sites[0].root else count
        own_function[sites[-1].label] += count
        own_package[charged_package(sites)] += count
        inner = [s for s in sites if not s.root and not s.stdlib]
        for name in {s.package for s in inner}:
            inclusive_package[name] += count
        for name in {s.label for s in inner if s.package.startswith("app")}:
            inclusive_app[name] += count
    taken = re.search(r"Samples: (\d+)", _log(path))
    share = f", {100 * total / int(taken[1]):.0f}% of the {taken[1]} taken" if taken else ""
    lines = [f"{path}: {total} samples with the GIL held{share}",
             f"{100 * rootless / total:.0f}% of them have no entry frame (SQLAlchemy's greenlets, "
             "or a stack read while it changed): inclusive shares are lower bounds"]
    for title, counter in views.items():
        lines.append(f"{title}:")
        lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(lines)
