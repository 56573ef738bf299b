"""Sessions (§3): a conversation owned by one agent."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from app.schemas.common import (
    Metadata,
    Name,
    Omittable,
    Page,
    RequestModel,
    ResponseModel,
    Timestamp,
)
from app.schemas.messages import Message

SessionStatus = Literal["idle", "running", "pending"]
Title = Annotated[str, Field(max_length=512)]


class SessionCreate(RequestModel):
    agent: Name
    title: Title | None = None
    metadata: Metadata = Field(default_factory=dict)


class SessionUpdate(RequestModel):
    """Replace the fields present; `null` clears `title`, `metadata` holds an object."""

    title: Title | None = Field(default=None, description="null clears it")
    metadata: Omittable[Metadata] = None


class SessionFork(RequestModel):
    at_seq: Omittable[Annotated[int, Field(ge=1)]] = Field(
        default=None, description="copy messages up to and including this seq (default: all)"
    )


class SessionCompact(RequestModel):
    reason: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="why the history is compacted (logged only)")


class CompactionResult(ResponseModel):
    """What a compaction did; the same fields as the `compaction.completed` event."""

    compacted: bool = Field(description="false when there was nothing to fold")
    before_tokens: int = Field(description="estimated tokens of the active history before")
    after_tokens: int = Field(description="estimated tokens of the active history after")
    folded_messages: int = Field(description="messages summarised into the summary message")


class SessionUsage(ResponseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Todo(ResponseModel):
    content: str
    status: Literal["pending", "in_progress", "done"]


class Session(ResponseModel):
    id: str = Field(examples=["ses_Yx2m9Qa0cB7dE4fG5hJ6"])
    agent: str
    owner: str
    title: str | None
    metadata: dict[str, object]
    status: SessionStatus
    active_run_id: str | None
    parent_session_id: str | None
    parent_run_id: str | None
    message_count: int
    todos: list[Todo] = Field(default_factory=list,
                              description="the todo list the agent keeps with `todo_write`")
    usage: SessionUsage
    created_at: Timestamp
    updated_at: Timestamp


class MessagesAppended(ResponseModel):
    """The messages as stored, and the session after the append."""

    items: list[Message]
    session: Session


StatusFilter = Annotated[SessionStatus | None, Field(description="only sessions in this status")]
AgentFilter = Annotated[Name | None, Field(description="only sessions of this agent")]


class SessionPage(Page[Session]):
    """A page of sessions."""


class MessagePage(Page[Message]):
    """A page of messages, ascending by `seq`."""
