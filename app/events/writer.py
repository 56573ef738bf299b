"""Batched event persistence: one INSERT per batch, published only once committed."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from app.events.bus import EventBus
from app.store.db import Database
from app.store.tables import Run, RunEvent

logger = logging.getLogger("loomd.events")

_ADVANCE_LAST_SEQ = (
    sa.update(Run)
    .where(col(Run.id) == sa.bindparam("run"), col(Run.last_seq) < sa.bindparam("seq"))
    .values(last_seq=sa.bindparam("seq"))
)
"""One statement, executed once per run of a batch (a single driver call)."""

_Item = tuple[dict[str, Any], datetime] | asyncio.Future[None]
"""An event with its time, or a flush barrier: the future of whoever waits for it."""


class EventWriter:
    """Writes queued events in batches: one INSERT per batch, then publishes them.

    Group commit: a batch is whatever was queued when the previous write ended (up to
    `max_batch`), so an idle service writes an event at once and a busy one writes many
    per transaction. `write` queues and returns; `flush` returns once everything written
    before it is committed and published. A run's
    terminal event is stored by the run's own final transaction after a `flush`, then
    handed to `published`.
    """

    def __init__(self, database: Database, bus: EventBus, max_batch: int = 1000) -> None:
        self._database = database
        self._bus = bus
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.persisted = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loomd-event-writer")

    async def stop(self) -> None:
        """Flush what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    def write(self, event: dict[str, Any], ts: datetime) -> None:
        """Queue `event`; `ts` is its time (`event["ts"]` as a datetime)."""
        self._queue.put_nowait((event, ts))

    async def flush(self) -> None:
        """Wait until every event written before this call is committed and published."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(future)
        await asyncio.shield(future)

    def published(self, event: dict[str, Any]) -> None:
        """Publish an event its caller has committed itself."""
        self.persisted += 1
        self._bus.publish(event["run_id"], event)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._flush(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _flush(self, batch: list[_Item]) -> None:
        events = [item for item in batch if isinstance(item, tuple)]
        error: BaseException | None = None
        for attempt in range(5 if events else 0):
            try:
                await self._insert(events)
                error = None
                break
            except Exception as exc:
                error = exc
                logger.warning("event batch write failed", extra={"attempt": attempt + 1,
                                                                  "error": repr(exc)})
                await asyncio.sleep(0.05 * 2**attempt)
        if error is None:
            self.persisted += len(events)
            for event, _ in events:
                self._bus.publish(event["run_id"], event)
        else:
            logger.error("dropped %d events after repeated write failures", len(events))
        for future in batch:
            if isinstance(future, asyncio.Future) and not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    async def _insert(self, events: list[tuple[dict[str, Any], datetime]]) -> None:
        rows = [{"run_id": e["run_id"], "seq": e["seq"], "type": e["type"], "data": e["data"],
                 "ts": ts} for e, ts in events]
        last_seq: dict[str, int] = {}
        for event, _ in events:
            last_seq[event["run_id"]] = max(last_seq.get(event["run_id"], 0), event["seq"])
        advances = [{"run": run_id, "seq": seq} for run_id, seq in last_seq.items()]

        def insert(db: Session) -> None:
            connection = db.connection()
            connection.execute(sa.insert(RunEvent), rows)
            connection.execute(_ADVANCE_LAST_SEQ, advances)

        await self._database.run_write(insert)
