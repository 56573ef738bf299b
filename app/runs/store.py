"""The run's short transactions: messages, counters, state changes. One owner per call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session as SyncSession
from sqlmodel import col, select

from app.clock import utcnow
from app.providers.base import Usage
from app.runs.status import ACTIVE_STATUSES
from app.services.sessions import message_view, open_calls_after, refresh_status
from app.store.db import Database
from app.store.tables import Message, Run, RunEvent, Session


@dataclass
class Tally:
    """Session counters a run keeps in memory and stores with its next write.

    `llm_calls` is the session's running count of LLM calls (it numbers the calls, so it is
    an absolute value); the token counts are usage not stored yet.
    """

    llm_calls: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens

    def store_into(self, session: Session) -> None:
        """Add the unsaved usage to `session` and forget it."""
        session.llm_calls = max(session.llm_calls, self.llm_calls)
        session.prompt_tokens += self.prompt_tokens
        session.completion_tokens += self.completion_tokens
        session.total_tokens += self.total_tokens
        self.prompt_tokens = self.completion_tokens = self.total_tokens = 0


@dataclass
class StartedRun:
    """A run this process just claimed, with what its loop starts from."""

    run: Run
    session: Session
    input_stored: bool


class StateChanged(Exception):
    """The run is not (or no longer) in the state its caller expected; nothing was written."""


def is_queued(run: Run) -> bool:
    return run.status == "queued"


def is_orphaned(run: Run) -> bool:
    """Unfinished, but its process stopped renewing the lease."""
    return run.lease_expires_at is not None and run.lease_expires_at < utcnow()


def _finishable(run: Run, only_if: Callable[[Run], bool] | None, seen_seq: int) -> bool:
    if run.status not in ACTIVE_STATUSES:
        return False
    return only_if is None or (only_if(run) and run.last_seq == seen_seq)


class RunStore:
    """Database work of running runs, each method its own short write transaction."""

    def __init__(self, database: Database, executor_id: str, lease_s: float) -> None:
        self.database = database
        self.executor_id = executor_id
        self.lease = timedelta(seconds=lease_s)

    async def load(self, run_id: str) -> tuple[Run, Session] | None:
        async with self.database.read() as db:
            run = await db.get(Run, run_id)
            if run is None:
                return None
            session = await db.get(Session, run.session_id)
            return (run, session) if session is not None else None

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        """The session's active messages, oldest first, in the API's Message shape."""
        async with self.database.read() as db:
            query = select(Message).where(Message.session_id == session_id,
                                          Message.state == "active")
            rows = (await db.exec(query.order_by(col(Message.seq)))).all()
            return [message_view(m) for m in rows]

    async def start(self, run_id: str, store_input: bool) -> StartedRun | None:
        """Claim a `queued` run for this process; None when it is not queued any more.

        With `store_input`, the run's input is appended to the session in the same
        transaction, unless tool calls wait for results (they must be answered first).
        """
        def claim(db: SyncSession) -> StartedRun | None:
            run = db.get(Run, run_id, with_for_update=True)
            session = db.get(Session, run.session_id) if run is not None else None
            if run is None or session is None or run.status != "queued":
                return None
            now = utcnow()
            run.status, run.started_at = "running", now
            run.executor_id, run.lease_expires_at = self.executor_id, now + self.lease
            db.add(run)
            messages = run.request.get("input") or []
            input_stored = store_input and bool(messages) and not session.open_tool_calls
            if input_stored:
                _add_messages(db, session, run.id, messages, now)
            db.flush()
            return StartedRun(run, session, input_stored)

        return await self.database.run_write(claim)

    async def renew_leases(self, run_ids: Sequence[str]) -> None:
        """Extend the leases of `run_ids` (executing here) and of every run queued here.

        Runs queued behind another run of their session are in no in-memory list, yet
        they are alive: without renewal, recovery would take them for orphans.
        """
        statement = (
            update(Run)
            .where(col(Run.executor_id) == self.executor_id,
                   or_(col(Run.id).in_(run_ids), col(Run.status) == "queued"))
            .values(lease_expires_at=utcnow() + self.lease)
        )
        await self.database.run_write(lambda db: db.connection().execute(statement))

    async def append_messages(
        self, session_id: str, run_id: str, messages: list[dict[str, Any]], tally: Tally,
    ) -> list[dict[str, Any]]:
        """Append `messages` to the session, storing the run's `tally` with them."""
        def append(db: SyncSession) -> list[dict[str, Any]]:
            session = db.get(Session, session_id, with_for_update=True)
            assert session is not None
            rows = _add_messages(db, session, run_id, messages, utcnow())
            tally.store_into(session)
            db.flush()
            return [message_view(row) for row in rows]

        return await self.database.run_write(append)

    async def open_tool_calls(self, session_id: str) -> list[dict[str, Any]]:
        async with self.database.read() as db:
            session = await db.get(Session, session_id)
            return list(session.open_tool_calls) if session else []

    async def finish(
        self, run_id: str, status: str, terminal: dict[str, Any], *,
        only_if: Callable[[Run], bool] | None = None, tally: Tally | None = None,
        **fields: Any,
    ) -> str | None:
        """Record the run's end with its `terminal` event and free its session.

        Returns the session's next queued run. Raises `StateChanged` (writing nothing) when
        the run already ended, or, for callers that do not execute the run (`only_if`), when
        `only_if(run)` is false or the run has events its caller has not seen.
        """
        def end(db: SyncSession) -> str | None:
            run = db.get(Run, run_id, with_for_update=True)
            if run is None or not _finishable(run, only_if, terminal["seq"] - 1):
                raise StateChanged(run_id)
            db.add(RunEvent(run_id=run_id, seq=terminal["seq"], type=terminal["type"],
                            data=terminal["data"], ts=datetime.fromisoformat(terminal["ts"])))
            run.last_seq = terminal["seq"]
            run.status = status
            run.ended_at = utcnow()
            run.lease_expires_at = None
            run.required_action = None
            for key, value in fields.items():
                setattr(run, key, value)
            db.add(run)
            session = db.get(Session, run.session_id, with_for_update=True)
            if session is not None and tally is not None:
                tally.store_into(session)
                db.add(session)
            next_run_id = None
            if session is not None and session.active_run_id == run_id:
                next_run_id = _next_queued(db, session.id, run_id)
                session.active_run_id = next_run_id
                session.updated_at = utcnow()
                refresh_status(session)
                db.add(session)
            return next_run_id

        return await self.database.run_write(end)

    async def queued_here(self) -> list[str]:
        """The ids of runs this process accepted that are still `queued`, oldest first."""
        async with self.database.read() as db:
            query = (select(Run.id)
                     .where(col(Run.executor_id) == self.executor_id, Run.status == "queued")
                     .order_by(col(Run.created_at), col(Run.id)))
            return list((await db.exec(query)).all())

    async def expired_runs(self) -> list[Run]:
        """Unfinished runs whose executing process stopped renewing their lease."""
        now = utcnow()
        async with self.database.read() as db:
            query = select(Run).where(
                col(Run.status).in_(ACTIVE_STATUSES), col(Run.lease_expires_at) < now
            )
            return list((await db.exec(query)).all())


def _next_queued(db: SyncSession, session_id: str, after_run_id: str) -> str | None:
    query = (select(Run.id).where(Run.session_id == session_id, Run.status == "queued",
                                  Run.id != after_run_id)
             .order_by(col(Run.created_at), col(Run.id)).limit(1))
    return db.exec(query).first()


def _add_messages(db: SyncSession, session: Session, run_id: str, messages: list[dict[str, Any]],
                  now: datetime) -> list[Message]:
    rows = []
    for message in messages:
        session.last_seq += 1
        rows.append(Message(
            session_id=session.id, seq=session.last_seq, role=message["role"],
            content=message.get("content"), tool_calls=message.get("tool_calls"),
            tool_call_id=message.get("tool_call_id"), name=message.get("name"),
            run_id=run_id, created_at=now,
        ))
    db.add_all(rows)
    session.open_tool_calls = open_calls_after(session.open_tool_calls, messages)
    session.message_count += len(rows)
    session.updated_at = now
    refresh_status(session)
    db.add(session)
    return rows
