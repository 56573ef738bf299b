"""The in-process run manager: admission, the FIFO queue, cancellation, recovery, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from app.clock import rfc3339, utcnow
from app.config import Settings
from app.events.bus import EventBus
from app.hooks.deliveries import log_delivery
from app.hooks.gating import Delivery, HookGate, RunIdentity
from app.hooks.outbox import EventOutbox
from app.hooks.registry import HookRegistry
from app.hooks.registry import changed as hook_registry_changed
from app.hooks.sender import EventSender
from app.loop.config import LoopConfig
from app.loop.engine import AgentLoop, Outcome
from app.loop.steps import AwaitInput, Failed
from app.metrics import Metrics
from app.providers.base import ProviderError, ToolCallOut
from app.providers.registry import ProviderRegistry
from app.runs import resume, waits
from app.runs.create import Parent
from app.runs.host import RunEvents, RunHost
from app.runs.runtime import Runtime
from app.runs.store import Ended, RunStore, StartedRun, StateChanged, is_queued
from app.runs.subruns import Subruns
from app.runs.tools import ToolConflict, ToolSources, build_tools
from app.store.db import Database
from app.store.tables import Run
from app.store.writer import StorageFailed, Writer
from app.tools import net
from app.tools.base import ToolResult
from app.tools.mcp import McpClients
from app.tools.net import HostPolicy
from app.tools.policy import RateLimiter, ToolGate

logger = logging.getLogger("loomd.runs")

INTERRUPTED = {"reason": "the process executing the run stopped"}
ABANDONED_RETRY_S = 1.0
"""How often the end of a run that could not be stored is tried again."""
HOOK_TIMEOUT_S = 60.0
"""The hook client's default timeout; each hook's `timeout_ms` applies to its calls."""
WAIT_CHECK_S = 1.0
"""How often waits are checked for expiry."""


class _Stop(Exception):
    """Why a run task was cancelled: `status` is `cancelled` or `interrupted`."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


