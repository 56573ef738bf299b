"""Deterministic token estimates for providers that report no usage."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from app.providers.base import ToolCallOut, Usage

CHARS_PER_TOKEN = 4


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string, or the joined text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text") or ""
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _message_chars(message: dict[str, Any]) -> int:
    chars = len(content_text(message.get("content")))
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            chars += len(str(function.get("name") or ""))
            chars += len(str(function.get("arguments") or ""))
    return chars


def _tokens(chars: int) -> int:
    return max(1, chars // CHARS_PER_TOKEN)


def estimate_usage(
    messages: Iterable[dict[str, Any]], text: str | None, tool_calls: Iterable[ToolCallOut],
) -> Usage:
    """About one token per four characters of prompt and of answer, each at least 1."""
    prompt_chars = sum(_message_chars(message) for message in messages)
    completion_chars = len(text or "") + sum(
        len(call.name) + len(call.arguments) for call in tool_calls
    )
    return Usage(prompt_tokens=_tokens(prompt_chars), completion_tokens=_tokens(completion_chars))


def compact_json(value: Any) -> str:
    """JSON text without spaces, as models usually write tool arguments."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
