"""The `scripted` provider (§8): deterministic answers read from the agent's script."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import ValidationError

from app.providers.base import (
    Chunk,
    Completion,
    LLMRequest,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    ToolCallOut,
)
from app.providers.estimate import compact_json, content_text, estimate_usage
from app.providers.status import is_retryable_status
from app.schemas.tools import ScriptStep, ScriptSummary

_WORD_WITH_SPACE = re.compile(r"\s*\S+\s*")
SUMMARY_EXCERPT_CHARS = 160


def split_words(text: str) -> list[str]:
    """Split into deltas of one word plus its following whitespace; they join to `text`.

    Leading whitespace goes with the first delta; whitespace-only text is one delta.
    """
    pieces = _WORD_WITH_SPACE.findall(text)
    if not pieces and text:
        return [text]
    return pieces


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last `user` message, or "" when there is none."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _step_for(request: LLMRequest) -> ScriptStep | None:
    script = request.provider_options.get("script") or []
    index = request.call_index
    if not 0 <= index < len(script):
        return None
    try:
        return ScriptStep.model_validate(script[index])
    except ValidationError as exc:
        raise ProviderError(f"invalid script step {index}: {exc}", retryable=False) from exc


def _summary_step(request: LLMRequest) -> ScriptStep:
    """The answer to a summary call: `provider_options.summary`, else a deterministic
    summary (an excerpt of what it was asked to summarise)."""
    try:
        summary = ScriptSummary.model_validate(request.provider_options.get("summary") or {})
    except ValidationError as exc:
        raise ProviderError(f"invalid summary option: {exc}", retryable=False) from exc
    if summary.error is not None:
        return ScriptStep(error=summary.error, delay_ms=summary.delay_ms)
    text = summary.text
    if text is None:
        excerpt = " ".join(last_user_text(request.messages).split())[:SUMMARY_EXCERPT_CHARS]
        text = f"summary: {excerpt}"
    return ScriptStep(text=text, delay_ms=summary.delay_ms)


class ScriptedProvider:
    """Answers LLM call *k* of a session with step *k* of the script, then echoes; summary
    calls are answered from `provider_options.summary`."""

    async def stream(self, request: LLMRequest) -> AsyncGenerator[Chunk, None]:
        """Stream step `request.call_index`: reasoning and text word by word, then a Completion.

        Raises `ProviderError` for an `error` step (retryable for 408, 429 and 5xx).
        """
        step = _summary_step(request) if request.purpose == "summary" else _step_for(request)
        if step is None:
            step = ScriptStep(text=f"echo: {last_user_text(request.messages)}")
        if step.delay_ms:
            await asyncio.sleep(step.delay_ms / 1000)
        if step.error is not None:
            raise ProviderError(
                step.error.message, retryable=is_retryable_status(step.error.status),
                status=step.error.status,
            )

        tool_calls = [
            ToolCallOut(id=f"call_{request.call_index}_{i}", name=call.name,
                        arguments=compact_json(call.arguments))
            for i, call in enumerate(step.tool_calls or [])
        ]
        deltas: list[Chunk] = [ReasoningDelta(word) for word in split_words(step.reasoning or "")]
        deltas += [TextDelta(word) for word in split_words(step.text or "")]
        completion = Completion(
            text=step.text,
            tool_calls=tool_calls,
            finish_reason=step.finish_reason or ("tool_calls" if tool_calls else "stop"),
            reasoning=step.reasoning,
            usage=estimate_usage(request.messages, step.text, tool_calls),
        )

        chunk_delay_s = float(request.provider_options.get("chunk_delay_ms") or 0) / 1000
        for position, chunk in enumerate([*deltas, completion]):
            if position and chunk_delay_s:
                await asyncio.sleep(chunk_delay_s)
            yield chunk
