"""Compaction (§10): the one place that folds a session's older messages into a summary.

A compaction takes the session's active messages, keeps the last `keep_last` of them (the
tail, moved earlier so a tool call is never separated from its results), summarises the
rest with one LLM call, and then, in one write:

- marks every message that was active `compacted` (the folded ones and the tail's originals);
- appends the summary message, then copies of the tail (new seqs, the same role, content,
  tool calls, name, run id and creation time).

History is ordered by seq, so the tail is copied to come after the summary. The summary is
a `system` message whose content starts with `SUMMARY_PREFIX`: it is context given to the
model, not something the user said (and the scripted provider's echo of the last user
message is not changed by it). The session's `message_count` counts every stored message,
compacted ones included, so it grows with the appended rows, like `last_seq`; its open
tool calls do not change (the tail keeps the calls that wait for results).

A failed summary (provider error, empty text) changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.clock import utcnow
from app.errors import Conflict, NotFound, SessionBusy
from app.loop.config import RunConfig
from app.providers.base import Completion, LLMRequest, Provider, ProviderError
from app.providers.estimate import estimate_usage
from app.runs.store import RunStore, locked_session, update_by_id
from app.store import statements as q
from app.store.statements import MESSAGES, SESSIONS

SUMMARY_PREFIX = "Summary of the earlier conversation:"
SUMMARY_PROMPT = (
    "You compress conversations between a user and an AI assistant so that the assistant "
    "can go on without the original messages. Summarise the conversation you are given: "
    "keep every fact, decision, name, number, tool result, open question and preference of "
    "the user the assistant may need later; leave out pleasantries. Answer with the summary "
    "only, in the language of the conversation."
)
SUMMARY_ERROR_CODE = "provider_error"

_MARK_COMPACTED = (
    sa.update(MESSAGES)
    .where(MESSAGES.c.session_id == q.ID, MESSAGES.c.state == "active",
           MESSAGES.c.seq <= sa.bindparam("upto", type_=sa.Integer))
    .values(state="compacted")
)


@dataclass(frozen=True)
class Plan:
    """Which of a session's active messages are folded and which are kept."""

    folded: list[dict[str, Any]]
    tail: list[dict[str, Any]]
    last_seq: int
    """The session's last seq when the messages were read: the write checks it."""


@dataclass(frozen=True)
class Outcome:
    """What a compaction did (`data()` is the API's shape of it)."""

    compacted: bool
    before_tokens: int
    after_tokens: int
    folded_messages: int
    history: list[dict[str, Any]] = field(default_factory=list)
    """The active messages after the compaction (stored shape), when it compacted."""
    error: dict[str, str] | None = None

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"compacted": self.compacted,
                                "before_tokens": self.before_tokens,
                                "after_tokens": self.after_tokens,
                                "folded_messages": self.folded_messages}
        if self.error is not None:
            data["error"] = self.error
        return data


class SummaryFailed(Exception):
    """The summary call failed or answered nothing; nothing was changed."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def estimate_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """The estimated prompt tokens of `messages` (0 for none)."""
    if not messages:
        return 0
    return estimate_usage([dict(m) for m in messages], None, ()).prompt_tokens


def is_summary(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return (message.get("role") == "system" and isinstance(content, str)
            and content.startswith(SUMMARY_PREFIX))


def _may_start_tail(message: Mapping[str, Any]) -> bool:
    """A kept tail never starts with a tool result (its call would be folded) nor with an
    answer whose question would be folded."""
    role = message.get("role")
    return role in ("user", "system") or (role == "assistant" and bool(message.get("tool_calls")))


def plan_fold(messages: Sequence[dict[str, Any]], keep_last: int, last_seq: int,
              open_tool_calls: Sequence[Any] = ()) -> Plan | None:
    """Fold all but the last `keep_last` of the active `messages` (oldest first), the cut
    moved earlier until the tail starts with a user or system message or a tool call; None
    when nothing would be folded (or only an earlier summary). The assistant message whose
    tool calls still wait for results (`open_tool_calls`) always stays in the tail."""
    cut = max(len(messages) - keep_last, 0)
    if open_tool_calls:
        asking = [i for i, m in enumerate(messages) if m.get("tool_calls")]
        if asking:
            cut = min(cut, asking[-1])
    while 0 < cut < len(messages) and not _may_start_tail(messages[cut]):
        cut -= 1
    folded = list(messages[:cut])
    if not folded or (len(folded) == 1 and is_summary(folded[0])):
        return None
    return Plan(folded, list(messages[cut:]), last_seq)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text") or "" if part.get("type") == "text"
                        else f"[{part.get('type')}]"
                        for part in content if isinstance(part, dict))
    return ""


def render(messages: Sequence[Mapping[str, Any]]) -> str:
    """The messages as a plain-text transcript, one block per message."""
    blocks = []
    for message in messages:
        role = message.get("role")
        head = (f"tool result ({message.get('name') or message.get('tool_call_id')})"
                if role == "tool" else str(role))
        text = _content_text(message.get("content"))
        lines = [f"{head}: {text}" if text else f"{head}:"]
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            lines.append(f"  calls {function.get('name')}({function.get('arguments')})")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def summary_request(config: RunConfig, model: str, folded: Sequence[Mapping[str, Any]],
                    call_index: int) -> LLMRequest:
    """The one LLM call that summarises `folded`: a summarisation prompt and the messages as
    a transcript, no tools."""
    # Stop sequences are meant for the agent's answers and would cut a summary short.
    sampling = {k: v for k, v in config.sampling_options.items() if k != "stop"}
    transcript = (f"The conversation so far ({len(folded)} messages):\n\n{render(folded)}")
    return LLMRequest(
        model=model,
        messages=[{"role": "system", "content": SUMMARY_PROMPT},
                  {"role": "user", "content": transcript}],
        sampling=sampling, provider_options=config.provider_options, call_index=call_index,
        purpose="summary",
    )


async def summarise(provider: Provider, request: LLMRequest) -> Completion:
    """The summary call's answer (one attempt); raises `SummaryFailed`."""
    completion: Completion | None = None
    try:
        async with contextlib.aclosing(provider.stream(request)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, Completion):
                    completion = chunk
                    break
    except ProviderError as error:
        raise SummaryFailed(error.message) from error
    if completion is None:
        raise SummaryFailed("the provider's stream ended without an answer")
    if not (completion.text or "").strip():
        raise SummaryFailed("the model answered with an empty summary")
    return completion


