"""Creating a run as one write of the process's `Writer`, in Core statements.

The write checks the session policies, writes the run (`queued`) with its `run.created`
event, and, when the manager has a slot for it, claims it in the same transaction: a short
run's first LLM call then waits for one commit instead of two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.auth import Principal
from app.clock import utcnow
from app.errors import (
    Conflict,
    IdempotencyConflict,
    NotFound,
    RuntimePaused,
    SessionBusy,
    Unavailable,
    ValidationFailed,
)
from app.events.types import envelope
from app.ids import new_id
from app.rules import session_status
from app.runs.runtime import RETRY_AFTER_S
from app.runs.store import StartedRun, locked_session, record, update_by_id
from app.schemas.runs import Run as RunSchema
from app.schemas.runs import RunCreate
from app.schemas.sessions import SessionCreate
from app.services.idempotency import TTL, IdempotencyScope
from app.services.runs import (
    Backpressure,
    SessionPending,
    input_messages,
    resolved_config,
    run_view,
)
from app.store import statements as q
from app.store.statements import KEYS, RUNS, SESSIONS
from app.store.tables import Agent

AGENTS: sa.Table = Agent.__table__  # type: ignore[attr-defined]
_AGENT = (sa.select(AGENTS.c.name, AGENTS.c.version, AGENTS.c.config)
          .where(AGENTS.c.owner == sa.bindparam("owner"), AGENTS.c.name == sa.bindparam("name")))
_KEY_MATCH = sa.and_(*(KEYS.c[name] == sa.bindparam(name)
                       for name in ("subject", "method", "path", "key")))
_KEY = sa.select(KEYS).where(_KEY_MATCH)
_DELETE_KEY = sa.delete(KEYS).where(_KEY_MATCH)


@dataclass
class Creation:
    """What a run creation wrote (or, `replayed`, found from an earlier request)."""

    run: Any
    """The run as created, with the ORM's attribute names (`meta`), for `run_view`."""
    replayed: bool = False
    created_event: dict[str, Any] | None = None
    start_now: bool = False
    interrupts: str | None = None
    ended: list[dict[str, Any]] = field(default_factory=list)
    started: StartedRun | None = None
    steered: bool = False
    """`if_busy: "steer"` on a busy session: no run was created, `run` is the active one,
    which got the input."""


@dataclass(frozen=True)
class Policy:
    """What the manager knew when the request came: whether it admits and claims runs."""

    executor_id: str
    insert_run: Any
    lease: dict[str, Any]
    """The parameters of `insert_run` that give the run its lease."""
    accepting: bool
    has_capacity: bool
    claim: Callable[..., StartedRun | None] | None
    """Claims the run in its creation write, when the manager has a slot for it
    (`RunStore.claim` without its claim values)."""
    known_providers: list[str]
    paused: bool = False
    """The runtime is paused: the run is refused (a subrun, part of its parent's turn, is
    not)."""


@dataclass(frozen=True)
class Parent:
    """The run a subrun is started for: its child session hangs under the parent's."""

    run_id: str
    session_id: str
    depth: int
    """The subrun's depth (the parent's plus one)."""


