"""Reading a run's events: replay from the store, then follow live, deduplicated by seq."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sse_starlette import ServerSentEvent

from app.events.bus import EventBus, Subscription
from app.events.types import envelope, is_terminal
from app.services.runs import list_events
from app.store.db import Database, is_transient


@dataclass
class Fresh:
    """A run followed from its creation: its first events, and a subscription taken before
    the run was handed to the manager."""

    events: list[dict[str, Any]]
    subscription: Subscription


REPLAY_PAGE = 500
REPLAY_ATTEMPTS = 12
"""Tries of one replay read, about 8 s in all, before the stream ends."""
RETRY_MS = 2000


async def follow_run(
    database: Database, bus: EventBus, run_id: str, session_id: str, after: int,
    *, fresh: Fresh | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every event with seq > `after`, in order and in batches, until the terminal one.

    A batch is what is at hand at once (a page of the store, or the live events queued
    meanwhile), so a fast run's events reach the client in few writes. Subscribes before
    reading the store, so nothing published meanwhile is missed; an event seen both ways is
    sent once. Ends early when the subscriber fell too far behind (the client then
    reconnects with `Last-Event-ID`). A run followed from its creation (`fresh`) needs no
    replay: its subscription was taken before the run could emit anything but its first
    events.
    """
    subscription = fresh.subscription if fresh is not None else bus.subscribe(run_id)
    try:
        last = after
        if fresh is not None:
            yield fresh.events
            last = fresh.events[-1]["seq"]
        while fresh is None:
            rows = await _replay_page(database, run_id, last)
            page = [envelope(row.type, row.seq, run_id, session_id, row.ts, row.data)
                    for row in rows]
            batch, ended = _until_terminal(page)
            if batch:
                yield batch
                last = batch[-1]["seq"]
            if ended:
                return
            if len(rows) < REPLAY_PAGE:
                break
        while True:
            first = await subscription.get()
            queued = [first, *subscription.drain()]
            cut_off = None in queued
            new = [e for e in queued if e is not None and e["seq"] > last]
            batch, ended = _until_terminal(new)
            if batch:
                yield batch
                last = batch[-1]["seq"]
            if ended or cut_off:
                return
    finally:
        bus.unsubscribe(subscription)


async def _replay_page(database: Database, run_id: str, after: int) -> list[Any]:
    """A page of stored events, retried while the database is down for a moment (a stream
    that gives up ends, and its client resumes with `Last-Event-ID`)."""
    for attempt in range(REPLAY_ATTEMPTS):
        try:
            async with database.read() as db:
                return await list_events(db, run_id, after, REPLAY_PAGE)
        except Exception as exc:
            if not is_transient(exc) or attempt == REPLAY_ATTEMPTS - 1:
                raise
            await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
    raise AssertionError("unreachable")


def _until_terminal(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """`events` up to and including a terminal one, and whether there was one."""
    for index, event in enumerate(events):
        if is_terminal(event):
            return events[:index + 1], True
    return events, False


def sse_frame(event: dict[str, Any]) -> str:
    """One event as an SSE frame (JSON escapes line breaks, so `data` is one line)."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event['seq']}\r\nevent: {event['type']}\r\ndata: {data}\r\n\r\n"


async def sse_frames(
    batches: AsyncIterator[list[dict[str, Any]]],
) -> AsyncIterator[ServerSentEvent | bytes]:
    """`retry:` once, then each batch of events as one write."""
    yield ServerSentEvent(retry=RETRY_MS, comment="loomd")
    async for batch in batches:
        yield "".join(map(sse_frame, batch)).encode()
