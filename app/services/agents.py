"""Agents: create, read, patch (a new version each time), delete."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.clock import utcnow
from app.config import Settings
from app.errors import AgentExists, Conflict, NotFound, ValidationFailed
from app.ids import new_id
from app.providers.registry import missing_api_key
from app.schemas.agents import AgentCreate, AgentSpec, AgentUpdate
from app.schemas.tools import HttpTool, ScriptedOptions
from app.services.owners import Namespace
from app.status import ACTIVE_STATUSES
from app.store.db import Database
from app.store.pagination import newest_first
from app.store.tables import Agent, AgentVersion, Run
from app.tools.url_guard import PrivateUrl, check_public_url


def agent_view(agent: Agent) -> dict[str, Any]:
    """The public shape of the agent's current version."""
    return {**agent.config, "name": agent.name, "version": agent.version, "owner": agent.owner,
            "created_at": agent.created_at, "updated_at": agent.updated_at}


def version_view(agent: Agent, version: AgentVersion) -> dict[str, Any]:
    """The public shape of a past version: as the agent was when that version was made."""
    return {**version.config, "name": agent.name, "version": version.version,
            "owner": agent.owner, "created_at": agent.created_at,
            "updated_at": version.created_at}


def _check_provider(spec: AgentSpec, settings: Settings) -> None:
    """A known provider, and for `scripted:*` models a valid script."""
    provider = spec.model.split(":", 1)[0]
    known = settings.provider_names()
    if provider not in known:
        raise ValidationFailed.at(
            ["body", "model"],
            f"unknown provider {provider!r}; known providers: {', '.join(known)}",
        )
    check_api_key(settings, provider, ["body", "model"])
    if provider == "scripted":
        try:
            ScriptedOptions.model_validate(spec.provider_options)
        except ValidationError as exc:
            errors = [{"loc": ["body", "provider_options", *e["loc"]], "msg": e["msg"],
                       "type": e["type"]} for e in exc.errors()]
            first = errors[0]
            where = ".".join(str(p) for p in first["loc"][1:])
            raise ValidationFailed(f"{where}: {first['msg']}", errors) from exc


def check_api_key(settings: Settings, provider: str, loc: list[str | int]) -> None:
    """Refuse a model whose provider has no API key configured (its calls could only fail)."""
    setting = missing_api_key(settings, provider)
    if setting is not None:
        raise ValidationFailed.at(
            loc, f"provider {provider!r} has no API key: set {setting} in the server's "
            "environment (a provider on a loopback address needs none)", "missing_api_key")


async def check_tool_urls(tools: Sequence[Any], settings: Settings) -> None:
    """Refuse tool URLs that reach private addresses (422 naming the tool's URL field).

    It resolves host names (up to 2 s each), so callers run it before taking any lock.
    """
    for index, tool in enumerate(tools):
        field = "url" if isinstance(tool, HttpTool) else "server_url"
        url = getattr(tool, field, None)
        if url is None:
            continue
        try:
            await check_public_url(str(url), settings.allow_private_urls)
        except PrivateUrl as exc:
            raise ValidationFailed.at(
                ["body", "tools", index, field],
                str(exc),
                "private_url",
            ) from exc


async def _find(db: AsyncSession, owner: str, name: str, lock: bool = False) -> Agent | None:
    query = select(Agent).where(Agent.owner == owner, Agent.name == name)
    if lock:
        query = query.with_for_update()
    return (await db.exec(query)).first()


async def get_agent(db: AsyncSession, owner: str, name: str, lock: bool = False) -> Agent:
    agent = await _find(db, owner, name, lock)
    if agent is None:
        raise NotFound(f"agent {name!r} not found{await _elsewhere(db, owner, name)}")
    return agent


async def _elsewhere(db: AsyncSession, owner: str, name: str) -> str:
    """For an admin, the other owners that have an agent of that name (none for others)."""
    if not (isinstance(owner, Namespace) and owner.by_admin):
        return ""
    query = (select(Agent.owner).where(Agent.name == name, Agent.owner != owner)
             .order_by(Agent.owner).limit(6))
    owners = list((await db.exec(query)).all())
    if not owners:
        return ""
    shown = ", ".join(owners[:5]) + (", ..." if len(owners) > 5 else "")
    return (f" for owner {str(owner)!r}; agent {name!r} exists for owner(s) {shown}: "
            f"use ?owner={owners[0]}")


