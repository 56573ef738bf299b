"""The run core's writes, as Core statements committed by the process's `Writer`.

Each method builds a write (a function of a Core connection) and awaits the commit that
holds it; no transaction is ever held across a provider or tool call. Reads that need no
lock use short read sessions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel, col, select

from app.clock import rfc3339, utcnow
from app.events.types import envelope
from app.providers.base import Usage
from app.rules import message_view, open_calls_after, session_status
from app.status import ACTIVE_STATUSES
from app.store import statements as q
from app.store.db import Database
from app.store.statements import RUNS, SESSIONS
from app.store.tables import Message, Run, Session
from app.store.writer import Writer


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

    def take(self) -> dict[str, Any]:
        """The counters to store now; the token counts start again from zero."""
        values = {"llm_calls": self.llm_calls, "prompt_tokens": self.prompt_tokens,
                  "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens}
        self.prompt_tokens = self.completion_tokens = self.total_tokens = 0
        return values


@dataclass
class StartedRun:
    """A run this process just claimed, with what its loop starts from."""

    run: Any
    """The run's row (an attribute per column, `metadata` for the ORM's `meta`)."""
    session: Any
    input_stored: bool
    history: list[dict[str, Any]]


@dataclass
class Ended:
    """A run's end as committed: its terminal event and the session's next queued run."""

    run: Any
    event: dict[str, Any]
    next_run_id: str | None
    closing: list[dict[str, Any]] = field(default_factory=list)
    """Events of the open tool calls the end answered, before `event`."""
    continued: bool = False
    """Steering input arrived as the run was ending: `event` is its `run.input`, and the run
    is `queued` to go on instead of ending."""


class StateChanged(Exception):
    """The run is not (or no longer) in the state its caller expected; nothing was written."""


def is_queued(run: Any) -> bool:
    return bool(run.status == "queued")


@dataclass(frozen=True)
class ClaimValues:
    """The parameters of a claim: running here since `now`, with a lease."""

    now: datetime
    params: dict[str, Any]


def record(row: Any) -> Any:
    """A row as an object with a (mutable) attribute per column, or None."""
    return SimpleNamespace(**row._mapping) if row is not None else None


class RunStore:
    """Database work of running runs, each method one write of the process's `Writer`."""

    def __init__(self, database: Database, writer: Writer, executor_id: str,
                 lease_s: float) -> None:
        self.database = database
        self.writer = writer
        self.executor_id = executor_id
        self.lease_time = timedelta(seconds=lease_s)
        # Lease times by the database's clock; SQLite (one process per file) takes the host's,
        # handed in as parameters, since it stores timestamps as text it cannot add to.
        sqlite = database.is_sqlite
        timestamp = RUNS.c.lease_expires_at.type
        self._now = sa.bindparam("now", type_=timestamp) if sqlite else sa.func.now()
        self.lease_end = (sa.bindparam("lease_end", type_=timestamp) if sqlite
                          else sa.func.now() + sa.bindparam("lease", type_=sa.Interval))
        """The end of a lease that starts now (`lease()` gives its parameters)."""
        self._claim = (
            sa.update(RUNS).where(RUNS.c.id == q.ID, RUNS.c.status == "queued")
            .values(status="running", lease_expires_at=self.lease_end,
                    started_at=sa.func.coalesce(RUNS.c.started_at, sa.bindparam(
                        "v_started_at", type_=RUNS.c.started_at.type)),
                    **q.set_values(RUNS, frozenset({"executor_id"})))
            .returning(*RUNS.c))
        """Claims a queued run for this process (a resumed run keeps its first start)."""
        self._run_to_end = (
            sa.select(RUNS, (RUNS.c.lease_expires_at < self._now).label("lease_expired"))
            .where(RUNS.c.id == q.ID).with_for_update())
        """The run's row, locked, and whether its lease expired."""
        self._park = (
            sa.update(RUNS)
            .where(RUNS.c.id == q.ID, RUNS.c.status == "running",
                   RUNS.c.executor_id == self.executor_id)
            .values(**q.set_values(RUNS, frozenset({
                "status", "waiting", "executor_id", "lease_expires_at", "active_ms",
                "last_seq", "turns", "usage"}))))
        self.insert_run = q.INSERT_RUN.values(lease_expires_at=self.lease_end)
        """Inserts a run with its lease (`lease()` gives the lease's parameters)."""

    def lease(self) -> dict[str, Any]:
        """The parameters of a lease that starts now, in the statements above."""
        if self.database.is_sqlite:
            return {"lease_end": utcnow() + self.lease_time}
        return {"lease": self.lease_time}

    def _clock(self) -> dict[str, Any]:
        """The parameter of `now` in the statements above."""
        return {"now": utcnow()} if self.database.is_sqlite else {}

    def claim_values(self) -> ClaimValues:
        """The parameters of a claim of a run for this process, now."""
        now = utcnow()
        return ClaimValues(now, {"v_started_at": now, "v_executor_id": self.executor_id,
                                 **self.lease()})

    # reads

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        """The session's active messages, oldest first, in the API's Message shape."""
        async with self.database.read() as db:
            query = select(Message).where(Message.session_id == session_id,
                                          Message.state == "active")
            rows = (await db.exec(query.order_by(col(Message.seq)))).all()
            return [message_view(m) for m in rows]

    async def open_tool_calls(self, session_id: str) -> list[dict[str, Any]]:
        async with self.database.read() as db:
            session = await db.get(Session, session_id)
            return list(session.open_tool_calls) if session else []

    async def queued_here(self) -> list[str]:
        """The ids of runs this process accepted that are still `queued`, oldest first."""
        async with self.database.read() as db:
            query = (select(Run.id)
                     .where(col(Run.executor_id) == self.executor_id, Run.status == "queued")
                     .order_by(col(Run.created_at), col(Run.id)))
            return list((await db.exec(query)).all())

    async def recoverable(self, everything: bool, mine: bool) -> list[str]:
        """Unfinished runs whose lease expired by the database's clock; with `mine`, also
        those of this instance id (a restart of it); with `everything` (a SQLite file whose
        lock this process holds), every unfinished run.
        """
        # A run waiting for people, or parked, is executed by no process, so none can die
        # under it.
        query = sa.select(RUNS.c.id).where(RUNS.c.status.in_(("queued", "running")))
        if not everything:
            expired = RUNS.c.lease_expires_at < self._now
            query = query.where(sa.or_(expired, RUNS.c.executor_id == self.executor_id)
                                if mine else expired)
        async with self.database.read() as db:
            result = await (await db.connection()).execute(query, self._clock())
            return list(result.scalars())

    async def active_descendants(self, run_id: str) -> list[str]:
        """The unfinished subruns of `run_id`, their subruns and so on, parents first."""
        found: list[str] = []
        frontier = [run_id]
        async with self.database.read() as db:
            connection = await db.connection()
            while frontier:
                query = sa.select(RUNS.c.id).where(RUNS.c.parent_run_id.in_(frontier),
                                                   RUNS.c.status.in_(ACTIVE_STATUSES))
                frontier = list((await connection.execute(query)).scalars())
                found.extend(frontier)
        return found

    async def expired_waits(self) -> list[tuple[str, str]]:
        """`(run_id, kind)` of the waits whose `expires_at` passed, oldest first."""
        query = (sa.select(RUNS.c.id, RUNS.c.waiting)
                 .where(RUNS.c.status == "requires_action",
                        RUNS.c.action_expires_at <= sa.bindparam(
                            "now", type_=RUNS.c.action_expires_at.type))
                 .order_by(RUNS.c.action_expires_at).limit(100))
        async with self.database.read() as db:
            result = await (await db.connection()).execute(query, {"now": utcnow()})
            return [(run_id, (waiting or {}).get("kind", "")) for run_id, waiting in result]

    # writes

    async def start(self, run_id: str, store_input: bool) -> StartedRun | None:
        """Claim a `queued` run for this process; None when it is not queued any more.

        With `store_input`, the run's input is appended to the session in the same
        transaction, unless tool calls wait for results (they must be answered first).
        The session's active history comes back with it.
        """
        claim = self.claim_values()
        return await self.writer.submit(
            lambda connection: self.claim(connection, run_id, claim, store_input),
            run_id=run_id)

    def claim(self, connection: Connection, run_id: str, claim: ClaimValues,
              store_input: bool = True, *, session: Any = None,
              changes: dict[str, Any] | None = None, fresh: bool = False) -> StartedRun | None:
        """Claim the run in `connection`'s transaction (see `start`).

        The run's creation write hands over the session row it holds, the session changes it
        has not written yet (they go with the input's), and whether the session is new (its
        history is then just the input).
        """
        run = record(connection.execute(self._claim, {"_id": run_id, **claim.params}).first())
        if run is None:
            return None
        session = session if session is not None else locked_session(connection, run.session_id)
        if session is None:
            return None
        if run.waiting is not None:  # resumed after a wait: its input is stored already
            update_by_id(connection, RUNS, run.id, {"waiting": None})
            store_input = False
        messages = run.request.get("input") or []
        input_stored = store_input and bool(messages) and not session.open_tool_calls
        stored: list[dict[str, Any]] = []
        if input_stored:
            stored = add_messages(connection, session, run.id, messages, claim.now, None,
                                  also=changes)
        elif changes:
            update_by_id(connection, SESSIONS, session.id, changes)
        history = stored if fresh else active_history(connection, session.id)
        return StartedRun(run, session, input_stored, history)

    async def renew_leases(self, run_ids: Sequence[str]) -> None:
        """Extend the leases of `run_ids` (executing here) and of every run queued here.

        Runs queued behind another run of their session are in no in-memory list, yet
        they are alive: without renewal, recovery would take them for orphans.
        """
        statement = (
            sa.update(RUNS)
            .where(RUNS.c.executor_id == self.executor_id,
                   sa.or_(RUNS.c.id.in_(list(run_ids)), RUNS.c.status == "queued"))
            .values(lease_expires_at=self.lease_end)
        )
        lease = self.lease()
        await self.writer.submit(lambda connection: connection.execute(statement, lease))

    async def append_messages(
        self, session_id: str, run_id: str, messages: list[dict[str, Any]], tally: Tally,
        changes: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Append `messages` to the session, storing the run's `tally` (and other `changes`
        of the session) with them."""
        counters = tally.take()
        now = utcnow()

        def append(connection: Connection) -> list[dict[str, Any]]:
            session = locked_session(connection, session_id)
            assert session is not None
            return add_messages(connection, session, run_id, messages, now, counters,
                                also=changes)

        return await self.writer.submit(append, run_id=run_id)

    async def await_input(
        self, run_id: str, session_id: str, required_action: dict[str, Any],
        waiting: dict[str, Any],
        expires_at: datetime, *, seq: int, active_ms: int, turns: int, usage: dict[str, int],
        tally: Tally, pending_input: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Leave the run waiting for people (`requires_action`), held by no process, with its
        `run.requires_action` event; returns the event. `pending_input` goes before any
        steering input the run has. Raises `StateChanged` when the run is not running here
        any more."""
        counters = tally.take()
        now = utcnow()
        data = {"required_action": required_action}
        statement = (
            sa.update(RUNS)
            .where(RUNS.c.id == q.ID, RUNS.c.status == "running",
                   RUNS.c.executor_id == self.executor_id)
            .values(**q.set_values(RUNS, frozenset({
                "status", "required_action", "waiting", "action_expires_at", "executor_id",
                "lease_expires_at", "active_ms", "last_seq", "turns", "usage"}))))
        values = q.values_of({
            "status": "requires_action", "required_action": required_action,
            "waiting": waiting, "action_expires_at": expires_at, "executor_id": None,
            "lease_expires_at": None, "active_ms": active_ms, "last_seq": seq,
            "turns": turns, "usage": usage})

        def wait(connection: Connection) -> dict[str, Any]:
            if connection.execute(statement, {"_id": run_id, **values}).rowcount != 1:
                raise StateChanged(run_id)
            if pending_input:
                steered = connection.execute(sa.select(RUNS.c.pending_input).where(
                    RUNS.c.id == q.ID), {"_id": run_id}).scalar() or []
                update_by_id(connection, RUNS, run_id,
                             {"pending_input": [*pending_input, *steered]})
            q.insert_events(connection, {"run_id": run_id, "seq": seq,
                                                "type": "run.requires_action", "data": data,
                                                "ts": now})
            update_by_id(connection, SESSIONS, session_id, {"updated_at": now}, counters)
            return envelope("run.requires_action", seq, run_id, session_id, now, data)

        return await self.writer.submit(wait, run_id=run_id)

    async def park(self, run_id: str, session_id: str, *, seq: int, active_ms: int,
                   turns: int, usage: dict[str, int], tally: Tally) -> dict[str, Any]:
        """Leave the run parked at a turn boundary (`paused`, the runtime pauses), held by no
        process, with its `run.paused` event; returns the event. Raises `StateChanged` when
        the run is not running here any more."""
        counters = tally.take()
        now = utcnow()
        values = q.values_of({
            "status": "paused", "waiting": {"kind": "parked", "turn": turns},
            "executor_id": None, "lease_expires_at": None, "active_ms": active_ms,
            "last_seq": seq, "turns": turns, "usage": usage})

        def park(connection: Connection) -> dict[str, Any]:
            if connection.execute(self._park, {"_id": run_id, **values}).rowcount != 1:
                raise StateChanged(run_id)
            q.insert_events(connection, {"run_id": run_id, "seq": seq, "type": "run.paused",
                                         "data": {}, "ts": now})
            update_by_id(connection, SESSIONS, session_id, {"updated_at": now}, counters)
            return envelope("run.paused", seq, run_id, session_id, now, {})

        return await self.writer.submit(park, run_id=run_id)

    async def unpark(self, run_ids: Sequence[str] | None = None) -> list[str]:
        """Queue parked runs that no process holds to go on here (all of them, or those of
        `run_ids`); their ids, oldest first."""
        statement = (sa.update(RUNS)
                     .where(RUNS.c.status == "paused", RUNS.c.executor_id.is_(None))
                     .values(status="queued", executor_id=self.executor_id,
                             lease_expires_at=self.lease_end)
                     .returning(RUNS.c.id, RUNS.c.created_at))
        if run_ids is not None:
            statement = statement.where(RUNS.c.id.in_(list(run_ids)))
        lease = self.lease()

        def unpark(connection: Connection) -> list[str]:
            rows = connection.execute(statement, lease).all()
            return [run_id for run_id, _ in sorted(rows, key=lambda row: (row[1], row[0]))]

        return await self.writer.submit(unpark)

    async def take_input(self, run_id: str, session_id: str, seq: int,
                         tally: Tally) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """Deliver the run's steering input: append it to the session with its `run.input`
        event (numbered `seq`); None when there is none."""
        counters = tally.take()
        now = utcnow()

        def take(connection: Connection) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
            run = record(connection.execute(self._run_to_end,
                                            {"_id": run_id, **self._clock()}).first())
            if run is None or not run.pending_input:
                if counters:
                    update_by_id(connection, SESSIONS, session_id, {}, counters)
                return None
            run.last_seq = seq - 1
            event = deliver_input(connection, run, now, counters)
            return list(event["data"]["messages"]), event

        return await self.writer.submit(take, run_id=run_id)

    async def finish(
        self, run_id: str, status: str, type_: str, data: dict[str, Any], *,
        seq: int | None = None, expect: Callable[[Any], bool] | None = None,
        tally: Tally | None = None, after_failure: bool = False, steerable: bool = False,
        **fields: Any,
    ) -> Ended:
        """Record the run's end with its terminal event and free its session.

        `seq` is the terminal event's seq as the executing run numbered it; without it the
        event follows the last stored one (recovery, a queued run, a run whose writes
        failed). `expect` sees the run's row and `lease_expired` by the database's clock.
        Raises `StateChanged`, writing nothing, when the run already ended or `expect(run)`
        is false. Only an end `after_failure` is taken once a write of the run failed, so a
        run with a lost write never ends as if nothing happened.
        """
        counters = tally.take() if tally is not None else None
        now = utcnow()

        def end(connection: Connection) -> Ended:
            row = connection.execute(self._run_to_end, {"_id": run_id, **self._clock()}).first()
            if row is None:
                raise StateChanged(run_id)
            run = record(row)
            if run.status not in ACTIVE_STATUSES or (expect is not None and not expect(run)):
                raise StateChanged(run_id)
            event_seq = seq if seq is not None else run.last_seq + 1
            stored_counters = counters
            closing: list[dict[str, Any]] = []
            if run.pending_input and status == "completed":
                # Input came as the run was ending: it is delivered, not lost (§4.3); with
                # `steerable` the run goes on for one more turn instead of ending.
                run.last_seq = event_seq - 1
                delivered = deliver_input(connection, run, now, stored_counters)
                if steerable:
                    progress = {_column_name(Run, key): fields[key]
                                for key in ("turns", "usage", "active_ms") if key in fields}
                    update_by_id(connection, RUNS, run_id, {
                        "status": "queued", "waiting": {"kind": "input"},
                        "executor_id": self.executor_id, **progress})
                    return Ended(run, delivered, None, [], continued=True)
                stored_counters = None
                closing.append(delivered)
                event_seq = run.last_seq + 1
            elif seq is None and run.waiting is not None:
                closing = close_wait(connection, run, data.get("reason") or status, now)
                event_seq = run.last_seq + 1
            event = envelope(type_, event_seq, run_id, run.session_id, now, data)
            q.insert_events(connection, {"run_id": run_id, "seq": event_seq,
                                                "type": type_, "data": data, "ts": now})
            values = {"last_seq": event_seq, "status": status, "ended_at": now,
                      "lease_expires_at": None, "required_action": None, "waiting": None,
                      "action_expires_at": None}
            values.update({_column_name(Run, key): value for key, value in fields.items()})
            update_by_id(connection, RUNS, run_id, values)
            session = locked_session(connection, run.session_id)
            next_run_id = None
            if session is not None:
                changes: dict[str, Any] = {}
                if session.active_run_id == run_id:
                    next_run_id = connection.execute(
                        q.NEXT_QUEUED, {"_id": session.id, "after": run_id}).scalar()
                    changes.update(active_run_id=next_run_id, updated_at=now,
                                   status=session_status(next_run_id, session.open_tool_calls))
                if changes or stored_counters:
                    update_by_id(connection, SESSIONS, session.id, changes, stored_counters)
            return Ended(run, event, next_run_id, closing)

        return await self.writer.submit(end, run_id=run_id, last=after_failure)


