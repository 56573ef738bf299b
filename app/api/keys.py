"""`/v1/api-keys` (admin) and `/v1/whoami`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.api.deps import AdminPrincipal, CurrentPrincipal, Cursor, DbSession, Limit
from app.api.responses import AUTH, READ, WRITE, errors
from app.schemas.keys import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyPage, WhoAmI
from app.services import keys as service

router = APIRouter(tags=["auth"])

KeyId = Annotated[str, Path(description="the key's id (`key_…`)", max_length=64)]


@router.post(
    "/v1/api-keys", name="create_key", status_code=status.HTTP_201_CREATED,
    summary="Create an API key", responses=errors(*WRITE, 403),
)
async def create_key(
    body: ApiKeyCreate, db: DbSession, _admin: AdminPrincipal, response: Response
) -> ApiKeyCreated:
    """Issue a key for a subject. The `key` is in this response only; store it now."""
    row, key = await service.create_key(db, body.subject, body.role)
    response.headers["Location"] = f"/v1/api-keys/{row.id}"
    return ApiKeyCreated.model_validate({**ApiKey.model_validate(row).model_dump(), "key": key})


@router.get("/v1/api-keys", name="list_keys", summary="List API keys",
            responses=errors(*READ, 403))
async def list_keys(
    db: DbSession, _admin: AdminPrincipal, limit: Limit = 50, cursor: Cursor = None
) -> ApiKeyPage:
    """Every key, newest first, without secrets."""
    rows, next_cursor = await service.list_keys(db, limit, cursor)
    return ApiKeyPage(items=[ApiKey.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.delete(
    "/v1/api-keys/{key_id}", name="delete_key", status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key", responses=errors(*READ, 403),
)
async def delete_key(key_id: KeyId, db: DbSession, _admin: AdminPrincipal) -> Response:
    """Revoke the key at once: requests bearing it get 401."""
    await service.delete_key(db, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/v1/whoami", name="whoami", summary="Who am I", responses=errors(*AUTH))
async def whoami(principal: CurrentPrincipal) -> WhoAmI:
    """The subject and role the request's token acts as."""
    return WhoAmI(subject=principal.subject, role=principal.role,
                  open_mode=principal.open_mode)
