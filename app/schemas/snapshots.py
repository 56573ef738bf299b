"""Snapshots (§11): requests, metadata, restore reports, and the envelope's items.

The item models check what an imported envelope holds before it is stored, so that every
stored snapshot can be restored: field names and types, the lengths the columns allow,
statuses the service knows. They also document the envelope in the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.schemas.common import (
    JsonObject,
    Omittable,
    Page,
    RequestModel,
    ResponseModel,
    Timestamp,
    documented_as,
)
from app.status import RunStatus


def _parse_timestamp(value: Any) -> Any:
    """An RFC 3339 string as a datetime (strict models take no strings for datetimes)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError as exc:
            raise PydanticCustomError(
                "datetime_from_date_parsing", "must be an RFC 3339 timestamp") from exc
    return value


TimestampIn = Annotated[
    AwareDatetime, BeforeValidator(_parse_timestamp),
    Field(description="RFC 3339 timestamp with a UTC offset"),
]
Int32 = Annotated[int, Field(ge=0, le=2**31 - 1)]


Id = Annotated[str, Field(max_length=40)]
Short = Annotated[str, Field(max_length=64)]
Text24 = Annotated[str, Field(max_length=24)]
Text40 = Annotated[str, Field(max_length=40)]
Text128 = Annotated[str, Field(max_length=128)]
Url = Annotated[str, Field(max_length=2048)]


# -- requests and answers --------------------------------------------------------------------


class SnapshotCreate(RequestModel):
    label: Omittable[Annotated[str, Field(max_length=200)]] = None
    include_history: bool = Field(
        default=False, description="also carry the runs' events (the `events` section)")
    history_since: Omittable[TimestampIn] = Field(
        default=None, description="with `include_history`: only events at or after this time")
    max_bytes: Omittable[Annotated[int, Field(ge=1)]] = Field(
        default=None, description="the envelope's cap in bytes; at most, and by default, "
                                  "`LOOMD_SNAPSHOT_MAX_BYTES`")

    @model_validator(mode="after")
    def _since_needs_history(self) -> SnapshotCreate:
        if self.history_since is not None and not self.include_history:
            raise PydanticCustomError(
                "history_since_without_history",
                "`history_since` needs `include_history: true`")
        return self


class SnapshotRestore(RequestModel):
    resume_runs: bool = Field(
        default=True, description="go on with the restored runs: resume the paused ones and "
                                  "start each session's first queued one")


class SnapshotCounts(ResponseModel):
    agents: int
    sessions: int
    messages: int
    runs: int
    hooks: int
    events: int


class SnapshotMeta(ResponseModel):
    id: str = Field(examples=["snap_3Jx0Q2nYv8h1bT5a0s9R"])
    label: str | None
    created_at: Timestamp
    format_version: int
    byte_size: int = Field(description="the envelope's size in bytes")
    sha256: str = Field(description="hex SHA-256 of the canonical JSON of the sections "
                                    "(the envelope's `sha256`, and the export's ETag)")
    counts: SnapshotCounts


class SnapshotPage(Page[SnapshotMeta]):
    """A page of snapshots."""


class HookSecret(BaseModel):
    hook_id: str
    secret: str = Field(description="the restored hook's new signing secret; shown only here")


class RestoreResult(BaseModel):
    created: SnapshotCounts
    skipped: SnapshotCounts = Field(description="objects whose id already existed (or, for "
                                                "an agent, whose owner has one of that name)")
    resumed_runs: int
    warnings: list[str]
    hook_secrets: list[HookSecret]


# -- the envelope ----------------------------------------------------------------------------


class Item(BaseModel):
    """An object of a section: exactly these members."""

    model_config = ConfigDict(extra="forbid", strict=True)


class AgentVersionItem(Item):
    version: Int32
    config: dict[str, Any]
    created_at: TimestampIn


class AgentItem(Item):
    id: Id
    owner: Short
    name: Short
    version: Int32
    config: dict[str, Any]
    created_at: TimestampIn
    updated_at: TimestampIn
    versions: list[AgentVersionItem] = Field(description="every version, the current one too")


