"""`pre_tool` and `post_tool` hooks (§6): called around each matching tool call.

Pre hooks run in creation order and may allow, deny, modify the arguments (fed to the next
hook) or ask for a human approval; post hooks run in reverse creation order and may replace
the output. A hook that times out, fails or answers what it may not is handled by its
`failure_mode`: `closed` denies the call (pre) or withholds the output (post), `open` lets
it through. Every call emits `hook.decision` and is recorded as a delivery.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

import httpx2

from app.clock import utcnow
from app.hooks.attempt import post_signed, storable
from app.ids import new_id
from app.loop.hooks import NeedsApproval, ToolDecision, ToolDenial
from app.providers.base import ToolCallOut
from app.tools.base import ToolResult

CIRCUIT_OPEN = "its circuit is open after repeated failures"


@dataclass(frozen=True)
class GatingHook:
    """The part of a hook a run needs to call it."""

    id: str
    phase: str
    url: str
    secret: str
    tools: tuple[str, ...]
    timeout_ms: int
    failure_mode: str
    circuit_until: datetime | None = None
    """While this is in the future the hook's circuit is open: it is not called, and its
    `failure_mode` decides."""

    def matches_tool(self, name: str) -> bool:
        return not self.tools or any(fnmatchcase(name, glob) for glob in self.tools)


@dataclass
class Delivery:
    """One call of a hook, for the delivery log."""

    id: str
    hook_id: str
    message_id: str
    phase: str
    run_id: str
    payload: dict[str, Any]
    status: str
    status_code: int | None
    duration_ms: int
    error: str | None
    response_excerpt: str | None


class HookFailed(Exception):
    """The hook did not give a usable answer."""

    duration_ms = 0


@dataclass(frozen=True)
class Answer:
    """A hook's JSON answer (None for an empty one) and how long it took."""

    value: dict[str, Any] | None
    duration_ms: int


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    session_id: str
    agent: str
    owner: str


Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
Record = Callable[[Delivery, float], None]
"""Stores a delivery (and counts it, with the call's seconds); must not block."""


