"""Engine, session factories and the SQLite pragmas."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine, event, make_url
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings

_BEGIN_OPTION = "loomd_sqlite_begin"

T = TypeVar("T")


def _install_sqlite_pragmas(engine: AsyncEngine | Engine, busy_timeout_ms: int) -> None:
    """WAL, a busy timeout, foreign keys; and SQLAlchemy, not pysqlite, emits BEGIN.

    A deferred read transaction that later writes fails with "database is locked" whatever
    the busy timeout, so write sessions open with `BEGIN IMMEDIATE` and wait their turn.
    """

    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        driver = connection.connection.driver_connection
        if isinstance(driver, sqlite3.Connection):
            # The run writer's own connection: straight to the driver, which costs less than
            # SQLAlchemy's statement machinery around a BEGIN.
            driver.execute(f"BEGIN {mode}")
        else:
            connection.exec_driver_sql(f"BEGIN {mode}")


def create_engine(settings: Settings, *, writer: bool = False) -> AsyncEngine:
    """Create an async engine for `settings.database_url`.

    On SQLite, `writer=True` gives the engine of write transactions: one connection, so
    writers queue in the pool (in order, at no cost) instead of in SQLite's busy handler,
    whose sleeps of up to 100 ms would stall every run once a few write at the same time.
    """
    url = settings.database_url
    if url.startswith("sqlite"):
        size = {"pool_size": 1, "max_overflow": 0} if writer else {
            "pool_size": settings.db_pool_size, "max_overflow": settings.db_pool_size}
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_timeout=60,
                                     **size)
        _install_sqlite_pragmas(engine, settings.sqlite_busy_timeout_ms)
        return engine
    return create_async_engine(
        url, pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
    )


class DatabaseUnreachable(Exception):
    """No connection to the database could be opened, so no write was even tried."""


def is_transient(error: BaseException) -> bool:
    """Whether `error` is a passing fault of the database or the connection to it."""
    if isinstance(error, DatabaseUnreachable):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        return isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(error, OSError | TimeoutError | ConnectionError)


class SqliteWriter:
    """The run writer's own SQLite connection, used on one thread of its own.

    A whole batch of writes runs there in one hand-off from the event loop, through the
    standard `sqlite3` driver and SQLAlchemy Core: through aiosqlite every statement would be
    several hand-offs, with SQLite's one write lock held across all of them. It writes only
    while holding the process's write turn (`Database.write_turn`), so it never meets
    another writer of this process in SQLite's busy handler.
    """

    def __init__(self, url: str, busy_timeout_ms: int) -> None:
        self.engine = create_sync_engine(
            make_url(url).set(drivername="sqlite+pysqlite"), pool_size=1, max_overflow=0,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        _install_sqlite_pragmas(self.engine, busy_timeout_ms)
        self._immediate = self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="loomd-sqlite-writer")

    def run(self, work: Callable[[Connection], T]) -> T:
        """`work` in one `BEGIN IMMEDIATE` transaction, committed (rolled back if it raises)."""
        with self._immediate.begin() as connection:
            return work(connection)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.thread, self.engine.dispose)
        self.thread.shutdown()


def _is_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")


@dataclass
class Database:
    """Reads, the API's write sessions, and the run writer's connection.

    On SQLite one write happens at a time per process: the API's write sessions and the run
    writer's batches take turns through `write_turn` (in order, at no cost) instead of
    meeting in SQLite's busy handler, whose sleeps of up to 100 ms would stall every run.
    """

    engine: AsyncEngine
    read: async_sessionmaker[AsyncSession]
    write: async_sessionmaker[AsyncSession]
    run_engine: AsyncEngine
    write_engine: AsyncEngine | None = None
    sqlite_writer: SqliteWriter | None = field(default=None, repr=False)
    write_turn: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def open(cls, settings: Settings) -> Database:
        engine = create_engine(settings)
        sqlite = engine.dialect.name == "sqlite"
        writer = create_engine(settings, writer=True) if sqlite else None
        write_options = (writer or engine).execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        sqlite_writer = (SqliteWriter(settings.database_url, settings.sqlite_busy_timeout_ms)
                         if _is_sqlite_file(settings.database_url) else None)
        # The run writer keeps one connection of its own; a dead one is replaced when a
        # write fails on it (no pre-ping: three round trips per checkout with asyncpg).
        run_engine = write_options if sqlite else create_async_engine(
            settings.database_url, pool_size=1, max_overflow=0)
        return cls(
            engine=engine,
            read=async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False),
            write=async_sessionmaker(write_options, class_=AsyncSession,
                                     expire_on_commit=False),
            run_engine=run_engine,
            write_engine=writer,
            sqlite_writer=sqlite_writer,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        """A write session; on SQLite it holds the process's write turn while open."""
        turn = self.write_turn if self.is_sqlite else contextlib.nullcontext()
        async with turn, self.write() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A short write transaction: commits on success, rolls back on error."""
        async with self.writing() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def close(self) -> None:
        await self.engine.dispose()
        if self.write_engine is not None:
            await self.write_engine.dispose()
        if not self.is_sqlite:
            await self.run_engine.dispose()
        if self.sqlite_writer is not None:
            await self.sqlite_writer.close()
