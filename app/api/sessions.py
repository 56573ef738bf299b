"""`/v1/sessions`: conversations, their messages, forks and runs."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status

from app.api.deps import (
    OWNER_FORBIDDEN,
    CurrentPrincipal,
    Cursor,
    DbSession,
    Limit,
    ManagerDep,
    Owner,
    get_database,
    namespace,
)
from app.api.responses import READ, WRITE, errors
from app.errors import BadRequest
from app.schemas.common import SessionConflictProblem, UnavailableProblem
from app.schemas.messages import Message, MessagesAppend
from app.schemas.runs import Run, RunPage
from app.schemas.sessions import (
    AgentFilter,
    CompactionResult,
    MessagePage,
    MessagesAppended,
    Session,
    SessionCompact,
    SessionCreate,
    SessionFork,
    SessionPage,
    SessionStatus,
    SessionUpdate,
)
from app.services import idempotency
from app.services import sessions as service
from app.services.runs import run_view
from app.store.tables import Session as SessionRow

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

SessionId = Annotated[str, Path(description="the session's id (`ses_…`)", max_length=64)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="repeat-safe creation (1..255 characters)"),
]


async def load_session(
    session_id: SessionId, db: DbSession, principal: CurrentPrincipal, request: Request
) -> SessionRow:
    """The addressed session; 404 when it is unknown or someone else's."""
    lock = request.method not in ("GET", "HEAD")
    return await service.get_session(db, principal, session_id, lock=lock)


SessionById = Annotated[SessionRow, Depends(load_session)]
BUSY = "A run of the session is unfinished (`session_busy`, with `active_run_id`)"
MAX_SEQ = 2**31 - 1
SEQ_CURSOR = re.compile(r"[0-9]{1,10}")


def _view(session: SessionRow) -> Session:
    return Session.model_validate(service.session_view(session))


@router.post(
    "", name="create", status_code=status.HTTP_201_CREATED, summary="Create a session",
    responses={
        200: {"description": "Replay of an earlier request with the same Idempotency-Key",
              "model": Session},
        **errors(*WRITE, 403, 409, problems={409: SessionConflictProblem},
                 s403=OWNER_FORBIDDEN,
                 s409="Idempotency-Key reused with another body "
                 "(`idempotency_conflict`)"),
    },
)
async def create_session(
    body: SessionCreate, db: DbSession, principal: CurrentPrincipal, request: Request,
    response: Response, idempotency_key: IdempotencyKey = None, owner: Owner = None,
) -> Session:
    """Open a conversation with one of the caller's agents (an admin: with `?owner=`, with
    another subject's agent; the session is that subject's)."""
    owner_namespace = namespace(principal, owner)
    scope = idempotency.IdempotencyScope.parse(
        principal.subject, "POST", request.url.path, idempotency_key
    )

    async def create() -> str:
        return (await service.create_session(db, owner_namespace, body)).id

    session_id, replayed = await idempotency.once(
        db, scope, body.model_dump(mode="json", exclude_unset=True), create
    )
    session = await service.get_session(db, principal, session_id)
    response.headers["Location"] = f"/v1/sessions/{session.id}"
    if replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotency-Replayed"] = "true"
    return _view(session)


