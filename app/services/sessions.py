"""Sessions and their message history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth import Principal
from app.clock import utcnow
from app.errors import NotFound, SessionBusy, ValidationFailed
from app.ids import new_id
from app.rules import message_view, open_calls_after, session_status
from app.schemas.messages import MessageIn
from app.schemas.sessions import SessionCreate, SessionUpdate
from app.services.agents import get_agent
from app.status import ACTIVE_STATUSES
from app.store.pagination import newest_first
from app.store.tables import Message, Run, Session


def session_view(session: Session) -> dict[str, Any]:
    """The public shape of a session."""
    return {
        "id": session.id, "agent": session.agent, "owner": session.owner,
        "title": session.title, "metadata": session.meta, "status": session.status,
        "active_run_id": session.active_run_id,
        "parent_session_id": session.parent_session_id, "parent_run_id": session.parent_run_id,
        "message_count": session.message_count, "todos": session.todos,
        "usage": {"prompt_tokens": session.prompt_tokens,
                  "completion_tokens": session.completion_tokens,
                  "total_tokens": session.total_tokens},
        "created_at": session.created_at, "updated_at": session.updated_at,
    }


def refresh_status(session: Session) -> None:
    """Recompute the session's stored `status` from its active run and open tool calls."""
    session.status = session_status(session.active_run_id, session.open_tool_calls)


async def get_session(
    db: AsyncSession, principal: Principal, session_id: str, lock: bool = False
) -> Session:
    """The session, or 404 when it does not exist or belongs to someone else."""
    query = select(Session).where(Session.id == session_id)
    if lock:
        query = query.with_for_update()
    session = (await db.exec(query)).first()
    if session is None or not principal.can_see(session.owner):
        raise NotFound(f"session {session_id} not found")
    return session


async def create_session(db: AsyncSession, principal: Principal, body: SessionCreate) -> Session:
    await get_agent(db, principal.subject, body.agent)
    now = utcnow()
    session = Session(
        id=new_id("ses"), owner=principal.subject, agent=body.agent, title=body.title,
        meta=body.metadata, open_tool_calls=[], todos=[], created_at=now, updated_at=now,
    )
    db.add(session)
    await db.flush()
    return session


async def list_sessions(
    db: AsyncSession, principal: Principal, agent: str | None, status: str | None,
    limit: int, cursor: str | None,
) -> tuple[Sequence[Session], str | None]:
    query = select(Session)
    if not principal.is_admin:
        query = query.where(Session.owner == principal.subject)
    if agent is not None:
        query = query.where(Session.agent == agent)
    if status is not None:
        query = query.where(Session.status == status)
    return await newest_first(db, query, Session, limit, cursor)


async def update_session(db: AsyncSession, session: Session, body: SessionUpdate) -> Session:
    """Replace the title and/or metadata present in `body`."""
    fields = body.model_fields_set
    if "title" in fields:
        session.title = body.title
    if body.metadata is not None:  # never null: the schema refuses it
        session.meta = body.metadata
    if fields:
        session.updated_at = utcnow()
        db.add(session)
        await db.flush()
    return session


async def delete_session(db: AsyncSession, session: Session, force: bool) -> None:
    """Delete the session with its messages, runs, events and child sessions."""
    if session.active_run_id is not None and not force:
        raise SessionBusy(
            f"session {session.id} has an active run {session.active_run_id}",
            active_run_id=session.active_run_id,
        )
    await db.delete(session)
    await db.flush()


async def unfinished_run_ids(db: AsyncSession, session_id: str) -> list[str]:
    """Runs of the session that are queued, running or waiting, oldest first."""
    query = (select(Run.id).where(Run.session_id == session_id,
                                  col(Run.status).in_(ACTIVE_STATUSES))
             .order_by(col(Run.created_at)))
    return list((await db.exec(query)).all())


async def list_messages(
    db: AsyncSession, session: Session, include_compacted: bool, after: int, limit: int
) -> tuple[Sequence[Message], str | None]:
    """Messages in `seq` order after `after`; the cursor is the last seq of the page."""
    query = select(Message).where(Message.session_id == session.id, Message.seq > after)
    if not include_compacted:
        query = query.where(Message.state == "active")
    query = query.order_by(col(Message.seq)).limit(limit + 1)
    rows = list((await db.exec(query)).all())
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], str(rows[limit - 1].seq)