async def create_agent(
    database: Database, settings: Settings, owner: str, body: AgentCreate
) -> Agent:
    """Version 1 of a new agent; 409 `agent_exists` when the owner has one of that name.

    Tool URLs are resolved (which can take seconds) before the write transaction opens:
    on SQLite an open write session holds the process's one write turn.
    """
    spec = AgentSpec.model_validate(body.model_dump(exclude={"name"}))
    config = spec.model_dump(mode="json")
    _check_provider(spec, settings)
    await check_tool_urls(spec.tools, settings)
    async with database.transaction() as db:
        if await _find(db, owner, body.name) is not None:
            raise AgentExists(f"agent {body.name!r} already exists", agent=body.name)
        now = utcnow()
        agent = Agent(id=new_id("agt"), owner=owner, name=body.name, version=1, config=config,
                      created_at=now, updated_at=now)
        db.add(agent)
        db.add(AgentVersion(agent_id=agent.id, version=1, config=config, created_at=now))
        try:
            await db.flush()
        except IntegrityError as exc:
            raise AgentExists(f"agent {body.name!r} already exists", agent=body.name) from exc
    return agent


async def list_agents(
    db: AsyncSession, owner: str | None, limit: int, cursor: str | None
) -> tuple[Sequence[Agent], str | None]:
    """Agents of `owner`, or of every owner when `owner` is None (admins)."""
    query = select(Agent)
    if owner is not None:
        query = query.where(Agent.owner == owner)
    return await newest_first(db, query, Agent, limit, cursor)


async def update_agent(
    database: Database, settings: Settings, owner: str, name: str, body: AgentUpdate
) -> Agent:
    """Apply the fields present; a change makes version n + 1, no change keeps the agent.

    New tool URLs are resolved before the write transaction opens and the agent is locked:
    resolving can take seconds, and on SQLite the transaction holds the process's one write
    turn. Tools left as they are were checked when they were set, and every URL is checked
    again when its tool is called.
    """
    if body.tools is not None:
        await check_tool_urls(body.tools, settings)
    changes = body.model_dump(mode="json", include=body.model_fields_set)
    async with database.transaction() as db:
        agent = await get_agent(db, owner, name, lock=True)
        try:
            spec = AgentSpec.model_validate({**agent.config, **changes})
        except ValidationError as exc:
            raise ValidationFailed(
                "the updated agent is not valid",
                [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                 for e in exc.errors()],
            ) from exc
        _check_provider(spec, settings)
        config = spec.model_dump(mode="json")
        if config == agent.config:
            return agent
        now = utcnow()
        agent.version += 1
        agent.config = config
        agent.updated_at = now
        db.add(agent)
        db.add(AgentVersion(agent_id=agent.id, version=agent.version, config=config,
                            created_at=now))
    return agent


async def count_active_runs(db: AsyncSession, owner: str, name: str) -> int:
    query = select(func.count()).select_from(Run).where(
        Run.owner == owner, Run.agent == name, Run.status.in_(ACTIVE_STATUSES)  # type: ignore[attr-defined]
    )
    return int((await db.exec(query)).one())


async def delete_agent(db: AsyncSession, owner: str, name: str) -> None:
    agent = await get_agent(db, owner, name, lock=True)
    active = await count_active_runs(db, owner, name)
    if active:
        raise Conflict(f"agent {name!r} has {active} active run(s)", active_runs=active)
    await db.delete(agent)
    await db.flush()


async def list_versions(
    db: AsyncSession, agent: Agent, limit: int, before: int | None
) -> tuple[Sequence[AgentVersion], int | None]:
    """Versions newest first; the cursor is the version number to continue below."""
    query = select(AgentVersion).where(AgentVersion.agent_id == agent.id)
    if before is not None:
        query = query.where(AgentVersion.version < before)
    query = query.order_by(AgentVersion.version.desc()).limit(limit + 1)  # type: ignore[attr-defined]
    rows = list((await db.exec(query)).all())
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], rows[limit - 1].version


async def get_version(db: AsyncSession, agent: Agent, version: int) -> AgentVersion:
    row = await db.get(AgentVersion, (agent.id, version))
    if row is None:
        raise NotFound(f"agent {agent.name!r} has no version {version}")
    return row