class MessageItem(Item):
    seq: Int32
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[Annotated[JsonObject, documented_as("ContentPart")]] | None
    tool_calls: list[Annotated[JsonObject, documented_as("ToolCall")]] | None
    tool_call_id: Text128 | None
    name: Text128 | None
    run_id: Id | None
    state: Literal["active", "compacted"]
    created_at: TimestampIn


class SessionItem(Item):
    id: Id
    owner: Short
    agent: Short
    title: str | None
    metadata: dict[str, Any]
    status: Literal["idle", "running", "pending"]
    active_run_id: Id | None
    open_tool_calls: list[Annotated[JsonObject, documented_as("PendingToolCall")]]
    parent_session_id: Id | None
    parent_run_id: Id | None
    message_count: Int32
    last_seq: Int32
    prompt_tokens: Int32
    completion_tokens: Int32
    total_tokens: Int32
    llm_calls: Int32
    todos: list[Annotated[JsonObject, documented_as("Todo")]]
    created_at: TimestampIn
    updated_at: TimestampIn
    messages: list[MessageItem] = Field(description="every message, compacted ones too")


class RunItem(Item):
    id: Id
    session_id: Id
    owner: Short
    agent: Short
    agent_version: Int32
    status: RunStatus
    stop_reason: Text24 | None
    error: Annotated[JsonObject, documented_as("RunError")] | None
    output: str | None
    turns: Int32
    usage: dict[str, Any]
    required_action: Annotated[JsonObject, documented_as("RequiredAction")] | None
    waiting: dict[str, Any] | None
    action_expires_at: TimestampIn | None
    decisions: list[Annotated[JsonObject, documented_as("ApprovalRecord")]]
    pending_input: list[Annotated[JsonObject, documented_as("InputMessage")]]
    active_ms: Int32
    depth: Int32
    parent_run_id: Id | None
    last_seq: Int32
    metadata: dict[str, Any]
    request: dict[str, Any]
    config: dict[str, Any]
    created_at: TimestampIn
    started_at: TimestampIn | None
    ended_at: TimestampIn | None


class HookItem(Item):
    id: Id
    owner: Short
    all_owners: bool
    name: Short
    phase: Literal["pre_tool", "post_tool", "event"]
    url: Url
    agents: list[str]
    tools: list[str]
    events: list[str]
    timeout_ms: Int32
    failure_mode: Literal["closed", "open"]
    enabled: bool
    created_at: TimestampIn
    updated_at: TimestampIn


class EventItem(Item):
    run_id: Id
    seq: Int32
    type: Text40
    data: dict[str, Any]
    ts: TimestampIn


class Sections(BaseModel):
    """The service's state; each section is a list of objects."""

    agents: list[AgentItem] = Field(default_factory=list)
    events: list[EventItem] = Field(default_factory=list,
                                    description="only in a snapshot made with history")
    hooks: list[HookItem] = Field(default_factory=list, description="without their secrets")
    runs: list[RunItem] = Field(default_factory=list)
    sessions: list[SessionItem] = Field(default_factory=list)


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str = Field(description="the version of loomd that made the snapshot")
    instance: str = Field(description="the instance id (`LOOMD_INSTANCE_ID`) that made it")


class Envelope(BaseModel):
    """A snapshot as a portable JSON document (`format_version` 1).

    `sha256` is the hex SHA-256 of the canonical JSON of `sections`: keys sorted, no
    whitespace, non-ASCII characters as UTF-8 (Python's `json.dumps(sections,
    sort_keys=True, separators=(",", ":"), ensure_ascii=False)`). Timestamps in the sections
    keep microseconds.
    """

    format: Literal["loomd.snapshot"]
    format_version: int = Field(ge=1, examples=[1])
    created_at: str = Field(description="RFC 3339 UTC timestamp")
    source: Source
    sections: Sections
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SnapshotWithEnvelope(SnapshotMeta):
    envelope: Envelope


ITEM_MODELS: dict[str, type[Item]] = {
    "agents": AgentItem, "events": EventItem, "hooks": HookItem, "runs": RunItem,
    "sessions": SessionItem,
}
"""The model of each section's items, by section name."""