def pair_tool_calls(
    open_calls: list[dict[str, Any]], messages: Sequence[MessageIn]
) -> list[dict[str, Any]]:
    """Check that tool messages answer open calls and nothing else interrupts them.

    Returns the tool calls still open after `messages`.
    """
    open_calls = list(open_calls)
    for index, message in enumerate(messages):
        open_ids = [call["id"] for call in open_calls]
        if message.role == "tool":
            if message.tool_call_id not in open_ids:
                raise ValidationFailed.at(
                    ["body", "messages", index, "tool_call_id"],
                    f"{message.tool_call_id!r} does not answer an open tool call"
                    + (f" (open: {', '.join(open_ids)})" if open_ids else " (none is open)"),
                    "tool_call_unmatched",
                )
            open_calls = [c for c in open_calls if c["id"] != message.tool_call_id]
            continue
        if open_calls:
            raise ValidationFailed.at(
                ["body", "messages", index, "role"],
                f"tool calls {', '.join(open_ids)} have no results yet; "
                "append their tool messages first",
                "tool_calls_unanswered",
            )
        if message.tool_calls:
            ids = [call.id for call in message.tool_calls]
            if len(set(ids)) != len(ids):
                raise ValidationFailed.at(
                    ["body", "messages", index, "tool_calls"], "tool call ids must be unique",
                    "tool_call_duplicate",
                )
            open_calls = [
                {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
                for call in message.tool_calls
            ]
    return open_calls


async def append_messages(
    db: AsyncSession, session: Session, messages: Sequence[MessageIn]
) -> list[Message]:
    """Import messages without running the loop."""
    if session.active_run_id is not None:
        raise SessionBusy(
            f"session {session.id} has an active run {session.active_run_id}",
            active_run_id=session.active_run_id,
        )
    session.open_tool_calls = pair_tool_calls(session.open_tool_calls, messages)
    now = utcnow()
    rows = []
    for message in messages:
        session.last_seq += 1
        # Content parts keep exactly the members the client sent, explicit nulls included.
        content = message.model_dump(mode="json", include={"content"}, exclude_unset=True)
        calls = message.model_dump(mode="json", include={"tool_calls"}, exclude_none=True)
        rows.append(Message(
            session_id=session.id, seq=session.last_seq, role=message.role,
            content=content.get("content"), tool_calls=calls.get("tool_calls"),
            tool_call_id=message.tool_call_id, name=message.name, created_at=now,
        ))
    db.add_all(rows)
    session.message_count += len(rows)
    session.updated_at = now
    refresh_status(session)
    db.add(session)
    await db.flush()
    return rows


async def fork_session(
    db: AsyncSession, session: Session, at_seq: int | None
) -> Session:
    """A new session with a copy of the messages up to and including `at_seq`."""
    if at_seq is not None and at_seq > session.last_seq:
        raise ValidationFailed.at(
            ["body", "at_seq"], f"the session's last message is seq {session.last_seq}",
            "out_of_range",
        )
    limit = session.last_seq if at_seq is None else at_seq
    query = select(Message).where(Message.session_id == session.id, Message.seq <= limit)
    source = list((await db.exec(query.order_by(col(Message.seq)))).all())
    now = utcnow()
    fork = Session(
        id=new_id("ses"), owner=session.owner, agent=session.agent, title=session.title,
        meta=dict(session.meta), todos=list(session.todos),
        open_tool_calls=open_calls_after([], [message_view(m) for m in source]),
        message_count=len(source), last_seq=limit, llm_calls=session.llm_calls,
        created_at=now, updated_at=now,
    )
    refresh_status(fork)
    db.add(fork)
    await db.flush()
    db.add_all([
        Message(session_id=fork.id, seq=m.seq, role=m.role, content=m.content,
                tool_calls=m.tool_calls, tool_call_id=m.tool_call_id, name=m.name,
                run_id=m.run_id, state=m.state, created_at=m.created_at)
        for m in source
    ])
    await db.flush()
    return fork


async def list_session_runs(
    db: AsyncSession, session: Session, limit: int, cursor: str | None
) -> tuple[Sequence[Run], str | None]:
    query = select(Run).where(Run.session_id == session.id)
    return await newest_first(db, query, Run, limit, cursor)
