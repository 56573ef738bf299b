"""Reading a run's events: replay from the store, then follow live, deduplicated by seq."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from app.events.bus import EventBus
from app.events.types import envelope, is_terminal
from app.services.runs import list_events
from app.store.db import Database

REPLAY_PAGE = 500
RETRY_MS = 2000


async def follow_run(
    database: Database, bus: EventBus, run_id: str, session_id: str, after: int
) -> AsyncIterator[dict[str, Any]]:
    """Every event with seq > `after`, in order, until the terminal one.

    Subscribes before reading the store, so nothing published meanwhile is missed; an event
    seen both ways is sent once. Ends early when the subscriber fell too far behind (the
    client then reconnects with `Last-Event-ID`).
    """
    subscription = bus.subscribe(run_id)
    try:
        last = after
        while True:
            async with database.read() as db:
                rows = await list_events(db, run_id, last, REPLAY_PAGE)
            for row in rows:
                event = envelope(row.type, row.seq, run_id, session_id, row.ts, row.data)
                yield event
                last = row.seq
                if is_terminal(event):
                    return
            if len(rows) < REPLAY_PAGE:
                break
        while True:
            live = await subscription.get()
            if live is None:
                return
            if live["seq"] <= last:
                continue
            yield live
            last = live["seq"]
            if is_terminal(live):
                return
    finally:
        bus.unsubscribe(subscription)


def to_sse(event: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(event, separators=(",", ":"), ensure_ascii=False),
        event=event["type"], id=str(event["seq"]),
    )


async def sse_frames(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[ServerSentEvent]:
    """`retry:` once, then one frame per event."""
    yield ServerSentEvent(retry=RETRY_MS, comment="loomd")
    async for event in events:
        yield to_sse(event)
