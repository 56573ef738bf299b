"""Runs (§4.2): one execution of the loop on a session."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from app.schemas.agents import Compaction, Instructions, MaxTurns, ModelRef, Sampling, TimeoutS
from app.schemas.common import (
    Metadata,
    Name,
    Omittable,
    Page,
    RequestModel,
    ResponseModel,
    Timestamp,
)
from app.schemas.messages import Content
from app.schemas.tools import ToolName
from app.status import RunStatus


class StopReason(StrEnum):
    """Why a completed run stopped."""

    END_TURN = "end_turn"
    MAX_TURNS = "max_turns"
    MAX_TOKENS = "max_tokens"


class RunUsage(ResponseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    llm_calls: int = 0


class RunError(ResponseModel):
    code: str
    detail: str


class RequiredToolCall(ResponseModel):
    id: str
    name: str
    arguments: dict[str, Any]


class RequiredAction(ResponseModel):
    type: Literal["submit_tool_outputs", "approve_tool_calls"]
    tool_calls: list[RequiredToolCall]
    expires_at: Timestamp


class ApprovalRecord(ResponseModel):
    """A decision on a call that waited for approval."""

    tool_call_id: str
    name: str
    approve: bool
    reason: str | None
    arguments_replaced: bool
    decided_by: str = Field(description="the API key subject, or `expiry` (the policy's "
                            "`approval_default`, after `expires_at`)")
    decided_at: Timestamp


class Run(ResponseModel):
    id: str = Field(examples=["run_Q1w2E3r4T5y6U7i8O9p0"])
    session_id: str
    agent: str
    agent_version: int
    owner: str
    status: RunStatus
    stop_reason: StopReason | None
    error: RunError | None
    output: str | None
    turns: int
    usage: RunUsage
    required_action: RequiredAction | None
    approvals: list[ApprovalRecord] = Field(
        default_factory=list, description="the approval decisions of this run, oldest first")
    parent_run_id: str | None
    last_seq: int
    metadata: dict[str, Any]
    created_at: Timestamp
    started_at: Timestamp | None
    ended_at: Timestamp | None


class RunPage(Page[Run]):
    """A page of runs."""


class InputMessage(RequestModel):
    role: Literal["user", "system"]
    content: Content


RunInput = Annotated[
    str | Annotated[list[InputMessage], Field(max_length=256)],
    Field(description="text (one user message) or a list of user/system messages; empty only "
          "with `on_pending: \"resume\"`"),
]


class RunOverrides(RequestModel):
    """Per-run changes to the agent's configuration; a field left out keeps the agent's.

    Only `instructions` and `allowed_hosts` take `null` (see their descriptions).
    """

    model: Omittable[ModelRef] = None
    instructions: Instructions | None = Field(
        default=None, description="the system prompt of this run; null runs without one")
    sampling: Omittable[Sampling] = None
    max_turns: Omittable[MaxTurns] = None
    timeout_s: Omittable[TimeoutS] = None
    tools: Omittable[Annotated[list[ToolName], Field(max_length=128)]] = Field(
        default=None, description="narrow the agent's tools to these names")
    allowed_hosts: Annotated[list[Annotated[str, Field(max_length=253)]], Field(
        max_length=256)] | None = Field(
        default=None, description="hosts the run's tools may reach: `[]` none, a list the "
        "intersection with the operator's list; null (like leaving it out) the operator's list")
    compaction: Omittable[Compaction] = None


class RunCreate(RequestModel):
    input: RunInput = ""
    stream: bool = False
    if_busy: Literal["reject", "enqueue", "interrupt", "steer"] = Field(
        default="reject", description="when the session has an unfinished run: `reject` "
        "(409), `enqueue` (run after it), `interrupt` (cancel it), `steer` (no new run: the "
        "input goes to the active run at its next turn boundary, and the answer is that run, "
        "200)")
    on_pending: Literal["reject", "resume", "abort"] = "reject"
    on_disconnect: Literal["continue", "cancel"] = "continue"
    overrides: RunOverrides = Field(default_factory=RunOverrides)
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _input_needed(self) -> RunCreate:
        if self.on_pending != "resume" and self.input in ("", []):
            raise ValueError("`input` may be empty only with `on_pending: \"resume\"`")
        return self


class NewSession(RequestModel):
    title: Annotated[str, Field(max_length=512)] | None = None
    metadata: Metadata = Field(default_factory=dict)


class OneShotRunCreate(RunCreate):
    """A run in a new session of `agent`."""

    agent: Name
    session: NewSession = Field(default_factory=NewSession)


class RunCancel(RequestModel):
    reason: Omittable[Annotated[str, Field(max_length=1024)]] = Field(
        default=None, description="why the run is cancelled (default: a generic reason)")
    wait: bool = False


class CancelResult(ResponseModel):
    """The answer to a cancel: how many runs it cancelled, and the run as it is now."""

    cancelled: int = Field(description="this run and its descendants that were still active")
    run: Run


ToolCallId = Annotated[str, Field(min_length=1, max_length=128)]


class ToolOutput(RequestModel):
    tool_call_id: ToolCallId
    output: Annotated[str, Field(max_length=1_048_576)]
    is_error: bool = False


class ToolOutputs(RequestModel):
    """The outputs of the client tool calls a run waits for: one for each, at once."""

    outputs: Annotated[list[ToolOutput], Field(min_length=1, max_length=128)]


class ApprovalDecision(RequestModel):
    tool_call_id: ToolCallId
    approve: bool
    reason: Omittable[Annotated[str, Field(max_length=1024)]] = Field(
        default=None, description="why; a denial's reason reaches the model")
    arguments: Omittable[dict[str, Any]] = Field(
        default=None, description="for an approval: arguments replacing the model's; they "
        "must fit the tool's parameters")


class Approvals(RequestModel):
    """Decisions on some or all of the calls a run waits to have approved; the run goes on
    once every call is decided."""

    decisions: Annotated[list[ApprovalDecision], Field(min_length=1, max_length=128)]


class BatchCreate(RequestModel):
    """Up to 32 runs, each in a new session of its `agent`."""

    runs: Annotated[list[OneShotRunCreate], Field(min_length=1, max_length=32)]
    mode: Literal["join", "detach"] = Field(
        default="join", description="`join`: answer once every run ended (or `timeout_ms` "
        "passed) with a row per run; `detach`: answer at once with the runs")
    timeout_ms: int = Field(default=60_000, ge=1, le=300_000,
                            description="`join`: how long to wait for the runs to end")

    @model_validator(mode="after")
    def _no_streams(self) -> BatchCreate:
        for index, run in enumerate(self.runs):
            if run.stream:
                raise ValueError(f"runs[{index}]: a batch run cannot stream; follow it with "
                                 "GET /v1/runs/{run_id}/events")
        return self


class BatchResult(ResponseModel):
    """One run of a `join` batch, at the index of its request; a failure stays in its row."""

    index: int
    run_id: str
    session_id: str
    status: RunStatus
    stop_reason: StopReason | None
    output: str | None
    usage: RunUsage
    error: RunError | None


class BatchJoined(ResponseModel):
    results: list[BatchResult]


class BatchDetached(ResponseModel):
    runs: list[Run]


class RunInputCreate(RequestModel):
    """User input for an unfinished run, delivered at its next turn boundary."""

    input: Annotated[str, Field(min_length=1)] | Annotated[
        list[InputMessage], Field(min_length=1, max_length=256)] = Field(
        description="text (one user message) or a list of user/system messages")
