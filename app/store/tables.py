"""SQLModel tables. One schema for SQLite and Postgres; every change is an Alembic revision."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from app.clock import utcnow
from app.store.types import UTCDateTime

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def _json(name: str | None = None, nullable: bool = False) -> Any:
    if name is None:
        return Field(sa_type=JSONType, nullable=nullable)
    return Field(sa_column=sa.Column(name, JSONType, nullable=nullable))


def _timestamp(nullable: bool = False, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True, index=index)
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=index)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    subject: str = Field(index=True, max_length=64)
    role: str = Field(max_length=16)
    key_hash: str = Field(unique=True, max_length=64)
    key_prefix: str = Field(max_length=16)
    created_at: datetime = _timestamp(index=True)
    last_used_at: datetime | None = _timestamp(nullable=True)


class Agent(SQLModel, table=True):
    __tablename__ = "agents"
    __table_args__ = (sa.UniqueConstraint("owner", "name"),)

    id: str = Field(primary_key=True, max_length=40)
    owner: str = Field(max_length=64)
    name: str = Field(max_length=64)
    version: int = 1
    config: dict[str, Any] = _json()
    created_at: datetime = _timestamp(index=True)
    updated_at: datetime = _timestamp()


class AgentVersion(SQLModel, table=True):
    __tablename__ = "agent_versions"

    agent_id: str = Field(
        sa_column=sa.Column(sa.String(40), sa.ForeignKey("agents.id", ondelete="CASCADE"),
                            primary_key=True)
    )
    version: int = Field(primary_key=True)
    config: dict[str, Any] = _json()
    created_at: datetime = _timestamp()


class Session(SQLModel, table=True):
    __tablename__ = "sessions"
    __table_args__ = (sa.Index("ix_sessions_owner_created", "owner", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    owner: str = Field(max_length=64)
    agent: str = Field(max_length=64, index=True)
    title: str | None = None
    meta: dict[str, Any] = _json("metadata")
    status: str = Field(default="idle", max_length=16, index=True)
    active_run_id: str | None = Field(default=None, max_length=40)
    open_tool_calls: list[dict[str, Any]] = _json()
    parent_session_id: str | None = Field(
        default=None,
        sa_column=sa.Column(sa.String(40), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                            nullable=True, index=True),
    )
    parent_run_id: str | None = Field(default=None, max_length=40)
    message_count: int = 0
    last_seq: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    llm_calls: int = 0
    todos: list[dict[str, Any]] = _json()
    created_at: datetime = _timestamp(index=True)
    updated_at: datetime = _timestamp()


class Message(SQLModel, table=True):
    __tablename__ = "messages"

    session_id: str = Field(
        sa_column=sa.Column(sa.String(40), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                            primary_key=True)
    )
    seq: int = Field(primary_key=True)
    role: str = Field(max_length=16)
    content: Any = _json(nullable=True)
    tool_calls: list[dict[str, Any]] | None = _json(nullable=True)
    tool_call_id: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=128)
    run_id: str | None = Field(default=None, max_length=40)
    state: str = Field(default="active", max_length=16)
    created_at: datetime = _timestamp()


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        sa.Index("ix_runs_owner_created", "owner", "created_at"),
        sa.Index("ix_runs_session_created", "session_id", "created_at"),
        sa.Index("ix_runs_status_lease", "status", "lease_expires_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    session_id: str = Field(
        sa_column=sa.Column(sa.String(40), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                            nullable=False)
    )
    owner: str = Field(max_length=64)
    agent: str = Field(max_length=64)
    agent_version: int
    status: str = Field(default="queued", max_length=24)
    stop_reason: str | None = Field(default=None, max_length=24)
    error: dict[str, Any] | None = _json(nullable=True)
    output: str | None = None
    turns: int = 0
    usage: dict[str, Any] = _json()
    required_action: dict[str, Any] | None = _json(nullable=True)
    waiting: dict[str, Any] | None = _json(nullable=True)
    """While `requires_action`: the open turn and, once answered, the answers
    (`app.runs.waits`)."""
    action_expires_at: datetime | None = _timestamp(nullable=True, index=True)
    """When the open `required_action` expires (its answers then get their defaults)."""
    decisions: list[dict[str, Any]] = _json()
    """The approval decisions of the run: who decided which call, when."""
    pending_input: list[dict[str, Any]] = _json()
    """Steering input not yet delivered at a turn boundary."""
    active_ms: int = 0
    """Running time spent before the current stretch (waits and queues not counted)."""
    depth: int = 0
    """0 for a run a client started; a subrun's is its parent's plus one."""
    parent_run_id: str | None = Field(default=None, max_length=40, index=True)
    last_seq: int = 0
    meta: dict[str, Any] = _json("metadata")
    request: dict[str, Any] = _json()
    config: dict[str, Any] = _json()
    executor_id: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = _timestamp(nullable=True)
    created_at: datetime = _timestamp(index=True)
    started_at: datetime | None = _timestamp(nullable=True)
    ended_at: datetime | None = _timestamp(nullable=True)


class RunEvent(SQLModel, table=True):
    __tablename__ = "run_events"

    run_id: str = Field(
        sa_column=sa.Column(sa.String(40), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                            primary_key=True)
    )
    seq: int = Field(primary_key=True)
    type: str = Field(max_length=40)
    data: dict[str, Any] = _json()
    ts: datetime = _timestamp()


class ToolSecret(SQLModel, table=True):
    """The key an owner's `http` tool calls are signed with (Standard Webhooks)."""

    __tablename__ = "tool_secrets"

    owner: str = Field(primary_key=True, max_length=64)
    secret: str = Field(max_length=128)
    created_at: datetime = _timestamp()


