"""Core statements of the run write path, built once and executed with parameters.

A statement built anew for every write costs SQLAlchemy a cache-key walk (and its coercions)
each time; one built once keeps its key, so executing it finds the compiled form at once.
Parameters are named `v_<column>` (a SET value), `n_<column>` (an increment) and `_id`.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.store.tables import IdempotencyKey, Message, Run, RunEvent, Session

RUNS: sa.Table = Run.__table__  # type: ignore[attr-defined]
SESSIONS: sa.Table = Session.__table__  # type: ignore[attr-defined]
MESSAGES: sa.Table = Message.__table__  # type: ignore[attr-defined]
EVENTS: sa.Table = RunEvent.__table__  # type: ignore[attr-defined]
KEYS: sa.Table = IdempotencyKey.__table__  # type: ignore[attr-defined]

ID: sa.BindParameter[str] = sa.bindparam("_id", type_=sa.String)

INSERT_EVENT = sa.insert(EVENTS)
INSERTED_EVENTS = "loomd_inserted_events"
"""`connection.info` key of the event rows a transaction inserted (for the hooks' outbox)."""
INSERT_MESSAGES = sa.insert(MESSAGES)
INSERT_RUN = sa.insert(RUNS)
INSERT_SESSION = sa.insert(SESSIONS)
INSERT_KEY = sa.insert(KEYS)

SESSION_FOR_UPDATE = sa.select(SESSIONS).where(SESSIONS.c.id == ID).with_for_update()
RUN_BY_ID = sa.select(RUNS).where(RUNS.c.id == ID)
ACTIVE_HISTORY = (sa.select(MESSAGES)
                  .where(MESSAGES.c.session_id == ID, MESSAGES.c.state == "active")
                  .order_by(MESSAGES.c.seq))
NEXT_QUEUED = (sa.select(RUNS.c.id)
               .where(RUNS.c.session_id == ID, RUNS.c.status == "queued",
                      RUNS.c.id != sa.bindparam("after"))
               .order_by(RUNS.c.created_at, RUNS.c.id).limit(1))

_CALLS = sa.bindparam("n_llm_calls", type_=sa.Integer)
SESSION_COUNTERS: dict[str, Any] = {
    "llm_calls": sa.case((SESSIONS.c.llm_calls < _CALLS, _CALLS), else_=SESSIONS.c.llm_calls),
    **{name: SESSIONS.c[name] + sa.bindparam(f"n_{name}", type_=sa.Integer)
       for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
}
"""A run's counters added to its session's: the call count is an absolute high-water mark."""


def set_values(table: sa.Table, columns: frozenset[str]) -> dict[str, Any]:
    return {name: sa.bindparam(f"v_{name}", type_=table.c[name].type)
            for name in sorted(columns)}


@functools.cache
def update_by_id(table: sa.Table, columns: frozenset[str], counters: bool = False) -> sa.Update:
    """`UPDATE table SET <columns> [, session counters] WHERE id = :_id`."""
    values = set_values(table, columns)
    if counters:
        values.update(SESSION_COUNTERS)
    return sa.update(table).where(table.c.id == ID).values(values)


def values_of(row: dict[str, Any]) -> dict[str, Any]:
    """The parameters of `update_by_id` for the columns in `row`."""
    return {f"v_{name}": value for name, value in row.items()}


def counter_values(counters: dict[str, Any]) -> dict[str, Any]:
    return {f"n_{name}": value for name, value in counters.items()}


def insert_events(connection: Connection, rows: dict[str, Any] | list[dict[str, Any]]) -> None:
    """Insert event rows, noting them on the connection: the writer hands every event of its
    transaction to the hooks' outbox before it commits."""
    connection.execute(INSERT_EVENT, rows)
    connection.info.setdefault(INSERTED_EVENTS, []).extend(
        rows if isinstance(rows, list) else [rows])
