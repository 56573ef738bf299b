"""Restoring an envelope: its sections parsed item by item and inserted in batches, in the
order their references need (agents → sessions and messages → runs → events → hooks).

Whatever exists already (the same id; for an agent, also the same owner and name) is left as
it is and counted as skipped, so a restore can be repeated. Inserts ignore conflicts too,
so two restores racing on another process cannot fail on each other's rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import ijson
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.clock import utcnow
from app.errors import SnapshotCorrupt
from app.rules import session_status
from app.schemas.snapshots import (
    ITEM_MODELS,
    AgentItem,
    EventItem,
    HookItem,
    Item,
    RunItem,
    SessionItem,
)
from app.services.hooks import new_secret
from app.snapshots.codec import (
    AGENT_VERSIONS,
    AGENTS,
    HOOKS,
    counts,
    event_wire_order,
    row_of,
    wire_order,
)
from app.snapshots.verify import PARSE_ERRORS, Reader
from app.status import TERMINAL_STATUSES
from app.store.db import Database
from app.store.statements import EVENTS, MESSAGES, RUNS, SESSIONS

BATCH_ROWS = 500
"""Rows per transaction, about: a session's messages go with it whatever their number."""
MAX_WARNINGS = 50
INTERRUPTED_REASON = "the snapshot was taken while the run was running"


