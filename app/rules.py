"""Pure rules of sessions and messages, shared by the API's services and the run core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def session_status(active_run_id: str | None, open_tool_calls: Sequence[Any]) -> str:
    """`running` while a run is unfinished, `pending` while tool calls lack results."""
    if active_run_id is not None:
        return "running"
    return "pending" if open_tool_calls else "idle"


def open_calls_after(
    open_calls: list[dict[str, Any]], messages: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The tool calls still unanswered after `messages` (already known to pair correctly)."""
    for message in messages:
        if message["role"] == "tool":
            open_calls = [c for c in open_calls if c["id"] != message.get("tool_call_id")]
        elif message.get("tool_calls"):
            open_calls = [
                {"id": c["id"], "name": c["function"]["name"],
                 "arguments": c["function"]["arguments"]}
                for c in message["tool_calls"]
            ]
        elif message["role"] == "assistant":
            open_calls = []
    return open_calls


def message_view(message: Any) -> dict[str, Any]:
    """The public shape of a stored message (an ORM object or a Core row)."""
    return {"seq": message.seq, "role": message.role, "content": message.content,
            "tool_calls": message.tool_calls, "tool_call_id": message.tool_call_id,
            "name": message.name, "run_id": message.run_id, "state": message.state,
            "created_at": message.created_at}
