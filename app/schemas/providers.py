"""Providers (§8) as `GET /v1/providers` shows them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.schemas.common import Timestamp


class ProviderStatus(BaseModel):
    name: str
    kind: Literal["openai-compatible", "scripted"]
    base_url: str | None
    status: Literal["ok", "unreachable", "unauthorized", "unknown"]
    models: list[str]
    latency_ms: int
    checked_at: Timestamp


class ProviderList(BaseModel):
    items: list[ProviderStatus]
