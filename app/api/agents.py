"""`/v1/agents`: named, versioned agent configurations."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import TypeAdapter, ValidationError

from app.api.deps import (
    CurrentPrincipal,
    Cursor,
    DbSession,
    Limit,
    Owner,
    SettingsDep,
    get_database,
    namespace,
)
from app.api.responses import READ, WRITE, errors
from app.auth import Principal
from app.errors import BadRequest, NotFound
from app.schemas.agents import Agent, AgentCreate, AgentPage, AgentUpdate
from app.schemas.common import AgentConflictProblem, Name
from app.services import agents as service

router = APIRouter(prefix="/v1/agents", tags=["agents"])

AgentName = Annotated[str, Path(description="the agent's name", max_length=64)]


_NAME = TypeAdapter(Name)
MAX_VERSION = 2**31 - 1
_VERSION_CURSOR = re.compile(r"[0-9]{1,10}")


def _checked_name(name: str) -> str:
    """A name that cannot exist is simply not found."""
    try:
        return _NAME.validate_python(name)
    except ValidationError:
        raise NotFound(f"agent {name!r} not found") from None


def _location(principal: Principal, owner: str, name: str) -> str:
    """The agent's URL as the caller addresses it (with `?owner=` for another namespace)."""
    url = f"/v1/agents/{name}"
    return url if owner == principal.subject else f"{url}?owner={quote(owner, safe='')}"


@router.post(
    "", name="create", status_code=status.HTTP_201_CREATED, summary="Create an agent",
    responses=errors(*WRITE, 403, 409, problems={409: AgentConflictProblem},
                     s409="An agent of that name exists (`agent_exists`)"),
)
async def create_agent(
    body: AgentCreate, request: Request, principal: CurrentPrincipal, settings: SettingsDep,
    response: Response, owner: Owner = None,
) -> Agent:
    """Create an agent in the caller's namespace (version 1)."""
    agent = await service.create_agent(
        get_database(request), settings, namespace(principal, owner), body)
    response.headers["Location"] = _location(principal, agent.owner, agent.name)
    return Agent.model_validate(service.agent_view(agent))


@router.get("", name="list", summary="List agents", responses=errors(*READ, 403))
async def list_agents(
    db: DbSession, principal: CurrentPrincipal, owner: Owner = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> AgentPage:
    """Newest first. Users see their own agents; admins see every owner's."""
    scope = namespace(principal, owner) if owner is not None or not principal.is_admin else None
    rows, next_cursor = await service.list_agents(db, scope, limit, cursor)
    return AgentPage(items=[Agent.model_validate(service.agent_view(a)) for a in rows],
                next_cursor=next_cursor)


@router.get("/{agent_name}", name="get", summary="Get an agent", responses=errors(*READ, 403))
async def get_agent(
    agent_name: AgentName, db: DbSession, principal: CurrentPrincipal, owner: Owner = None
) -> Agent:
    """The agent's current version."""
    agent = await service.get_agent(db, namespace(principal, owner), _checked_name(agent_name))
    return Agent.model_validate(service.agent_view(agent))


@router.patch(
    "/{agent_name}", name="update", summary="Update an agent", responses=errors(*WRITE, 403)
)
async def update_agent(
    agent_name: AgentName, body: AgentUpdate, request: Request, principal: CurrentPrincipal,
    settings: SettingsDep, owner: Owner = None,
) -> Agent:
    """Replace the fields present; any change makes a new version."""
    agent = await service.update_agent(
        get_database(request), settings, namespace(principal, owner),
        _checked_name(agent_name), body,
    )
    return Agent.model_validate(service.agent_view(agent))


@router.delete(
    "/{agent_name}", name="delete", status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an agent",
    responses=errors(*READ, 403, 409, problems={409: AgentConflictProblem},
                     s409="The agent has active runs (`conflict`)"),
)
async def delete_agent(
    agent_name: AgentName, db: DbSession, principal: CurrentPrincipal, owner: Owner = None
) -> Response:
    """Delete the agent and its versions; its sessions stay, but cannot start runs."""
    await service.delete_agent(db, namespace(principal, owner), _checked_name(agent_name))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{agent_name}/versions", name="list_versions", summary="List an agent's versions",
    responses=errors(*READ, 403),
)
async def list_versions(
    agent_name: AgentName, db: DbSession, principal: CurrentPrincipal, owner: Owner = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> AgentPage:
    """Every configuration the agent has had, newest version first."""
    before = None
    if cursor is not None:
        # ASCII digits only (str.isdigit() admits "²", which int() refuses) and within the
        # column's range (a larger number fails in the database instead of matching nothing).
        if not _VERSION_CURSOR.fullmatch(cursor) or not 1 <= int(cursor) <= MAX_VERSION:
            raise BadRequest(f"malformed cursor {cursor[:80]!r}")
        before = int(cursor)
    agent = await service.get_agent(db, namespace(principal, owner), _checked_name(agent_name))
    rows, next_version = await service.list_versions(db, agent, limit, before)
    return AgentPage(
        items=[Agent.model_validate(service.version_view(agent, v)) for v in rows],
        next_cursor=None if next_version is None else str(next_version),
    )


@router.get(
    "/{agent_name}/versions/{version}", name="get_version", summary="Get one agent version",
    responses=errors(*READ, 403),
)
async def get_version(
    agent_name: AgentName, version: Annotated[int, Path(ge=1, le=MAX_VERSION)], db: DbSession,
    principal: CurrentPrincipal, owner: Owner = None,
) -> Agent:
    """The agent as it was at `version`."""
    agent = await service.get_agent(db, namespace(principal, owner), _checked_name(agent_name))
    row = await service.get_version(db, agent, version)
    return Agent.model_validate(service.version_view(agent, row))