@router.get("", name="list", summary="List sessions", responses=errors(*READ))
async def list_sessions(
    db: DbSession, principal: CurrentPrincipal,
    agent: Annotated[AgentFilter, Query()] = None,
    status: Annotated[SessionStatus | None, Query(description="only this status")] = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> SessionPage:
    """Newest first; users see their own sessions, admins everyone's."""
    rows, next_cursor = await service.list_sessions(db, principal, agent, status, limit, cursor)
    return SessionPage(items=[_view(s) for s in rows], next_cursor=next_cursor)


@router.get("/{session_id}", name="get", summary="Get a session", responses=errors(*READ))
async def get_session(session: SessionById) -> Session:
    """One session with its status and usage."""
    return _view(session)


@router.patch(
    "/{session_id}", name="update", summary="Update a session's title or metadata",
    responses=errors(*WRITE),
)
async def update_session(session: SessionById, body: SessionUpdate, db: DbSession) -> Session:
    """Replace `title` and/or `metadata`."""
    return _view(await service.update_session(db, session, body))


@router.delete(
    "/{session_id}", name="delete", status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a session",
    responses=errors(*READ, 409, problems={409: SessionConflictProblem}, s409=BUSY),
)
async def delete_session(
    session_id: SessionId, request: Request, principal: CurrentPrincipal,
    force: Annotated[bool, Query(description="cancel unfinished runs first")] = False,
) -> Response:
    """Delete the session with its messages, runs, events and child sessions."""
    database = get_database(request)
    async with database.read() as db:
        session = await service.get_session(db, principal, session_id)
        unfinished = await service.unfinished_run_ids(db, session.id)
    if unfinished and force:
        manager = request.app.state.manager
        for run_id in unfinished:
            if manager.is_running_here(run_id):
                await manager.cancel(run_id, "the session was deleted")
            else:
                await manager.finish_queued(run_id, "the session was deleted")
    async with database.transaction() as db:
        session = await service.get_session(db, principal, session_id, lock=True)
        await service.delete_session(db, session, force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{session_id}/messages", name="list_messages", summary="List a session's messages",
    responses=errors(*READ),
)
async def list_messages(
    session: SessionById, db: DbSession,
    include_compacted: Annotated[
        bool, Query(description="also return messages folded into a summary")] = False,
    after: Annotated[int, Query(ge=0, description="only messages with a greater seq")] = 0,
    limit: Limit = 50, cursor: Cursor = None,
) -> MessagePage:
    """Messages in `seq` order; `next_cursor` (a seq) continues the listing."""
    if cursor is not None:
        if not SEQ_CURSOR.fullmatch(cursor) or int(cursor) > MAX_SEQ:
            raise BadRequest(f"malformed cursor {cursor[:80]!r}")
        after = max(after, int(cursor))
    # No message has a seq past the column's range, and the database rejects such a bound.
    after = min(after, MAX_SEQ)
    rows, next_cursor = await service.list_messages(db, session, include_compacted, after, limit)
    return MessagePage(items=[Message.model_validate(m) for m in rows], next_cursor=next_cursor)


@router.post(
    "/{session_id}/messages", name="append_messages", status_code=status.HTTP_201_CREATED,
    summary="Append messages without running the agent",
    responses=errors(*WRITE, 409, problems={409: SessionConflictProblem}, s409=BUSY),
)
async def append_messages(
    session: SessionById, body: MessagesAppend, db: DbSession
) -> MessagesAppended:
    """Import a conversation; tool messages must answer the open tool calls."""
    rows = await service.append_messages(db, session, body.messages)
    return MessagesAppended(items=[Message.model_validate(m) for m in rows],
                            session=_view(session))


@router.post(
    "/{session_id}/fork", name="fork", status_code=status.HTTP_201_CREATED,
    summary="Fork a session", responses=errors(*WRITE),
)
async def fork_session(
    session: SessionById, db: DbSession, response: Response, body: SessionFork | None = None
) -> Session:
    """A new session holding a copy of the messages up to and including `at_seq`."""
    fork = await service.fork_session(db, session, body.at_seq if body else None)
    response.headers["Location"] = f"/v1/sessions/{fork.id}"
    return _view(fork)


@router.post(
    "/{session_id}/compact", name="compact", summary="Compact a session's history",
    responses=errors(
        *WRITE, 409, 503,
        problems={409: SessionConflictProblem, 503: UnavailableProblem},
        s409=f"{BUSY}; or the session changed during the compaction, or its agent was "
             "deleted (`conflict`)",
        s503="The summary call failed (`unavailable`, `reason: summary_failed`, with the "
             "provider's message): nothing was compacted"),
)
async def compact_session(
    session_id: SessionId, principal: CurrentPrincipal, manager: ManagerDep,
    body: SessionCompact | None = None,
) -> CompactionResult:
    """Fold all but the agent's `compaction.keep_last` active messages (never separating a
    tool call from its results) into one summary message made by the agent's model. The
    folded messages stay readable with `include_compacted=true`; `compacted` is false when
    there is nothing to fold. The threshold and `enabled` do not apply here."""
    outcome = await service.compact_session(manager, principal, session_id,
                                            body.reason if body else None)
    return CompactionResult.model_validate(outcome.data())


@router.get(
    "/{session_id}/runs", name="list_runs", summary="List a session's runs",
    responses=errors(*READ),
)
async def list_session_runs(
    session: SessionById, db: DbSession, limit: Limit = 50, cursor: Cursor = None
) -> RunPage:
    """The session's runs, newest first."""
    rows, next_cursor = await service.list_session_runs(db, session, limit, cursor)
    return RunPage(items=[Run.model_validate(run_view(r)) for r in rows], next_cursor=next_cursor)
