"""Event types and the event envelope."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.clock import rfc3339

TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled", "run.interrupted"})


def envelope(
    type_: str, seq: int, run_id: str, session_id: str, ts: datetime, data: dict[str, Any]
) -> dict[str, Any]:
    """The JSON shared by SSE `data`, webhook bodies and `GET …/events` items."""
    return {"type": type_, "seq": seq, "run_id": run_id, "session_id": session_id,
            "ts": rfc3339(ts), "data": data}


def is_terminal(event: dict[str, Any]) -> bool:
    return event["type"] in TERMINAL_EVENTS
