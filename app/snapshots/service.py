"""Snapshots (§11): make, list, read, delete, import and restore them.

A snapshot's row is `ready` only once all its bytes are stored; one that is not (being made,
or left by a crash) is listed nowhere, and is removed by the next snapshot made after an hour.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import __version__
from app.clock import rfc3339, utcnow
from app.config import Settings
from app.errors import NotFound, SnapshotCorrupt, SnapshotTooLarge
from app.ids import new_id
from app.runs.manager import RunManager
from app.schemas.snapshots import SnapshotCreate
from app.snapshots.build import Builder
from app.snapshots.chunks import AsyncReader, ChunkSink, chunk_reader, chunks, file_chunks
from app.snapshots.codec import CHUNKS, FORMAT_VERSION, SNAPSHOTS, counts
from app.snapshots.restore import Report, Restorer
from app.snapshots.verify import rewrite
from app.store.db import Database
from app.store.pagination import newest_first
from app.store.tables import Snapshot

STALE_AFTER = timedelta(hours=1)
"""A snapshot not ready after this long was left by a process that stopped making it."""


def meta_view(snapshot: Snapshot) -> dict[str, Any]:
    return {"id": snapshot.id, "label": snapshot.label, "created_at": snapshot.created_at,
            "format_version": snapshot.format_version, "byte_size": snapshot.byte_size,
            "sha256": snapshot.sha256, "counts": counts(snapshot.counts)}


async def _discard(database: Database, snapshot_ids: Sequence[str]) -> None:
    if not snapshot_ids:
        return
    async with database.transaction() as db:
        connection = await db.connection()
        await connection.execute(sa.delete(CHUNKS).where(CHUNKS.c.snapshot_id.in_(snapshot_ids)))
        await connection.execute(sa.delete(SNAPSHOTS).where(SNAPSHOTS.c.id.in_(snapshot_ids)))


async def _forget_stale(database: Database) -> None:
    query = select(Snapshot.id).where(col(Snapshot.ready).is_(False),
                                      col(Snapshot.created_at) < utcnow() - STALE_AFTER)
    async with database.read() as db:
        stale = list((await db.exec(query)).all())
    await _discard(database, stale)


async def _begin(database: Database, label: str | None, source: dict[str, Any],
                 format_version: int = FORMAT_VERSION) -> Snapshot:
    await _forget_stale(database)
    snapshot = Snapshot(id=new_id("snap"), label=label, format_version=format_version,
                        counts={}, source=source, ready=False, created_at=utcnow())
    async with database.transaction() as db:
        db.add(snapshot)
    return snapshot


async def _finish(database: Database, snapshot: Snapshot, sink: ChunkSink, sha256: str,
                  tally: dict[str, int]) -> Snapshot:
    snapshot.byte_size, snapshot.sha256 = sink.size, sha256
    snapshot.counts, snapshot.ready = counts(tally), True
    async with database.transaction() as db:
        db.add(snapshot)
    return snapshot


async def create_snapshot(database: Database, settings: Settings, body: SnapshotCreate
                          ) -> Snapshot:
    """Write the envelope of the service's state as it is read, page by page; 413
    `snapshot_too_large` (and nothing kept) as soon as it passes its cap."""
    cap = min(body.max_bytes or settings.snapshot_max_bytes, settings.snapshot_max_bytes)
    source = {"version": __version__, "instance": settings.instance_id}
    snapshot = await _begin(database, body.label, source)
    sink = ChunkSink(database, snapshot.id, cap)
    builder = Builder(database, sink, body.include_history, body.history_since)
    try:
        sha256 = await builder.write(rfc3339(snapshot.created_at), source)
    except BaseException:
        await _discard(database, [snapshot.id])
        raise
    return await _finish(database, snapshot, sink, sha256, builder.counts)


async def list_snapshots(db: AsyncSession, limit: int, cursor: str | None
                         ) -> tuple[Sequence[Snapshot], str | None]:
    query = select(Snapshot).where(col(Snapshot.ready).is_(True))
    return await newest_first(db, query, Snapshot, limit, cursor)


async def get_snapshot(db: AsyncSession, snapshot_id: str) -> Snapshot:
    """A ready snapshot's row; 404 otherwise."""
    snapshot = await db.get(Snapshot, snapshot_id)
    if snapshot is None or not snapshot.ready:
        raise NotFound(f"snapshot {snapshot_id} not found")
    return snapshot


async def read_envelope(database: Database, snapshot_id: str
                        ) -> tuple[Snapshot, AsyncIterator[bytes]]:
    """A ready snapshot's row and its envelope bytes, as stored, a chunk at a time; 404
    when there is no such snapshot."""
    async with database.read() as db:
        snapshot = await get_snapshot(db, snapshot_id)
    return snapshot, chunks(database, snapshot_id)


async def delete_snapshot(database: Database, snapshot_id: str) -> None:
    """Delete the snapshot and its bytes; nothing to do when there is none."""
    await _discard(database, [snapshot_id])


async def import_snapshot(database: Database, settings: Settings, body: AsyncIterator[bytes],
                          declared_bytes: int | None, label: str | None) -> Snapshot:
    """Store an envelope sent as the request body, as a new snapshot.

    The body is spooled to a temporary file within `LOOMD_SNAPSHOT_MAX_BYTES` (413
    `snapshot_too_large`), then checked and written out canonically as it is parsed.
    """
    cap = settings.snapshot_max_bytes
    if declared_bytes is not None and declared_bytes > cap:
        raise SnapshotTooLarge(f"the envelope ({declared_bytes} bytes) exceeds the limit of "
                               f"{cap} bytes", max_bytes=cap)
    with tempfile.TemporaryFile(prefix="loomd-import-") as spool:
        received = 0
        async for part in body:
            received += len(part)
            if received > cap:
                raise SnapshotTooLarge(f"the envelope exceeds the limit of {cap} bytes",
                                       max_bytes=cap)
            spool.write(part)
        if not received:
            raise SnapshotCorrupt("the envelope is not a valid snapshot: the body is empty")
        snapshot = await _begin(database, label, {})
        sink = ChunkSink(database, snapshot.id, cap)
        try:
            verified = await rewrite(lambda: AsyncReader(file_chunks(spool)), sink)
        except BaseException:
            await _discard(database, [snapshot.id])
            raise
    snapshot.format_version, snapshot.source = verified.format_version, verified.source
    return await _finish(database, snapshot, sink, verified.sha256, verified.counts)


async def restore_snapshot(database: Database, manager: RunManager, snapshot_id: str,
                           resume_runs: bool) -> dict[str, Any]:
    """Insert what the snapshot holds and is not here yet; then tell the run manager about
    the hooks and, with `resume_runs`, go on with the restored paused and queued runs."""
    async with database.read() as db:
        await get_snapshot(db, snapshot_id)
    report: Report = await Restorer(database, lambda: chunk_reader(database, snapshot_id)).run()
    await manager.hooks_changed()
    resumed: list[str] = []
    if resume_runs:
        if report.paused:
            resumed = await manager.runtime.resume_parked(report.paused)
        for run_id in report.queued:
            manager.submit(run_id)
    return {"created": report.created, "skipped": report.skipped, "resumed_runs": len(resumed),
            "warnings": report.all_warnings(), "hook_secrets": report.hook_secrets}
