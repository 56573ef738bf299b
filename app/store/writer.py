"""The process's one writer of run data: queued writes of every run, group-committed.

Runs hand their writes (events, messages, run and session state, counters) to the `Writer`.
It takes whatever is queued when the previous commit ended (up to `max_batch` writes) and
commits it in one transaction of Core statements: on SQLite on its own thread with the
standard `sqlite3` driver, in one hand-off; on Postgres through asyncpg with `executemany`.
Only then are the batch's events published and its callers woken.

What is acknowledged is never lost:
- the queue is bounded, so a slow database slows the runs instead of growing memory;
- a batch that fails on a passing fault (a lost connection, a locked database) is retried
  with backoff until `deadline_s` after the outage began; then its writes fail with
  `StorageUnavailable`, and so do later ones at their first failure while it lasts;
- a batch that fails on its data (a row the database refuses) is split, each write committed
  alone, so one bad row fails only the run it belongs to;
- a run with a failed write is *stopped*: its later writes are refused (`StorageFailed`) until
  it is ended with a write marked `last`, so its stored events stay a gapless prefix.

A write is a synchronous function of a Core `Connection`. It may raise an exception of its
own (such as `StateChanged`) only before it wrote anything: that exception goes to its
caller, the rest of the batch commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from app.events.bus import EventBus
from app.store.db import Database, DatabaseUnreachable, is_transient
from app.store.statements import INSERTED_EVENTS, RUNS, insert_events

logger = logging.getLogger("loomd.writer")

T = TypeVar("T")
Work = Callable[[Connection], Any]

_ADVANCE_LAST_SEQ = (
    sa.update(RUNS)
    .where(RUNS.c.id == sa.bindparam("run"), RUNS.c.last_seq < sa.bindparam("seq"))
    .values(last_seq=sa.bindparam("seq"))
)


class StorageFailed(Exception):
    """A run's write could not be stored; `code` is the run's error code."""

    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class StorageUnavailable(StorageFailed):
    """The database did not take a write within the storage deadline."""

    code = "storage_unavailable"


@dataclass(slots=True, eq=False)
class _Write:
    run_id: str | None
    work: Work | None = None
    event: dict[str, Any] | None = None
    ts: datetime | None = None
    last: bool = False
    future: asyncio.Future[Any] | None = None
    outcome: Any = None
    error: BaseException | None = None


@dataclass
class WriterStats:
    batches: int = 0
    writes: int = 0
    events: int = 0
    retries: int = 0
    failed: int = 0
    stopped_runs: set[str] = field(default_factory=set)


class Writer:
    """Group-commits queued writes; see the module docstring for the guarantees."""

    def __init__(self, database: Database, bus: EventBus, *, deadline_s: float = 30.0,
                 max_queued: int = 10_000, max_batch: int = 1_000) -> None:
        self._database = database
        self._bus = bus
        self.outbox: Outbox | None = None
        """Set by the run manager once event hooks can be delivered."""
        self.deadline_s = deadline_s
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(max_queued)
        self._task: asyncio.Task[None] | None = None
        self._stopped: dict[str, StorageFailed] = {}
        self._failing_since: float | None = None
        """When the writes began to fail on a passing fault (monotonic), while they do."""
        self.stats = WriterStats()
        self.persisted = 0
        self.fault: Callable[[], None] | None = None
        """Called before every transaction; tests make it raise to inject a failure."""

    # lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loomd-writer")

    async def stop(self) -> None:
        """Commit (or fail) everything queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    # queueing

    async def emit(self, event: dict[str, Any], ts: datetime) -> None:
        """Queue an event (published once committed); waits only while the queue is full.

        Raises `StorageFailed` when an earlier write of the run failed.
        """
        run_id = event["run_id"]
        self._check(run_id)
        await self._queue.put(_Write(run_id, event=event, ts=ts))

    async def submit(self, work: Callable[[Connection], T], *, run_id: str | None = None,
                     last: bool = False) -> T:
        """Queue `work` and wait for the commit that holds it; returns what it returned.

        `run_id` ties the write to a run: after a failed write of that run, only a write
        marked `last` (the run's end) is still taken.
        """
        if run_id is not None and not last:
            self._check(run_id)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Write(run_id, work=work, last=last, future=future))
        # The writer owns the write: a cancelled caller stops waiting, the write goes on.
        return await future

    def publish(self, event: dict[str, Any]) -> None:
        """Publish an event that a write of its own committed (a run's terminal event)."""
        self.persisted += 1
        self._bus.publish(event["run_id"], event)

    def failure_of(self, run_id: str) -> StorageFailed | None:
        """Why the run's writes stopped, or None."""
        return self._stopped.get(run_id)

    def forget(self, run_id: str) -> None:
        """Drop what is known of a run that ended."""
        self._stopped.pop(run_id, None)

    def _check(self, run_id: str) -> None:
        failure = self._stopped.get(run_id)
        if failure is not None:
            raise failure

    # the writer task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError as exc:
                self._fail_unsettled(batch, exc)
                raise
            except Exception as exc:  # a bug: fail (and stop) these runs, write the next ones
                logger.exception("the run writer failed a batch")
                self._fail([w for w in batch if w.error is None and w.outcome is None],
                           StorageFailed(f"the write failed: {_short(exc)}"))
            finally:
                self._settle(batch)
                for _ in batch:
                    self._queue.task_done()

    @staticmethod
    def _fail_unsettled(batch: list[_Write], error: BaseException) -> None:
        """Never leave a caller waiting: every write without an outcome gets `error`."""
        for write in batch:
            if write.error is None and write.outcome is None:
                write.error = error

    async def _commit(self, batch: list[_Write]) -> None:
        writes = [w for w in batch if not self._refused(w)]
        if not writes:
            return
        attempt = 0
        while True:
            try:
                outcomes = await self._transaction(writes)
            except Exception as exc:
                if not is_transient(exc):  # the data, or a bug: find the write it is
                    await self._split(writes, exc)
                    return
                now = time.monotonic()
                # The deadline runs from the start of the outage, not of this batch: writes
                # queued behind a failed batch then fail in turn instead of one deadline each.
                if self._failing_since is None:
                    self._failing_since = now
                deadline = self._failing_since + self.deadline_s
                attempt += 1
                self.stats.retries += 1
                if now >= deadline:
                    self._fail(writes, StorageUnavailable(
                        f"the database did not take the run's writes within "
                        f"{self.deadline_s:g} s: {_short(exc)}"))
                    return
                logger.warning("run write failed; retrying",
                               extra={"attempt": attempt, "error": _short(exc)})
                await asyncio.sleep(min(0.05 * 2 ** min(attempt, 5), 1.0) * (0.5 + random.random()))
                continue
            self._failing_since = None
            for write, outcome in zip(writes, outcomes, strict=True):
                if isinstance(outcome, _Raised):
                    write.error = outcome.error
                else:
                    write.outcome = outcome
            self.stats.batches += 1
            return

    async def _split(self, writes: list[_Write], error: BaseException) -> None:
        """Commit each write alone, so a row the database refuses fails only its run."""
        if len(writes) == 1:
            self._fail(writes, StorageFailed(f"the database refused a write: {_short(error)}"))
            return
        logger.warning("a batch of run writes was refused; committing them one by one",
                       extra={"error": _short(error)})
        for write in writes:
            if not self._refused(write):
                await self._commit([write])

    def _refused(self, write: _Write) -> bool:
        """Fail a write of a stopped run at once (the run's end is still taken)."""
        if write.run_id is None or write.last:
            return False
        failure = self._stopped.get(write.run_id)
        if failure is None:
            return False
        write.error = failure
        return True

    def _fail(self, writes: Iterable[_Write], failure: StorageFailed) -> None:
        for write in writes:
            write.error = failure
            self.stats.failed += 1
            if write.run_id is not None and not write.last:
                self._stopped.setdefault(write.run_id, failure)
                self.stats.stopped_runs.add(write.run_id)
        logger.error("run writes failed", extra={"error": failure.detail})

    async def _transaction(self, writes: list[_Write]) -> list[Any]:
        if self.fault is not None:
            self.fault()
        database = self._database
        if database.sqlite_writer is not None:
            async with database.write_turn:
                return await asyncio.get_running_loop().run_in_executor(
                    database.sqlite_writer.thread, database.sqlite_writer.run,
                    lambda connection: _apply(connection, writes, self.outbox))
        turn = database.write_turn if database.is_sqlite else contextlib.nullcontext()
        async with turn:
            connection = database.run_engine.connect()
            try:
                await connection.start()
            except Exception as exc:
                # However the server words it (not accepting connections, too many clients,
                # starting up), a refused connection says nothing against the batch's rows.
                raise DatabaseUnreachable(_short(exc)) from exc
            try:
                async with connection.begin():
                    return await connection.run_sync(_apply, writes, self.outbox)
            finally:
                await connection.close()

    def _settle(self, batch: list[_Write]) -> None:
        """Publish the committed events in queue order and wake the callers."""
        self.stats.writes += len(batch)
        for write in batch:
            if write.event is not None and write.error is None:
                self.persisted += 1
                self.stats.events += 1
                self._bus.publish(write.event["run_id"], write.event)
            future = write.future
            if future is None or future.done():
                continue
            if write.error is not None:
                future.set_exception(write.error)
            else:
                future.set_result(write.outcome)


