"""Runs: creation (busy and pending policies, admission), listing, the API view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth import Principal
from app.errors import AppError, Conflict, NotFound, ValidationFailed
from app.schemas.runs import RunCreate
from app.store.pagination import newest_first
from app.store.tables import Run, RunEvent


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
        "required_action": run.required_action, "approvals": run.decisions,
        "parent_run_id": run.parent_run_id,
        "last_seq": run.last_seq, "metadata": run.meta, "created_at": run.created_at,
        "started_at": run.started_at, "ended_at": run.ended_at,
    }


def input_messages(body: RunCreate) -> list[dict[str, Any]]:
    if isinstance(body.input, str):
        return [{"role": "user", "content": body.input}] if body.input else []
    return [m.model_dump(mode="json", exclude_none=True) for m in body.input]


def resolved_config(agent_config: dict[str, Any], body: RunCreate) -> dict[str, Any]:
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