class HookGate:
    """The gating hooks of one run."""

    def __init__(self, hooks: Sequence[GatingHook], client: httpx2.AsyncClient,
                 run: RunIdentity, emit: Emit, record: Record) -> None:
        self.pre = [h for h in hooks if h.phase == "pre_tool"]
        self.post = [h for h in reversed(hooks) if h.phase == "post_tool"]
        self.client = client
        self.run = run
        self.emit = emit
        self.record = record

    def __bool__(self) -> bool:
        return bool(self.pre or self.post)

    async def before(self, turn: int, call: ToolCallOut) -> ToolDecision:
        """The pre hooks' decision on `call` (possibly with new arguments)."""
        asked: NeedsApproval | None = None
        for hook in self.pre:
            if not hook.matches_tool(call.name):
                continue
            payload = self._body("pre_tool", hook, turn, call)
            try:
                answer = await self._send(hook, payload, "pre_tool")
                decision, value = _pre_decision(answer.value, answer.duration_ms)
            except HookFailed as failure:
                if hook.failure_mode == "open":
                    await self._decided(hook, "pre_tool", call, "allow", failure.duration_ms,
                                        failure)
                    continue
                await self._decided(hook, "pre_tool", call, "deny", failure.duration_ms,
                                    failure)
                return ToolDenial(f"the hook {hook.id} failed: {failure}", by="hook")
            await self._decided(hook, "pre_tool", call, decision, answer.duration_ms)
            if decision == "deny":
                return ToolDenial(str(value or f"denied by the hook {hook.id}"), by="hook")
            if decision == "modify":
                call = replace(call, arguments=json.dumps(value, ensure_ascii=False))
            elif decision == "ask":
                asked = asked or NeedsApproval(f"the hook {hook.id} asks for an approval")
        return NeedsApproval(asked.reason, call) if asked is not None else call

    async def after(self, turn: int, call: ToolCallOut, result: ToolResult) -> ToolResult:
        """The result as the post hooks leave it."""
        for hook in self.post:
            if not hook.matches_tool(call.name):
                continue
            payload = {**self._body("post_tool", hook, turn, call),
                       "result": {"output": result.output, "is_error": result.is_error}}
            try:
                answer = await self._send(hook, payload, "post_tool")
                output = _post_output(answer.value, answer.duration_ms)
            except HookFailed as failure:
                if hook.failure_mode == "open":
                    await self._decided(hook, "post_tool", call, "allow", failure.duration_ms,
                                        failure)
                    continue
                await self._decided(hook, "post_tool", call, "deny", failure.duration_ms,
                                    failure)
                return ToolResult(f"<withheld: the hook {hook.id} failed: {failure}>",
                                  is_error=True)
            decision = "allow" if output is None else "modify"
            await self._decided(hook, "post_tool", call, decision, answer.duration_ms)
            if output is not None:
                result = ToolResult(output, result.is_error)
        return result

    def _body(self, phase: str, hook: GatingHook, turn: int,
              call: ToolCallOut) -> dict[str, Any]:
        run = self.run
        return {"type": phase, "hook_id": hook.id, "run_id": run.run_id,
                "session_id": run.session_id, "agent": run.agent, "owner": run.owner,
                "turn": turn, "tool_call": {"id": call.id, "name": call.name,
                                            "arguments": _arguments(call.arguments)}}

    async def _send(self, hook: GatingHook, payload: dict[str, Any], phase: str) -> Answer:
        """The hook's answer; raises `HookFailed` (with the call's duration)."""
        if hook.circuit_until is not None and hook.circuit_until > utcnow():
            raise HookFailed(CIRCUIT_OPEN)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        message_id = new_id("msg")
        attempt = await post_signed(self.client, hook.url, hook.secret, message_id, body,
                                    hook.timeout_ms)
        answer: dict[str, Any] | None = None
        error = attempt.failure
        if error is None and attempt.status_code != 204 and attempt.content.strip():
            try:
                parsed = json.loads(attempt.content)
            except ValueError:
                parsed = None
                error = "its answer is not JSON"
            if error is None and not isinstance(parsed, dict):
                error = "its answer is not a JSON object"
            answer = parsed if error is None else None
        self.record(Delivery(
            id=new_id("dlv"), hook_id=hook.id, message_id=message_id, phase=phase,
            run_id=self.run.run_id, payload=payload,
            status="failed" if error else "delivered", status_code=attempt.status_code,
            duration_ms=attempt.duration_ms, error=storable(error) if error else None,
            response_excerpt=attempt.excerpt), attempt.duration_ms / 1000)
        if error is not None:
            failure = HookFailed(error)
            failure.duration_ms = attempt.duration_ms
            raise failure
        return Answer(answer, attempt.duration_ms)

    async def _decided(self, hook: GatingHook, phase: str, call: ToolCallOut, decision: str,
                       duration_ms: int, failure: HookFailed | None = None) -> None:
        data: dict[str, Any] = {"hook_id": hook.id, "phase": phase, "tool_call_id": call.id,
                                "decision": decision, "duration_ms": duration_ms}
        if failure is not None:
            data["error"] = str(failure)
        await self.emit("hook.decision", data)


def _invalid(text: str, duration_ms: int) -> HookFailed:
    failure = HookFailed(text)
    failure.duration_ms = duration_ms
    return failure


def _pre_decision(answer: dict[str, Any] | None, duration_ms: int) -> tuple[str, Any]:
    """`(decision, reason or arguments)` of a pre hook's answer; raises `HookFailed`."""
    if answer is None:
        return "allow", None
    decision = answer.get("decision")
    if decision == "allow":
        return "allow", None
    if decision == "deny":
        reason = answer.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise _invalid("`reason` must be a string", duration_ms)
        return "deny", reason
    if decision == "modify":
        arguments = answer.get("arguments")
        if not isinstance(arguments, dict):
            raise _invalid("`modify` needs `arguments`, a JSON object", duration_ms)
        return "modify", arguments
    if decision == "ask":
        return "ask", None
    raise _invalid(f"unknown decision {decision!r} (allow, deny, modify or ask)", duration_ms)


def _post_output(answer: dict[str, Any] | None, duration_ms: int) -> str | None:
    """The replacement output of a post hook's answer, or None; raises `HookFailed`."""
    if answer is None or answer.get("decision") == "allow":
        return None
    if answer.get("decision") == "modify":
        output = answer.get("output")
        if not isinstance(output, str):
            raise _invalid("`modify` needs `output`, a string", duration_ms)
        return output
    raise _invalid(f"unknown decision {answer.get('decision')!r} (allow or modify)", duration_ms)


def _arguments(arguments_json: str) -> Any:
    try:
        return json.loads(arguments_json) if arguments_json.strip() else {}
    except ValueError:
        return arguments_json
