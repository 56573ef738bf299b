"""A snapshot's bytes as rows of about 1 MiB: written as they are produced, read back one
chunk at a time, each in a short transaction of its own."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa

from app.errors import SnapshotTooLarge
from app.snapshots.codec import CHUNKS
from app.store.db import Database

CHUNK_BYTES = 1024 * 1024
READ_BYTES = 64 * 1024
"""What the JSON parser is handed at a time: it yields to the event loop between reads."""

_CHUNK = (sa.select(CHUNKS.c.data)
          .where(CHUNKS.c.snapshot_id == sa.bindparam("snapshot_id"),
                 CHUNKS.c.idx == sa.bindparam("idx")))
_INSERT = sa.insert(CHUNKS)


class ChunkSink:
    """Appends bytes to a snapshot's chunks, within a cap; hashes the bytes of the sections."""

    def __init__(self, database: Database, snapshot_id: str, max_bytes: int) -> None:
        self.database = database
        self.snapshot_id = snapshot_id
        self.max_bytes = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()
        self._buffer = bytearray()
        self._next_idx = 0

    async def write(self, data: bytes, hashed: bool = True) -> None:
        """Append `data` (counted into the sections' hash unless not `hashed`); 413
        `snapshot_too_large` as soon as the envelope would pass the cap."""
        self.size += len(data)
        if self.size > self.max_bytes:
            raise SnapshotTooLarge(
                f"the snapshot exceeds its cap of {self.max_bytes} bytes",
                max_bytes=self.max_bytes)
        if hashed:
            self.digest.update(data)
        self._buffer += data
        if len(self._buffer) >= CHUNK_BYTES:
            await self._flush(CHUNK_BYTES)

    async def close(self) -> None:
        """Store what is left of the bytes."""
        await self._flush(1)

    async def _flush(self, at_least: int) -> None:
        while len(self._buffer) >= at_least:
            data = bytes(self._buffer[:CHUNK_BYTES])
            del self._buffer[:CHUNK_BYTES]
            async with self.database.transaction() as db:
                await (await db.connection()).execute(_INSERT, {
                    "snapshot_id": self.snapshot_id, "idx": self._next_idx, "data": data})
            self._next_idx += 1


async def chunks(database: Database, snapshot_id: str) -> AsyncIterator[bytes]:
    """The snapshot's bytes, one chunk at a time, each read in a transaction of its own
    (a snapshot deleted meanwhile ends the bytes early)."""
    idx = 0
    while True:
        async with database.read() as db:
            data = (await (await db.connection()).execute(
                _CHUNK, {"snapshot_id": snapshot_id, "idx": idx})).scalar()
        if data is None:
            return
        yield bytes(data)
        idx += 1


class AsyncReader:
    """A file-like object with an async `read`, for ijson, over an async source of bytes.

    Every read lets the event loop run, so parsing a large envelope never holds it long.
    """

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self._buffer = b""
        self._done = False

    async def read(self, size: int = READ_BYTES) -> bytes:
        if size <= 0:  # ijson asks for nothing first, to learn the type read gives
            return b""
        await asyncio.sleep(0)
        while len(self._buffer) < size and not self._done:
            try:
                self._buffer += await anext(self._source)
            except StopAsyncIteration:
                self._done = True
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def chunk_reader(database: Database, snapshot_id: str) -> AsyncReader:
    return AsyncReader(chunks(database, snapshot_id))


async def file_chunks(file: Any) -> AsyncIterator[bytes]:
    """The bytes of an open (temporary) file, from its start."""
    file.seek(0)
    while data := file.read(READ_BYTES):
        yield data
