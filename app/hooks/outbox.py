"""The outbox of event hooks (§6): a delivery row for each event a hook listens to, written
in the transaction that stores the event, so an acknowledged event is never lost to a hook.

The writer calls the outbox with the event rows of each transaction. It keeps the enabled
event hooks in memory (`refresh`, after every change made here and every `REFRESH_S`) and
each run's owner and agent, so a transaction whose events no hook wants costs nothing more.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.clock import rfc3339, utcnow
from app.ids import new_id
from app.store.db import Database
from app.store.statements import RUNS
from app.store.tables import Hook, HookDelivery

REFRESH_S = 1.0
MAX_KNOWN_RUNS = 10_000
HOOKS: sa.Table = Hook.__table__  # type: ignore[attr-defined]
DELIVERIES: sa.Table = HookDelivery.__table__  # type: ignore[attr-defined]
_EVENT_HOOKS = (sa.select(HOOKS.c.id, HOOKS.c.owner, HOOKS.c.all_owners, HOOKS.c.agents,
                          HOOKS.c.events)
                .where(HOOKS.c.enabled.is_(True), HOOKS.c.phase == "event"))
_INSERT = sa.insert(DELIVERIES)
STATE_OF = {"run.created": "queued", "run.started": "running", "run.resumed": "running",
            "run.requires_action": "requires_action", "run.paused": "paused",
            "run.completed": "completed", "run.failed": "failed",
            "run.cancelled": "cancelled", "run.interrupted": "interrupted"}
"""The run's status after each event that changes it: `run.state` (§4.3) is delivered to
event hooks from these, in the same transaction."""


@dataclass(frozen=True)
class EventHook:
    id: str
    owner: str
    all_owners: bool
    agents: tuple[str, ...]
    events: frozenset[str]

    def wants(self, owner: str, agent: str, type_: str) -> bool:
        return (type_ in self.events and (self.all_owners or owner == self.owner)
                and (not self.agents or any(fnmatchcase(agent, g) for g in self.agents)))


class EventOutbox:
    """Turns stored events into pending deliveries of the event hooks that want them."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.hooks: tuple[EventHook, ...] = ()
        self.refreshed = 0.0
        self._runs: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        """run id → (owner, agent, session id)."""
        self._ordinals = itertools.count(time.time_ns())

    async def refresh(self) -> None:
        """Read the enabled event hooks again."""
        async with self.database.read() as db:
            rows = (await (await db.connection()).execute(_EVENT_HOOKS)).all()
        self.hooks = tuple(EventHook(row.id, row.owner, bool(row.all_owners),
                                     tuple(row.agents), frozenset(row.events)) for row in rows)
        self.refreshed = time.monotonic()

    def __call__(self, connection: Connection, events: list[dict[str, Any]]) -> None:
        if not self.hooks:
            return
        runs = self._runs_of(connection, {event["run_id"] for event in events})
        now = utcnow()
        rows = []
        # A transaction inserts the events of its writes before the events it was handed
        # to store (a run's end before the turn's last deltas): a run's order is its seq.
        for event in sorted(events, key=lambda e: (e["run_id"], e["seq"])):
            owner, agent, session_id = runs.get(event["run_id"], ("", "", ""))
            ts = rfc3339(event["ts"])
            status = STATE_OF.get(event["type"])
            for hook in self.hooks:
                if hook.wants(owner, agent, event["type"]):
                    envelope = {"type": event["type"], "seq": event["seq"],
                                "run_id": event["run_id"], "session_id": session_id,
                                "ts": ts, "data": event["data"]}
                    rows.append(self._row(hook, event["type"], event["run_id"], envelope, now))
                if status is not None and hook.wants(owner, agent, "run.state"):
                    state = {"type": "run.state", "run_id": event["run_id"],
                             "session_id": session_id, "agent": agent, "status": status,
                             "stop_reason": event["data"].get("stop_reason"), "ts": ts}
                    rows.append(self._row(hook, "run.state", event["run_id"], state, now))
        if rows:
            # A hook deleted since the last refresh takes no more deliveries.
            wanted = {row["hook_id"] for row in rows}
            existing = set(connection.execute(
                sa.select(HOOKS.c.id).where(HOOKS.c.id.in_(wanted))).scalars())
            rows = [row for row in rows if row["hook_id"] in existing]
        if rows:
            connection.execute(_INSERT, rows)

    def _row(self, hook: EventHook, type_: str, run_id: str, event: dict[str, Any],
             now: datetime) -> dict[str, Any]:
        return {"id": new_id("dlv"), "hook_id": hook.id, "message_id": new_id("msg"),
                "ordinal": next(self._ordinals), "phase": "event", "event_type": type_,
                "run_id": run_id, "payload": {"type": "event", "hook_id": hook.id,
                                              "event": event},
                "status": "pending", "attempt": 0, "status_code": None, "duration_ms": None,
                "error": None, "response_excerpt": None, "next_attempt_at": now,
                "created_at": now, "updated_at": now}

    def _runs_of(self, connection: Connection,
                 run_ids: set[str]) -> dict[str, tuple[str, str, str]]:
        unknown = [run_id for run_id in run_ids if run_id not in self._runs]
        if unknown:
            query = sa.select(RUNS.c.id, RUNS.c.owner, RUNS.c.agent, RUNS.c.session_id).where(
                RUNS.c.id.in_(unknown))
            for run_id, owner, agent, session_id in connection.execute(query):
                self._runs[run_id] = (owner, agent, session_id)
            while len(self._runs) > MAX_KNOWN_RUNS:
                self._runs.popitem(last=False)
        return {run_id: self._runs[run_id] for run_id in run_ids if run_id in self._runs}
