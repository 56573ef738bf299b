"""The tool policy of an agent (§7.3): which calls run, which are denied, which wait for a
person, and how often a tool may be called."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from app.loop.hooks import NeedsApproval, ToolDecision, ToolDenial
from app.providers.base import ToolCallOut
from app.schemas.tools import PolicyRule, ToolPolicy

WINDOW_S = 60.0
_MISSING = object()


def matches(name: str, globs: list[str]) -> bool:
    """Whether `name` is one of `globs` (a name, or a pattern with `*`)."""
    return any(fnmatchcase(name, glob) for glob in globs)


class RateLimiter:
    """Calls per minute per key, in a sliding window, in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[tuple[str, ...], deque[float]] = {}

    def admit(self, key: tuple[str, ...], per_minute: int) -> bool:
        """Count one call under `key`; False (counting nothing) when the window is full."""
        now = self._clock()
        calls = self._calls.setdefault(key, deque())
        while calls and calls[0] <= now - WINDOW_S:
            calls.popleft()
        if len(calls) >= per_minute:
            return False
        calls.append(now)
        return True


class ToolGate:
    """Decides on each call of one run by its agent's policy."""

    def __init__(self, policy: ToolPolicy, limiter: RateLimiter, scope: tuple[str, str]):
        self.policy = policy
        self.limiter = limiter
        self.scope = scope
        """`(owner, agent)`: rate limits count the calls of all runs of that agent."""

    def decide(self, call: ToolCallOut) -> ToolDecision:
        policy = self.policy
        name = call.name
        if not matches(name, policy.allow) or matches(name, policy.deny):
            return ToolDenial(f"the tool policy does not allow {name!r}", by="policy")
        asks: NeedsApproval | None = None
        arguments = _arguments(call.arguments)
        for rule in policy.rules:
            if matches(name, [rule.tool]) and _applies(rule, arguments):
                reason = rule.reason or (f"{rule.argument} = {json.dumps(rule.equals)} "
                                         f"is not allowed for {name!r}")
                if rule.action == "deny":
                    return ToolDenial(reason, by="policy")
                asks = asks or NeedsApproval(reason)
        limit = policy.rate_limits.get(name)
        if limit is not None and not self.limiter.admit((*self.scope, name), limit.per_minute):
            return ToolDenial(f"{name!r} may be called at most {limit.per_minute} times per "
                              "minute; try again later", by="rate_limit")
        if asks is not None:
            return asks
        if matches(name, policy.require_approval):
            return NeedsApproval(f"{name!r} requires approval")
        return call


def _arguments(arguments_json: str) -> Any:
    try:
        return json.loads(arguments_json) if arguments_json.strip() else {}
    except ValueError:
        return None


def _applies(rule: PolicyRule, arguments: Any) -> bool:
    """Whether the call's argument at `rule.argument` (a dotted path) equals `rule.equals`."""
    value: Any = arguments
    for part in rule.argument.split("."):
        if not isinstance(value, dict):
            return False
        value = value.get(part, _MISSING)
    # `True == 1` in Python, not in JSON.
    return (value is not _MISSING and value == rule.equals
            and isinstance(value, bool) == isinstance(rule.equals, bool))
