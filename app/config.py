"""Service settings, read from `LOOMD_*` environment variables or a `.env` file."""

from __future__ import annotations

import json
import os
import secrets
import socket
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./loomd.db"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


class ProviderConfig(BaseModel):
    """A named OpenAI-compatible provider from `LOOMD_PROVIDERS`."""

    base_url: str
    api_key_env: str | None = None


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Settings(BaseSettings):
    """Every knob of the service; one instance is built per process (or per test)."""

    model_config = SettingsConfigDict(
        env_prefix="LOOMD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    admin_token: str | None = None
    auto_migrate: bool = True
    allow_private_urls: bool = False
    metrics_enabled: bool = True
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    body_read_timeout_s: float = Field(default=30, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    db_pool_size: int = Field(default=10, ge=1)
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0)
    providers: Annotated[dict[str, ProviderConfig], NoDecode] = Field(default_factory=dict)
    llm_connect_timeout_s: float = Field(default=10.0, gt=0)
    llm_read_timeout_s: float = Field(default=60.0, gt=0)
    # The `openai` provider reads the SDK's usual variables, without the LOOMD_ prefix.
    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("openai_api_key", "OPENAI_API_KEY"))
    openai_base_url: str = Field(
        default=DEFAULT_OPENAI_BASE_URL,
        validation_alias=AliasChoices("openai_base_url", "OPENAI_BASE_URL"))
    instance_id: str = Field(default_factory=_default_instance_id)
    run_lease_s: float = Field(default=30, gt=0)
    max_concurrent_runs: int = Field(default=64, ge=1)
    max_queued_runs: int = Field(default=1024, ge=0)
    shutdown_grace_s: float = Field(default=10, ge=0)
    llm_max_attempts: int = Field(default=4, ge=1, le=20)
    llm_retry_base_s: float = Field(default=0.5, ge=0)
    tool_timeout_s: float = Field(default=60, gt=0)
    storage_deadline_s: float = Field(default=30, gt=0)
    writer_queue_size: int = Field(default=10_000, ge=10)
    action_timeout_s: float = Field(default=600, gt=0)
    max_subrun_depth: int = Field(default=3, ge=0, le=16)

    @field_validator("admin_token")
    @classmethod
    def _blank_token_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("openai_api_key")
    @classmethod
    def _blank_key_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("openai_base_url")
    @classmethod
    def _blank_base_url_is_default(cls, value: str) -> str:
        return value.strip() or DEFAULT_OPENAI_BASE_URL

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @property
    def open_mode(self) -> bool:
        """True when no admin token is configured: tokenless requests act as the admin."""
        return self.admin_token is None

    def provider_names(self) -> list[str]:
        """Every provider an agent's `model` may name."""
        return sorted({"openai", "scripted", *self.providers})