def summary_message(completion: Completion) -> dict[str, Any]:
    return {"role": "system", "content": f"{SUMMARY_PREFIX}\n{(completion.text or '').strip()}"}


def outcome_of(plan: Plan, summary: dict[str, Any], before_tokens: int,
               history: list[dict[str, Any]]) -> Outcome:
    return Outcome(True, before_tokens, estimate_tokens([summary, *plan.tail]),
                   len(plan.folded), history)


def compaction_write(
    session_id: str, plan: Plan, summary: dict[str, Any], *, run_id: str | None,
    counters: dict[str, Any] | None = None,
) -> Callable[[Connection], list[dict[str, Any]]]:
    """The write that stores the compaction; it returns the new active messages.

    `run_id` is the session's active run the compaction is made for (None: no run may be
    active). Raises `SessionBusy` or `Conflict`, writing nothing, when the session changed
    since `plan` was made from it. `counters` (a session's, as a run stores them) go with it.
    """
    def write(connection: Connection) -> list[dict[str, Any]]:
        session = locked_session(connection, session_id)
        if session is None:
            raise NotFound(f"session {session_id} not found")
        if session.active_run_id != run_id:
            if session.active_run_id is not None:
                raise SessionBusy(
                    f"session {session_id} has an active run {session.active_run_id}",
                    active_run_id=session.active_run_id)
            raise Conflict(f"the run of session {session_id} ended during its compaction")
        if session.last_seq != plan.last_seq:
            raise Conflict(f"session {session_id} changed while its summary was being made; "
                           "nothing was compacted")
        now = utcnow()
        connection.execute(_MARK_COMPACTED, {"_id": session_id, "upto": session.last_seq})
        appended = [{**summary, "run_id": run_id, "created_at": now}, *plan.tail]
        rows = [{
            "session_id": session_id, "seq": session.last_seq + index,
            "role": message["role"], "content": message.get("content"),
            "tool_calls": message.get("tool_calls"),
            "tool_call_id": message.get("tool_call_id"), "name": message.get("name"),
            "run_id": message.get("run_id"), "state": "active",
            "created_at": message.get("created_at") or now,
        } for index, message in enumerate(appended, start=1)]
        connection.execute(q.INSERT_MESSAGES, rows)
        update_by_id(connection, SESSIONS, session_id, {
            "last_seq": session.last_seq + len(rows),
            "message_count": session.message_count + len(rows), "updated_at": now}, counters)
        return [{key: value for key, value in row.items() if key != "session_id"}
                for row in rows]

    return write


async def store_for_run(store: RunStore, session_id: str, run_id: str, plan: Plan,
                        summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Store a compaction a run made through the run's writer path (its counters go with
    the run's next write, as those of its other LLM calls)."""
    return await store.writer.submit(
        compaction_write(session_id, plan, summary, run_id=run_id), run_id=run_id)


def fork_states(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The states `messages` (a session's first messages, oldest first) had when the last of
    them was stored, for a fork that ends there.

    Every compaction leaves all messages before its summary compacted and the rest active:
    so the messages from the last such summary on are active, those before it keep their
    state, and a fork made before a later compaction gets back what that one folded.
    """
    start = 0
    all_compacted = True
    for index, message in enumerate(messages):
        if all_compacted and index and is_summary(message):
            start = index
        all_compacted = all_compacted and message.get("state") == "compacted"
    return [str(m.get("state")) if i < start else "active" for i, m in enumerate(messages)]
