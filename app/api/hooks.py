"""`/v1/hooks`: webhooks that gate tool calls or receive run events, and their deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from app.api.deps import (
    CurrentPrincipal,
    Cursor,
    DbSession,
    Limit,
    ManagerDep,
    SettingsDep,
    get_database,
)
from app.api.responses import READ, WRITE, errors
from app.auth import Principal
from app.errors import Forbidden
from app.schemas.common import DeliveryConflictProblem
from app.schemas.hooks import (
    Hook,
    HookCreate,
    HookCreated,
    HookDelivery,
    HookDeliveryPage,
    HookPage,
    HookUpdate,
)
from app.services import hooks as service
from app.services.owners import resolve_owner

router = APIRouter(prefix="/v1/hooks", tags=["hooks"])

HookId = Annotated[str, Path(description="the hook's id (`hook_…`)", max_length=64)]
DeliveryId = Annotated[str, Path(description="the delivery's id (`dlv_…`)", max_length=64)]
Owner = Annotated[
    str | None,
    Query(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$",
          description="admins only: address another subject's hooks"),
]

_FORBIDDEN = ("Not an admin, but `owner` names another subject or `all_owners` is true "
              "(`forbidden`)")


def _require_admin_for_all_owners(principal: Principal, all_owners: bool | None) -> None:
    if all_owners and not principal.is_admin:
        raise Forbidden("only admins may set `all_owners`")


@router.post(
    "", name="create", status_code=status.HTTP_201_CREATED, summary="Create a hook",
    responses=errors(*WRITE, 403, s403=_FORBIDDEN),
)
async def create_hook(
    body: HookCreate, request: Request, principal: CurrentPrincipal, settings: SettingsDep,
    manager: ManagerDep, response: Response, owner: Owner = None,
) -> HookCreated:
    """Register a hook. Its `secret` signs every request to it and is in this response
    only; store it now. A URL that reaches a private address is a 422 (`private_url`)."""
    namespace = resolve_owner(principal, owner)
    _require_admin_for_all_owners(principal, body.all_owners)
    hook = await service.create_hook(get_database(request), settings, namespace, body,
                                     manager.hooks_changed)
    response.headers["Location"] = f"/v1/hooks/{hook.id}"
    return HookCreated.model_validate(hook)


@router.get("", name="list", summary="List hooks", responses=errors(*READ, 403))
async def list_hooks(
    db: DbSession, principal: CurrentPrincipal, owner: Owner = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> HookPage:
    """Newest first. Users see their own hooks; admins see every owner's."""
    scope = resolve_owner(principal, owner) if owner is not None or not principal.is_admin else None
    rows, next_cursor = await service.list_hooks(db, scope, limit, cursor)
    return HookPage(items=[Hook.model_validate(hook) for hook in rows], next_cursor=next_cursor)


@router.get("/{hook_id}", name="get", summary="Get a hook", responses=errors(*READ))
async def get_hook(hook_id: HookId, db: DbSession, principal: CurrentPrincipal) -> Hook:
    """The hook (never its secret)."""
    return Hook.model_validate(await service.get_hook(db, principal, hook_id))


@router.patch(
    "/{hook_id}", name="update", summary="Update a hook",
    responses=errors(*WRITE, 403, s403="Not an admin, but `all_owners` is true (`forbidden`)"),
)
async def update_hook(
    hook_id: HookId, body: HookUpdate, request: Request, principal: CurrentPrincipal,
    settings: SettingsDep, manager: ManagerDep,
) -> Hook:
    """Replace the fields present; the phase and the secret stay."""
    _require_admin_for_all_owners(principal, body.all_owners)
    hook = await service.update_hook(get_database(request), settings, principal, hook_id, body,
                                     manager.hooks_changed)
    return Hook.model_validate(hook)


@router.delete(
    "/{hook_id}", name="delete", status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a hook", responses=errors(*READ),
)
async def delete_hook(hook_id: HookId, request: Request, principal: CurrentPrincipal,
                      manager: ManagerDep) -> Response:
    """Delete the hook and its deliveries; runs stop calling it."""
    await service.delete_hook(get_database(request), principal, hook_id, manager.hooks_changed)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{hook_id}/deliveries", name="list_deliveries", summary="List a hook's deliveries",
    responses=errors(*READ),
)
async def list_deliveries(
    hook_id: HookId, db: DbSession, principal: CurrentPrincipal,
    limit: Limit = 50, cursor: Cursor = None,
) -> HookDeliveryPage:
    """Every request to the hook (gating calls, events, pings), newest first."""
    rows, next_cursor = await service.list_deliveries(db, principal, hook_id, limit, cursor)
    return HookDeliveryPage(items=[HookDelivery.model_validate(row) for row in rows],
                            next_cursor=next_cursor)


@router.post(
    "/{hook_id}/test", name="test", summary="Send a test ping", responses=errors(*READ),
)
async def test_hook(
    hook_id: HookId, request: Request, principal: CurrentPrincipal, settings: SettingsDep,
) -> HookDelivery:
    """Send a signed `{"type": "ping", "hook_id", "owner"}` to the hook now and return the
    delivery: `delivered` for a 2xx answer, else `failed` with the receiver's status or
    the error. A failing receiver is never an error of this request."""
    delivery = await service.ping(get_database(request), settings, principal, hook_id)
    return HookDelivery.model_validate(delivery)


@router.post(
    "/{hook_id}/deliveries/{delivery_id}/retry", name="retry_delivery",
    status_code=status.HTTP_202_ACCEPTED, summary="Retry a dead delivery",
    responses=errors(*READ, 409, problems={409: DeliveryConflictProblem},
                     s409="The delivery is not `dead` (`delivery_not_dead`)"),
)
async def retry_delivery(
    hook_id: HookId, delivery_id: DeliveryId, db: DbSession, principal: CurrentPrincipal,
) -> HookDelivery:
    """Queue a delivery that used up its attempts again: it is `pending` and sent soon,
    with the same `webhook-id`."""
    delivery = await service.retry_delivery(db, principal, hook_id, delivery_id)
    return HookDelivery.model_validate(delivery)
