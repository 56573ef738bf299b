"""Shared dependencies: the database session, settings and the authenticated principal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from pydantic import TypeAdapter, ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth import Principal, authenticate, bearer_token
from app.config import Settings
from app.errors import ValidationFailed
from app.middleware import REQUEST_INFO_KEY
from app.runs.manager import RunManager
from app.schemas.common import Subject
from app.services import runs as runs_service
from app.services.owners import Namespace, resolve_owner
from app.store.db import Database
from app.store.tables import Run

READ_METHODS = {"GET", "HEAD", "OPTIONS"}
_SUBJECT = TypeAdapter(Subject)

Owner = Annotated[
    str | None,
    Query(max_length=64, description="admins only: address another subject's namespace "
                                     "(whose agents the request names)"),
]

OWNER_FORBIDDEN = "Not an admin, but `owner` names another subject (`forbidden`)"
"""The 403 of a route that takes `Owner`."""


def namespace(principal: Principal, owner: str | None) -> Namespace:
    """The owner addressed by `?owner=`; one that no subject can have is a 422, another
    subject's for a user a 403."""
    if owner is not None:
        try:
            _SUBJECT.validate_python(owner)
        except ValidationError:
            raise ValidationFailed.at(
                ["query", "owner"], "must be a subject: 1..64 of letters, digits, `_.@-`",
                "string_pattern_mismatch",
            ) from None
    return resolve_owner(principal, owner)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.db
    return database


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler returns, else rolled back."""
    database = get_database(request)
    opened = database.read() if request.method in READ_METHODS else database.writing()
    async with opened as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbSession = Annotated[AsyncSession, Depends(get_db, scope="function")]


async def _identify(request: Request, settings: Settings, token: str | None) -> Principal:
    """Authenticate in a read transaction of its own, so no write lock is taken for it."""
    async with get_database(request).read() as db:
        principal = await authenticate(db, settings, token)
    info = request.scope.get(REQUEST_INFO_KEY)
    if info is not None:
        info.subject = principal.subject
    return principal


async def get_principal(
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    return await _identify(request, settings, bearer_token(authorization))


async def get_stream_principal(
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    access_token: Annotated[
        str | None,
        Query(max_length=512, description="the bearer token, for browsers' EventSource, which "
              "cannot send headers (less safe: URLs end up in logs)"),
    ] = None,
) -> Principal:
    """Like `get_principal`, also accepting `?access_token=` (SSE endpoints only)."""
    token = bearer_token(authorization) if authorization is not None else access_token
    return await _identify(request, settings, token)


async def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    principal.require_admin()
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
AdminPrincipal = Annotated[Principal, Depends(get_admin)]
StreamPrincipal = Annotated[Principal, Depends(get_stream_principal)]

Limit = Annotated[int, Query(ge=1, le=200, description="page size, 1..200")]
Cursor = Annotated[
    str | None,
    Query(max_length=512, description="`next_cursor` of the previous page"),
]


def get_manager(request: Request) -> RunManager:
    manager: RunManager = request.app.state.manager
    return manager


ManagerDep = Annotated[RunManager, Depends(get_manager)]
RunId = Annotated[str, Path(description="the run's id (`run_…`)", max_length=64)]


async def load_run(run_id: RunId, request: Request, principal: CurrentPrincipal) -> Run:
    """The addressed run, read in a short transaction; 404 when absent or someone else's."""
    async with get_database(request).read() as db:
        return await runs_service.get_run(db, principal, run_id)


RunById = Annotated[Run, Depends(load_run)]
