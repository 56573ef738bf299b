"""Making an envelope: the tables read in pages, each item written as soon as it is read.

The sections are written in sorted order and every item as canonical JSON, so the bytes of
`sections` are their canonical form and their hash is taken as they are written. Each page
is read in a short transaction of its own: the snapshot is of a service that may go on
meanwhile (pause the runtime first for a still picture).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from app.snapshots.chunks import ChunkSink
from app.snapshots.codec import (
    AGENT_VERSIONS,
    AGENTS,
    FORMAT,
    FORMAT_VERSION,
    HOOKS,
    SECTIONS,
    canonical,
    item_of,
    key,
)
from app.store.db import Database
from app.store.statements import EVENTS, MESSAGES, RUNS, SESSIONS

PAGE_ROWS = 200
EVENT_PAGE_ROWS = 500


def header(created_at: str, source: dict[str, Any], format_version: int = FORMAT_VERSION
           ) -> bytes:
    """The envelope up to its sections."""
    start = {"format": FORMAT, "format_version": format_version, "created_at": created_at,
             "source": source}
    return json.dumps(start, separators=(",", ":"), ensure_ascii=False).encode()[:-1] + (
        b',"sections":')


def trailer(sha256: str) -> bytes:
    """The envelope after its sections."""
    return b',"sha256":' + key(sha256) + b"}"


def _members(item: dict[str, Any], names: Sequence[str]) -> bytes:
    return b",".join(key(name) + b":" + canonical(item[name]) for name in names)


def around(item: dict[str, Any], name: str) -> tuple[bytes, bytes]:
    """The canonical JSON of `item` with the list `name` added, cut where that list's
    elements go: what comes before them, and after."""
    names = sorted(item)
    before = [n for n in names if n < name]
    after = [n for n in names if n > name]
    start = b"{" + _members(item, before) + (b"," if before else b"") + key(name) + b":["
    end = b"]" + (b"," + _members(item, after) if after else b"") + b"}"
    return start, end


async def pages(database: Database, table: sa.Table, order: Sequence[sa.Column[Any]],
                where: Any = None, size: int = PAGE_ROWS) -> AsyncIterator[list[Any]]:
    """The rows of `table` in `order` (its primary key), `size` at a time, each page read
    in a transaction of its own after the last row of the one before."""
    after: tuple[Any, ...] | None = None
    while True:
        query = sa.select(table).order_by(*order).limit(size)
        if where is not None:
            query = query.where(where)
        if after is not None:
            query = query.where(sa.tuple_(*order) > sa.tuple_(*after))
        async with database.read() as db:
            rows = list((await (await db.connection()).execute(query)).all())
        if rows:
            yield rows
        if len(rows) < size:
            return
        after = tuple(rows[-1]._mapping[column.name] for column in order)


class Builder:
    """Writes the sections of an envelope into a `ChunkSink`, counting what it wrote."""

    def __init__(self, database: Database, sink: ChunkSink, include_history: bool,
                 history_since: datetime | None) -> None:
        self.database = database
        self.sink = sink
        self.include_history = include_history
        self.history_since = history_since
        self.counts: dict[str, int] = defaultdict(int)
        self._first = True

    async def write(self, created_at: str, source: dict[str, Any]) -> str:
        """The whole envelope; returns the sections' sha256."""
        await self.sink.write(header(created_at, source), hashed=False)
        await self.sink.write(b"{")
        for index, name in enumerate(SECTIONS):
            await self.sink.write((b"," if index else b"") + key(name) + b":[")
            self._first = True
            await getattr(self, f"_{name}")()
            await self.sink.write(b"]")
        await self.sink.write(b"}")
        sha256 = self.sink.digest.hexdigest()
        await self.sink.write(trailer(sha256), hashed=False)
        await self.sink.close()
        return sha256

    async def _item(self, data: bytes) -> None:
        await self.sink.write(data if self._first else b"," + data)
        self._first = False

    async def _agents(self) -> None:
        async for page in pages(self.database, AGENTS, [AGENTS.c.id]):
            versions: dict[str, list[dict[str, Any]]] = defaultdict(list)
            query = (sa.select(AGENT_VERSIONS)
                     .where(AGENT_VERSIONS.c.agent_id.in_([row.id for row in page]))
                     .order_by(AGENT_VERSIONS.c.agent_id, AGENT_VERSIONS.c.version))
            async with self.database.read() as db:
                for row in await (await db.connection()).execute(query):
                    versions[row.agent_id].append(item_of("agent_versions", row))
            for row in page:
                item = item_of("agents", row)
                item["versions"] = versions.get(row.id, [])
                await self._item(canonical(item))
                self.counts["agents"] += 1

    async def _events(self) -> None:
        if not self.include_history:
            return
        since = EVENTS.c.ts >= self.history_since if self.history_since is not None else None
        async for page in pages(self.database, EVENTS, [EVENTS.c.run_id, EVENTS.c.seq],
                                where=since, size=EVENT_PAGE_ROWS):
            for row in page:
                await self._item(canonical(item_of("events", row)))
                self.counts["events"] += 1

    async def _hooks(self) -> None:
        async for page in pages(self.database, HOOKS, [HOOKS.c.id]):
            for row in page:
                await self._item(canonical(item_of("hooks", row)))
                self.counts["hooks"] += 1

    async def _runs(self) -> None:
        async for page in pages(self.database, RUNS, [RUNS.c.id]):
            for row in page:
                await self._item(canonical(item_of("runs", row)))
                self.counts["runs"] += 1

    async def _sessions(self) -> None:
        async for page in pages(self.database, SESSIONS, [SESSIONS.c.id]):
            async with aclosing(self._messages_of([row.id for row in page])) as messages:
                await self._page_of_sessions(page, messages)

    async def _page_of_sessions(self, page: list[Any], messages: AsyncIterator[Any]) -> None:
        pending = await anext(messages, None)
        for row in page:
            start, end = around(item_of("sessions", row), "messages")
            await self._item(start)
            first = True
            # Both are in the database's order of session ids: equal ids meet in turn.
            while pending is not None and pending.session_id == row.id:
                data = canonical(item_of("messages", pending))
                await self.sink.write(data if first else b"," + data)
                first = False
                self.counts["messages"] += 1
                pending = await anext(messages, None)
            await self.sink.write(end)
            self.counts["sessions"] += 1

    async def _messages_of(self, session_ids: list[str]) -> AsyncGenerator[Any, None]:
        """The messages of those sessions, by session id then seq, a page at a time."""
        where = MESSAGES.c.session_id.in_(session_ids)
        async for page in pages(self.database, MESSAGES,
                                [MESSAGES.c.session_id, MESSAGES.c.seq], where=where,
                                size=EVENT_PAGE_ROWS):
            for row in page:
                yield row
