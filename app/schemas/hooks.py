"""Hooks (§6): webhooks that gate tool calls or receive run events, and their deliveries."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    Field,
    StringConstraints,
    UrlConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.clock import utcnow
from app.schemas.common import Name, Omittable, Page, RequestModel, ResponseModel, Timestamp
from app.schemas.events import KNOWN_TYPES

Phase = Literal["pre_tool", "post_tool", "event"]
FailureMode = Literal["closed", "open"]
Circuit = Literal["closed", "open", "half_open"]
DeliveryStatus = Literal["pending", "delivered", "failed", "dead"]
DeliveryPhase = Literal["pre_tool", "post_tool", "event", "ping"]

TOOL_PHASES = ("pre_tool", "post_tool")
RUN_STATE = "run.state"
STREAM_ONLY = ("stream.gap",)
"""Types that mark a place in a stream: no run records them, so no hook could get one."""


EVENT_TYPES = (*(type_ for type_ in KNOWN_TYPES if type_ not in STREAM_ONLY), RUN_STATE)
"""Every `type` a run event can have (the known members of the `Event` union), and
`run.state`."""


def _known_event(value: str) -> str:
    if value not in EVENT_TYPES:
        raise PydanticCustomError(
            "unknown_event_type", "unknown event type; known: {known}",
            {"known": ", ".join(EVENT_TYPES)})
    return value


Glob = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_*.-]{1,64}$"),
    Field(description="a name, or a pattern with `*`", examples=["http_*"]),
]
Globs = Annotated[list[Glob], Field(max_length=64)]
EventType = Annotated[
    str,
    AfterValidator(_known_event),
    Field(json_schema_extra={"enum": list(EVENT_TYPES)},
          description="a run event type, or `run.state` (every change of the run's status)"),
]
EventTypes = Annotated[list[EventType], Field(max_length=len(EVENT_TYPES))]
HookUrl = Annotated[
    AnyHttpUrl,
    UrlConstraints(max_length=2048, allowed_schemes=["http", "https"]),
    Field(description="where requests are POSTed; private addresses need "
                      "`LOOMD_ALLOW_PRIVATE_URLS`", examples=["https://hooks.example.com/guard"]),
]
TimeoutMs = Annotated[int, Field(ge=100, le=60_000, description="per request, 100..60000 ms")]

_FAILURE_MODE_DOC = ("what a gating call does when the hook is down: `closed` refuses the "
                     "tool call, `open` lets it run; default `closed` for `pre_tool`, `open` "
                     "otherwise")


def phase_problem(phase: str, field: str, value: list[str]) -> tuple[str, str] | None:
    """Why `value` does not fit a hook of `phase` as its `field` (`tools` or `events`):
    `(message, error type)`, or None when it fits."""
    if field == "events":
        if phase == "event" and not value:
            return "an `event` hook needs at least one event type", "missing"
        if phase != "event" and value:
            return f"only `event` hooks have events, not `{phase}` hooks", "phase_mismatch"
    if field == "tools" and phase not in TOOL_PHASES and value:
        return f"only `pre_tool` and `post_tool` hooks have tools, not `{phase}` hooks", (
            "phase_mismatch")
    return None


def _check_phase(value: list[str], info: ValidationInfo) -> list[str]:
    phase = info.data.get("phase")
    problem = phase_problem(phase, str(info.field_name), value) if phase else None
    if problem is not None:
        message, type_ = problem
        raise PydanticCustomError(type_, message)
    return value


class HookCreate(RequestModel):
    name: Name
    phase: Phase
    url: HookUrl
    agents: Globs = Field(default_factory=list, description="agent names; empty: every agent")
    tools: Globs = Field(default_factory=list, validate_default=True,
                         description="tool names (`pre_tool`/`post_tool` only); empty: every "
                                     "tool")
    events: EventTypes = Field(default_factory=list, validate_default=True,
                               description="the event types to receive (`event` hooks, "
                                           "which need one at least)")
    timeout_ms: TimeoutMs = 5000
    failure_mode: Omittable[FailureMode] = Field(default=None, description=_FAILURE_MODE_DOC)
    enabled: bool = True
    all_owners: bool = Field(default=False, description="admins only: the hook applies to "
                                                        "the runs of every owner")

    _tools = field_validator("tools")(_check_phase)
    _events = field_validator("events")(_check_phase)


class HookUpdate(RequestModel):
    """A partial update: a field present replaces the whole value; `phase` cannot change,
    and no field may be `null`."""

    name: Omittable[Name] = None
    url: Omittable[HookUrl] = None
    agents: Omittable[Globs] = None
    tools: Omittable[Globs] = None
    events: Omittable[EventTypes] = None
    timeout_ms: Omittable[TimeoutMs] = None
    failure_mode: Omittable[FailureMode] = None
    enabled: Omittable[bool] = None
    all_owners: Omittable[bool] = Field(default=None, description="admins only")

    def changes(self) -> dict[str, Any]:
        """The fields present, as stored."""
        return self.model_dump(mode="json", include=self.model_fields_set)


class Hook(ResponseModel):
    id: str = Field(examples=["hook_2Yf0nXb1kQmZr8sT4vWc"])
    name: str
    phase: Phase
    url: str
    agents: list[str]
    tools: list[str]
    events: list[str]
    timeout_ms: int
    failure_mode: FailureMode
    enabled: bool
    all_owners: bool
    owner: str
    circuit: Circuit = Field(description="`open` after repeated failures: requests are not "
                                         "sent until it half-opens for a trial")
    created_at: Timestamp
    updated_at: Timestamp

    @model_validator(mode="before")
    @classmethod
    def _half_open(cls, value: Any) -> Any:
        """An open circuit whose time is up lets the next delivery through as a trial."""
        until = getattr(value, "circuit_until", None)
        if getattr(value, "circuit", None) == "open" and until is not None and until <= utcnow():
            fields = {name: getattr(value, name) for name in cls.model_fields
                      if hasattr(value, name)}
            return {**fields, "circuit": "half_open"}
        return value


class HookCreated(Hook):
    secret: str = Field(
        description="the signing key (`whsec_` + base64); shown only in this response",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


class HookPage(Page[Hook]):
    """A page of hooks, newest first."""


class HookDelivery(ResponseModel):
    """One request to a hook and its latest attempt."""

    id: str = Field(examples=["dlv_kQmZr8sT4vWc2Yf0nXb1"])
    phase: DeliveryPhase
    event_type: str = Field(description="the event's type, or the phase of a gating call, "
                                        "or `ping`")
    run_id: str | None
    message_id: str = Field(description="`webhook-id`: the same on every attempt")
    attempt: int = Field(description="attempts made so far")
    status: DeliveryStatus = Field(description="`pending` (to be sent), `delivered`, "
                                               "`failed` or `dead` (out of attempts)")
    status_code: int | None = Field(description="the receiver's HTTP status; null when no "
                                                "answer came")
    duration_ms: int | None
    error: str | None = Field(description="why no answer came (connection, guard, timeout)")
    response_excerpt: str | None = Field(description="the start of the receiver's answer")
    created_at: Timestamp


class HookDeliveryPage(Page[HookDelivery]):
    """A page of deliveries, newest first."""
