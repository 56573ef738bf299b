"""Runs: creation (busy and pending policies, admission), listing, the API view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth import Principal
from app.clock import utcnow
from app.errors import AppError, Conflict, NotFound, SessionBusy, Unavailable, ValidationFailed
from app.events.types import envelope
from app.ids import new_id
from app.schemas.runs import Run as RunSchema
from app.schemas.runs import RunCreate
from app.services.agents import get_agent
from app.services.sessions import refresh_status
from app.store.pagination import newest_first
from app.store.tables import Run, RunEvent, Session


class SessionPending(Conflict):
    code, title = "session_pending", "Session pending"


class Backpressure(AppError):
    status_code, code, title = 429, "backpressure", "Too many runs"


def run_view(run: Run) -> dict[str, Any]:
    """The public shape of a run."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "llm_calls": 0}
    return {
        "id": run.id, "session_id": run.session_id, "agent": run.agent,
        "agent_version": run.agent_version, "owner": run.owner, "status": run.status,
        "stop_reason": run.stop_reason, "error": run.error, "output": run.output,
        "turns": run.turns, "usage": {**usage, **run.usage},
        "required_action": run.required_action, "parent_run_id": run.parent_run_id,
        "last_seq": run.last_seq, "metadata": run.meta, "created_at": run.created_at,
        "started_at": run.started_at, "ended_at": run.ended_at,
    }


@dataclass
class CreatedRun:
    """A run just written, and what to do once its transaction committed."""

    run: Run
    created_event: dict[str, Any]
    start_now: bool
    interrupts: str | None
    """The session's active run, to cancel: the new run waits behind it, so two runs of one
    session never execute at once."""
    ended: list[dict[str, Any]]
    """Terminal events of the session's queued runs that the interrupt cancelled."""


def _input_messages(body: RunCreate) -> list[dict[str, Any]]:
    if isinstance(body.input, str):
        return [{"role": "user", "content": body.input}] if body.input else []
    return [m.model_dump(mode="json", exclude_none=True) for m in body.input]


def _resolved_config(agent_config: dict[str, Any], body: RunCreate) -> dict[str, Any]:
    """The agent's configuration with the run's overrides applied."""
    overrides = body.overrides.model_dump(mode="json", exclude_unset=True)
    config = dict(agent_config)
    for field in ("model", "instructions", "sampling", "max_turns", "timeout_s", "compaction"):
        if field in overrides:
            config[field] = overrides[field]
    names = [tool.get("name") for tool in config.get("tools", [])]
    if body.overrides.tools is not None:
        unknown = [n for n in body.overrides.tools if n not in names]
        if unknown:
            raise ValidationFailed.at(
                ["body", "overrides", "tools"],
                f"the agent has no tool {', '.join(map(repr, unknown))}; "
                f"its tools are {', '.join(map(repr, filter(None, names))) or 'none'}",
            )
        config["only_tools"] = body.overrides.tools
    if "allowed_hosts" in overrides:
        config["allowed_hosts"] = overrides["allowed_hosts"]
    return config