class Hook(SQLModel, table=True):
    """A webhook that gates tool calls (`pre_tool`, `post_tool`) or receives events (§6)."""

    __tablename__ = "hooks"
    __table_args__ = (sa.Index("ix_hooks_owner_created", "owner", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    owner: str = Field(max_length=64)
    all_owners: bool = False
    """An admin's hook that applies to the runs of every owner."""
    name: str = Field(max_length=64)
    phase: str = Field(max_length=16, index=True)
    url: str = Field(max_length=2048)
    agents: list[str] = _json()
    tools: list[str] = _json()
    events: list[str] = _json()
    timeout_ms: int = 5000
    failure_mode: str = Field(max_length=8)
    enabled: bool = True
    secret: str = Field(max_length=128)
    circuit: str = Field(default="closed", max_length=16)
    failures: int = 0
    """Consecutive failed deliveries (the circuit opens after a run of them)."""
    circuit_until: datetime | None = _timestamp(nullable=True)
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class HookDelivery(SQLModel, table=True):
    """One request to a hook (a gating call, an event, a ping) and its latest attempt;
    event deliveries are also the outbox their sender works through."""

    __tablename__ = "hook_deliveries"
    __table_args__ = (
        sa.Index("ix_hook_deliveries_hook_created", "hook_id", "created_at"),
        sa.Index("ix_hook_deliveries_status_next", "status", "next_attempt_at"),
        sa.Index("ix_hook_deliveries_hook_ordinal", "hook_id", "ordinal"),
    )

    id: str = Field(primary_key=True, max_length=40)
    hook_id: str = Field(
        sa_column=sa.Column(sa.String(40), sa.ForeignKey("hooks.id", ondelete="CASCADE"),
                            nullable=False)
    )
    message_id: str = Field(max_length=64)
    """`webhook-id`: the same on every attempt, so receivers can dedupe."""
    ordinal: int = Field(default=0, sa_type=sa.BigInteger)
    """Orders a hook's event deliveries: they are sent in this order."""
    phase: str = Field(max_length=16)
    event_type: str = Field(max_length=40)
    run_id: str | None = Field(default=None, max_length=40)
    payload: dict[str, Any] = _json()
    status: str = Field(max_length=16)
    """`pending` (to be sent), `delivered`, `failed` (a gating call that failed) or `dead`."""
    attempt: int = 0
    status_code: int | None = None
    duration_ms: int | None = None
    error: str | None = Field(default=None, max_length=1024)
    response_excerpt: str | None = Field(default=None, max_length=1024)
    next_attempt_at: datetime | None = _timestamp(nullable=True)
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"

    subject: str = Field(primary_key=True, max_length=64)
    method: str = Field(primary_key=True, max_length=8)
    path: str = Field(primary_key=True, max_length=255)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    resource_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = _timestamp()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class RuntimeState(SQLModel, table=True):
    """Whether the runtime is paused (§9): one row, shared by every process on the database."""

    __tablename__ = "runtime_state"

    id: str = Field(primary_key=True, max_length=16)
    status: str = Field(default="running", max_length=16)
    """`running` or `paused` (runs still parking make a paused runtime report `pausing`)."""
    paused_at: datetime | None = _timestamp(nullable=True)
    deadline: datetime | None = _timestamp(nullable=True)
    """When runs that have not parked yet are cancelled."""
    updated_at: datetime = _timestamp()


class Snapshot(SQLModel, table=True):
    """A portable envelope of the service's state (§11); its bytes are its chunks."""

    __tablename__ = "snapshots"

    id: str = Field(primary_key=True, max_length=40)
    label: str | None = Field(default=None, max_length=200)
    format_version: int
    byte_size: int = Field(default=0, sa_type=sa.BigInteger)
    sha256: str = Field(default="", max_length=64)
    counts: dict[str, Any] = _json()
    source: dict[str, Any] = _json()
    ready: bool = False
    """False while its chunks are being written (a crash then leaves it unlisted)."""
    created_at: datetime = _timestamp(index=True)


class SnapshotChunk(SQLModel, table=True):
    """A slice of a snapshot's envelope bytes, in order of `idx`."""

    __tablename__ = "snapshot_chunks"

    snapshot_id: str = Field(
        sa_column=sa.Column(sa.String(40), sa.ForeignKey("snapshots.id", ondelete="CASCADE"),
                            primary_key=True)
    )
    idx: int = Field(primary_key=True)
    data: bytes = Field(sa_type=sa.LargeBinary, nullable=False)
