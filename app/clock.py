"""UTC time with millisecond precision, the resolution the API shows."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now in UTC. Stored with microseconds, so newest-first lists order finely; shown in ms."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Format as RFC 3339 UTC with milliseconds, e.g. `2026-01-02T03:04:05.678Z`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
