"""Run statuses and which of them still hold a session."""

from typing import Literal

RunStatus = Literal[
    "queued", "running", "requires_action", "paused",
    "completed", "failed", "cancelled", "interrupted",
]
ACTIVE_STATUSES: tuple[str, ...] = ("queued", "running", "requires_action", "paused")
TERMINAL_STATUSES: tuple[str, ...] = ("completed", "failed", "cancelled", "interrupted")
