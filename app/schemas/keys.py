"""API keys and the caller's identity."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.schemas.common import Page, RequestModel, ResponseModel, Subject, Timestamp

Role = Literal["user", "admin"]


class ApiKeyCreate(RequestModel):
    subject: Subject
    role: Role = "user"


class ApiKey(ResponseModel):
    id: str = Field(examples=["key_3Jx0Q2nYv8h1bT5a0s9R"])
    subject: str
    role: Role
    key_prefix: str = Field(description="the first characters of the key, to tell keys apart")
    created_at: Timestamp
    last_used_at: Timestamp | None = None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="the secret bearer token; shown only in this response",
                     examples=["lmd_0123456789abcdef"])


class WhoAmI(ResponseModel):
    subject: str
    role: Role
    open_mode: bool = Field(description="true when the service runs without an admin token")


class ApiKeyPage(Page[ApiKey]):
    """A page of API keys."""