@dataclass(slots=True)
class _Raised:
    error: BaseException


Outbox = Callable[[Connection, list[dict[str, Any]]], None]
"""Adds, in the same transaction, what the events a transaction inserted owe to hooks."""


def _apply(connection: Connection, writes: list[_Write], outbox: Outbox | None) -> list[Any]:
    """One transaction's statements: each write's work in order, then every event row, then
    the outbox rows of every event the transaction inserted."""
    connection.info.pop(INSERTED_EVENTS, None)  # left by a transaction that failed
    outcomes: list[Any] = []
    rows: list[dict[str, Any]] = []
    last_seq: dict[str, int] = {}
    for write in writes:
        if write.work is not None:
            try:
                outcomes.append(write.work(connection))
            except sa_exc.SQLAlchemyError:
                raise
            except Exception as exc:  # the write's own refusal; it wrote nothing
                outcomes.append(_Raised(exc))
            continue
        event = write.event
        assert event is not None
        rows.append({"run_id": event["run_id"], "seq": event["seq"], "type": event["type"],
                     "data": event["data"], "ts": write.ts})
        if event["seq"] > last_seq.get(event["run_id"], 0):
            last_seq[event["run_id"]] = event["seq"]
        outcomes.append(None)
    if rows:
        insert_events(connection, rows)
        connection.execute(_ADVANCE_LAST_SEQ,
                           [{"run": run_id, "seq": seq} for run_id, seq in last_seq.items()])
    inserted = connection.info.pop(INSERTED_EVENTS, None)
    if outbox is not None and inserted:
        outbox(connection, inserted)
    return outcomes


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:300]
