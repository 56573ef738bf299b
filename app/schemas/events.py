"""Run events (§5): the envelope, and the `data` of each `type`, as one discriminated union.

SDKs generated from the OpenAPI document get a typed event per `type`. Clients must ignore
types they do not know, so `data` models accept fields added later, and the union ends in
`UnknownEvent`, which any later type matches.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    RootModel,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from app.schemas.common import JsonObject, Page, Timestamp, documented_as
from app.schemas.messages import Message
from app.schemas.runs import RequiredAction, Run, RunError, RunUsage


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


class NoData(_Data):
    pass


class TurnData(_Data):
    turn: int


class TextDeltaData(TurnData):
    text: str


class RunCreatedData(_Data):
    run: Run


class MessageCompletedData(TurnData):
    message: Message
    finish_reason: str | None = None


class ToolStartedData(TurnData):
    tool_call_id: str
    name: str
    arguments: Any = Field(description="the parsed JSON arguments, or the raw text when they "
                                       "are not valid JSON")


class ToolCompletedData(TurnData):
    tool_call_id: str
    name: str
    output: str
    is_error: bool
    duration_ms: int


class ToolDeniedData(TurnData):
    tool_call_id: str
    name: str
    by: Literal["policy", "hook", "approval", "rate_limit"]
    reason: str


class HookDecisionData(_Data):
    hook_id: str
    phase: str
    tool_call_id: str | None = None
    decision: str
    duration_ms: int


class ApprovalDecidedData(TurnData):
    tool_call_id: str
    name: str
    approve: bool
    reason: str | None
    arguments_replaced: bool = Field(description="the approver replaced the arguments")
    decided_by: str = Field(description="the API key subject who decided, or `expiry` for "
                            "the policy's `approval_default` after `expires_at`")
    decided_at: str


class InputData(_Data):
    messages: list[Annotated[JsonObject, documented_as("InputMessage")]] = Field(
        description="the steering input, as stored")


class RequiresActionData(_Data):
    required_action: RequiredAction


class RetryData(_Data):
    attempt: int
    max_attempts: int
    error: str
    wait_ms: int


class UsageData(TurnData):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompactionData(_Data):
    compacted: bool = Field(description="false when nothing was changed (see `error`)")
    before_tokens: int = Field(description="estimated tokens of the active history before")
    after_tokens: int = Field(description="estimated tokens of the active history after")
    folded_messages: int = Field(description="messages summarised into the summary message")
    error: RunError | None = Field(
        None, description="why the history was not compacted (the summary call failed)")


class SubrunData(_Data):
    run_id: str
    session_id: str
    agent: str
    status: str | None = Field(None, description="`subrun.completed` only")
    output: str | None = None


class CompletedData(_Data):
    stop_reason: str
    output: str | None
    usage: RunUsage
    turns: int


class FailedData(_Data):
    error: RunError


class ReasonData(_Data):
    reason: str


class GapData(_Data):
    missing_after: int
    resumes_at: int


class _Envelope(BaseModel):
    seq: int = Field(description="1, 2, 3 … per run, without gaps")
    run_id: str
    session_id: str
    ts: Timestamp


class RunCreated(_Envelope):
    type: Literal["run.created"]
    data: RunCreatedData


class RunPhase(_Envelope):
    type: Literal["run.started", "run.paused", "run.resumed"]
    data: NoData


class TurnBoundary(_Envelope):
    type: Literal["turn.started", "turn.completed"]
    data: TurnData


class TextDelta(_Envelope):
    type: Literal["message.delta", "reasoning.delta"]
    data: TextDeltaData


class MessageCompleted(_Envelope):
    type: Literal["message.completed"]
    data: MessageCompletedData


class ToolStarted(_Envelope):
    type: Literal["tool.started"]
    data: ToolStartedData


class ToolCompleted(_Envelope):
    type: Literal["tool.completed"]
    data: ToolCompletedData


class ToolDenied(_Envelope):
    type: Literal["tool.denied"]
    data: ToolDeniedData


class HookDecision(_Envelope):
    type: Literal["hook.decision"]
    data: HookDecisionData


class RunRequiresAction(_Envelope):
    type: Literal["run.requires_action"]
    data: RequiresActionData


class ApprovalDecided(_Envelope):
    """A person (or the expiry default) decided on a call that waited for approval."""

    type: Literal["approval.decided"]
    data: ApprovalDecidedData


class RunInput(_Envelope):
    """Steering input delivered to the run at a turn boundary."""

    type: Literal["run.input"]
    data: InputData


class LLMRetry(_Envelope):
    type: Literal["llm.retry"]
    data: RetryData


class TurnUsage(_Envelope):
    type: Literal["usage"]
    data: UsageData


class CompactionCompleted(_Envelope):
    type: Literal["compaction.completed"]
    data: CompactionData


class Subrun(_Envelope):
    type: Literal["subrun.started", "subrun.completed"]
    data: SubrunData


class RunCompleted(_Envelope):
    type: Literal["run.completed"]
    data: CompletedData


class RunFailed(_Envelope):
    type: Literal["run.failed"]
    data: FailedData


class RunStopped(_Envelope):
    type: Literal["run.cancelled", "run.interrupted"]
    data: ReasonData


class StreamGap(_Envelope):
    type: Literal["stream.gap"]
    data: GapData


_Known = (
    RunCreated | RunPhase | TurnBoundary | TextDelta | MessageCompleted | ToolStarted
    | ToolCompleted | ToolDenied | HookDecision | RunRequiresAction | ApprovalDecided
    | RunInput | LLMRetry | TurnUsage
    | CompactionCompleted | Subrun | RunCompleted | RunFailed | RunStopped | StreamGap
)
KnownEvent = Annotated[_Known, Field(discriminator="type")]
KNOWN_TYPES = tuple(name for member in get_args(_Known)
                    for name in get_args(member.model_fields["type"].annotation))


class UnknownEvent(_Envelope):
    """An event of a type this version of the document does not list: ignore it."""

    type: str = Field(json_schema_extra={"not": {"enum": list(KNOWN_TYPES)}},
                      description="any type but the listed ones")
    data: dict[str, Any]

    @field_validator("type")
    @classmethod
    def _not_known(cls, value: str) -> str:
        if value in KNOWN_TYPES:
            raise ValueError(f"{value!r} is a known type: its data must fit its schema")
        return value


class Event(RootModel[Annotated[KnownEvent | UnknownEvent, Field(union_mode="left_to_right")]]):
    """One step of a run, told apart by `type`; the same JSON is the SSE `data`.

    The document lists the known types, then `UnknownEvent`, which matches any event: a
    client tries the members in order and ignores an `UnknownEvent` (a type added later).
    """

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # One flat `anyOf` with no discriminator, which would reject types added later.
        document = handler.resolve_ref_schema(handler(schema))
        known, unknown = document["anyOf"]
        members = [*known["oneOf"], unknown]
        description = inspect.cleandoc(cls.__doc__ or "")
        return {"anyOf": members, "title": "Event", "description": description}


class EventPage(Page[Event]):
    """A page of events, ascending by `seq`."""
