"""The in-process run manager: admission, the FIFO queue, cancellation, recovery, shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from app.clock import rfc3339, utcnow
from app.config import Settings
from app.events.bus import EventBus
from app.events.writer import EventWriter
from app.loop.engine import AgentLoop, LoopConfig, Outcome, run_tool_call
from app.metrics import Metrics
from app.providers.base import ProviderError
from app.providers.registry import ProviderRegistry
from app.runs.host import RunEvents, RunHost
from app.runs.store import RunStore, StateChanged, is_orphaned, is_queued
from app.store.db import Database
from app.store.tables import Run
from app.tools.base import ToolResult
from app.tools.runner import ToolRunner

logger = logging.getLogger("loomd.runs")


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
        self.store = RunStore(database, self.executor_id, settings.run_lease_s)
        self.writer = EventWriter(database, bus)
        self.accepting = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiting: deque[str] = deque()
        self._stops: dict[str, _Stop] = {}
        self._live: set[str] = set()
        self._lease_task: asyncio.Task[None] | None = None

    # admission

    @property
    def active_count(self) -> int:
        return len(self._tasks)

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
        if self.active_count < self.settings.max_concurrent_runs:
            self._start(run_id)
        else:
            self._waiting.append(run_id)

    def _start(self, run_id: str) -> None:
        task = asyncio.create_task(self._execute(run_id), name=f"run-{run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda _t: self._on_done(run_id))

    def _on_done(self, run_id: str) -> None:
        self._tasks.pop(run_id, None)
        self._stops.pop(run_id, None)
        self._live.discard(run_id)
        while self._waiting and self.active_count < self.settings.max_concurrent_runs:
            self._start(self._waiting.popleft())

    # control

    def is_running_here(self, run_id: str) -> bool:
        return run_id in self._tasks or run_id in self._waiting

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
        task = self._tasks.get(run_id)
        if task is None:
            return False
        if run_id not in self._stops:
            self._stops[run_id] = _Stop(status, reason)
            if run_id in self._live:
                task.cancel()
        if wait:
            await asyncio.wait({task})
        return True

    async def finish_queued(self, run_id: str, reason: str) -> bool:
        """End a run that waits in its session's queue (not yet submitted) as cancelled.

        A run that started meanwhile is cancelled instead; False when it already ended.
        """
        if await self._finish_unstarted(run_id, "cancelled", reason):
            return True
        return await self.cancel(run_id, reason, wait=False)

    async def _finish_unstarted(self, run_id: str, status: str, reason: str) -> bool:
        """End a `queued` run; False (changing nothing) when it is not queued any more."""
        loaded = await self.store.load(run_id)
        if loaded is None:
            return False
        run, _ = loaded
        events = RunEvents(self.writer, run.id, run.session_id, run.last_seq)
        try:
            next_run = await events.end(f"run.{status}", {"reason": reason}, functools.partial(
                self.store.finish, run.id, status, only_if=is_queued, error=None))
        except StateChanged:
            return False
        if next_run and self.accepting:
            self.submit(next_run)
        return True

    # lifecycle

    async def start(self) -> None:
        """Start the event writer, recover runs of dead processes, then admit runs."""
        self.writer.start()
        await self.recover()
        self._lease_task = asyncio.create_task(self._renew_leases(), name="loomd-leases")
        self.accepting = True

    async def recover(self) -> int:
        """Mark runs whose lease expired as `interrupted`; their sessions become pending.

        Runs at start-up and then with every lease renewal, so the runs of a process that
        died are taken over even when it was restarted before their leases ran out.
        """
        ours = {*self._tasks, *self._waiting}
        recovered = 0
        for run in await self.store.expired_runs():
            if run.id in ours:
                continue
            events = RunEvents(self.writer, run.id, run.session_id, run.last_seq)
            try:
                next_run = await events.end(
                    "run.interrupted", {"reason": "the process executing the run stopped"},
                    functools.partial(self.store.finish, run.id, "interrupted",
                                      only_if=is_orphaned))
            except StateChanged:
                continue
            recovered += 1
            if next_run:
                self.submit(next_run)
        if recovered:
            logger.warning("recovered interrupted runs", extra={"count": recovered})
        return recovered

    async def shutdown(self) -> None:
        """Stop admitting, give active runs the grace period, then interrupt the rest."""
        self.accepting = False
        for run_id in list(self._waiting):
            self._waiting.remove(run_id)
            await self._finish_unstarted(run_id, "interrupted", "the service shut down")
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()),
                               timeout=self.settings.shutdown_grace_s)
        for run_id in list(self._tasks):
            await self.cancel(run_id, "the service shut down", status="interrupted")
        # Runs queued behind another run of their session are in no list here; left queued,
        # they would keep their sessions busy after a restart until their leases ran out.
        for run_id in await self.store.queued_here():
            await self._finish_unstarted(run_id, "interrupted", "the service shut down")
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
        await self.writer.stop()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.run_lease_s / 3)
            try:
                await self.store.renew_leases([*self._tasks, *self._waiting])
                if self.accepting:
                    await self.recover()
            except Exception:
                logger.exception("lease renewal or recovery failed")

    # execution

    async def _execute(self, run_id: str) -> None:
        started = await self.store.start(run_id, store_input=run_id not in self._stops)
        if started is None:
            return
        run = started.run
        events = RunEvents(self.writer, run.id, run.session_id, run.last_seq)
        host = RunHost(self.store, events, run.id, run.session_id, run.owner,
                       started.session.llm_calls)
        host.metrics = self.metrics
        host.agent = run.agent
        host.provider_name = str(run.config.get("model", "")).split(":", 1)[0]
        stop = self._stops.get(run_id)
        if stop is not None:  # cancelled before it was claimed: the session stays as it is
            await self._end(host, stop.status, {"reason": stop.reason})
            return
        closing: str | None = None
        outcome: Outcome | None = None
        self._live.add(run_id)
        try:
            await events.emit("run.started", {})
            self.publish_state(run.id, run.session_id, run.agent, run.owner, "running")
            async with asyncio.timeout(run.config.get("timeout_s", 600)):
                outcome = await self._drive(run, host, started.input_stored)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            stop = self._stops.get(run_id, _Stop("cancelled", "cancelled"))
        except TimeoutError:
            closing = "run timed out"
            outcome = Outcome("failed", 0, error={
                "code": "run_timeout",
                "detail": f"the run exceeded its timeout of {run.config.get('timeout_s')} s"})
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
        if stop is not None:
            await self._close_open_calls(host, f"<cancelled: {stop.reason}>")
            await self._end(host, stop.status, {"reason": stop.reason})
            return
        if closing is not None:
            await self._close_open_calls(host, f"<cancelled: {closing}>")
        assert outcome is not None
        await self._report(host, outcome)

    async def _drive(self, run: Run, host: RunHost, input_stored: bool) -> Outcome:
        config = run.config
        try:
            provider, model = self.providers.get(config["model"])
        except ProviderError as error:
            return Outcome("failed", 0, error={"code": "provider_error", "detail": error.message})
        tools = ToolRunner.from_specs(config.get("tools", []), only=config.get("only_tools"))
        request = run.request
        if not input_stored:  # stored as the run started unless tool calls were open
            await self._settle_pending(host, tools, request.get("on_pending", "reject"))
            if request.get("input"):
                await host.append_messages(request["input"])
        loop = AgentLoop(
            LoopConfig(
                model=model, instructions=config.get("instructions"),
                sampling={k: v for k, v in config.get("sampling", {}).items() if v is not None},
                provider_options=config.get("provider_options", {}),
                max_turns=config.get("max_turns", 16),
                max_parallel=config.get("tool_policy", {}).get("max_parallel", 8),
                tool_timeout_s=self.settings.tool_timeout_s,
                max_attempts=self.settings.llm_max_attempts,
                retry_base_s=self.settings.llm_retry_base_s,
            ),
            provider, tools, host,
        )
        host.loop = loop
        return await loop.run(await self.store.history(run.session_id))

    async def _settle_pending(self, host: RunHost, tools: ToolRunner, policy: str) -> None:
        """Turn 0: run (`resume`) or abort (`abort`) tool calls left without results."""
        open_calls = await self.store.open_tool_calls(host.session_id)
        if not open_calls:
            return
        if policy == "resume":
            await asyncio.gather(*(
                run_tool_call(host, tools, 0, c["id"], c["name"], c["arguments"],
                              self.settings.tool_timeout_s)
                for c in open_calls
            ))
        else:
            await self._answer_calls(host, open_calls, "<aborted: new input>", turn=0)

    async def _answer_calls(
        self, host: RunHost, calls: list[dict[str, Any]], text: str, turn: int
    ) -> None:
        for call in calls:
            result = ToolResult(text, is_error=True)
            await host.append_messages([{"role": "tool", "tool_call_id": call["id"],
                                         "name": call["name"], "content": result.output}])
            await host.emit("tool.completed", {
                "turn": turn, "tool_call_id": call["id"], "name": call["name"],
                "output": result.output, "is_error": True, "duration_ms": 0})

    async def _close_open_calls(self, host: RunHost, text: str) -> None:
        open_calls = await self.store.open_tool_calls(host.session_id)
        if open_calls:
            # The calls belong to the turn in progress (0 while resuming pending calls).
            await self._answer_calls(host, open_calls, text, turn=host.progress()[0])

    async def _report(self, host: RunHost, outcome: Outcome) -> None:
        turns, usage = host.progress()
        if outcome.status == "completed":
            await self._end(host, "completed", {
                "stop_reason": outcome.stop_reason, "output": outcome.output, "usage": usage,
                "turns": turns,
            }, stop_reason=outcome.stop_reason, output=outcome.output, usage=usage, turns=turns)
        else:
            await self._end(host, "failed", {"error": outcome.error}, error=outcome.error,
                            usage=usage, turns=turns)

    async def _end(self, host: RunHost, status: str, data: dict[str, Any], **fields: Any) -> None:
        if status in ("cancelled", "interrupted"):
            fields["turns"], fields["usage"] = host.progress()
        try:
            next_run = await host.events.end(
                f"run.{status}", data,
                lambda event: self.store.finish(host.run_id, status, event, tally=host.tally,
                                                **fields))
        except StateChanged:
            logger.warning("the run was ended elsewhere", extra={"run_id": host.run_id})
            return
        if self.metrics is not None:
            self.metrics.runs_finished.labels(status).inc()
            self.metrics.run_seconds.observe(time.monotonic() - host.started)
        if next_run and self.accepting:
            self.submit(next_run)
        self.publish_state(host.run_id, host.session_id, host.agent, host.owner, status,
                           fields.get("stop_reason"))

    def publish_state(self, run_id: str, session_id: str, agent: str, owner: str, status: str,
                      stop_reason: str | None = None) -> None:
        """Tell `GET /v1/runs/stream` subscribers that a run changed status."""
        self.bus.publish(EventBus.ALL, {
            "type": "run.state", "run_id": run_id, "session_id": session_id, "agent": agent,
            "owner": owner, "status": status, "stop_reason": stop_reason,
            "ts": rfc3339(utcnow())})