async def _uninterruptible(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to the end even if the calling task is cancelled meanwhile."""
    inner = asyncio.ensure_future(work)
    while not inner.done():
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
    inner.result()


def _failure(error: StorageFailed) -> dict[str, Any]:
    return {"code": error.code, "detail": error.detail}


class RunManager:
    """Owns the asyncio tasks of the runs this process executes."""

    def __init__(self, settings: Settings, database: Database, bus: EventBus,
                 providers: ProviderRegistry, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.settings = settings
        self.database = database
        self.bus = bus
        self.providers = providers
        self.executor_id = settings.instance_id
        self.writer = Writer(database, bus, deadline_s=settings.storage_deadline_s,
                             max_queued=settings.writer_queue_size)
        self.store = RunStore(database, self.writer, self.executor_id, settings.run_lease_s)
        self.accepting = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiting: deque[str] = deque()
        self._stops: dict[str, _Stop] = {}
        self._live: set[str] = set()
        self._reserved: set[str] = set()
        """Runs being claimed in their creation write: they hold a slot already."""
        self._abandoned: dict[str, dict[str, Any]] = {}
        """Runs whose task ended without storing their end: the error each is to end with."""
        self._abandoned_more = asyncio.Event()
        self._lease_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self.rate_limiter = RateLimiter()
        self.mcp = McpClients()
        self.hook_registry = HookRegistry(database)
        self.hook_client = net.client(HostPolicy.any_public(settings), HOOK_TIMEOUT_S,
                                      follow_redirects=False)
        self._delivery_writes: set[asyncio.Task[None]] = set()
        self.outbox = EventOutbox(database)
        self.writer.outbox = self.outbox
        self.sender = EventSender(database, self.writer, self.outbox, self.hook_client,
                                  settings.hook_max_attempts, metrics)
        self._steered: set[str] = set()
        """Runs executing here that were given steering input since they last took it."""
        self._resubmit: set[str] = set()
        """Runs whose end was turned into one more turn: started again once their task ends."""
        self.runtime = Runtime(self)

    # admission

    @property
    def active_count(self) -> int:
        return len(self._tasks) + len(self._reserved)

    @property
    def queued_count(self) -> int:
        return len(self._waiting)

    def has_capacity(self) -> bool:
        """Whether one more run may be admitted (started now, or queued for a slot)."""
        return (self.active_count < self.settings.max_concurrent_runs
                or self.queued_count < self.settings.max_queued_runs)

    def submit(self, run_id: str) -> None:
        """Start the run when a slot is free, else queue it (FIFO)."""
        if run_id in self._tasks or run_id in self._waiting:
            return
        if (self.active_count < self.settings.max_concurrent_runs
                and not self.runtime.paused):
            self._start(run_id)
        else:
            self._waiting.append(run_id)

    def reserve_slot(self, run_id: str, beyond_limit: bool = False) -> bool:
        """Hold a slot for a run that its creation write may claim; False when none is free
        (unless `beyond_limit`, for a subrun its parent waits for).

        Until `launch` or `release_slot`, the run counts as executing here, so a cancel that
        comes meanwhile is kept and applied as the run starts.
        """
        full = self.active_count >= self.settings.max_concurrent_runs
        if not self.accepting or ((full or self.runtime.paused) and not beyond_limit):
            return False
        self._reserved.add(run_id)
        return True

    def release_slot(self, run_id: str) -> None:
        if run_id in self._reserved:
            self._reserved.discard(run_id)
            self.admit()

    def launch(self, started: StartedRun) -> None:
        """Execute a run its creation write claimed (in the slot reserved for it)."""
        self._reserved.discard(started.run.id)
        self._start(started.run.id, started)

    def _start(self, run_id: str, started: StartedRun | None = None) -> None:
        task = asyncio.create_task(self._execute(run_id, started), name=f"run-{run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda _t: self._on_done(run_id))

    def _on_done(self, run_id: str) -> None:
        self._tasks.pop(run_id, None)
        self._stops.pop(run_id, None)
        self._live.discard(run_id)
        self._steered.discard(run_id)
        self.writer.forget(run_id)
        if run_id in self._resubmit:
            self._resubmit.discard(run_id)
            self.submit(run_id)
        self.admit()

    def go_on(self, run_id: str) -> None:
        """Start a run queued to go on here, once its task (if it is still ending) ended."""
        if run_id in self._tasks:
            self._resubmit.add(run_id)
        else:
            self.submit(run_id)

    def steer(self, run_id: str) -> None:
        """Steering input was stored for the run: if it executes here, it takes the input at
        its next turn boundary (a run that starts later finds it as it is claimed, and a
        run another process executes, as it ends)."""
        if self.is_running_here(run_id):
            self._steered.add(run_id)

    def admit(self) -> None:
        """Start queued runs while slots are free (none while the runtime is paused)."""
        while (self.accepting and not self.runtime.paused and self._waiting
               and self.active_count < self.settings.max_concurrent_runs):
            self._start(self._waiting.popleft())

    # control

    def running_tasks(self) -> set[asyncio.Task[None]]:
        return set(self._tasks.values())

    def running_ids(self) -> list[str]:
        return list(self._tasks)

    def is_running_here(self, run_id: str) -> bool:
        return run_id in self._tasks or run_id in self._waiting or run_id in self._reserved

    async def cancel(self, run_id: str, reason: str, wait: bool = True,
                     status: str = "cancelled") -> bool:
        """Cancel a run executing (or queued) here; False when it is not ours.

        Only the first request counts. The task is interrupted only while the loop runs:
        a run not started yet stops as soon as it is claimed, and one already ending ends
        as it was going to (cancelling it then would cut its terminal event short).
        """
        if run_id in self._waiting:
            self._waiting.remove(run_id)
            await self._finish_unstarted(run_id, status, reason)
            return True
        if run_id in self._reserved:  # being created: stopped as soon as it starts
            self._stops.setdefault(run_id, _Stop(status, reason))
            return True
        task = self._tasks.get(run_id)
        if task is None:
            return await self._finish_waiting(run_id, status, reason)
        if run_id not in self._stops:
            self._stops[run_id] = _Stop(status, reason)
            if run_id in self._live:
                task.cancel()
        if wait:
            await asyncio.wait({task})
        return True

    def _take_steer(self, run_id: str) -> bool:
        if run_id in self._steered:
            self._steered.discard(run_id)
            return True
        return False

    async def wait_ended(self, run_ids: list[str]) -> None:
        """Wait until the tasks of those of `run_ids` that execute here have ended."""
        tasks = {task for run_id in run_ids if (task := self._tasks.get(run_id)) is not None}
        if tasks:
            await asyncio.wait(tasks)

    async def finish_queued(self, run_id: str, reason: str) -> bool:
        """End a run that waits in its session's queue (not yet submitted) as cancelled.

        A run that started meanwhile is cancelled instead; False when it already ended.
        """
        if await self._finish_unstarted(run_id, "cancelled", reason):
            return True
        return await self.cancel(run_id, reason, wait=False)

    async def _finish_waiting(self, run_id: str, status: str, reason: str) -> bool:
        """End a run that waits for people (its open calls are closed); False when it does
        not wait (any more)."""
        try:
            ended = await self.store.finish(
                run_id, status, f"run.{status}", {"reason": reason}, error=None,
                expect=lambda run: run.status in ("requires_action", "paused"))
        except StateChanged:
            return False
        self._ended(ended, status)
        return True

    async def _finish_unstarted(self, run_id: str, status: str, reason: str) -> bool:
        """End a `queued` run; False (changing nothing) when it is not queued any more."""
        try:
            ended = await self.store.finish(run_id, status, f"run.{status}", {"reason": reason},
                                            expect=is_queued, error=None)
        except StateChanged:
            return False
        except StorageFailed as failure:
            logger.error("could not end a queued run", extra={"run_id": run_id,
                                                              "error": failure.detail})
            return False
        self._ended(ended, status)
        return True

    # lifecycle

    async def start(self) -> None:
        """Start the writer, recover the runs no live process executes, then admit runs."""
        self.writer.start()
        await self.outbox.refresh()
        await self.runtime.load()
        await self.recover(at_start=True)
        self._lease_task = asyncio.create_task(self._renew_leases(), name="loomd-leases")
        self._expiry_task = asyncio.create_task(self._expire_waits(), name="loomd-waits")
        self.sender.start()
        self.accepting = True

    async def recover(self, at_start: bool = False) -> int:
        """Mark unfinished runs that no live process executes `interrupted`.

        At start-up that is every unfinished run of a SQLite file (this process holds its
        lock) and, on Postgres, the runs of this instance id (a restart of it) and those
        whose lease expired; later, the runs whose lease expired by the database's clock
        (another process died) and the runs whose end this process could not store.
        """
        ours = {*self._tasks, *self._waiting}
        if at_start:
            candidates = await self.store.recoverable(everything=self.database.is_sqlite,
                                                      mine=True)
        else:
            candidates = await self.store.recoverable(everything=False, mine=False)
        recovered = 0
        for run_id in dict.fromkeys([*self._abandoned, *candidates]):
            if run_id in ours:
                continue
            error = self._abandoned.get(run_id)
            try:
                if error is not None:
                    ended = await self.store.finish(run_id, "failed", "run.failed",
                                                    {"error": error}, error=error,
                                                    after_failure=True)
                else:
                    ended = await self.store.finish(
                        run_id, "interrupted", "run.interrupted", INTERRUPTED,
                        expect=None if at_start else (lambda run: bool(run.lease_expired)))
            except StateChanged:
                self._abandoned.pop(run_id, None)
                continue
            except StorageFailed:
                continue
            self._abandoned.pop(run_id, None)
            recovered += 1
            self._ended(ended, "failed" if error is not None else "interrupted")
        if recovered:
            logger.warning("recovered unfinished runs", extra={"count": recovered})
        return recovered

    async def shutdown(self) -> None:
        """Stop admitting, give active runs the grace period, then interrupt the rest."""
        self.accepting = False
        try:
            while self._waiting:
                await self._finish_unstarted(self._waiting.popleft(), "interrupted",
                                             "the service shut down")
            if self._tasks:
                await asyncio.wait(set(self._tasks.values()),
                                   timeout=self.settings.shutdown_grace_s)
            for run_id in list(self._tasks):
                await self.cancel(run_id, "the service shut down", status="interrupted")
            # Runs queued behind another run of their session are in no list here; left
            # queued, they would keep their sessions busy after a restart.
            for run_id in await self.store.queued_here():
                await self._finish_unstarted(run_id, "interrupted", "the service shut down")
        except Exception:
            logger.exception("shutdown could not end every run; recovery will")
        finally:
            background = [t for t in (self._lease_task, self._expiry_task) if t is not None]
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.runtime.close()
            await self.sender.stop()
            if self._delivery_writes:
                await asyncio.wait(set(self._delivery_writes), timeout=5)
            await self.writer.stop()
            await self.mcp.aclose()
            await self.hook_client.aclose()

    async def _renew_leases(self) -> None:
        """Renew leases every third of the lease, then recover; while runs wait for their end
        to be stored (the database was down), try those again every second."""
        loop = asyncio.get_running_loop()
        period = self.settings.run_lease_s / 3
        renewed = loop.time()
        while True:
            wait = period - (loop.time() - renewed)
            if self._abandoned:
                wait = min(wait, ABANDONED_RETRY_S)
            self._abandoned_more.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._abandoned_more.wait(), max(wait, 0.0))
                continue  # a run was just abandoned: try it within a second
            try:
                if loop.time() - renewed >= period * 0.9:  # timers may fire a little early
                    await self.store.renew_leases([*self._tasks, *self._waiting])
                    renewed = loop.time()
                if self.accepting:
                    await self.recover()
            except Exception:
                logger.exception("lease renewal or recovery failed")

    async def _expire_waits(self) -> None:
        """Give waits nobody answered in time their defaults, so their runs go on."""
        defaults = waits.expiry_answers(self.settings.action_timeout_s)
        while True:
            await asyncio.sleep(WAIT_CHECK_S)
            if not self.accepting:
                continue
            try:
                await self.runtime.follow()
            except Exception:
                logger.exception("could not read the runtime's state")
            try:
                expired = await self.store.expired_waits()
            except Exception:
                logger.exception("could not look for expired waits")
                continue
            for run_id, kind in expired:
                try:
                    await resume.answer(self, run_id, kind, defaults(kind),
                                        can_see=lambda _owner: True, expired_only=True)
                except (waits.RunNotWaiting, waits.RunFinished):
                    pass  # answered or ended meanwhile
                except Exception:
                    logger.exception("could not expire a wait", extra={"run_id": run_id})

    async def hooks_changed(self) -> None:
        """A hook was created, changed or deleted here: the next runs and events see it."""
        hook_registry_changed()
        await self.outbox.refresh()

    def _delivered(self, delivery: Delivery, seconds: float) -> None:
        """Count a gating hook's call and store it in the delivery log, without waiting."""
        if self.metrics is not None:
            result = "ok" if delivery.status == "delivered" else "error"
            self.metrics.hook_deliveries.labels(delivery.phase, result).inc()
            self.metrics.hook_seconds.labels(delivery.phase).observe(seconds)
        task = asyncio.create_task(self._log_delivery(delivery))
        self._delivery_writes.add(task)
        task.add_done_callback(self._delivery_writes.discard)

    async def _log_delivery(self, delivery: Delivery) -> None:
        try:
            await self.writer.submit(lambda connection: log_delivery(connection, delivery))
        except Exception:
            logger.warning("a hook delivery could not be logged",
                           extra={"hook_id": delivery.hook_id, "run_id": delivery.run_id})

    def _abandon(self, run_id: str, error: dict[str, Any]) -> None:
        """Leave a run whose end could not be stored to be ended as soon as it can be."""
        self._abandoned[run_id] = error
        self._abandoned_more.set()

    # execution

    async def _execute(self, run_id: str, started: StartedRun | None = None) -> None:
        try:
            if started is None:
                started = await self.store.start(run_id, store_input=run_id not in self._stops)
        except StorageFailed as failure:
            # Left queued, the run would hold its session for good: end it now or later.
            self._abandon(run_id, _failure(failure))
            return
        if started is None:
            return
        run = started.run
        events = RunEvents(self.writer, run.id, run.session_id, run.last_seq)
        host = RunHost(self.store, events, run.id, run.session_id, run.owner,
                       started.session.llm_calls)
        host.metrics = self.metrics
        host.agent = run.agent
        host.active_ms_before = run.active_ms
        host.steered = lambda: self._take_steer(run_id)
        # A subrun is its parent's tool call: it runs on, and its parent parks after it.
        host.parking = lambda: self.runtime.paused and run.depth == 0
        if run.pending_input:  # stored while it waited or was queued
            self._steered.add(run_id)
        host.provider_name = str(run.config.get("model", "")).split(":", 1)[0]
        stop = self._stops.get(run_id)
        if stop is not None:  # cancelled before it was claimed: the session stays as it is
            await _uninterruptible(self._end_unstarted(host, stop))
            return
        closing: str | None = None
        outcome: Outcome | None = None
        self._live.add(run_id)
        try:
            await events.emit("run.resumed" if run.waiting is not None else "run.started", {})
            self.publish_state(run.id, run.session_id, run.agent, run.owner, "running")
            # Time spent waiting for people or for a slot does not count (§4.2).
            remaining = host.configure(run.config).timeout_s - run.active_ms / 1000
            async with asyncio.timeout(max(remaining, 0.0)):
                outcome = await self._drive(run, host, started)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            stop = self._stops.get(run_id, _Stop("cancelled", "cancelled"))
        except TimeoutError:
            closing = "run timed out"
            limit = host.configure(run.config).timeout_s
            outcome = Outcome("failed", 0, error={
                "code": "run_timeout", "detail": f"the run exceeded its timeout of {limit} s"})
        except StorageFailed as failure:
            outcome = Outcome("failed", 0, error=_failure(failure))
        except Exception as exc:
            logger.exception("run crashed", extra={"run_id": run_id})
            closing = "internal error"
            outcome = Outcome("failed", 0, error={
                "code": "internal_error", "detail": f"the run failed: {type(exc).__name__}"})
        self._live.discard(run_id)  # from here on, cancel() leaves the task alone
        # A cancel that reached the task just as the loop returned is still pending and would
        # fire at the next await, cutting the run's end short: end it where it cannot reach.
        await _uninterruptible(self._conclude(host, stop, closing, outcome))

    async def _conclude(self, host: RunHost, stop: _Stop | None, closing: str | None,
                        outcome: Outcome | None) -> None:
        try:
            if stop is not None:
                await self._close_open_calls(host, f"<cancelled: {stop.reason}>")
                await self._end(host, stop.status, {"reason": stop.reason})
                return
            if closing is not None:
                await self._close_open_calls(host, f"<cancelled: {closing}>")
            assert outcome is not None
            await self._report(host, outcome)
        except StorageFailed as failure:
            await self._end_after_failure(host, failure)

    async def _end_unstarted(self, host: RunHost, stop: _Stop) -> None:
        try:
            # A run resumed after a wait has calls open (those it was about to run).
            await self._close_open_calls(host, f"<cancelled: {stop.reason}>")
            await self._end(host, stop.status, {"reason": stop.reason})
        except StorageFailed as failure:
            await self._end_after_failure(host, failure)

    async def _end_after_failure(self, host: RunHost, failure: StorageFailed) -> None:
        """End a run one of whose writes failed: `failed`, after its last stored event."""
        error = _failure(self.writer.failure_of(host.run_id) or failure)
        turns, usage = host.progress()
        try:
            ended = await self.store.finish(
                host.run_id, "failed", "run.failed", {"error": error}, error=error,
                turns=turns, usage=usage, tally=host.tally, after_failure=True)
        except StateChanged:
            return
        except StorageFailed:
            self._abandon(host.run_id, error)
            return
        self._ended(ended, "failed", host)

    async def _drive(self, run: Run, host: RunHost, started: StartedRun) -> Outcome:
        """Run the loop step by step; a stop request is honoured between steps."""
        config = host.configure(run.config)
        try:
            provider, model = self.providers.get(config.model)
        except ProviderError as error:
            return Outcome.of(Failed("provider_error", error.message), 0, {})
        host.hosts = HostPolicy.of(self.settings, config.allowed_hosts)
        subruns = Subruns(self, Parent(run.id, run.session_id, run.depth + 1), run.owner,
                          host.emit)
        try:
            tools = await build_tools(config.tools, config.only_tools, ToolSources(
                self.database, run.owner, host.hosts, self.mcp, subruns))
        except ToolConflict as conflict:
            return Outcome.of(Failed("tool_conflict", str(conflict)), 0, {})
        host.gate = ToolGate(config.tool_policy, self.rate_limiter, (run.owner, run.agent))
        hooks = await self.hook_registry.gating(run.owner, run.agent)
        if hooks:
            host.hooks_gate = HookGate(
                hooks, self.hook_client, RunIdentity(run.id, run.session_id, run.agent,
                                                     run.owner), host.emit, self._delivered)
        loop = AgentLoop(
            LoopConfig(run=config, model=model, tool_timeout_s=self.settings.tool_timeout_s,
                       max_attempts=self.settings.llm_max_attempts,
                       retry_base_s=self.settings.llm_retry_base_s),
            provider, host.ports(tools),
        )
        host.loop = loop
        loop.turns = run.turns
        loop.usage.update(run.usage)
        should_stop = lambda: run.id in self._stops  # noqa: E731
        if run.waiting is not None and run.waiting.get("kind") in ("input", "parked"):
            # It parked at a turn boundary, or had answered when steering input came (the
            # input is in the history now): it goes on from the stored history.
            step = await loop.run(started.history, should_stop=should_stop)
            return Outcome.of(step, loop.turns, dict(loop.usage))
        if run.waiting is not None:
            waiting = run.waiting
            results, approvals = waits.answers_of(waiting)
            step = await loop.resume(waits.awaited_of(waiting), results, approvals,
                                     history=started.history, should_stop=should_stop)
            return Outcome.of(step, loop.turns, dict(loop.usage))
        request = run.request
        history = started.history  # as of the claim, which stored the input
        if not started.input_stored:  # tool calls were open: answer them first
            awaited = await self._settle_pending(host, loop, request.get("on_pending", "reject"))
            if awaited is not None:
                # The input follows the answers of the calls left open: it waits with them,
                # and is taken as the run goes on, like steering input.
                host.input_after_wait = list(request.get("input") or [])
                return Outcome.of(awaited, loop.turns, dict(loop.usage))
            if request.get("input"):
                await host.append_messages(request["input"])
            history = await self.store.history(run.session_id)
        step = await loop.run(history, should_stop=should_stop)
        return Outcome.of(step, loop.turns, dict(loop.usage))

    async def _settle_pending(self, host: RunHost, loop: AgentLoop,
                              policy: str) -> AwaitInput | None:
        """Turn 0: run (`resume`) or abort (`abort`) tool calls left without results; what
        the resumed calls then wait for (approvals, client outputs), if anything."""
        open_calls = await self.store.open_tool_calls(host.session_id)
        if not open_calls:
            return None
        if policy == "resume":
            return await loop.run_tool_calls(
                0, [ToolCallOut(c["id"], c["name"], c["arguments"]) for c in open_calls])
        await self._answer_calls(host, open_calls, "<aborted: new input>", turn=0)
        return None

    async def _answer_calls(
        self, host: RunHost, calls: list[dict[str, Any]], text: str, turn: int
    ) -> None:
        for call in calls:
            result = ToolResult(text, is_error=True)
            await host.append_messages([{"role": "tool", "tool_call_id": call["id"],
                                         "name": call["name"], "content": result.output}])
            await host.emit("tool.completed", {
                "turn": turn, "tool_call_id": call["id"], "name": call["name"],
                "output": result.output, "is_error": True,
                "duration_ms": host.tool_ms(call["id"])})

    async def _close_open_calls(self, host: RunHost, text: str) -> None:
        """Give each tool call still without a result the result `text`.

        A call the loop already answered is left alone even when the store does not show
        its result yet: a write cut short by the cancellation may still land.
        """
        open_calls = [call for call in await self.store.open_tool_calls(host.session_id)
                      if call["id"] not in host.answered]
        if open_calls:
            # The calls belong to the turn in progress (0 while resuming pending calls).
            await self._answer_calls(host, open_calls, text, turn=host.progress()[0])

    async def _report(self, host: RunHost, outcome: Outcome) -> None:
        turns, usage = host.progress()
        if outcome.awaiting is not None:
            await self._wait(host, outcome.awaiting, turns, usage)
        elif outcome.status == "paused":
            await self._park(host, turns, usage)
        elif outcome.status == "completed":
            await self._end(host, "completed", {
                "stop_reason": outcome.stop_reason, "output": outcome.output, "usage": usage,
                "turns": turns,
            }, stop_reason=outcome.stop_reason, output=outcome.output, usage=usage, turns=turns,
                active_ms=self._active_ms(host))
        else:
            await self._end(host, "failed", {"error": outcome.error}, error=outcome.error,
                            usage=usage, turns=turns)

    @staticmethod
    def _active_ms(host: RunHost) -> int:
        """The run's running time so far, its earlier stretches included."""
        return host.active_ms_before + round((time.monotonic() - host.started) * 1000)

    async def _wait(self, host: RunHost, awaited: AwaitInput, turns: int,
                    usage: dict[str, int]) -> None:
        """Leave the run waiting for people: it holds no slot and no lease meanwhile."""
        expires = waits.expires_at(utcnow(), self.settings.action_timeout_s)
        active_ms = self._active_ms(host)
        try:
            event = await self.store.await_input(
                host.run_id, host.session_id, waits.required_action_of(awaited, expires),
                waits.waiting_of(awaited), expires, seq=host.events.seq + 1,
                active_ms=active_ms, turns=turns, usage=usage, tally=host.tally,
                pending_input=host.input_after_wait)
        except StateChanged:
            logger.warning("the run was ended elsewhere", extra={"run_id": host.run_id})
            return
        host.events.seq += 1
        self.writer.publish(event)
        self.publish_state(host.run_id, host.session_id, host.agent, host.owner,
                           "requires_action")

    async def _park(self, host: RunHost, turns: int, usage: dict[str, int]) -> None:
        """Leave the run parked while the runtime is paused: it holds no slot meanwhile, and
        paused time does not count toward its timeout."""
        try:
            event = await self.store.park(
                host.run_id, host.session_id, seq=host.events.seq + 1,
                active_ms=self._active_ms(host), turns=turns, usage=usage, tally=host.tally)
        except StateChanged:
            logger.warning("the run was ended elsewhere", extra={"run_id": host.run_id})
            return
        host.events.seq += 1
        self.writer.publish(event)
        self.runtime.parked()
        self.publish_state(host.run_id, host.session_id, host.agent, host.owner, "paused")
        if not self.runtime.paused:  # resumed while it was parking: it goes on
            await self.runtime.resume_parked([host.run_id])

    async def _end(self, host: RunHost, status: str, data: dict[str, Any], **fields: Any) -> None:
        """Store the run's end; raises `StorageFailed` when a write of the run failed."""
        if status in ("cancelled", "interrupted"):
            fields["turns"], fields["usage"] = host.progress()
        try:
            ended = await self.store.finish(
                host.run_id, status, f"run.{status}", data, seq=host.events.seq + 1,
                tally=host.tally, steerable=fields.get("stop_reason") == "end_turn", **fields)
        except StateChanged:
            logger.warning("the run was ended elsewhere", extra={"run_id": host.run_id})
            return
        if ended.continued:
            self.writer.publish(ended.event)
            self._resubmit.add(host.run_id)
            return
        self._ended(ended, status, host, fields.get("stop_reason"))

    def _ended(self, ended: Ended, status: str, host: RunHost | None = None,
               stop_reason: str | None = None) -> None:
        """After a run's end was stored: publish it, start the session's next run."""
        for event in ended.closing:
            self.writer.publish(event)
        self.writer.publish(ended.event)
        if self.metrics is not None:
            self.metrics.runs_finished.labels(status).inc()
            if host is not None:
                self.metrics.run_seconds.observe(time.monotonic() - host.started)
        run = ended.run
        if ended.next_run_id and self.accepting:
            self.submit(ended.next_run_id)
        self.publish_state(run.id, run.session_id, run.agent, run.owner, status, stop_reason)

    def publish_state(self, run_id: str, session_id: str, agent: str, owner: str, status: str,
                      stop_reason: str | None = None) -> None:
        """Tell `GET /v1/runs/stream` subscribers that a run changed status."""
        self.bus.publish(EventBus.ALL, {
            "type": "run.state", "run_id": run_id, "session_id": session_id, "agent": agent,
            "owner": owner, "status": status, "stop_reason": stop_reason,
            "ts": rfc3339(utcnow())})
