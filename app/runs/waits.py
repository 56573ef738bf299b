"""Runs that wait for people (§4.3, §4.4): what a waiting run stores, and the answers that
resume it — client tool outputs, approvals, and the defaults a wait gets when it expires.

A waiting run is `requires_action` and held by no process. Each answer is one write of the
writer: it checks the run still waits for that kind of answer, records it, and once every
call is answered makes the run `queued` again (claimed in the same write when this process
has a slot), to be resumed where its turn stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.clock import rfc3339, utcnow
from app.errors import AppError, Conflict, NotFound, ValidationFailed
from app.events.types import envelope
from app.loop.config import RunConfig
from app.loop.steps import Approval, AwaitInput
from app.providers.base import ToolCallOut
from app.runs.create import as_run
from app.runs.store import StartedRun, record, update_by_id
from app.status import TERMINAL_STATUSES
from app.store import statements as q
from app.store.statements import RUNS
from app.tools.base import ToolResult
from app.tools.runner import ToolRunner

EXPIRED_BY = "expiry"
"""`decided_by` of a decision taken because nobody answered in time."""

_RUN_FOR_UPDATE = sa.select(RUNS).where(RUNS.c.id == q.ID).with_for_update()


class RunFinished(Conflict):
    code, title = "run_finished", "Run finished"


class RunNotWaiting(Conflict):
    code, title = "run_not_waiting", "Run not waiting"


class ToolCallMismatch(AppError):
    status_code, code, title = 422, "tool_call_mismatch", "Tool call mismatch"


# what a waiting run stores

def _call_view(call: ToolCallOut) -> dict[str, Any]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def _call_of(view: Mapping[str, Any]) -> ToolCallOut:
    return ToolCallOut(view["id"], view["name"], view["arguments"])


def waiting_of(awaited: AwaitInput) -> dict[str, Any]:
    """The `waiting` column of a run that stopped at `awaited` (no answers yet)."""
    return {"kind": awaited.kind, "turn": awaited.turn,
            "tool_calls": [_call_view(c) for c in awaited.tool_calls],
            "deferred": [_call_view(c) for c in awaited.deferred], "answers": {}}


def required_action_of(awaited: AwaitInput, expires_at: datetime) -> dict[str, Any]:
    """The run's public `required_action` (§4.4)."""
    return {"type": awaited.kind, "expires_at": rfc3339(expires_at),
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": _object(c.arguments)}
                           for c in awaited.tool_calls]}


def awaited_of(waiting: Mapping[str, Any]) -> AwaitInput:
    """The step a stored wait stopped at."""
    return AwaitInput(waiting["kind"], tuple(_call_of(c) for c in waiting["tool_calls"]),
                      waiting["turn"], deferred=tuple(_call_of(c) for c in waiting["deferred"]))


def answers_of(
    waiting: Mapping[str, Any],
) -> tuple[dict[str, ToolResult] | None, dict[str, Approval] | None]:
    """The answers of a resolved wait by call id: client outputs for `submit_tool_outputs`,
    decisions for `approve_tool_calls` (the other one is None)."""
    answers = waiting["answers"].items()
    if waiting["kind"] == "submit_tool_outputs":
        return {call_id: ToolResult(answer["output"], bool(answer.get("is_error")))
                for call_id, answer in answers}, None
    return None, {call_id: Approval(answer["approve"], answer.get("reason"),
                                    answer.get("arguments")) for call_id, answer in answers}


