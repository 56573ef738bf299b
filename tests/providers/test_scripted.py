"""The scripted provider (§8): step k answers call k, words stream one by one, then echo."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest

from app.providers.base import (
    Chunk,
    Completion,
    LLMRequest,
    ProviderError,
    ReasoningDelta,
    TextDelta,
)
from app.providers.scripted import ScriptedProvider, split_words


def scripted_request(
    script: list[dict[str, Any]], call_index: int = 0, *,
    messages: list[dict[str, Any]] | None = None, **options: Any,
) -> LLMRequest:
    return LLMRequest(
        model="demo",
        messages=messages or [{"role": "user", "content": "hi"}],
        provider_options={"script": script, **options},
        call_index=call_index,
    )


async def collect(request: LLMRequest) -> list[Chunk]:
    return [chunk async for chunk in ScriptedProvider().stream(request)]


def completion_of(chunks: list[Chunk]) -> Completion:
    assert isinstance(chunks[-1], Completion)
    assert not any(isinstance(chunk, Completion) for chunk in chunks[:-1])
    return chunks[-1]


@pytest.mark.parametrize("text", [
    "Hello, world!",
    "  leading and trailing  ",
    "tabs\tand\nnew lines\n\n",
    "one",
])
async def test_text_streams_word_by_word_and_concatenates_exactly(text: str) -> None:
    chunks = await collect(scripted_request([{"text": text}]))

    deltas = [chunk.text for chunk in chunks if isinstance(chunk, TextDelta)]
    assert "".join(deltas) == text
    assert len(deltas) == len(text.split())
    assert all(delta.strip() for delta in deltas)
    completion = completion_of(chunks)
    assert completion.text == text
    assert completion.finish_reason == "stop"
    assert completion.tool_calls == []


def test_split_words_keeps_whitespace_with_the_preceding_word() -> None:
    assert split_words(" a  b\nc ") == [" a  ", "b\n", "c "]
    assert split_words("   ") == ["   "]
    assert split_words("") == []


async def test_tool_calls_get_call_index_ids_and_compact_json_arguments() -> None:
    script = [
        {"text": "first"},
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2 + 3"}},
                        {"name": "current_time", "arguments": {}}]},
    ]
    completion = completion_of(await collect(scripted_request(script, call_index=1)))

    assert [call.id for call in completion.tool_calls] == ["call_1_0", "call_1_1"]
    assert [call.name for call in completion.tool_calls] == ["calculator", "current_time"]
    assert completion.tool_calls[0].arguments == '{"expression":"2 + 3"}'
    assert json.loads(completion.tool_calls[1].arguments) == {}
    assert completion.finish_reason == "tool_calls"
    assert completion.text is None


async def test_explicit_finish_reason_wins() -> None:
    script = [{"text": "cut", "tool_calls": [{"name": "sleep"}], "finish_reason": "length"}]
    completion = completion_of(await collect(scripted_request(script)))
    assert completion.finish_reason == "length"
    assert completion.text == "cut"
    assert completion.tool_calls[0].id == "call_0_0"


async def test_reasoning_streams_before_text() -> None:
    chunks = await collect(scripted_request([{"reasoning": "think hard", "text": "done now"}]))

    kinds = [type(chunk).__name__ for chunk in chunks]
    assert kinds == ["ReasoningDelta", "ReasoningDelta", "TextDelta", "TextDelta", "Completion"]
    assert "".join(c.text for c in chunks if isinstance(c, ReasoningDelta)) == "think hard"
    completion = completion_of(chunks)
    assert completion.reasoning == "think hard"
    assert completion.text == "done now"


@pytest.mark.parametrize(("status", "retryable"), [
    (429, True), (500, True), (503, True), (408, True), (400, False), (401, False), (404, False),
])
async def test_error_steps_raise_provider_errors(status: int, retryable: bool) -> None:
    request = scripted_request([{"error": {"status": status, "message": "boom"}}])
    with pytest.raises(ProviderError) as caught:
        await collect(request)
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert caught.value.retry_after_s is None
    assert caught.value.message == "boom"


async def test_past_the_end_echoes_the_last_user_message() -> None:
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second "},
                                     {"type": "image_url", "image_url": {"url": "x"}},
                                     {"type": "text", "text": "question"}]},
        {"role": "tool", "tool_call_id": "c", "content": "tool output"},
    ]
    chunks = await collect(scripted_request([{"text": "only step"}], 1, messages=messages))

    assert completion_of(chunks).text == "echo: second question"
    assert "".join(c.text for c in chunks if isinstance(c, TextDelta)) == "echo: second question"


async def test_without_a_script_every_call_echoes() -> None:
    request = LLMRequest(model="x", messages=[{"role": "user", "content": "ping"}], call_index=7)
    completion = completion_of([c async for c in ScriptedProvider().stream(request)])
    assert completion.text == "echo: ping"
    assert completion.finish_reason == "stop"


async def test_usage_is_a_deterministic_estimate() -> None:
    messages = [{"role": "system", "content": "s" * 40}, {"role": "user", "content": "u" * 40}]
    request = scripted_request([{"text": "t" * 20}], messages=messages)
    first = completion_of(await collect(request)).usage
    second = completion_of(await collect(request)).usage
    assert first == second
    assert (first.prompt_tokens, first.completion_tokens) == (20, 5)

    tiny = completion_of(await collect(scripted_request([{"tool_calls": [{"name": "a"}]}])))
    assert tiny.usage.prompt_tokens >= 1
    assert tiny.usage.completion_tokens >= 1


async def test_chunk_delay_paces_every_chunk() -> None:
    loop = asyncio.get_running_loop()
    request = scripted_request([{"text": "a b c d"}], chunk_delay_ms=30)
    arrivals: list[float] = []
    started = loop.time()
    async for _chunk in ScriptedProvider().stream(request):
        arrivals.append(loop.time() - started)

    assert len(arrivals) == 5  # four words and the completion
    assert arrivals[0] < 0.025
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(gap >= 0.025 for gap in gaps)


async def test_delay_ms_waits_before_answering() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderError):
        await collect(scripted_request([{"delay_ms": 60, "error": {"status": 500}}]))
    assert loop.time() - started >= 0.055


async def test_cancellation_propagates() -> None:
    request = scripted_request([{"delay_ms": 10_000, "text": "never"}])
    task = asyncio.create_task(collect(request))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_invalid_step_is_a_permanent_provider_error() -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(scripted_request([{"finish_reason": "stop"}]))
    assert caught.value.retryable is False
