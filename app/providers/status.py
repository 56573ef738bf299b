"""Which provider failures are transient."""

from __future__ import annotations


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying: 408, 429 and every 5xx."""
    return status in (408, 429) or status >= 500