async def create_run(
    db: AsyncSession, session: Session, body: RunCreate, *, executor_id: str, lease_s: float,
    has_capacity: bool, accepting: bool, known_providers: list[str],
) -> CreatedRun:
    """Write the run (`queued`) and its `run.created` event, applying the session policies."""
    if not accepting:
        raise Unavailable("the service is shutting down", headers={"Retry-After": "5"})
    agent = await get_agent_or_conflict(db, session)
    config = _resolved_config(agent.config, body)
    provider = config["model"].split(":", 1)[0]
    if provider not in known_providers:
        raise ValidationFailed.at(
            ["body", "overrides", "model"],
            f"unknown provider {provider!r}; known providers: {', '.join(known_providers)}",
        )
    if session.active_run_id is not None:
        if body.if_busy == "reject":
            raise SessionBusy(
                f"session {session.id} has an active run {session.active_run_id}",
                headers={"Retry-After": "1"}, active_run_id=session.active_run_id,
            )
    elif session.open_tool_calls and body.on_pending == "reject":
        raise SessionPending(
            f"session {session.id} has tool calls without results",
            pending_tool_calls=session.open_tool_calls,
        )
    if not has_capacity:
        raise Backpressure("too many runs are running or queued; retry later",
                           headers={"Retry-After": "1"})
    now = utcnow()
    run_id = new_id("run")
    ended: list[dict[str, Any]] = []
    interrupts = None
    if session.active_run_id is not None and body.if_busy == "interrupt":
        ended = await _cancel_queued(db, session, f"interrupted by {run_id}", now)
        interrupts = session.active_run_id
    run = Run(
        id=run_id, session_id=session.id, owner=session.owner, agent=agent.name,
        agent_version=agent.version, status="queued", usage={}, meta=body.metadata,
        request={"input": _input_messages(body), "on_pending": body.on_pending,
                 "on_disconnect": body.on_disconnect, "if_busy": body.if_busy},
        config=config, parent_run_id=session.parent_run_id, executor_id=executor_id,
        lease_expires_at=now + timedelta(seconds=lease_s), last_seq=1, created_at=now,
    )
    start_now = session.active_run_id is None
    if start_now:
        session.active_run_id = run.id
        session.updated_at = now
        refresh_status(session)
        db.add(session)
    db.add(run)
    await db.flush()
    event = envelope("run.created", 1, run.id, session.id, now,
                     {"run": _json(run_view(run))})
    db.add(RunEvent(run_id=run.id, seq=1, type="run.created", data=event["data"], ts=now))
    await db.flush()
    return CreatedRun(run, event, start_now, interrupts, ended)


async def _cancel_queued(
    db: AsyncSession, session: Session, reason: str, now: datetime
) -> list[dict[str, Any]]:
    """End the session's queued runs as cancelled (the session row is locked).

    An active run that is still queued ends too, and the session is free; a running one is
    left to its process to cancel.
    """
    query = select(Run).where(Run.session_id == session.id, Run.status == "queued")
    ended = []
    for queued in (await db.exec(query.with_for_update())).all():
        queued.last_seq += 1
        queued.status, queued.ended_at, queued.lease_expires_at = "cancelled", now, None
        data = {"reason": reason}
        db.add(RunEvent(run_id=queued.id, seq=queued.last_seq, type="run.cancelled",
                        data=data, ts=now))
        db.add(queued)
        ended.append(envelope("run.cancelled", queued.last_seq, queued.id, session.id, now,
                              data))
        if session.active_run_id == queued.id:
            session.active_run_id = None
    return ended


def _json(view: dict[str, Any]) -> dict[str, Any]:
    return RunSchema.model_validate(view).model_dump(mode="json")


async def get_agent_or_conflict(db: AsyncSession, session: Session) -> Any:
    try:
        return await get_agent(db, session.owner, session.agent)
    except NotFound:
        raise Conflict(
            f"the agent {session.agent!r} of session {session.id} was deleted"
        ) from None


async def get_run(db: AsyncSession, principal: Principal, run_id: str) -> Run:
    run = await db.get(Run, run_id)
    if run is None or not principal.can_see(run.owner):
        raise NotFound(f"run {run_id} not found")
    return run


async def list_runs(
    db: AsyncSession, principal: Principal, status: str | None, agent: str | None,
    session_id: str | None, limit: int, cursor: str | None,
) -> tuple[Sequence[Run], str | None]:
    query = select(Run)
    if not principal.is_admin:
        query = query.where(Run.owner == principal.subject)
    if status is not None:
        query = query.where(Run.status == status)
    if agent is not None:
        query = query.where(Run.agent == agent)
    if session_id is not None:
        query = query.where(Run.session_id == session_id)
    return await newest_first(db, query, Run, limit, cursor)


async def list_events(
    db: AsyncSession, run_id: str, after: int, limit: int
) -> list[RunEvent]:
    query = (select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.seq > after)
             .order_by(col(RunEvent.seq)).limit(limit))
    return list((await db.exec(query)).all())