def _object(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# answers

Answers = Callable[[Any, RunConfig, datetime], tuple[dict[str, dict[str, Any]], list[Any]]]
"""Checks the answers against a waiting run (its row, its configuration, now) and returns
them by call id, with the decisions to record; raises the API's error when they do not fit."""


@dataclass
class Answered:
    """What an answer wrote."""

    run: Any
    """The run's row after the write."""
    events: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    """Every call is answered: the run is `queued` to go on."""
    started: StartedRun | None = None
    """The run, claimed in the same write for this process."""


def answer_write(
    run_id: str, kind: str, answers: Answers, *, can_see: Callable[[str], bool],
    executor_id: str, lease: dict[str, Any], lease_end: Any,
    claim: Callable[[Connection, str], StartedRun | None] | None,
    expired_only: bool = False, park: bool = False,
) -> Callable[[Connection], Answered]:
    """The write that records answers to the run's open wait of `kind`.

    `claim` claims the run for this process once it is resumed (when a slot is reserved).
    With `expired_only`, a wait that has not expired yet is left alone (`RunNotWaiting`).
    With `park` (the runtime is paused), a run whose every call is answered is left
    `paused`, held by no process, instead of `queued`: it goes on when the runtime resumes.
    """
    def write(connection: Connection) -> Answered:
        now = utcnow()
        run = record(connection.execute(_RUN_FOR_UPDATE, {"_id": run_id}).first())
        if run is None or not can_see(run.owner):
            raise NotFound(f"run {run_id} not found")
        if run.status in TERMINAL_STATUSES:
            raise RunFinished(f"run {run_id} has ended ({run.status})")
        waiting = run.waiting
        if (run.status != "requires_action" or waiting is None
                or waiting.get("kind") != kind or waiting.get("resolved")):
            raise RunNotWaiting(f"run {run_id} is not waiting for {_KIND_TEXT[kind]}",
                                run_status=run.status)
        if expired_only and (run.action_expires_at is None or run.action_expires_at > now):
            raise RunNotWaiting(f"the wait of run {run_id} has not expired")
        config = RunConfig.parse(run.config)
        given, decisions = answers(run, config, now)
        waiting = {**waiting, "answers": {**waiting["answers"], **given}}
        names = {c["id"]: c["name"] for c in waiting["tool_calls"]}
        events = []
        seq = run.last_seq
        for decision in decisions:
            seq += 1
            data = {"turn": waiting["turn"], **decision,
                    "decided_at": rfc3339(decision["decided_at"])}
            data["name"] = names[decision["tool_call_id"]]
            q.insert_events(connection, {"run_id": run.id, "seq": seq,
                                                "type": "approval.decided", "data": data,
                                                "ts": now})
            events.append(envelope("approval.decided", seq, run.id, run.session_id, now, data))
        resumed = len(waiting["answers"]) == len(waiting["tool_calls"])
        values: dict[str, Any] = {
            "waiting": {**waiting, "resolved": resumed}, "last_seq": seq,
            "decisions": [*run.decisions, *({**d, "decided_at": rfc3339(d["decided_at"])}
                                            for d in decisions)]}
        if resumed:
            values.update(status="paused" if park else "queued", required_action=None,
                          action_expires_at=None, executor_id=None if park else executor_id)
        else:  # the calls still to be decided
            action = run.required_action
            values["required_action"] = {**action, "tool_calls": [
                c for c in action["tool_calls"] if c["id"] not in waiting["answers"]]}
        update_by_id(connection, RUNS, run.id, values)
        if resumed and not park:
            connection.execute(
                sa.update(RUNS).where(RUNS.c.id == q.ID).values(lease_expires_at=lease_end),
                {"_id": run.id, **lease})
        started = (claim(connection, run.id) if resumed and not park and claim is not None
                   else None)
        row = record(connection.execute(q.RUN_BY_ID, {"_id": run.id}).first())
        return Answered(as_run(vars(row)), events, resumed, started)

    return write


_KIND_TEXT = {"submit_tool_outputs": "tool outputs", "approve_tool_calls": "approvals"}


def _open_calls(run: Any) -> dict[str, dict[str, Any]]:
    waiting = run.waiting
    return {c["id"]: c for c in waiting["tool_calls"] if c["id"] not in waiting["answers"]}


def _check_ids(run: Any, ids: list[str], where: str) -> None:
    """Every id names an open call of the wait, once."""
    open_calls = _open_calls(run)
    seen: set[str] = set()
    for index, call_id in enumerate(ids):
        if call_id in seen:
            raise ToolCallMismatch(f"{where}[{index}]: tool call {call_id} is answered twice",
                                   tool_call_id=call_id)
        if call_id not in open_calls:
            raise ToolCallMismatch(
                f"{where}[{index}]: run {run.id} has no open tool call {call_id}; open: "
                f"{', '.join(open_calls) or 'none'}", tool_call_id=call_id,
                open_tool_call_ids=list(open_calls))
        seen.add(call_id)


def outputs_answers(outputs: list[dict[str, Any]]) -> Answers:
    """Client tool outputs: one for each open call, at once."""
    def answers(run: Any, config: RunConfig, now: datetime) -> tuple[dict[str, Any], list[Any]]:
        ids = [output["tool_call_id"] for output in outputs]
        _check_ids(run, ids, "outputs")
        missing = [call_id for call_id in _open_calls(run) if call_id not in ids]
        if missing:
            raise ToolCallMismatch(f"no output for tool calls {', '.join(missing)}; every "
                                   "open call needs one", missing_tool_call_ids=missing)
        return ({o["tool_call_id"]: {"output": o["output"], "is_error": o["is_error"]}
                 for o in outputs}, [])
    return answers


def approval_answers(decisions: list[dict[str, Any]], decided_by: str) -> Answers:
    """Approvals of some or all of the open calls; replaced arguments must fit the tool."""
    def answers(run: Any, config: RunConfig, now: datetime) -> tuple[dict[str, Any], list[Any]]:
        _check_ids(run, [d["tool_call_id"] for d in decisions], "decisions")
        open_calls = _open_calls(run)
        runner: ToolRunner | None = None
        given: dict[str, Any] = {}
        recorded = []
        for index, decision in enumerate(decisions):
            call = open_calls[decision["tool_call_id"]]
            arguments = None
            if decision["approve"] and decision.get("arguments") is not None:
                arguments = json.dumps(decision["arguments"], ensure_ascii=False)
                runner = runner or ToolRunner.from_specs(config.tools)
                if call["name"] in runner.names:
                    problem = runner.check_arguments(call["name"], arguments)
                    if problem is not None:
                        raise ValidationFailed.at(["body", "decisions", index, "arguments"],
                                                  problem.output)
            given[call["id"]] = {"approve": decision["approve"],
                                 "reason": decision.get("reason"), "arguments": arguments}
            recorded.append(_decision(call, decision["approve"], decision.get("reason"),
                                      decided_by, now, arguments is not None))
        return given, recorded
    return answers


def expiry_answers(timeout_s: float) -> Callable[[str], Answers]:
    """The defaults of a wait nobody answered in time, by its kind: an error result for
    each client call, the policy's `approval_default` for each approval."""
    waited = f"{timeout_s:g} s"

    def for_kind(kind: str) -> Answers:
        def answers(run: Any, config: RunConfig,
                    now: datetime) -> tuple[dict[str, Any], list[Any]]:
            open_calls = _open_calls(run)
            if kind == "submit_tool_outputs":
                text = f"no output submitted within {waited}"
                return ({call_id: {"output": text, "is_error": True}
                         for call_id in open_calls}, [])
            approve = config.tool_policy.approval_default == "approve"
            reason = (f"approved by default: no decision within {waited}" if approve
                      else f"no decision within {waited}")
            given = {call_id: {"approve": approve, "reason": reason, "arguments": None}
                     for call_id in open_calls}
            return given, [_decision(call, approve, reason, EXPIRED_BY, now, False)
                           for call in open_calls.values()]
        return answers
    return for_kind


def _decision(call: Mapping[str, Any], approve: bool, reason: str | None, decided_by: str,
              now: datetime, edited: bool) -> dict[str, Any]:
    return {"tool_call_id": call["id"], "name": call["name"], "approve": approve,
            "reason": reason, "arguments_replaced": edited, "decided_by": decided_by,
            "decided_at": now}


def expires_at(now: datetime, timeout_s: float) -> datetime:
    return now + timedelta(seconds=timeout_s)
