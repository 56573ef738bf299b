"""`POST /v1/runs/batch` (§4.3): up to 32 runs, each in a new session, joined or detached."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlmodel import col, select

from app.auth import Principal
from app.errors import NotFound, ValidationFailed
from app.runs.manager import RunManager
from app.runs.service import Started, cancel_started, start_run
from app.runs.subruns import ended_run
from app.schemas.runs import BatchCreate, RunCreate
from app.schemas.sessions import SessionCreate
from app.services.agents import check_api_key
from app.services.runs import resolved_config
from app.store.tables import Agent, Run

PATH = "/v1/runs/batch"


async def start_batch(manager: RunManager, principal: Principal, body: BatchCreate,
                      owner: str) -> tuple[list[Any], bool]:
    """Start every run; with `join`, wait for their ends (or the timeout). Returns the runs
    (their rows, in request order) and whether the batch was joined.

    Every run is checked first (its agent, overrides and provider), so a run that would be
    refused refuses the batch before any run exists. The runs' sessions are `owner`'s, and
    so are the agents they name.
    """
    await _check_runs(manager, owner, body)
    join = body.mode == "join"

    async def start(run: Any) -> Started:
        child = RunCreate.model_validate(
            run.model_dump(exclude={"agent", "session"}, exclude_unset=True))
        return await start_run(
            manager, principal, child, path=PATH, follow=join, owner=owner,
            new_session=SessionCreate(agent=run.agent, title=run.session.title,
                                      metadata=run.session.metadata))

    # Created together, so the writer commits the creations in a few group commits.
    outcomes = await asyncio.gather(*(start(run) for run in body.runs),
                                    return_exceptions=True)
    started = [o for o in outcomes if isinstance(o, Started)]
    failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if failure is not None:  # the batch is refused whole: the runs it started end
        for done in started:
            if done.fresh is not None:
                manager.bus.unsubscribe(done.fresh.subscription)
            await cancel_started(manager, done.run.id, "the batch was refused")
        raise failure
    if not join:
        return [s.run for s in started], False
    waits = [asyncio.ensure_future(ended_run(manager, s.run.id, s.fresh)) for s in started]
    _, pending = await asyncio.wait(waits, timeout=body.timeout_ms / 1000)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    rows: list[Any] = []
    async with manager.database.read() as db:
        for s, task in zip(started, waits, strict=True):
            if task.done() and not task.cancelled() and task.exception() is None:
                rows.append(task.result())
            else:  # still going when the time was up: as it is now
                rows.append(await db.get(Run, s.run.id))
    return rows, True


async def _check_runs(manager: RunManager, owner: str, body: BatchCreate) -> None:
    """Refuse the batch, before any run exists, when a run of it would be refused."""
    names = {run.agent for run in body.runs}
    async with manager.database.read() as db:
        query = select(Agent).where(Agent.owner == owner,
                                    col(Agent.name).in_(names))
        agents = {agent.name: agent for agent in (await db.exec(query)).all()}
    providers = manager.settings.provider_names()
    for index, run in enumerate(body.runs):
        agent = agents.get(run.agent)
        if agent is None:
            raise NotFound(f"runs[{index}]: agent {run.agent!r} not found")
        try:
            config = resolved_config(agent.config, run)
        except ValidationFailed as failure:
            errors = [{**error, "loc": ["body", "runs", index, *error["loc"][1:]]}
                      for error in failure.extra["errors"]]
            raise ValidationFailed(f"runs[{index}]: {failure.detail}", errors) from None
        provider = config["model"].split(":", 1)[0]
        if provider not in providers:
            raise ValidationFailed.at(["body", "runs", index, "overrides", "model"],
                                      f"unknown provider {provider!r}")
        if run.overrides.model is not None:
            check_api_key(manager.settings, provider, ["body", "runs", index, "overrides",
                                                       "model"])
