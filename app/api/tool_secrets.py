"""`/v1/tool-secret`: the key an owner's `http` tool calls are signed with."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import CurrentPrincipal, DbSession
from app.api.responses import READ, WRITE, errors
from app.schemas.tool_secrets import ToolSecret, ToolSecretCreated
from app.services import tool_secrets as service
from app.services.owners import resolve_owner

router = APIRouter(prefix="/v1/tool-secret", tags=["tools"])

Owner = Annotated[
    str | None,
    Query(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$",
          description="admins only: address another subject's secret"),
]


@router.post(
    "", name="rotate_secret", status_code=status.HTTP_201_CREATED,
    summary="Create or rotate the tool secret", responses=errors(*WRITE, 403),
)
async def rotate_tool_secret(
    db: DbSession, principal: CurrentPrincipal, owner: Owner = None,
) -> ToolSecretCreated:
    """Create the owner's tool secret, or replace it: calls are signed with the new one
    from now on. The `secret` is in this response only; store it now."""
    row = await service.rotate_secret(db, resolve_owner(principal, owner))
    return ToolSecretCreated.model_validate(row)


@router.get("", name="read_secret", summary="Read the tool secret's metadata",
            responses=errors(*READ, 403, s404="The owner has no tool secret (`not_found`)"))
async def read_tool_secret(
    db: DbSession, principal: CurrentPrincipal, owner: Owner = None,
) -> ToolSecret:
    """When the owner's tool secret was created, and its first characters (never the
    secret)."""
    row = await service.get_secret(db, resolve_owner(principal, owner))
    return ToolSecret(owner=row.owner, created_at=row.created_at,
                      secret_prefix=service.secret_prefix(row.secret))
