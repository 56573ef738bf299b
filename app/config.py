"""Service settings, read from `LOOMD_*` environment variables or a `.env` file."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, field_serializer, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./loomd.db"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


class ProviderConfig(BaseModel):
    """A named OpenAI-compatible provider from `LOOMD_PROVIDERS`."""

    base_url: str
    api_key_env: str | None = None


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_TRUE = ("true", "t", "1", "yes", "y", "on")
_FALSE = ("false", "f", "0", "no", "n", "off", "")


def normalize_host(host: str) -> str:
    """A host name as compared: lower case, ASCII (IDNA), without a trailing dot or brackets."""
    name = host.strip().strip("[]").rstrip(".").lower()
    try:
        return name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return name


@dataclass(frozen=True)
class PrivateUrls:
    """`LOOMD_ALLOW_PRIVATE_URLS`: the private hosts and addresses tools and hooks may reach.

    `true` allows every private address, `false` none, and a comma-separated list the hosts
    named (exactly) and the addresses and networks given (`127.0.0.1,10.1.0.0/16,db.internal`).
    Cloud metadata addresses stay refused whatever it says (`app.tools.net`).
    """

    everything: bool = False
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, value: Any) -> PrivateUrls:
        """From a bool, `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`) or a list."""
        if isinstance(value, PrivateUrls):
            return value
        if isinstance(value, bool):
            return cls(everything=value)
        if isinstance(value, list | tuple):
            value = ",".join(str(item) for item in value)
        if not isinstance(value, str):
            raise ValueError("must be true, false or a comma-separated list of hosts and networks")
        text = value.strip()
        if text.lower() in _TRUE:
            return cls(everything=True)
        if text.lower() in _FALSE:
            return cls()
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host = normalize_host(entry)
            if not host or any(char in host for char in "/:@ "):
                raise ValueError(f"{entry!r} is neither a host name nor an address or network")
            hosts.add(host)
        return cls(hosts=frozenset(hosts), networks=tuple(networks))

    def __bool__(self) -> bool:
        """True only for `true`: code that asks "may anything private be reached?" with a
        plain `if` stays on the safe side for a list."""
        return self.everything

    def __str__(self) -> str:
        if self.everything:
            return "true"
        entries = sorted(self.hosts) + [str(network) for network in self.networks]
        return ",".join(entries) or "false"

    def admits(self, host: str, address: IPAddress | None = None) -> bool:
        """Whether the host name (as in the URL) or the address it resolved to is allowed."""
        if self.everything or normalize_host(host) in self.hosts:
            return True
        return address is not None and any(
            address.version == network.version and address in network
            for network in self.networks)


def _split_hosts(value: Any) -> Any:
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple):
        hosts = []
        for entry in (str(item).strip() for item in value):
            if not entry:
                continue
            host = normalize_host(entry.removeprefix("*.").removeprefix("."))
            if not host or any(char in host for char in "/@ ") or host.count(":") == 1:
                raise ValueError(f"{entry!r} is not a host name or address")
            hosts.append(host)
        return tuple(dict.fromkeys(hosts))
    return value


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
    allow_private_urls: Annotated[PrivateUrls, NoDecode] = Field(
        default_factory=PrivateUrls,
        description="`true`, `false` or a comma-separated list of hosts and networks")
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="host suffixes tools may reach; empty: any public host")
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
    hook_max_attempts: int = Field(default=8, ge=1, le=100)
    max_subrun_depth: int = Field(default=3, ge=0, le=16)
    snapshot_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """The default cap of a snapshot's envelope, and the cap of an imported one."""

    @field_validator("allow_private_urls", mode="plain")
    @classmethod
    def _parse_private_urls(cls, value: Any) -> PrivateUrls:
        return PrivateUrls.parse(value)

    @field_serializer("allow_private_urls")
    def _show_private_urls(self, value: PrivateUrls) -> str:
        return str(value)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_allowed_hosts(cls, value: Any) -> Any:
        return _split_hosts(value)

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
