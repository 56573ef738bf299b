"""`GET /v1/providers`: which LLM providers are configured and whether they answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import CurrentPrincipal
from app.api.responses import AUTH, errors
from app.providers.registry import ProviderRegistry
from app.schemas.providers import ProviderList, ProviderStatus

router = APIRouter(prefix="/v1/providers", tags=["providers"])


@router.get(
    "", name="list", summary="List LLM providers",
    responses=errors(*AUTH, 400, 422, s400="A query parameter holds a NUL character "
                     "(`bad_request`)"),
)
async def list_providers(
    request: Request, _principal: CurrentPrincipal,
    refresh: Annotated[bool, Query(description="probe now, not from the 30 s cache")] = False,
) -> ProviderList:
    """Each configured provider probed with `GET /models` (never a chat request), cached
    for 30 s; `openai` without `OPENAI_API_KEY` or `OPENAI_BASE_URL` is `unknown`, unprobed."""
    registry: ProviderRegistry = request.app.state.providers
    probes = await registry.probe_all(refresh)
    return ProviderList(items=[ProviderStatus.model_validate(p) for p in probes])