def creation(
    run_id: str, principal: Principal, body: RunCreate, policy: Policy, *,
    session_id: str | None,
    new_session: SessionCreate | None, scope: IdempotencyScope | None, digest: str,
    parent: Parent | None = None, owner: str | None = None,
) -> Callable[[Connection], Creation]:
    """The write that creates the run; it raises the API's errors before writing anything.

    A new session is `owner`'s (the caller's by default), of that owner's agent."""
    owner = owner or principal.subject

    def create(connection: Connection) -> Creation:
        now = utcnow()
        session = None
        if session_id is not None:
            session = locked_session(connection, session_id)
            if session is None or not principal.can_see(session.owner):
                raise NotFound(f"session {session_id} not found")
        if scope is not None:
            prior = _prior(connection, scope, digest, now)
            if prior is not None:
                return Creation(_run_record(connection, prior), replayed=True)
        if session is None:
            assert new_session is not None
            agent = _agent(connection, owner, new_session.agent)
            if agent is None:
                raise NotFound(f"agent {new_session.agent!r} not found"
                               + (f" for owner {owner!r}" if owner != principal.subject else ""))
        else:
            agent = _agent(connection, session.owner, session.agent)
            if agent is None:
                raise Conflict(f"the agent {session.agent!r} of session {session.id} was deleted")
        if (session is not None and session.active_run_id is not None
                and body.if_busy == "steer"):
            return _steer(connection, session.active_run_id, body, scope, digest, now)
        config = resolved_config(agent.config, body)
        _check(policy, config, body, session)
        fresh = session is None
        if session is None:
            assert new_session is not None
            session = _insert_session(connection, owner, new_session, now, parent)
        outcome = _insert_run(connection, run_id, session, agent, body, config, policy, now,
                              parent.depth if parent is not None else 0)
        if scope is not None:
            # An expired key of the same name goes only now: nothing is written before the
            # checks above have passed, so a refused request leaves the batch untouched.
            connection.execute(_DELETE_KEY, _key_of(scope))
            connection.execute(q.INSERT_KEY, {
                "subject": scope.subject, "method": scope.method, "path": scope.path,
                "key": scope.key, "request_hash": digest, "resource_id": outcome.run.id,
                "created_at": now, "expires_at": now + TTL})
        changes = ({"active_run_id": run_id, "status": session.status, "updated_at": now}
                   if outcome.start_now else {})
        if outcome.start_now and policy.claim is not None:
            outcome.started = policy.claim(connection, run_id, session=session,
                                           changes=changes, fresh=fresh)
        elif changes:
            update_by_id(connection, SESSIONS, session.id, changes)
        return outcome

    return create


def _steer(connection: Connection, run_id: str, body: RunCreate,
           scope: IdempotencyScope | None, digest: str, now: datetime) -> Creation:
    """Queue the input into the session's active run instead of creating one."""
    from app.runs.steering import queue_input  # it imports the waits, which import this

    run = record(connection.execute(q.RUN_BY_ID.with_for_update(), {"_id": run_id}).first())
    queue_input(connection, run, input_messages(body))
    if scope is not None:
        connection.execute(_DELETE_KEY, _key_of(scope))
        connection.execute(q.INSERT_KEY, {
            "subject": scope.subject, "method": scope.method, "path": scope.path,
            "key": scope.key, "request_hash": digest, "resource_id": run_id,
            "created_at": now, "expires_at": now + TTL})
    return Creation(as_run(vars(run)), steered=True)


