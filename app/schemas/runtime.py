"""The runtime's pause state (§9)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.schemas.common import RequestModel, ResponseModel, Timestamp

RuntimeStatus = Literal["running", "pausing", "paused"]


class Runtime(ResponseModel):
    status: RuntimeStatus = Field(
        description="`pausing` while runs of this process are still on their way to a turn "
                    "boundary")
    paused_at: Timestamp | None
    active_runs: int = Field(description="runs executing now, on every process")
    queued_runs: int
    paused_runs: int = Field(description="runs parked at a turn boundary")
    max_concurrent_runs: int
    version: str


class PauseRequest(RequestModel):
    timeout_ms: int = Field(
        default=30_000, ge=0, le=3_600_000,
        description="how long runs have to reach a turn boundary; those that have not are "
                    "cancelled")


class PauseResult(ResponseModel):
    status: RuntimeStatus
    duration_ms: int
    paused_runs: int = Field(description="runs of this process that parked during the pause")
    force_cancelled: int = Field(description="runs cancelled for not parking in time")
    warnings: list[str]


class ResumeResult(ResponseModel):
    status: RuntimeStatus
    resumed_runs: int = Field(description="parked runs queued to go on")
