"""Pausing and resuming the runtime (§9): the state every process on the database shares.

The state is one row. The process that pauses writes it and parks its own runs; every other
process notices within a second (`follow`) and parks its runs too, each cancelling the runs
that have not parked by the pause's deadline. Resuming queues every parked run, on the
process that resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app import __version__
from app.clock import utcnow
from app.errors import AlreadyPaused, NotPaused
from app.store.tables import Run, RuntimeState

if TYPE_CHECKING:
    from app.runs.manager import RunManager

logger = logging.getLogger("loomd.runtime")

STATE = RuntimeState.__table__  # type: ignore[attr-defined]
RUNS = Run.__table__  # type: ignore[attr-defined]
ROW_ID = "runtime"
RETRY_AFTER_S = 10
"""What a refused run is told to wait while the runtime is paused."""


@dataclass
class Hold:
    """One pause, as this process carries it out: its runs park or, by `deadline`, are
    cancelled."""

    deadline: float
    """By the event loop's clock."""
    parked: int = 0
    force_cancelled: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Runtime:
    """The runtime's pause state in this process, kept in step with the database."""

    def __init__(self, manager: RunManager) -> None:
        self.manager = manager
        self.database = manager.database
        self.paused = False
        self.paused_at: datetime | None = None
        self._hold: Hold | None = None
        self._task: asyncio.Task[None] | None = None

    # state

    @property
    def status(self) -> str:
        if not self.paused:
            return "running"
        return "paused" if self._hold is None or self._hold.done.is_set() else "pausing"

    async def load(self) -> None:
        """Take the stored state at start-up (a restart while paused stays paused)."""
        row = await self._row()
        if row.status == "paused":
            self.paused, self.paused_at = True, row.paused_at

    async def follow(self) -> None:
        """Apply a pause or resume another process stored."""
        row = await self._row()
        if row.status == "paused" and not self.paused:
            remaining = 0.0
            if row.deadline is not None:
                remaining = max((row.deadline - utcnow()).total_seconds(), 0.0)
            self._enter(row.paused_at, remaining)
        elif row.status == "running" and self.paused:
            self._leave()
            # Runs that parked here after the resuming process queued the parked ones.
            await self.resume_parked(None)

    async def report(self) -> dict[str, Any]:
        """`GET /v1/runtime`: the state and the runs of every process, by status."""
        query = (sa.select(RUNS.c.status, sa.func.count())
                 .where(RUNS.c.status.in_(("queued", "running", "paused")))
                 .group_by(RUNS.c.status))
        async with self.database.read() as db:
            rows = (await (await db.connection()).execute(query)).all()
        counts: dict[str, int] = {status: count for status, count in rows}
        return {"status": self.status, "paused_at": self.paused_at,
                "active_runs": counts.get("running", 0), "queued_runs": counts.get("queued", 0),
                "paused_runs": counts.get("paused", 0),
                "max_concurrent_runs": self.manager.settings.max_concurrent_runs,
                "version": __version__}

    # pause and resume

    async def pause(self, timeout_ms: int) -> dict[str, Any]:
        """Pause: refuse new runs, park the running ones at their next turn boundary, and
        cancel those not parked within `timeout_ms`. 409 `already_paused`."""
        started = time.monotonic()
        now = utcnow()
        timeout_s = timeout_ms / 1000
        written = await self._write(
            sa.update(STATE).where(STATE.c.id == ROW_ID, STATE.c.status == "running")
            .values(status="paused", paused_at=now, deadline=now + timedelta(seconds=timeout_s),
                    updated_at=now))
        if not written:
            raise AlreadyPaused("the runtime is already paused")
        hold = self._enter(now, timeout_s)
        await hold.done.wait()
        warnings = []
        waiting = await self._count("requires_action")
        if waiting:
            warnings.append(f"{waiting} run(s) wait for tool outputs or approvals: they stay "
                            "parked until the runtime resumes, answered or not")
        if hold.force_cancelled:
            warnings.append(f"{hold.force_cancelled} run(s) did not reach a turn boundary "
                            f"within {timeout_ms} ms and were cancelled")
        return {"status": self.status, "duration_ms": round((time.monotonic() - started) * 1000),
                "paused_runs": hold.parked, "force_cancelled": hold.force_cancelled,
                "warnings": warnings}

    async def resume(self) -> dict[str, Any]:
        """Resume: admit runs again and queue every parked run. 409 `not_paused`."""
        written = await self._write(
            sa.update(STATE).where(STATE.c.id == ROW_ID, STATE.c.status == "paused")
            .values(status="running", paused_at=None, deadline=None, updated_at=utcnow()))
        if not written:
            raise NotPaused("the runtime is not paused")
        self._leave()
        resumed = await self.resume_parked(None)
        return {"status": self.status, "resumed_runs": len(resumed)}

    async def resume_parked(self, run_ids: list[str] | None) -> list[str]:
        """Queue parked runs no process holds (all, or those of `run_ids`) to go on here;
        none while the runtime is paused (they go on when it resumes)."""
        if self.paused:
            return []
        resumed = await self.manager.store.unpark(run_ids)
        for run_id in resumed:
            self.manager.go_on(run_id)
        return resumed

    def parked(self) -> None:
        """A run of this process parked."""
        if self._hold is not None:
            self._hold.parked += 1

    def _enter(self, paused_at: datetime | None, timeout_s: float) -> Hold:
        self.paused, self.paused_at = True, paused_at
        loop = asyncio.get_running_loop()
        hold = Hold(loop.time() + timeout_s)
        self._hold = hold
        self._task = asyncio.create_task(self._carry_out(hold), name="loomd-pause")
        return hold

    def _leave(self) -> None:
        self.paused, self.paused_at = False, None
        if self._hold is not None:
            self._hold.done.set()
        self.manager.admit()

    async def _carry_out(self, hold: Hold) -> None:
        """Wait for this process's runs to park, then cancel those still running."""
        manager = self.manager
        loop = asyncio.get_running_loop()
        try:
            while self.paused and manager.running_tasks():
                remaining = hold.deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait(manager.running_tasks(), timeout=remaining)
            if self.paused:
                late = list(manager.running_ids())
                for run_id in late:
                    if await manager.cancel(
                            run_id, "the runtime paused and the run did not reach a turn "
                            "boundary in time", wait=False):
                        hold.force_cancelled += 1
                await manager.wait_ended(late)
        except Exception:
            logger.exception("the pause could not park every run")
        finally:
            hold.done.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # storage

    async def _row(self) -> Any:
        select = sa.select(STATE).where(STATE.c.id == ROW_ID)
        async with self.database.read() as db:
            row = (await (await db.connection()).execute(select)).first()
        if row is not None:
            return row
        with contextlib.suppress(IntegrityError):  # another process inserted it first
            await self._write(sa.insert(STATE).values(id=ROW_ID, status="running",
                                                      updated_at=utcnow()))
        return await self._row()

    async def _write(self, statement: Any) -> bool:
        """Run one statement in a transaction of its own; whether it changed a row."""
        async with self.database.transaction() as db:
            result = await (await db.connection()).execute(statement)
            return bool(result.rowcount)

    async def _count(self, status: str) -> int:
        query = sa.select(sa.func.count()).where(RUNS.c.status == status)
        async with self.database.read() as db:
            return int((await (await db.connection()).execute(query)).scalar() or 0)
