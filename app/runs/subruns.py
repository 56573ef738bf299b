"""Subruns (§7.1 `agent` tools): a call starts a child run of another agent in a child
session, and the child's output becomes the call's result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from app.auth import Principal
from app.errors import AppError
from app.events.sse import Fresh
from app.events.types import TERMINAL_EVENTS
from app.runs.create import Parent
from app.schemas.runs import RunCreate
from app.schemas.sessions import SessionCreate
from app.status import TERMINAL_STATUSES
from app.store.tables import Run
from app.tools.base import ToolResult

if TYPE_CHECKING:
    from app.runs.manager import RunManager

POLL_S = 0.2
"""How often a child whose events were missed is read from the store."""
CANCELLED_BY_PARENT = "the parent run was cancelled"

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class Subruns:
    """Starts the subruns of one parent run and waits for their ends."""

    def __init__(self, manager: RunManager, parent: Parent, owner: str, emit: Emit) -> None:
        self.manager = manager
        self.parent = parent
        """The parent as its children see it (`depth` is theirs)."""
        self.owner = owner
        self.emit = emit

    async def run(self, agent: str, task: str) -> ToolResult:
        """Run `agent` on `task` in a child session; its output, or an error result."""
        limit = self.manager.settings.max_subrun_depth
        if self.parent.depth > limit:
            return ToolResult(f"cannot start the subagent {agent!r}: subruns may nest at most "
                              f"{limit} deep", is_error=True)
        from app.runs.service import start_run  # it imports the manager, which imports this

        principal = Principal(subject=self.owner, role="user", open_mode=False)
        try:
            started = await start_run(
                self.manager, principal, RunCreate(input=task),
                path=f"/v1/runs/{self.parent.run_id}/subruns",
                new_session=SessionCreate(agent=agent), follow=True, parent=self.parent)
        except AppError as error:
            return ToolResult(f"cannot start the subagent {agent!r}: {error.detail}",
                              is_error=True)
        child = started.run
        ids = {"run_id": child.id, "session_id": child.session_id, "agent": agent}
        await self.emit("subrun.started", ids)
        try:
            ended = await ended_run(self.manager, child.id, started.fresh)
        except asyncio.CancelledError:
            # Cancelling the parent cancels its subruns (each one cascades further).
            await asyncio.shield(self.manager.cancel(child.id, CANCELLED_BY_PARENT, wait=False))
            raise
        await self.emit("subrun.completed", {**ids, "status": ended.status,
                                             "output": ended.output})
        if ended.status == "completed":
            return ToolResult(ended.output or "")
        detail = (f"{ended.error['code']}: {ended.error['detail']}" if ended.error
                  else ended.status)
        return ToolResult(f"the subagent {agent!r} did not complete ({ended.status}): {detail}",
                          is_error=True)

async def ended_run(manager: RunManager, run_id: str, fresh: Fresh | None) -> Run:
    """The run's row once it ended, followed through `fresh` (its creation's subscription,
    released here), else read from the store every `POLL_S`."""
    if fresh is not None:
        subscription = fresh.subscription
        try:
            if not any(e["type"] in TERMINAL_EVENTS for e in fresh.events):
                while (event := await subscription.get()) is not None:
                    if event["type"] in TERMINAL_EVENTS:
                        break
        finally:
            manager.bus.unsubscribe(subscription)
    while True:  # the end is committed before it is published; a cut-off stream polls
        async with manager.database.read() as db:
            row = await db.get(Run, run_id)
        if row is not None and row.status in TERMINAL_STATUSES:
            return row
        await asyncio.sleep(POLL_S)
