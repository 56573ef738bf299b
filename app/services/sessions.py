"""Sessions and their message history."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth import Principal
from app.clock import utcnow
from app.errors import Conflict, NotFound, SessionBusy, Unavailable, ValidationFailed
from app.ids import new_id
from app.loop.config import RunConfig
from app.providers.base import ProviderError
from app.rules import message_view, open_calls_after, session_status
from app.runs import compaction
from app.schemas.messages import MessageIn
from app.schemas.sessions import SessionCreate, SessionUpdate
from app.services.agents import get_agent
from app.status import ACTIVE_STATUSES
from app.store.pagination import newest_first
from app.store.tables import Message, Run, Session
from app.store.writer import StorageFailed

if TYPE_CHECKING:
    from app.runs.manager import RunManager

logger = logging.getLogger("loomd.sessions")


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


async def create_session(db: AsyncSession, owner: str, body: SessionCreate) -> Session:
    """A session of `owner`'s agent `body.agent`, owned by `owner`."""
    await get_agent(db, owner, body.agent)
    now = utcnow()
    session = Session(
        id=new_id("ses"), owner=owner, agent=body.agent, title=body.title,
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
    # Up to `at_seq`, the messages are as they were then: those a later compaction folded
    # are active again.
    views = [message_view(m) for m in source]
    states = compaction.fork_states(views)
    now = utcnow()
    fork = Session(
        id=new_id("ses"), owner=session.owner, agent=session.agent, title=session.title,
        meta=dict(session.meta), todos=list(session.todos),
        open_tool_calls=open_calls_after(
            [], [v for v, state in zip(views, states, strict=True) if state == "active"]),
        message_count=len(source), last_seq=limit, llm_calls=session.llm_calls,
        created_at=now, updated_at=now,
    )
    refresh_status(fork)
    db.add(fork)
    await db.flush()
    db.add_all([
        Message(session_id=fork.id, seq=m.seq, role=m.role, content=m.content,
                tool_calls=m.tool_calls, tool_call_id=m.tool_call_id, name=m.name,
                run_id=m.run_id, state=state, created_at=m.created_at)
        for m, state in zip(source, states, strict=True)
    ])
    await db.flush()
    return fork


async def list_session_runs(
    db: AsyncSession, session: Session, limit: int, cursor: str | None
) -> tuple[Sequence[Run], str | None]:
    query = select(Run).where(Run.session_id == session.id)
    return await newest_first(db, query, Run, limit, cursor)


async def compact_session(manager: RunManager, principal: Principal, session_id: str,
                          reason: str | None) -> compaction.Outcome:
    """Fold the session's older messages into a summary (§10), with the `keep_last` of its
    agent's current configuration; the threshold does not apply.

    No transaction is held across the summary call: the session is read, summarised, then
    written only if it did not change meanwhile (else 409, nothing written).
    """
    async with manager.database.read() as db:
        session = await get_session(db, principal, session_id)
        if session.active_run_id is not None:
            raise SessionBusy(
                f"session {session.id} has an active run {session.active_run_id}",
                active_run_id=session.active_run_id)
        try:
            agent = await get_agent(db, session.owner, session.agent)
        except NotFound:
            raise Conflict(
                f"the agent {session.agent!r} of session {session.id} was deleted") from None
        query = select(Message).where(Message.session_id == session.id,
                                      Message.state == "active")
        messages = [message_view(m) for m in (await db.exec(query.order_by(col(Message.seq))))]
        config = RunConfig.parse(agent.config)
        last_seq, llm_calls = session.last_seq, session.llm_calls
        open_calls = list(session.open_tool_calls)
    before = compaction.estimate_tokens(messages)
    plan = compaction.plan_fold(messages, config.compaction.keep_last, last_seq, open_calls)
    if plan is None:
        return compaction.Outcome(False, before, before, 0)
    try:
        provider, model = manager.providers.get(config.model)
        answer = await compaction.summarise(
            provider, compaction.summary_request(config, model, plan.folded, llm_calls))
    except (ProviderError, compaction.SummaryFailed) as failure:
        detail = failure.message if isinstance(failure, ProviderError) else failure.detail
        raise Unavailable(f"the summary could not be made, nothing was compacted: {detail}",
                          reason="summary_failed") from None
    summary = compaction.summary_message(answer)
    usage = answer.usage
    counters = {"llm_calls": llm_calls + 1, "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens}
    try:
        stored = await manager.writer.submit(compaction.compaction_write(
            session_id, plan, summary, run_id=None, counters=counters))
    except StorageFailed as failure:
        raise Unavailable(f"the compaction could not be stored: {failure.detail}",
                          headers={"Retry-After": "1"}) from None
    logger.info("session compacted", extra={"session_id": session_id, "reason": reason,
                                            "folded_messages": len(plan.folded)})
    return compaction.outcome_of(plan, summary, before, stored)
