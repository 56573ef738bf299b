"""Engine, session factories and the SQLite pragmas."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings

_BEGIN_OPTION = "loomd_sqlite_begin"

P = ParamSpec("P")
T = TypeVar("T")


def finishes_when_cancelled(write: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Let a write transaction end (commit or roll back) before its caller's cancellation.

    A task cancelled inside an aiosqlite call leaves the call running in the driver's thread
    while SQLAlchemy gives up on the connection mid-transaction; SQLite's write lock then
    stays taken and every later writer waits out the busy timeout. Run tasks are cancelled
    at arbitrary points, so their writes run in a task of their own and the cancellation
    is re-raised once the write is over.
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


def _install_sqlite_pragmas(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    """WAL, a busy timeout, foreign keys; and SQLAlchemy, not pysqlite, emits BEGIN.

    A deferred read transaction that later writes fails with "database is locked" whatever
    the busy timeout, so write sessions open with `BEGIN IMMEDIATE` and wait their turn.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
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


@dataclass
class Database:
    """Two session factories: reads, and writes that take the lock up front."""

    engine: AsyncEngine
    read: async_sessionmaker[AsyncSession]
    write: async_sessionmaker[AsyncSession]
    write_engine: AsyncEngine | None = None

    @classmethod
    def open(cls, settings: Settings) -> Database:
        engine = create_engine(settings)
        writer = create_engine(settings, writer=True) if engine.dialect.name == "sqlite" else None
        write_options = (writer or engine).execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        return cls(
            engine=engine,
            read=async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False),
            write=async_sessionmaker(write_options, class_=AsyncSession,
                                     expire_on_commit=False),
            write_engine=writer,
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

    async def close(self) -> None:
        await self.engine.dispose()
        if self.write_engine is not None:
            await self.write_engine.dispose()
