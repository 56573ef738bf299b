"""One process per SQLite file: an exclusive `flock` on `<database file>.lock`.

SQLite gives no lease that another process could take over, and the runs of a SQLite
database are recovered at start-up as if no one else executed them; both are only true while
a single process serves the file. The kernel drops a `flock` when its holder dies, even by
`kill -9`, so a restart never waits for a stale lock. The lock file itself stays (removing it
would let two processes lock two different files of the same name).

In one process the lock is shared: `loomd serve` takes it before migrations, and the app's
lifespan, in the same process, takes it again without refusing itself.
"""

from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import make_url

LOCK_SUFFIX = ".lock"


class DatabaseInUse(RuntimeError):
    """Another process holds the lock of this SQLite file."""

    def __init__(self, database: Path, lock: Path, holder_pid: int | None) -> None:
        holder = f"another process (pid {holder_pid})" if holder_pid else "another process"
        super().__init__(
            f"the SQLite database {database} is in use by {holder}, which holds its lock "
            f"{lock}; SQLite serves one process: stop the other one first, or use Postgres "
            "to share a database"
        )
        self.database, self.lock, self.holder_pid = database, lock, holder_pid


def sqlite_file(database_url: str) -> Path | None:
    """The absolute path of the SQLite file `database_url` names; None for any other database.

    In-memory SQLite (`:memory:`, no path, `mode=memory`) is private to its connection, so it
    has no file to guard.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database.startswith("file:"):
        database, _, uri_query = database[len("file:"):].partition("?")
        if "mode=memory" in uri_query.split("&"):
            return None
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    return Path(database).resolve()


@dataclass
class _Held:
    descriptor: int
    holders: int = 0


_held: dict[Path, _Held] = {}
_held_guard = threading.Lock()


class DatabaseLock:
    """This process's hold on the lock of one SQLite file (a no-op for other databases).

    `release` is idempotent; the lock is dropped when the process's last hold is released.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._released = False

    def release(self) -> None:
        """Give up this hold; the file is unlocked once no other hold of this process remains."""
        if self._released or self.path is None:
            return
        self._released = True
        with _held_guard:
            held = _held[self.path]
            held.holders -= 1
            if held.holders == 0:
                del _held[self.path]
                os.close(held.descriptor)  # closing the descriptor drops the flock

    def __enter__(self) -> DatabaseLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def lock_database(database_url: str) -> DatabaseLock:
    """Lock the SQLite file of `database_url` for this process, or raise `DatabaseInUse` at once.

    Postgres and in-memory SQLite take no lock. Raises `OSError` when the lock file cannot be
    created (for example, when the database's directory does not exist).
    """
    database = sqlite_file(database_url)
    if database is None:
        return DatabaseLock(None)
    path = database.with_name(database.name + LOCK_SUFFIX)
    with _held_guard:
        held = _held.get(path)
        if held is None:
            held = _held[path] = _Held(_take(path, database))
        held.holders += 1
    return DatabaseLock(path)


def _take(path: Path, database: Path) -> int:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_pid(descriptor)
        os.close(descriptor)
        raise DatabaseInUse(database, path, holder) from None
    except BaseException:
        os.close(descriptor)
        raise
    # The holder's pid, only for the message of a refused process.
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor


def _holder_pid(descriptor: int) -> int | None:
    text = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