def active_history(connection: Connection, session_id: str) -> list[dict[str, Any]]:
    """The session's active messages, oldest first, in the API's Message shape."""
    return [message_view(m) for m in connection.execute(q.ACTIVE_HISTORY, {"_id": session_id})]


@functools.cache
def _column_name(cls: type[SQLModel], attribute: str) -> str:
    return str(sa.inspect(cls).column_attrs[attribute].columns[0].name)


def locked_session(connection: Connection, session_id: str) -> Any:
    """The session's row, locked for the rest of the transaction (on Postgres)."""
    return record(connection.execute(q.SESSION_FOR_UPDATE, {"_id": session_id}).first())


def update_by_id(connection: Connection, table: sa.Table, row_id: str, values: dict[str, Any],
                 counters: dict[str, Any] | None = None) -> None:
    """Set `values` on one row (and add a run's `counters` to a session's)."""
    statement = q.update_by_id(table, frozenset(values), counters is not None)
    params = {"_id": row_id, **q.values_of(values)}
    if counters is not None:
        params.update(q.counter_values(counters))
    connection.execute(statement, params)


def add_messages(connection: Connection, session: Any, run_id: str,
                 messages: list[dict[str, Any]], now: datetime,
                 counters: dict[str, Any] | None,
                 also: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Insert `messages` after the session's last one and update the session with them
    (and with the changes `also` holds)."""
    rows = [{
        "session_id": session.id, "seq": session.last_seq + index, "role": message["role"],
        "content": message.get("content"), "tool_calls": message.get("tool_calls"),
        "tool_call_id": message.get("tool_call_id"), "name": message.get("name"),
        "run_id": run_id, "state": "active", "created_at": now,
    } for index, message in enumerate(messages, start=1)]
    connection.execute(q.INSERT_MESSAGES, rows)
    open_calls = open_calls_after(session.open_tool_calls, messages)
    update_by_id(connection, SESSIONS, session.id, {
        **(also or {}), "last_seq": session.last_seq + len(rows),
        "message_count": session.message_count + len(rows), "updated_at": now,
        "open_tool_calls": open_calls,
        "status": session_status(session.active_run_id, open_calls)}, counters)
    session.last_seq += len(rows)
    session.open_tool_calls = open_calls
    return [{key: value for key, value in row.items() if key != "session_id"} for row in rows]


def close_wait(connection: Connection, run: Any, reason: str,
               now: datetime) -> list[dict[str, Any]]:
    """Answer the tool calls a waiting run (not executing anywhere) leaves open as it ends:
    an approval not given is denied, a client output not submitted is cancelled. Returns the
    events, numbered after `run.last_seq`, which is advanced past them."""
    session = locked_session(connection, run.session_id)
    if session is None or not session.open_tool_calls:
        return []
    waiting = run.waiting or {}
    asks = ({call["id"] for call in waiting.get("tool_calls", [])}
            if waiting.get("kind") == "approve_tool_calls" else set())
    turn = waiting.get("turn", run.turns)
    text = f"<cancelled: {reason}>"
    messages, events = [], []
    for call in session.open_tool_calls:
        messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["name"],
                         "content": text})
        if call["id"] in asks:
            type_, data = "tool.denied", {"turn": turn, "tool_call_id": call["id"],
                                          "name": call["name"], "by": "approval",
                                          "reason": text}
        else:
            type_, data = "tool.completed", {"turn": turn, "tool_call_id": call["id"],
                                             "name": call["name"], "output": text,
                                             "is_error": True, "duration_ms": 0}
        run.last_seq += 1
        q.insert_events(connection, {"run_id": run.id, "seq": run.last_seq,
                                            "type": type_, "data": data, "ts": now})
        events.append(envelope(type_, run.last_seq, run.id, run.session_id, now, data))
    add_messages(connection, session, run.id, messages, now, None)
    return events


def deliver_input(connection: Connection, run: Any, now: datetime,
                  counters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append the run's steering input to its session, with a `run.input` event numbered
    after `run.last_seq` (which is advanced); returns the event."""
    session = locked_session(connection, run.session_id)
    stored = add_messages(connection, session, run.id, run.pending_input, now, counters)
    messages = [{"seq": m["seq"], "role": m["role"], "content": m["content"],
                 "run_id": run.id, "created_at": rfc3339(now)} for m in stored]
    run.last_seq += 1
    data = {"messages": messages}
    q.insert_events(connection, {"run_id": run.id, "seq": run.last_seq,
                                        "type": "run.input", "data": data, "ts": now})
    update_by_id(connection, RUNS, run.id, {"pending_input": [], "last_seq": run.last_seq})
    return envelope("run.input", run.last_seq, run.id, run.session_id, now, data)
