"""`/v1/runtime` (admin): pause and resume the runtime (§9)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from app.api.deps import AdminPrincipal, ManagerDep
from app.api.responses import AUTH, WRITE, errors
from app.schemas.runtime import PauseRequest, PauseResult, ResumeResult, Runtime

router = APIRouter(tags=["runtime"])


@router.get("/v1/runtime", name="get", summary="The runtime's state",
            responses=errors(*AUTH, 403))
async def get_runtime(manager: ManagerDep, _admin: AdminPrincipal) -> Runtime:
    """Whether the runtime runs, pauses or is paused, and its runs by status."""
    return Runtime.model_validate(await manager.runtime.report())


@router.post(
    "/v1/runtime/pause", name="pause", summary="Pause the runtime",
    responses=errors(*WRITE, 403, 409, s409="The runtime is already paused (`already_paused`)"),
)
async def pause_runtime(
    manager: ManagerDep, _admin: AdminPrincipal,
    body: Annotated[PauseRequest | None, Body()] = None,
) -> PauseResult:
    """New runs get 503 `runtime_paused`; each running run parks at its next turn boundary
    (after its current LLM call and tool calls) with `run.paused`; runs waiting for tool
    outputs or approvals count as parked. Runs not parked within `timeout_ms` are cancelled.
    Answers once every run of this process parked or was cancelled."""
    return PauseResult.model_validate(
        await manager.runtime.pause((body or PauseRequest()).timeout_ms))


@router.post(
    "/v1/runtime/resume", name="resume", summary="Resume the runtime",
    responses=errors(*AUTH, 403, 409, s409="The runtime is not paused (`not_paused`)"),
)
async def resume_runtime(manager: ManagerDep, _admin: AdminPrincipal) -> ResumeResult:
    """Admit runs again; every parked run goes on with `run.resumed`."""
    return ResumeResult.model_validate(await manager.runtime.resume())
