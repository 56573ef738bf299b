"""Per-request values that logs and error bodies need wherever they are produced."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

_request_id: ContextVar[str | None] = ContextVar("loomd_request_id", default=None)


@dataclass
class RequestInfo:
    """Mutable facts about one request, filled in as it is handled (the subject by auth)."""

    request_id: str
    subject: str | None = None


def current_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(request_id: str | None) -> object:
    """Set the request id for this context; returns a token for `reset_request_id`."""
    return _request_id.set(request_id)


def reset_request_id(token: object) -> None:
    _request_id.reset(token)  # type: ignore[arg-type]
