"""Sends the pending event deliveries of the outbox, in order per hook, at least once.

One worker per hook with due deliveries sends them oldest first, so a slow or dead receiver
holds up only its own hook. A failed attempt (non-2xx, timeout, refused connection) is
retried after 1 s, 2 s, 4 s … (with jitter, at most `MAX_BACKOFF_S`) with the same
`webhook-id`; the hook's later deliveries wait meanwhile, keeping the order. After
`LOOMD_HOOK_MAX_ATTEMPTS` the delivery is `dead` and the next one goes. `CIRCUIT_FAILURES`
failures in a row open the hook's circuit for `CIRCUIT_OPEN_S`; then one attempt is let
through (`half_open`), and a success closes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from datetime import datetime, timedelta
from typing import Any

import httpx2
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.clock import utcnow
from app.hooks.attempt import post_signed
from app.hooks.outbox import DELIVERIES, HOOKS, EventOutbox
from app.metrics import Metrics
from app.store.db import Database
from app.store.writer import Writer

logger = logging.getLogger("loomd.hooks")

POLL_S = 0.2
BATCH = 100
MAX_BACKOFF_S = 300.0
CIRCUIT_FAILURES = 5
CIRCUIT_OPEN_S = 30.0

_DUE_HOOKS = (
    sa.select(DELIVERIES.c.hook_id).distinct()
    .where(DELIVERIES.c.status == "pending",
           DELIVERIES.c.next_attempt_at <= sa.bindparam(
               "now", type_=DELIVERIES.c.next_attempt_at.type)))
_HOOK = sa.select(HOOKS).where(HOOKS.c.id == sa.bindparam("hook_id"))
_PENDING_OF = (sa.select(DELIVERIES)
               .where(DELIVERIES.c.hook_id == sa.bindparam("hook_id"),
                      DELIVERIES.c.status == "pending")
               .order_by(DELIVERIES.c.ordinal, DELIVERIES.c.id).limit(BATCH))


class EventSender:
    """The background sender of one process."""

    def __init__(self, database: Database, writer: Writer, outbox: EventOutbox,
                 client: httpx2.AsyncClient, max_attempts: int,
                 metrics: Metrics | None = None) -> None:
        self.database = database
        self.writer = writer
        self.outbox = outbox
        self.client = client
        self.max_attempts = max_attempts
        self.metrics = metrics
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loomd-hook-sender")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._workers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                if time.monotonic() - self.outbox.refreshed >= 1.0:
                    await self.outbox.refresh()
                async with self.database.read() as db:
                    connection = await db.connection()
                    due = list((await connection.execute(_DUE_HOOKS, {"now": utcnow()}))
                               .scalars())
                for hook_id in due:
                    if hook_id not in self._workers:
                        self._workers[hook_id] = asyncio.create_task(self._work(hook_id))
            except Exception:
                logger.exception("the hook sender could not look for deliveries")
            await asyncio.sleep(POLL_S)

    async def _work(self, hook_id: str) -> None:
        """Send the hook's pending deliveries in order until none is due."""
        try:
            await self._send_due(hook_id)
        finally:
            self._workers.pop(hook_id, None)

    async def _send_due(self, hook_id: str) -> None:
        try:
            while True:
                async with self.database.read() as db:
                    connection = await db.connection()
                    hook = (await connection.execute(_HOOK, {"hook_id": hook_id})).first()
                    pending = (await connection.execute(_PENDING_OF, {"hook_id": hook_id})
                               ).all()
                if hook is None or not hook.enabled or not pending:
                    return
                now = utcnow()
                if hook.circuit == "open" and hook.circuit_until and hook.circuit_until > now:
                    return
                # Outcomes are stored while the next deliveries go out; the batch's are all
                # stored before the next batch is read, so none is sent twice by this loop.
                records: list[asyncio.Future[None]] = []
                try:
                    for delivery in pending:
                        if delivery.next_attempt_at and delivery.next_attempt_at > utcnow():
                            return  # the oldest waits for its retry; the others behind it
                        delivered, record = await self._send(hook, delivery)
                        records.append(record)
                        if not delivered:
                            return
                finally:
                    await asyncio.gather(*records, return_exceptions=True)
                if len(pending) < BATCH:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("a hook's deliveries could not be sent", extra={"hook_id": hook_id})

    async def _send(self, hook: Any, delivery: Any) -> tuple[bool, asyncio.Future[None]]:
        """One attempt: whether it was delivered, and the storing of its outcome (a failed
        write leaves the delivery pending, to be sent again)."""
        body = json.dumps(delivery.payload, ensure_ascii=False, separators=(",", ":"))
        sent = await post_signed(self.client, hook.url, hook.secret, delivery.message_id, body,
                                 hook.timeout_ms)
        error, status_code, duration_ms = sent.failure, sent.status_code, sent.duration_ms
        excerpt = sent.excerpt
        if self.metrics is not None:
            self.metrics.hook_deliveries.labels("event", "ok" if error is None else "error").inc()
        attempt = delivery.attempt + 1
        now = utcnow()
        if error is None:
            status, retry_at = "delivered", None
        elif attempt >= self.max_attempts:
            status, retry_at = "dead", None
        else:
            status, retry_at = "pending", now + timedelta(seconds=_backoff(attempt))
        values = {"status": status, "attempt": attempt, "status_code": status_code,
                  "duration_ms": duration_ms, "error": error, "response_excerpt": excerpt,
                  "next_attempt_at": retry_at, "updated_at": now}
        record = asyncio.ensure_future(self.writer.submit(lambda connection: _record(
            connection, delivery.id, hook.id, values, error is None, now)))
        return error is None, record


def _backoff(attempt: int) -> float:
    return min(2.0 ** (attempt - 1), MAX_BACKOFF_S) * random.uniform(0.8, 1.2)


def _record(connection: Connection, delivery_id: str, hook_id: str, values: dict[str, Any],
            delivered: bool, now: datetime) -> None:
    """Store an attempt and the hook's circuit after it."""
    connection.execute(sa.update(DELIVERIES).where(DELIVERIES.c.id == delivery_id)
                       .values(**values))
    count_outcome(connection, hook_id, delivered, now)


def count_outcome(connection: Connection, hook_id: str, delivered: bool,
                  now: datetime) -> None:
    """Keep the hook's run of failures, and its circuit, after one request."""
    hook = connection.execute(sa.select(HOOKS.c.failures, HOOKS.c.circuit)
                              .where(HOOKS.c.id == hook_id)).first()
    if hook is None:
        return
    if delivered:
        if hook.failures or hook.circuit != "closed":
            connection.execute(sa.update(HOOKS).where(HOOKS.c.id == hook_id).values(
                failures=0, circuit="closed", circuit_until=None))
        return
    failures = hook.failures + 1
    change: dict[str, Any] = {"failures": failures}
    if failures >= CIRCUIT_FAILURES:
        change.update(circuit="open", circuit_until=now + timedelta(seconds=CIRCUIT_OPEN_S))
    connection.execute(sa.update(HOOKS).where(HOOKS.c.id == hook_id).values(**change))