@dataclass
class Report:
    """What a restore did, section by section."""

    created: dict[str, int] = field(default_factory=counts)
    skipped: dict[str, int] = field(default_factory=counts)
    warnings: list[str] = field(default_factory=list)
    more_warnings: int = 0
    hook_secrets: list[dict[str, str]] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)
    """The snapshot's paused runs: they go on if the restore resumes runs (those no process
    holds, once they are here)."""
    queued: list[str] = field(default_factory=list)
    """The snapshot's queued runs that are first in their session here: submitted to run."""

    def warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        else:
            self.more_warnings += 1

    def all_warnings(self) -> list[str]:
        if not self.more_warnings:
            return list(self.warnings)
        return [*self.warnings, f"… and {self.more_warnings} more warnings"]


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Restorer:
    """One restore: a pass over the envelope per section, then what the restored runs and
    sessions need to go on."""

    def __init__(self, database: Database, open_reader: Reader) -> None:
        self.database = database
        self.open_reader = open_reader
        self.report = Report()
        self.now = utcnow()
        self._orphans: list[tuple[str, str]] = []
        """Sessions restored without their parent, which was not there yet: (child, parent)."""
        self._holding: list[str] = []
        """Restored sessions with an active run, whose run is checked once runs are in."""
        self._interrupted: list[str] = []
        """Runs that were running when the snapshot was taken: restored as interrupted."""
        self._unsettled: list[str] = []
        """Runs that were running in the snapshot and are here already: a restore cut short
        may have left them without their end event, or their session held."""
        self._queued: list[str] = []
        """The snapshot's queued runs, here now; those first in their session are started."""
        self._missing_runs = 0
        """Events not restored because their run is not here."""

    def _insert(self, table: sa.Table) -> Any:
        dialect = sqlite if self.database.is_sqlite else postgresql
        return dialect.insert(table).on_conflict_do_nothing()

    async def _inserted(self, connection: AsyncConnection, table: sa.Table,
                        rows: list[dict[str, Any]]) -> set[str]:
        """Insert `rows`, ignoring conflicts; the ids of those inserted."""
        if not rows:
            return set()
        statement = self._insert(table).returning(table.c.id)
        return set((await connection.execute(statement, rows)).scalars())

    async def _ids(self, connection: AsyncConnection, column: sa.Column[Any],
                   values: Iterable[str | None]) -> set[str]:
        """Those of `values` that `column` holds."""
        wanted = list({value for value in values if value is not None})
        if not wanted:
            return set()
        result = await connection.execute(sa.select(column).where(column.in_(wanted)))
        return set(result.scalars())

    async def items(self, section: str, rows_of: Any = None) -> AsyncIterator[list[Any]]:
        """The section's items, validated, in batches of about `BATCH_ROWS` rows."""
        model = ITEM_MODELS[section]
        batch: list[Item] = []
        rows = 0
        try:
            async for raw in ijson.items(self.open_reader(), f"sections.{section}.item",
                                         use_float=True):
                item = model.model_validate(raw)
                batch.append(item)
                rows += rows_of(item) if rows_of is not None else 1
                if rows >= BATCH_ROWS:
                    yield batch
                    batch, rows = [], 0
        except (*PARSE_ERRORS, ValidationError) as exc:
            raise SnapshotCorrupt(f"the stored snapshot cannot be read: {exc}") from exc
        if batch:
            yield batch

    async def run(self) -> Report:
        await self._agents()
        await self._sessions()
        await self._runs()
        await self._events()
        await self._settle()
        await self._hooks()
        return self.report

    # agents

    async def _agents(self) -> None:
        async for batch in self.items("agents"):
            async with self.database.transaction() as db:
                await self._agent_batch(await db.connection(), batch)

    async def _agent_batch(self, connection: AsyncConnection, batch: list[AgentItem]) -> None:
        existing = await self._ids(connection, AGENTS.c.id, (a.id for a in batch))
        query = sa.select(AGENTS.c.owner, AGENTS.c.name).where(
            AGENTS.c.name.in_({a.name for a in batch}))
        taken = {(owner, name) for owner, name in await connection.execute(query)}
        rows, versions = [], []
        for agent in batch:
            if agent.id in existing:
                self.report.skipped["agents"] += 1
                continue
            if (agent.owner, agent.name) in taken:
                self.report.skipped["agents"] += 1
                self.report.warn(f"agent {agent.name!r} of {agent.owner!r} ({agent.id}) was not "
                                 "restored: that owner has an agent of that name already")
                continue
            taken.add((agent.owner, agent.name))
            rows.append(row_of("agents", agent.model_dump(exclude={"versions"})))
            versions += [{"agent_id": agent.id, **version.model_dump()}
                         for version in agent.versions]
        created = await self._inserted(connection, AGENTS, rows)
        self.report.created["agents"] += len(created)
        self.report.skipped["agents"] += len(rows) - len(created)
        versions = [v for v in versions if v["agent_id"] in created]
        if versions:
            await connection.execute(self._insert(AGENT_VERSIONS), versions)

    # sessions and their messages

    async def _sessions(self) -> None:
        async for batch in self.items("sessions", lambda s: 1 + len(s.messages)):
            async with self.database.transaction() as db:
                await self._session_batch(await db.connection(), batch)
        for orphans in _chunks(self._orphans, BATCH_ROWS):
            async with self.database.transaction() as db:
                await self._adopt(await db.connection(), orphans)

    async def _session_batch(self, connection: AsyncConnection,
                             batch: list[SessionItem]) -> None:
        existing = await self._ids(connection, SESSIONS.c.id, (s.id for s in batch))
        parents = await self._ids(connection, SESSIONS.c.id,
                                  (s.parent_session_id for s in batch if s.parent_session_id))
        rows, orphans = [], []
        for session in batch:
            if session.id in existing:
                self.report.skipped["sessions"] += 1
                self.report.skipped["messages"] += len(session.messages)
                if session.parent_session_id:  # a restore cut short may not have linked it
                    self._orphans.append((session.id, session.parent_session_id))
                continue
            row = row_of("sessions", session.model_dump(exclude={"messages"}))
            if session.parent_session_id and session.parent_session_id not in parents:
                row["parent_session_id"] = None
                orphans.append((session.id, session.parent_session_id))
            rows.append(row)
        created = await self._inserted(connection, SESSIONS, rows)
        self._orphans += [pair for pair in orphans if pair[0] in created]
        messages = []
        for session in batch:
            if session.id in existing:
                continue
            if session.id not in created:
                self.report.skipped["sessions"] += 1
                self.report.skipped["messages"] += len(session.messages)
                continue
            self.report.created["sessions"] += 1
            if session.active_run_id is not None:
                self._holding.append(session.id)
            messages += [wire_order({"session_id": session.id, **m.model_dump()})
                         for m in session.messages]
        for part in _chunks(messages, BATCH_ROWS):
            await connection.execute(sa.insert(MESSAGES), part)
        self.report.created["messages"] += len(messages)

    async def _adopt(self, connection: AsyncConnection, orphans: list[tuple[str, str]]) -> None:
        """Link sessions restored before their parents to them, now that all are in (and
        those a restore cut short did not link; a linked session is left as it is)."""
        present = await self._ids(connection, SESSIONS.c.id, (parent for _, parent in orphans))
        link = (sa.update(SESSIONS).where(SESSIONS.c.id == sa.bindparam("child"),
                                          SESSIONS.c.parent_session_id.is_(None))
                .values(parent_session_id=sa.bindparam("parent")))
        found = [{"child": child, "parent": parent} for child, parent in orphans
                 if parent in present]
        if found:
            await connection.execute(link, found)
        for child, parent in orphans:
            if parent not in present:
                self.report.warn(f"session {child} was restored without its parent session "
                                 f"{parent}, which is not in the snapshot")

    # runs and events

    async def _runs(self) -> None:
        async for batch in self.items("runs"):
            async with self.database.transaction() as db:
                await self._run_batch(await db.connection(), batch)

    async def _run_batch(self, connection: AsyncConnection, batch: list[RunItem]) -> None:
        existing = await self._ids(connection, RUNS.c.id, (r.id for r in batch))
        sessions = await self._ids(connection, SESSIONS.c.id, (r.session_id for r in batch))
        rows = []
        for run in batch:
            if run.id in existing:
                self.report.skipped["runs"] += 1
                continue
            if run.session_id not in sessions:
                self.report.skipped["runs"] += 1
                self.report.warn(f"run {run.id} was not restored: its session {run.session_id} "
                                 "is not in the snapshot")
                continue
            row = row_of("runs", run.model_dump())
            if run.status == "running":
                # No process executes it here: it ends as a run whose process died does.
                row.update(status="interrupted", ended_at=self.now, waiting=None,
                           required_action=None, action_expires_at=None)
            rows.append(row)
        created = await self._inserted(connection, RUNS, rows)
        self.report.created["runs"] += len(created)
        self.report.skipped["runs"] += len(rows) - len(created)
        for run in batch:
            if run.id in created and run.status == "running":
                self._interrupted.append(run.id)
                self.report.warn(f"run {run.id} was running when the snapshot was taken: it is "
                                 "restored as interrupted")
            elif run.id in existing and run.status == "running":
                self._unsettled.append(run.id)
            # Runs already here too: a restore cut short goes on with them when repeated
            # (and a run that is not paused or queued any more is left alone then).
            elif run.id in created or run.id in existing:
                if run.status == "paused":
                    self.report.paused.append(run.id)
                elif run.status == "queued":
                    self._queued.append(run.id)

    async def _events(self) -> None:
        async for batch in self.items("events"):
            async with self.database.transaction() as db:
                await self._event_batch(await db.connection(), batch)
        if self._missing_runs:
            self.report.warn(f"{self._missing_runs} events were not restored: their runs are "
                             "not in the snapshot")

    async def _event_batch(self, connection: AsyncConnection, batch: list[EventItem]) -> None:
        runs = await self._ids(connection, RUNS.c.id, (e.run_id for e in batch))
        query = sa.select(EVENTS.c.run_id, EVENTS.c.seq).where(
            EVENTS.c.run_id.in_(list(runs)), EVENTS.c.seq >= min(e.seq for e in batch),
            EVENTS.c.seq <= max(e.seq for e in batch))
        existing = {(run_id, seq) for run_id, seq in await connection.execute(query)}
        rows = []
        for event in batch:
            if (event.run_id, event.seq) in existing:
                self.report.skipped["events"] += 1
            elif event.run_id not in runs:
                self._missing_runs += 1
            else:
                existing.add((event.run_id, event.seq))
                row = row_of("events", event.model_dump())
                rows.append({**row, "data": event_wire_order(row["data"])})
        if rows:
            result = await connection.execute(self._insert(EVENTS).returning(EVENTS.c.seq), rows)
            inserted = len(result.all())
            self.report.created["events"] += inserted
            self.report.skipped["events"] += len(rows) - inserted

    # what the restored runs and sessions need to go on

    async def _settle(self) -> None:
        for run_ids in _chunks(self._unsettled, BATCH_ROWS):
            async with self.database.read() as db:
                await self._find_unsettled(await db.connection(), run_ids)
        for run_ids in _chunks([*self._interrupted, *self._unsettled], BATCH_ROWS):
            async with self.database.read() as db:
                await self._find_held(await db.connection(), run_ids)
        self._holding = list(dict.fromkeys(self._holding))
        for run_ids in _chunks(self._interrupted, BATCH_ROWS):
            async with self.database.transaction() as db:
                await self._end_interrupted(await db.connection(), run_ids)
        for session_ids in _chunks(self._holding, BATCH_ROWS):
            async with self.database.transaction() as db:
                await self._free_sessions(await db.connection(), session_ids)
        for run_ids in _chunks(self._queued, BATCH_ROWS):
            async with self.database.read() as db:
                query = (sa.select(RUNS.c.id)
                         .join(SESSIONS, SESSIONS.c.active_run_id == RUNS.c.id)
                         .where(RUNS.c.id.in_(run_ids), RUNS.c.status == "queued"))
                first = set((await (await db.connection()).execute(query)).scalars())
            self.report.queued += [run_id for run_id in run_ids if run_id in first]

    async def _find_unsettled(self, connection: AsyncConnection, run_ids: list[str]) -> None:
        """Of runs restored as interrupted before, those still without their end event."""
        ended = sa.exists().where(EVENTS.c.run_id == RUNS.c.id,
                                  EVENTS.c.type == "run.interrupted")
        query = sa.select(RUNS.c.id).where(RUNS.c.id.in_(run_ids),
                                           RUNS.c.status == "interrupted", ~ended)
        self._interrupted += list((await connection.execute(query)).scalars())

    async def _find_held(self, connection: AsyncConnection, run_ids: list[str]) -> None:
        """The sessions these runs, restored as interrupted, hold (also sessions restored
        by a restore cut short before their runs came in)."""
        held = sa.select(SESSIONS.c.id).where(SESSIONS.c.active_run_id.in_(run_ids))
        self._holding += list((await connection.execute(held)).scalars())

    async def _end_interrupted(self, connection: AsyncConnection, run_ids: list[str]) -> None:
        """Give each run restored as interrupted its terminal event, after its last one."""
        query = (sa.select(RUNS.c.id, RUNS.c.last_seq, sa.func.max(EVENTS.c.seq))
                 .outerjoin(EVENTS, EVENTS.c.run_id == RUNS.c.id)
                 .where(RUNS.c.id.in_(run_ids)).group_by(RUNS.c.id))
        data = {"reason": INTERRUPTED_REASON}
        events, seqs = [], []
        for run_id, last_seq, stored in await connection.execute(query):
            seq = max(last_seq, stored or 0) + 1
            events.append({"run_id": run_id, "seq": seq, "type": "run.interrupted",
                           "data": data, "ts": self.now})
            seqs.append({"_run": run_id, "_seq": seq})
        if events:
            await connection.execute(sa.insert(EVENTS), events)
            await connection.execute(
                sa.update(RUNS).where(RUNS.c.id == sa.bindparam("_run"))
                .values(last_seq=sa.bindparam("_seq")), seqs)

    async def _free_sessions(self, connection: AsyncConnection, session_ids: list[str]) -> None:
        """A restored session whose active run ended (or is not there) goes to its next
        queued run, or is free; its status follows."""
        query = (sa.select(SESSIONS.c.id, SESSIONS.c.active_run_id, SESSIONS.c.open_tool_calls,
                           RUNS.c.status)
                 .outerjoin(RUNS, RUNS.c.id == SESSIONS.c.active_run_id)
                 .where(SESSIONS.c.id.in_(session_ids)))
        for session_id, run_id, open_calls, status in list(await connection.execute(query)):
            if status is not None and status not in TERMINAL_STATUSES:
                continue
            if status is None:
                self.report.warn(f"session {session_id}'s active run {run_id} is not in the "
                                 "snapshot: the session is restored without it")
            next_run = (await connection.execute(
                sa.select(RUNS.c.id)
                .where(RUNS.c.session_id == session_id, RUNS.c.status == "queued")
                .order_by(RUNS.c.created_at, RUNS.c.id).limit(1))).scalar()
            await connection.execute(
                sa.update(SESSIONS).where(SESSIONS.c.id == session_id)
                .values(active_run_id=next_run,
                        status=session_status(next_run, open_calls or [])))

    # hooks

    async def _hooks(self) -> None:
        async for batch in self.items("hooks"):
            async with self.database.transaction() as db:
                await self._hook_batch(await db.connection(), batch)

    async def _hook_batch(self, connection: AsyncConnection, batch: list[HookItem]) -> None:
        existing = await self._ids(connection, HOOKS.c.id, (h.id for h in batch))
        rows = []
        for hook in batch:
            if hook.id in existing:
                self.report.skipped["hooks"] += 1
                continue
            # A new secret (none is carried) and a closed circuit; the URL is checked as
            # every hook's is, when a request is sent to it.
            rows.append({**row_of("hooks", hook.model_dump()), "secret": new_secret(),
                         "circuit": "closed", "failures": 0, "circuit_until": None})
        created = await self._inserted(connection, HOOKS, rows)
        self.report.created["hooks"] += len(created)
        self.report.skipped["hooks"] += len(rows) - len(created)
        self.report.hook_secrets += [{"hook_id": row["id"], "secret": row["secret"]}
                                     for row in rows if row["id"] in created]
