"""Answering a waiting run and handing it back to the run manager to go on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.errors import Unavailable
from app.runs import waits
from app.store.writer import StorageFailed

if TYPE_CHECKING:
    from app.runs.manager import RunManager


async def answer(
    manager: RunManager, run_id: str, kind: str, answers: waits.Answers, *,
    can_see: Callable[[str], bool], expired_only: bool = False,
) -> Any:
    """Record `answers` to the run's wait of `kind` in one write; once every call is
    answered, the run goes on (here, claimed in that write when a slot is free). Returns the
    run's row as written; raises the API's errors, writing nothing, when they do not fit."""
    reserved = manager.reserve_slot(run_id)
    park = manager.runtime.paused
    store = manager.store
    write = waits.answer_write(
        run_id, kind, answers, can_see=can_see, executor_id=manager.executor_id,
        lease=store.lease(), lease_end=store.lease_end,
        claim=(lambda connection, claimed: store.claim(connection, claimed,
                                                       store.claim_values()))
        if reserved else None,
        expired_only=expired_only, park=park)
    try:
        answered = await manager.writer.submit(write)
    except StorageFailed as failure:
        manager.release_slot(run_id)
        raise Unavailable(f"the answer could not be stored: {failure.detail}",
                          headers={"Retry-After": "1"}) from None
    except BaseException:
        manager.release_slot(run_id)
        raise
    for event in answered.events:
        manager.writer.publish(event)
    run = answered.run
    if answered.started is not None:
        manager.launch(answered.started)
    else:
        manager.release_slot(run_id)
        if answered.resumed and run.status == "paused":
            # The runtime may have resumed meanwhile, taking only the runs parked by then.
            if not manager.runtime.paused:
                await manager.runtime.resume_parked([run_id])
        elif answered.resumed:
            manager.submit(run_id)
    if answered.resumed:
        manager.publish_state(run.id, run.session_id, run.agent, run.owner, run.status)
    return run
