"""Engine, session factories and the SQLite pragmas."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

from sqlalchemy import Engine, event, make_url
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import Session as SyncSession
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings

_BEGIN_OPTION = "loomd_sqlite_begin"

P = ParamSpec("P")
T = TypeVar("T")


def finishes_when_cancelled(write: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Let a write transaction end (commit or roll back) before its caller's cancellation.

    A task cancelled inside a driver call leaves the call running (in aiosqlite's or the
    writer's thread) while the caller gives up its write turn or its connection
    mid-transaction; SQLite's write lock then stays taken and every later writer waits out
    the busy timeout. Run tasks are cancelled at arbitrary points, so their writes
    (`Database.run_write`) run in a task of their own and the cancellation is re-raised
    once the write is over.
    """

    @functools.wraps(write)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        inner = asyncio.ensure_future(write(*args, **kwargs))
        cancelled = False
        while not inner.done():
            try:
                await asyncio.shield(inner)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return inner.result()

    return guarded


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


class _SqliteWriter:
    """Runs a whole write transaction on one thread, in one hand-off from the event loop.

    Through aiosqlite every statement is several hand-offs between the event loop and the
    driver's thread, and SQLite's one write lock is held across all of them; a busy event
    loop so stretched each write transaction to many milliseconds and capped the runs'
    throughput. The writer's own connection is used only while the in-process write turn
    (the single connection of the async write engine) is held, so it never meets another
    writer of this process in SQLite's busy handler.
    """

    def __init__(self, url: str, busy_timeout_ms: int) -> None:
        self.engine = create_sync_engine(
            make_url(url).set(drivername="sqlite+pysqlite"), pool_size=1, max_overflow=0,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        _install_sqlite_pragmas(self.engine, busy_timeout_ms)
        self._immediate = self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="loomd-sqlite-writer")

    def transaction(self, work: Callable[[SyncSession], T]) -> T:
        with SyncSession(self._immediate, expire_on_commit=False) as session:
            result = work(session)
            session.commit()
            return result

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.thread, self.engine.dispose)
        self.thread.shutdown()


def _is_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")


@dataclass
class Database:
    """Two session factories: reads, and writes that take the lock up front."""

    engine: AsyncEngine
    read: async_sessionmaker[AsyncSession]
    write: async_sessionmaker[AsyncSession]
    write_engine: AsyncEngine | None = None
    sqlite_writer: _SqliteWriter | None = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: Settings) -> Database:
        engine = create_engine(settings)
        writer = create_engine(settings, writer=True) if engine.dialect.name == "sqlite" else None
        write_options = (writer or engine).execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        sqlite_writer = (_SqliteWriter(settings.database_url, settings.sqlite_busy_timeout_ms)
                         if _is_sqlite_file(settings.database_url) else None)
        return cls(
            engine=engine,
            read=async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False),
            write=async_sessionmaker(write_options, class_=AsyncSession,
                                     expire_on_commit=False),
            write_engine=writer,
            sqlite_writer=sqlite_writer,
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A short write transaction: commits on success, rolls back on error."""
        async with self.write() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    @finishes_when_cancelled
    async def run_write(self, work: Callable[[SyncSession], T]) -> T:
        """Run `work` in a write transaction of its own and commit; roll back if it raises.

        `work` is synchronous code on a sync session: on a SQLite file it runs on the
        writer's thread, elsewhere in the async session's greenlet (`run_sync`). The write
        turn is kept until the transaction ends, even when the caller is cancelled.
        """
        if self.sqlite_writer is not None and self.write_engine is not None:
            async with self.write_engine.connect():  # this process's write turn
                return await asyncio.get_running_loop().run_in_executor(
                    self.sqlite_writer.thread, self.sqlite_writer.transaction, work)
        async with self.transaction() as session:
            # sqlmodel's AsyncSession hands `run_sync` its own (sqlmodel) sync session.
            return await session.run_sync(lambda sync: work(cast(SyncSession, sync)))

    async def close(self) -> None:
        await self.engine.dispose()
        if self.write_engine is not None:
            await self.write_engine.dispose()
        if self.sqlite_writer is not None:
            await self.sqlite_writer.close()
