"""The envelope's format: its sections, canonical JSON, and rows as section items."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from app.store.statements import EVENTS, MESSAGES, RUNS, SESSIONS
from app.store.tables import Agent, AgentVersion, Hook, Snapshot, SnapshotChunk

FORMAT = "loomd.snapshot"
FORMAT_VERSION = 1
SECTIONS = ("agents", "events", "hooks", "runs", "sessions")
"""In sorted order: the order they are written in, so the bytes written are canonical."""
COUNTED = ("agents", "sessions", "messages", "runs", "hooks", "events")

AGENTS: sa.Table = Agent.__table__  # type: ignore[attr-defined]
AGENT_VERSIONS: sa.Table = AgentVersion.__table__  # type: ignore[attr-defined]
HOOKS: sa.Table = Hook.__table__  # type: ignore[attr-defined]
SNAPSHOTS: sa.Table = Snapshot.__table__  # type: ignore[attr-defined]
CHUNKS: sa.Table = SnapshotChunk.__table__  # type: ignore[attr-defined]

LEFT_OUT: dict[str, frozenset[str]] = {
    "runs": frozenset({"executor_id", "lease_expires_at"}),
    "hooks": frozenset({"secret", "circuit", "failures", "circuit_until"}),
    "messages": frozenset({"session_id"}),
    "agent_versions": frozenset({"agent_id"}),
}
"""Columns a section does not carry: who executes a run, and a hook's secret and circuit."""
TABLES: dict[str, sa.Table] = {
    "agents": AGENTS, "agent_versions": AGENT_VERSIONS, "events": EVENTS, "hooks": HOOKS,
    "messages": MESSAGES, "runs": RUNS, "sessions": SESSIONS,
}


def counts(values: dict[str, int] | None = None) -> dict[str, int]:
    return {name: (values or {}).get(name, 0) for name in COUNTED}


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def key(name: str) -> bytes:
    return json.dumps(name, ensure_ascii=False).encode()


def timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds: restored rows keep the order lists show them in."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def item_of(kind: str, row: Any) -> dict[str, Any]:
    """A row of `TABLES[kind]` as a section item (JSON values; timestamps as text)."""
    left_out = LEFT_OUT.get(kind, frozenset())
    return {name: timestamp(value) if isinstance(value, datetime) else value
            for name, value in row._mapping.items() if name not in left_out}


def row_of(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    """A validated item's values for an insert into `TABLES[kind]` (other members dropped)."""
    columns = TABLES[kind].c
    return {name: value for name, value in item.items() if name in columns}


def _first(value: Any, names: tuple[str, ...]) -> Any:
    """A JSON object with `names` (those it has) first, the rest after in their order."""
    if not isinstance(value, dict):
        return value
    return {**{name: value[name] for name in names if name in value}, **value}


def _call_order(call: Any) -> Any:
    ordered = _first(call, ("id", "type", "function"))
    if isinstance(ordered, dict) and "function" in ordered:
        ordered["function"] = _first(ordered["function"], ("name", "arguments"))
    return ordered


def wire_order(message: dict[str, Any]) -> dict[str, Any]:
    """A message's OpenAI-shaped values with their members in the wire order again.

    Canonical JSON sorts every object's keys; clients that compare the text of `tool_calls`
    or content parts see them as the loop stored them: `{"id", "type", "function": {"name",
    "arguments"}}` and `{"type", …}`.
    """
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        message["tool_calls"] = [_call_order(call) for call in calls]
    content = message.get("content")
    if isinstance(content, list):
        message["content"] = [_first(part, ("type",)) for part in content]
    return message


def event_wire_order(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data with the messages it carries (`message`, `messages`) in wire order."""
    if isinstance(data.get("message"), dict):
        data["message"] = wire_order(data["message"])
    if isinstance(data.get("messages"), list):
        data["messages"] = [wire_order(m) if isinstance(m, dict) else m
                            for m in data["messages"]]
    return data
