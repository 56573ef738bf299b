"""Starting and cancelling runs: the one place the API hands runs to the `RunManager`."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from app.auth import Principal
from app.errors import NotFound, Unavailable
from app.events.sse import Fresh
from app.ids import new_id
from app.runs import resume, waits
from app.runs.create import Parent, Policy, as_run, creation
from app.runs.manager import RunManager
from app.runs.steering import steer_write
from app.schemas.runs import Approvals, RunCreate, RunInputCreate, ToolOutputs
from app.schemas.sessions import SessionCreate
from app.services import idempotency
from app.services.agents import check_api_key
from app.status import TERMINAL_STATUSES
from app.store.tables import Run
from app.store.writer import StorageFailed

CANCEL_SETTLE_S = 2.0
"""How long a cancel without `wait` waits for the run's end before it answers."""


@dataclass
class Started:
    run: Any
    """The run as created (the ORM's attribute names), or as an earlier request made it."""
    replayed: bool
    fresh: Fresh | None = None
    """With `follow`: the run's first events and a subscription to the rest."""
    steered: bool = False
    """`if_busy: "steer"`: `run` is the session's active run, which got the input."""


async def start_run(
    manager: RunManager, principal: Principal, body: RunCreate, *, path: str,
    session_id: str | None = None, new_session: SessionCreate | None = None,
    idempotency_key: str | None = None, sent: dict[str, Any] | None = None,
    follow: bool = False, parent: Parent | None = None, owner: str | None = None,
) -> Started:
    """Create the run (or find the one an earlier request with the same key created).

    `sent` is the body as posted, which an Idempotency-Key is bound to. The run is written
    with its `run.created` event in one write of the process's writer (and claimed in it
    when a slot is free), then handed to the manager; an interrupted run is cancelled only
    after that commit, and the new run waits for its end.
    """
    if body.overrides.model is not None:
        check_api_key(manager.settings, body.overrides.model.split(":", 1)[0],
                      ["body", "overrides", "model"])
    scope = idempotency.IdempotencyScope.parse(principal.subject, "POST", path,
                                               idempotency_key)
    digest = idempotency.request_hash(
        sent if sent is not None else body.model_dump(mode="json", exclude_unset=True)
    ) if scope is not None else ""
    run_id = new_id("run")
    # A subrun runs in a slot of its own even when none is free: its parent, which holds a
    # slot, waits for it, and runs waiting on each other for slots would never end.
    claim = manager.reserve_slot(run_id, beyond_limit=parent is not None)
    store = manager.store
    policy = Policy(
        executor_id=manager.executor_id, insert_run=store.insert_run,
        lease=store.lease(),
        accepting=manager.accepting, has_capacity=claim or manager.has_capacity(),
        claim=(lambda connection, run_id, **handed: store.claim(
            connection, run_id, store.claim_values(), **handed)) if claim else None,
        known_providers=manager.settings.provider_names(),
        paused=manager.runtime.paused and parent is None)
    write = creation(run_id, principal, body, policy, session_id=session_id,
                     new_session=new_session, scope=scope, digest=digest, parent=parent,
                     owner=owner)
    try:
        try:
            outcome = await manager.writer.submit(write)
        except StorageFailed:
            if scope is None:
                raise
            # Another process may have stored the same key meanwhile: replay its run.
            outcome = await manager.writer.submit(write)
    except StorageFailed as failure:
        manager.release_slot(run_id)
        raise Unavailable(f"the run could not be stored: {failure.detail}",
                          headers={"Retry-After": "1"}) from None
    except BaseException:
        manager.release_slot(run_id)
        raise
    run = outcome.run
    if outcome.replayed or outcome.steered:
        manager.release_slot(run_id)
        if outcome.steered:
            manager.steer(run.id)
        return Started(run, outcome.replayed, steered=outcome.steered)
    assert outcome.created_event is not None
    # Subscribed before the run can emit more, so a stream needs no replay from the store.
    fresh = (Fresh([outcome.created_event], manager.bus.subscribe(run.id)) if follow
             else None)
    for event in outcome.ended:
        manager.writer.publish(event)
        manager.publish_state(event["run_id"], run.session_id, run.agent, run.owner,
                              "cancelled")
    manager.writer.publish(outcome.created_event)
    manager.publish_state(run.id, run.session_id, run.agent, run.owner, "queued")
    if outcome.started is not None:
        manager.launch(outcome.started)
    else:
        manager.release_slot(run_id)
        if outcome.start_now:
            manager.submit(run.id)
    if outcome.interrupts:
        await manager.cancel(outcome.interrupts, f"interrupted by {run.id}", wait=False)
    return Started(run, False, fresh)


async def cancel_run(manager: RunManager, run: Run, reason: str, wait: bool) -> tuple[int, Run]:
    """Cancel `run` and its active descendants (subruns) if it is still active; returns how
    many runs this request cancelled and the run as it is afterwards."""
    cancelled = 0
    if run.status not in TERMINAL_STATUSES:
        descendants = await manager.store.active_descendants(run.id)
        # Every cancel is asked for before any is waited for: a parent's end cancels its
        # subruns too, and a subrun that ended that way still counts as cancelled here.
        cancelled = int(await cancel_started(manager, run.id, reason))
        if cancelled:
            for child_id in descendants:
                cancelled += int(await cancel_started(manager, child_id,
                                                   "the parent run was cancelled"))
        if wait:
            await manager.wait_ended([run.id, *descendants])
        elif cancelled:
            # Ending a task that executes here takes milliseconds, so the answer shows the
            # run as the cancel left it; a run that takes longer is shown as it is by then.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_SETTLE_S):
                    await manager.wait_ended([run.id, *descendants])
    async with manager.database.read() as db:
        current = await db.get(Run, run.id)
    if current is None:
        raise NotFound(f"run {run.id} not found")
    return cancelled, current


async def submit_tool_outputs(manager: RunManager, principal: Principal, run_id: str,
                              body: ToolOutputs) -> Any:
    """Answer the client tool calls the run waits for; the run as written."""
    outputs = [output.model_dump() for output in body.outputs]
    return await resume.answer(manager, run_id, "submit_tool_outputs",
                               waits.outputs_answers(outputs), can_see=principal.can_see)


async def decide_approvals(manager: RunManager, principal: Principal, run_id: str,
                           body: Approvals) -> Any:
    """Decide on calls the run waits to have approved; the run as written."""
    decisions = [decision.model_dump(exclude_unset=True) for decision in body.decisions]
    return await resume.answer(manager, run_id, "approve_tool_calls",
                               waits.approval_answers(decisions, principal.subject),
                               can_see=principal.can_see)


async def cancel_started(manager: RunManager, run_id: str, reason: str) -> bool:
    """Ask for the run's cancellation wherever it is (without waiting for it); whether it
    was still active."""
    if manager.is_running_here(run_id):
        return await manager.cancel(run_id, reason, wait=False)
    return await manager.finish_queued(run_id, reason)


async def steer_run(manager: RunManager, principal: Principal, run_id: str,
                    body: RunInputCreate) -> Any:
    """Queue user input into the run (delivered at its next turn boundary); the run."""
    messages = ([{"role": "user", "content": body.input}] if isinstance(body.input, str)
                else [m.model_dump(mode="json", exclude_none=True) for m in body.input])
    try:
        run = await manager.writer.submit(steer_write(run_id, messages, principal.can_see))
    except StorageFailed as failure:
        raise Unavailable(f"the input could not be stored: {failure.detail}",
                          headers={"Retry-After": "1"}) from None
    manager.steer(run_id)
    return as_run(vars(run))
