"""Steering (§4.3 `POST /v1/runs/{run_id}/input`, `if_busy: "steer"`): user input queued
into an unfinished run, delivered as user messages at its next turn boundary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from app.errors import Conflict, NotFound
from app.runs.store import record, update_by_id
from app.runs.waits import RunFinished
from app.status import TERMINAL_STATUSES
from app.store import statements as q
from app.store.statements import RUNS

MAX_PENDING_MESSAGES = 256


class InputBacklog(Conflict):
    code, title = "input_backlog", "Too much input queued"


def queue_input(connection: Connection, run: Any, messages: list[dict[str, Any]]) -> None:
    """Add `messages` to the run's undelivered input (the run's row is locked)."""
    if run.status in TERMINAL_STATUSES:
        raise RunFinished(f"run {run.id} has ended ({run.status})")
    pending = [*run.pending_input, *messages]
    if len(pending) > MAX_PENDING_MESSAGES:
        raise InputBacklog(f"run {run.id} has {len(run.pending_input)} messages of input not "
                           f"delivered yet; at most {MAX_PENDING_MESSAGES} may wait")
    update_by_id(connection, RUNS, run.id, {"pending_input": pending})
    run.pending_input = pending


def steer_write(run_id: str, messages: list[dict[str, Any]],
                can_see: Callable[[str], bool]) -> Callable[[Connection], Any]:
    """The write that queues `messages` into the run; returns the run's row."""
    def write(connection: Connection) -> Any:
        run = record(connection.execute(q.RUN_BY_ID.with_for_update(),
                                        {"_id": run_id}).first())
        if run is None or not can_see(run.owner):
            raise NotFound(f"run {run_id} not found")
        queue_input(connection, run, messages)
        return run

    return write
