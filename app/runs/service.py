"""Starting and cancelling runs: the one place the API hands runs to the `RunManager`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.auth import Principal
from app.errors import NotFound
from app.runs.manager import RunManager
from app.schemas.runs import RunCreate
from app.schemas.sessions import SessionCreate
from app.services import idempotency
from app.services import runs as runs_service
from app.services import sessions as session_service
from app.status import TERMINAL_STATUSES
from app.store.tables import Run, Session


@dataclass
class Started:
    run: Run
    replayed: bool


async def start_run(
    manager: RunManager, principal: Principal, body: RunCreate, *, path: str,
    session_id: str | None = None, new_session: SessionCreate | None = None,
    idempotency_key: str | None = None, sent: dict[str, Any] | None = None,
) -> Started:
    """Create the run (or find the one an earlier request with the same key created).

    `sent` is the body as posted, which an Idempotency-Key is bound to. The run is written
    with its `run.created` event in one transaction, then handed to the manager; an
    interrupted run is cancelled only after that commit, and the new run waits for its end.
    """
    scope = idempotency.IdempotencyScope.parse(principal.subject, "POST", path,
                                               idempotency_key)
    created: runs_service.CreatedRun | None = None
    locked: Session | None = None

    async def create() -> str:
        nonlocal created
        session = locked
        if session is None:
            assert new_session is not None
            session = await session_service.create_session(db, principal, new_session)
        created = await runs_service.create_run(
            db, session, body, executor_id=manager.executor_id,
            lease_s=manager.settings.run_lease_s, has_capacity=manager.has_capacity(),
            accepting=manager.accepting, known_providers=manager.settings.provider_names(),
        )
        return created.run.id

    async with manager.database.transaction() as db:
        if session_id is not None:
            # Locked before the key is looked up: a concurrent repeat of this request waits
            # here, then finds the key and replays instead of seeing the session busy.
            locked = await session_service.get_session(db, principal, session_id, lock=True)
        digest_of = sent if sent is not None else body.model_dump(mode="json",
                                                                 exclude_unset=True)
        run_id, replayed = await idempotency.once(db, scope, digest_of, create)
        run = await db.get(Run, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
    if created is not None:
        for event in created.ended:
            manager.writer.publish(event)
            manager.publish_state(event["run_id"], run.session_id, run.agent, run.owner,
                                  "cancelled")
        manager.bus.publish(run_id, created.created_event)
        manager.publish_state(run_id, run.session_id, run.agent, run.owner, "queued")
        if created.interrupts:
            await manager.cancel(created.interrupts, f"interrupted by {run_id}", wait=False)
        if created.start_now:
            manager.submit(run_id)
    return Started(run, replayed)


async def cancel_run(manager: RunManager, run: Run, reason: str, wait: bool) -> tuple[int, Run]:
    """Cancel `run` if it is still active; returns how many runs this request cancelled and
    the run as it is afterwards."""
    cancelled = 0
    if run.status not in TERMINAL_STATUSES:
        if manager.is_running_here(run.id):
            done = await manager.cancel(run.id, reason, wait=wait)
        else:
            done = await manager.finish_queued(run.id, reason)
        cancelled = int(done)
    async with manager.database.read() as db:
        current = await db.get(Run, run.id)
    if current is None:
        raise NotFound(f"run {run.id} not found")
    return cancelled, current
