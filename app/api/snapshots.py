"""`/v1/snapshots` (admin): portable envelopes of the service's state (§11)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from app.api.deps import (
    AdminPrincipal,
    Cursor,
    DbSession,
    Limit,
    ManagerDep,
    SettingsDep,
    get_database,
)
from app.api.responses import READ, WRITE, errors
from app.errors import BadRequest
from app.schemas.snapshots import (
    Envelope,
    RestoreResult,
    SnapshotCreate,
    SnapshotMeta,
    SnapshotPage,
    SnapshotRestore,
    SnapshotWithEnvelope,
)
from app.snapshots import service
from app.store.tables import Snapshot

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])

IMPORT_PATH = "/v1/snapshots/import"
"""Exempt from `LOOMD_MAX_BODY_BYTES`: the route holds envelopes to their own cap."""
SnapshotId = Annotated[str, Path(description="the snapshot's id (`snap_…`)", max_length=64)]
TOO_LARGE = ("The envelope would pass `max_bytes` (`snapshot_too_large`; nothing is kept), or "
             "the request body its cap (`body_too_large`)")
IMPORT_TOO_LARGE = "The envelope is over `LOOMD_SNAPSHOT_MAX_BYTES` (`snapshot_too_large`)"
UNREADABLE = ("`snapshot_corrupt` (not an envelope, not valid JSON, an item that does not fit "
              "its section, or a `sha256` that does not match the sections), "
              "`snapshot_version_unsupported` (a newer `format_version`)")
JSON_ENVELOPE = {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}


def _meta(snapshot: Snapshot) -> SnapshotMeta:
    return SnapshotMeta.model_validate(service.meta_view(snapshot))


@router.post(
    "", name="create", status_code=status.HTTP_201_CREATED, summary="Make a snapshot",
    responses=errors(*WRITE, 403, s413=TOO_LARGE),
)
async def create_snapshot(
    request: Request, settings: SettingsDep, _admin: AdminPrincipal, response: Response,
    body: Annotated[SnapshotCreate | None, Body()] = None,
) -> SnapshotMeta:
    """Write the envelope of every agent, session (with its messages), run and hook, and
    with `include_history` the runs' events. Tables are read a page at a time while the
    service goes on: pause the runtime first for runs caught at a turn boundary."""
    snapshot = await service.create_snapshot(get_database(request), settings,
                                             body or SnapshotCreate())
    response.headers["Location"] = f"/v1/snapshots/{snapshot.id}"
    return _meta(snapshot)


@router.get("", name="list", summary="List snapshots", responses=errors(*READ, 403))
async def list_snapshots(
    db: DbSession, _admin: AdminPrincipal, limit: Limit = 50, cursor: Cursor = None,
) -> SnapshotPage:
    """Newest first, metadata only."""
    rows, next_cursor = await service.list_snapshots(db, limit, cursor)
    return SnapshotPage(items=[_meta(row) for row in rows], next_cursor=next_cursor)


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for part in request.stream():
            yield part
    except ClientDisconnect as exc:
        raise BadRequest("the client went away before the body was complete") from exc


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


@router.post(
    "/import", name="import", status_code=status.HTTP_201_CREATED,
    summary="Import an envelope",
    responses=errors(400, 401, 403, 408, 413, 422, s413=IMPORT_TOO_LARGE, s422=UNREADABLE),
    openapi_extra={"requestBody": {
        "required": True, "content": JSON_ENVELOPE,
        "description": "an envelope as exported, up to `LOOMD_SNAPSHOT_MAX_BYTES` (not "
                       "`LOOMD_MAX_BODY_BYTES`); `LOOMD_BODY_READ_TIMEOUT_S` bounds the wait "
                       "for each part of it, not for the whole body"}},
)
async def import_snapshot(
    request: Request, settings: SettingsDep, _admin: AdminPrincipal, response: Response,
    label: Annotated[str | None, Query(max_length=200,
                                       description="the new snapshot's label")] = None,
) -> SnapshotMeta:
    """Check an envelope (its format, version, items and `sha256`) as it streams in and
    store it as a new snapshot, to restore here. Its sections are stored in canonical
    form, so its `sha256` stays."""
    snapshot = await service.import_snapshot(get_database(request), settings, _body(request),
                                             _declared_length(request), label)
    response.headers["Location"] = f"/v1/snapshots/{snapshot.id}"
    return _meta(snapshot)


@router.get(
    "/{snapshot_id}", name="get", summary="Get a snapshot with its envelope",
    response_model=SnapshotWithEnvelope, responses=errors(*READ, 403),
)
async def get_snapshot(snapshot_id: SnapshotId, request: Request,
                       _admin: AdminPrincipal) -> Response:
    """The metadata and, as `envelope`, the envelope itself (streamed as stored)."""
    snapshot, envelope = await service.read_envelope(get_database(request), snapshot_id)
    start = _meta(snapshot).model_dump_json().encode()[:-1] + b',"envelope":'

    async def body() -> AsyncIterator[bytes]:
        yield start
        async for part in envelope:
            yield part
        yield b"}"

    length = len(start) + snapshot.byte_size + 1
    return StreamingResponse(body(), media_type="application/json",
                             headers={"Content-Length": str(length)})


@router.get(
    "/{snapshot_id}/export", name="export", summary="Export a snapshot's envelope",
    response_model=Envelope,
    responses={
        200: {"description": "The envelope's exact bytes, as a download",
              "content": JSON_ENVELOPE,
              "headers": {
                  "ETag": {"description": '`"<sha256>"`, the sections\' hash', "required": True,
                           "schema": {"type": "string"}},
                  "Content-Disposition": {"description": 'attachment; filename="<id>.json"',
                                          "required": True, "schema": {"type": "string"}}}},
        **errors(*READ, 403)},
)
async def export_snapshot(snapshot_id: SnapshotId, request: Request,
                          _admin: AdminPrincipal) -> Response:
    """The envelope byte for byte, to import on another instance."""
    snapshot, envelope = await service.read_envelope(get_database(request), snapshot_id)
    return StreamingResponse(envelope, media_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="{snapshot.id}.json"',
        "ETag": f'"{snapshot.sha256}"', "Content-Length": str(snapshot.byte_size)})


@router.delete(
    "/{snapshot_id}", name="delete", status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a snapshot", responses=errors(*READ, 403),
)
async def delete_snapshot(snapshot_id: SnapshotId, request: Request,
                          _admin: AdminPrincipal) -> Response:
    """Delete the snapshot and its bytes (204 also when there is none)."""
    await service.delete_snapshot(get_database(request), snapshot_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{snapshot_id}/restore", name="restore", summary="Restore a snapshot",
    responses=errors(*WRITE, 403, s422="`snapshot_corrupt` (the stored envelope cannot be "
                                       "read), or `validation_error`"),
)
async def restore_snapshot(
    snapshot_id: SnapshotId, request: Request, manager: ManagerDep, _admin: AdminPrincipal,
    body: Annotated[SnapshotRestore | None, Body()] = None,
) -> RestoreResult:
    """Insert every object of the snapshot whose id is not here yet, keeping ids and
    contents; the others are skipped and counted, so a restore can be repeated. Hooks get
    a new secret each (in `hook_secrets`, shown only here). Paused runs resume (unless the
    runtime is paused: then at its resume), queued runs start in turn; runs that were
    running are restored as `interrupted`."""
    resume_runs = (body or SnapshotRestore()).resume_runs
    result = await service.restore_snapshot(get_database(request), manager, snapshot_id,
                                            resume_runs)
    return RestoreResult.model_validate(result)
