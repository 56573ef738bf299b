"""The processes a benchmark talks to: the aimock mock, `loomd serve`, a fresh Postgres database.

Every process listens on 127.0.0.1 only, runs in a process group of its own (so a Ctrl-C in the
terminal reaches the script, which then stops them in order) and gets SIGTERM if the script
dies without cleaning up.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

AIMOCK_START = Path(os.environ.get("LOOMD_BENCH_AIMOCK", "/work/shared/bench/aimock/start.sh"))
POSTGRES_SERVER = os.environ.get("LOOMD_BENCH_POSTGRES", "postgres@127.0.0.1:5432")
LOOMD = str(Path(sys.executable).with_name("loomd"))
ADMIN_TOKEN = "bench-admin-token"
UNUSED_OPENAI_URL = "http://127.0.0.1:9/v1"
"""Where a server whose agents call no OpenAI-compatible provider is pointed: a closed port."""
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                preexec_fn=_die_with_parent)


def _stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM to the process group, then SIGKILL after `timeout`."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _wait_http(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float,
               what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout} s:\n"
                       f"{log_path.read_text(errors='replace')[-4000:]}")


@dataclass
class Mock:
    """A running aimock: its base URL (…/v1) and process id."""

    base_url: str
    pid: int


@contextmanager
def aimock(workdir: Path) -> Iterator[Mock]:
    """Run the zero-latency OpenAI-compatible mock.

    The first start installs aimock with npm, hence the long readiness timeout.
    """
    port = free_port()
    log_path = workdir / "aimock.log"
    process = _spawn([str(AIMOCK_START), str(port)], log_path)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/models", process, log_path, 600, "aimock")
        yield Mock(f"http://127.0.0.1:{port}/v1", process.pid)
    finally:
        _stop(process)


def postgres_url(database: str) -> str:
    return f"postgresql+asyncpg://{POSTGRES_SERVER}/{database}"


async def _postgres_admin(sql: str) -> str:
    connection = await asyncpg.connect(f"postgresql://{POSTGRES_SERVER}/postgres")
    try:
        await connection.execute(sql)
        version: str = await connection.fetchval("SHOW server_version")
        return version.split()[0]
    finally:
        await connection.close()


@dataclass
class PostgresDatabase:
    """A database made for one benchmark run."""

    name: str
    url: str
    server_version: str


@contextmanager
def postgres_database() -> Iterator[PostgresDatabase]:
    """Create an empty, uniquely named database; drop it afterwards."""
    name = f"loomd_bench_{uuid.uuid4().hex[:12]}"
    version = asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PostgresDatabase(name, postgres_url(name), version)
    finally:
        asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


REPOSITORY = Path(__file__).resolve().parents[1]


def describe_code(revision: str | None) -> str:
    """Which code the server runs: a revision, or the working tree (and whether it is dirty)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    if revision is not None:
        return f"{revision} = {git('rev-parse', '--short', revision)} (exported)"
    dirty = " with uncommitted changes" if git("status", "--porcelain", "--", "app",
                                               "migrations") else ""
    return f"working tree at {git('rev-parse', '--short', 'HEAD')}{dirty}"


def export_revision(revision: str, target: Path) -> Path:
    """Write the files of `revision` into `target`, for a server run with PYTHONPATH=target.

    The dev install is editable; a PYTHONPATH entry wins over it, so the same venv can serve
    another revision's `app` and `migrations` (their dependencies must be installed).
    """
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", revision, "app",
                              "migrations"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


@dataclass
class LoomdServer:
    """A running `loomd serve`."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def loomd_server(workdir: Path, database_url: str, code: Path | None = None,
                 **settings: str) -> Iterator[LoomdServer]:
    """Start `loomd serve` on a free loopback port with an admin token; stop it afterwards.

    `code` is a directory from `export_revision` to run instead of the working tree.
    `settings` are extra environment variables (LOOMD_*, OPENAI_*); the caller's LOOMD_* and
    OPENAI_* variables are not passed on, so a developer's exports cannot skew the figures.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOMD_", "OPENAI_"))}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    env.update(LOOMD_DATABASE_URL=database_url, LOOMD_ADMIN_TOKEN=ADMIN_TOKEN,
               LOOMD_LOG_LEVEL="WARNING", **settings)
    port = free_port()
    log_path = workdir / f"loomd-{port}.log"
    process = _spawn([LOOMD, "serve", "--host", "127.0.0.1", "--port", str(port)], log_path,
                     env=env, cwd=workdir)
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_http(f"{base_url}/readyz", process, log_path, 60, "loomd")
        yield LoomdServer(process, base_url, log_path)
    finally:
        _stop(process)


@contextmanager
def backend_server(backend: str, workdir: Path, code: Path | None, notes: list[str],
                   openai_url: str | None = None,
                   **settings: str) -> Iterator[tuple[LoomdServer, PostgresDatabase | None]]:
    """`loomd serve` for up to 256 concurrent runs on a fresh database of `backend`: a SQLite
    file in `workdir` (made here), or a new Postgres database, whose server goes to `notes`.
    Stopped, and the database dropped, afterwards.

    `openai_url` is the OpenAI-compatible provider's base URL (None: `UNUSED_OPENAI_URL`);
    `settings` as for `loomd_server`.
    """
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
            OPENAI_BASE_URL=openai_url or UNUSED_OPENAI_URL, OPENAI_API_KEY="bench-key",
            **settings))
        yield server, database


@dataclass
class Helper:
    """A process a script started to answer loomd's calls (a hook receiver, a tool's server)."""

    url: str
    pid: int


@contextmanager
def helper_process(script: str, kind: str, workdir: Path,
                   env: dict[str, str] | None = None) -> Iterator[Helper]:
    """Start `script --serve kind` on a free port; stop it afterwards.

    The script serves `kind` on 127.0.0.1:`--port` and answers 200 on `/ready` once it can
    take requests; `env` replaces the environment it inherits.
    """
    port = free_port()
    log_path = workdir / f"{kind}-{port}.log"
    process = _spawn([sys.executable, script, "--serve", kind, "--port", str(port)], log_path,
                     env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/ready", process, log_path, 30, kind)
        yield Helper(base, process.pid)
    finally:
        _stop(process)