def _check(policy: Policy, config: dict[str, Any], body: RunCreate, session: Any) -> None:
    if not policy.accepting:
        raise Unavailable("the service is shutting down", headers={"Retry-After": "5"})
    if policy.paused:
        raise RuntimePaused("the runtime is paused; new runs start once it resumes",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    provider = config["model"].split(":", 1)[0]
    if provider not in policy.known_providers:
        raise ValidationFailed.at(
            ["body", "overrides", "model"],
            f"unknown provider {provider!r}; known providers: "
            f"{', '.join(policy.known_providers)}",
        )
    if session is not None and session.active_run_id is not None:
        if body.if_busy == "reject":
            raise SessionBusy(
                f"session {session.id} has an active run {session.active_run_id}",
                headers={"Retry-After": "1"}, active_run_id=session.active_run_id,
            )
    elif session is not None and session.open_tool_calls and body.on_pending == "reject":
        raise SessionPending(
            f"session {session.id} has tool calls without results",
            pending_tool_calls=session.open_tool_calls,
        )
    if not policy.has_capacity:
        raise Backpressure("too many runs are running or queued; retry later",
                           headers={"Retry-After": "1"})


def _prior(connection: Connection, scope: IdempotencyScope, digest: str,
           now: datetime) -> str | None:
    """The run an earlier request with this key created (None once the key expired); 409
    for another body."""
    row = connection.execute(_KEY, _key_of(scope)).first()
    if row is None or row.expires_at <= now:
        return None
    if row.request_hash != digest:
        raise IdempotencyConflict("this Idempotency-Key was used with a different request body",
                                  idempotency_key=scope.key)
    return str(row.resource_id)


def _key_of(scope: IdempotencyScope) -> dict[str, str]:
    return {"subject": scope.subject, "method": scope.method, "path": scope.path,
            "key": scope.key}


def _agent(connection: Connection, owner: str, name: str) -> Any:
    return record(connection.execute(_AGENT, {"owner": owner, "name": name}).first())


def _insert_session(connection: Connection, owner: str, body: SessionCreate,
                    now: datetime, parent: Parent | None) -> Any:
    values: dict[str, Any] = {
        "id": new_id("ses"), "owner": owner, "agent": body.agent,
        "title": body.title, "metadata": body.metadata, "status": "idle",
        "active_run_id": None, "open_tool_calls": [],
        "parent_session_id": parent.session_id if parent is not None else None,
        "parent_run_id": parent.run_id if parent is not None else None, "message_count": 0,
        "last_seq": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
        "llm_calls": 0, "todos": [],
        "created_at": now, "updated_at": now,
    }
    connection.execute(q.INSERT_SESSION, values)
    return SimpleNamespace(**values)


def _insert_run(connection: Connection, run_id: str, session: Any, agent: Any,
                body: RunCreate, config: dict[str, Any], policy: Policy,
                now: datetime, depth: int) -> Creation:
    ended: list[dict[str, Any]] = []
    interrupts = None
    if session.active_run_id is not None and body.if_busy == "interrupt":
        interrupts = session.active_run_id
        ended = _cancel_queued(connection, session, f"interrupted by {run_id}", now)
    values: dict[str, Any] = {
        "id": run_id, "session_id": session.id, "owner": session.owner, "agent": agent.name,
        "agent_version": agent.version, "status": "queued", "stop_reason": None,
        "error": None, "output": None, "turns": 0, "usage": {}, "required_action": None,
        "waiting": None, "action_expires_at": None, "decisions": [], "pending_input": [],
        "active_ms": 0, "depth": depth,
        "parent_run_id": session.parent_run_id, "last_seq": 1, "metadata": body.metadata,
        "request": {"input": input_messages(body), "on_pending": body.on_pending,
                    "on_disconnect": body.on_disconnect, "if_busy": body.if_busy},
        "config": config, "executor_id": policy.executor_id, "created_at": now,
        "started_at": None, "ended_at": None,
    }
    connection.execute(policy.insert_run, {**values, **policy.lease})
    run = as_run({**values, "lease_expires_at": None})
    data = {"run": RunSchema.model_validate(run_view(run)).model_dump(mode="json")}
    q.insert_events(connection, {"run_id": run_id, "seq": 1, "type": "run.created",
                                        "data": data, "ts": now})
    start_now = session.active_run_id is None
    if start_now:  # written by the caller, with the claim's session update when there is one
        session.active_run_id = run_id
        session.status = session_status(run_id, session.open_tool_calls)
    event = envelope("run.created", 1, run_id, session.id, now, data)
    return Creation(run, created_event=event, start_now=start_now, interrupts=interrupts,
                    ended=ended)


def _cancel_queued(connection: Connection, session: Any, reason: str,
                   now: datetime) -> list[dict[str, Any]]:
    """End the session's queued runs as cancelled (the session row is locked).

    An active run that is still queued ends too, and the session is free; a running one is
    left to its process to cancel.
    """
    queued = connection.execute(
        sa.select(RUNS.c.id, RUNS.c.last_seq)
        .where(RUNS.c.session_id == session.id, RUNS.c.status == "queued")
        .with_for_update()).all()
    ended = []
    data = {"reason": reason}
    for run_id, last_seq in queued:
        seq = last_seq + 1
        update_by_id(connection, RUNS, run_id, {
            "status": "cancelled", "last_seq": seq, "ended_at": now, "lease_expires_at": None})
        q.insert_events(connection, {"run_id": run_id, "seq": seq,
                                            "type": "run.cancelled", "data": data, "ts": now})
        ended.append(envelope("run.cancelled", seq, run_id, session.id, now, data))
        if session.active_run_id == run_id:
            session.active_run_id = None
    return ended


def _run_row(connection: Connection, run_id: str) -> Any:
    return record(connection.execute(q.RUN_BY_ID, {"_id": run_id}).first())


def _run_record(connection: Connection, run_id: str) -> Any:
    row = _run_row(connection, run_id)
    if row is None:
        raise NotFound(f"run {run_id} not found")
    return as_run(vars(row))


def as_run(columns: dict[str, Any]) -> Any:
    """A run's columns under the ORM's attribute names (`metadata` is `meta`)."""
    values = dict(columns)
    values["meta"] = values.pop("metadata")
    return SimpleNamespace(**values)
