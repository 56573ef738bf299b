"""The OpenAI-compatible provider, through the real SDK, against fakellm and llmock."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk

from app.providers.base import (
    Chunk,
    Completion,
    LLMRequest,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    ToolDef,
    Usage,
)
from app.providers.openai_compat import OpenAIProvider, StreamAssembler
from tests.providers.mock_servers import (
    MockServer,
    free_port,
    llmock_requests,
    llmock_script,
)

CALCULATOR = ToolDef(
    name="calculator", description="Evaluate an arithmetic expression.",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}},
)


def ask(text: str, **fields: Any) -> LLMRequest:
    return LLMRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **fields)


async def collect(provider: OpenAIProvider, request: LLMRequest) -> list[Chunk]:
    return [chunk async for chunk in provider.stream(request)]


async def failure(provider: OpenAIProvider, request: LLMRequest) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await collect(provider, request)
    return caught.value


def completion_of(chunks: list[Chunk]) -> Completion:
    assert isinstance(chunks[-1], Completion)
    return chunks[-1]


@pytest.fixture
async def fake_provider(fakellm: MockServer) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(fakellm.api_url, "test-key", connect_timeout_s=2, read_timeout_s=5)
    yield provider
    await provider.aclose()


@pytest.fixture
async def chaos_provider(chaos: MockServer) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(chaos.api_url, "test-key", connect_timeout_s=2, read_timeout_s=0.5)
    yield provider
    await provider.aclose()


# fakellm: content and tool calls as streamed by a well-behaved server


async def test_streams_text_deltas_from_fakellm(fake_provider: OpenAIProvider) -> None:
    chunks = await collect(fake_provider, ask("please say hello"))

    deltas = [chunk.text for chunk in chunks if isinstance(chunk, TextDelta)]
    assert len(deltas) > 3
    completion = completion_of(chunks)
    assert "".join(deltas) == completion.text == "Hello there, how are you today?"
    assert completion.finish_reason == "stop"
    assert completion.tool_calls == []
    # fakellm streams no usage chunk, so the provider estimates.
    assert completion.usage.prompt_tokens >= 1
    assert completion.usage.completion_tokens >= 1


async def test_assembles_a_tool_call_from_argument_fragments(
    fake_provider: OpenAIProvider,
) -> None:
    chunks = await collect(fake_provider, ask("what is 2+3?", tools=[CALCULATOR]))

    assert not [chunk for chunk in chunks if isinstance(chunk, TextDelta)]
    completion = completion_of(chunks)
    assert completion.finish_reason == "tool_calls"
    assert completion.text is None
    [call] = completion.tool_calls
    assert call.name == "calculator"
    assert call.id.startswith("call_")
    assert json.loads(call.arguments) == {"expression": "2+3", "precision": 2}


async def test_sends_tool_results_back_in_the_openai_shape(fake_provider: OpenAIProvider) -> None:
    messages = [
        {"role": "user", "content": "what is 2+3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "calculator", "arguments": '{"expression":"2+3"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    # fakellm's "answer" rule matches when the message before the last is the assistant's.
    request = LLMRequest(model="m", messages=messages, tools=[CALCULATOR])
    completion = completion_of(await collect(fake_provider, request))
    assert completion.text == "It is 5."


async def test_stopping_early_closes_the_stream(fake_provider: OpenAIProvider) -> None:
    stream = fake_provider.stream(ask("please say hello"))
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    await stream.aclose()  # must not raise nor leak the connection
    again = completion_of(await collect(fake_provider, ask("please say hello")))
    assert again.text == "Hello there, how are you today?"


# llmock: the request as sent, and every kind of failure


async def test_sends_sampling_and_omits_empty_tools(
    chaos: MockServer, chaos_provider: OpenAIProvider,
) -> None:
    sampling = {"temperature": 0.0, "top_p": None, "max_tokens": 64, "seed": 7,
                "stop": ["END"], "top_k": 5}
    completion = completion_of(await collect(chaos_provider, ask("hello", sampling=sampling)))
    assert completion.finish_reason == "stop"

    [record] = llmock_requests(chaos)
    body = record["body"]
    assert body["temperature"] == 0.0
    assert (body["max_tokens"], body["seed"], body["stop"]) == (64, 7, ["END"])
    assert body["top_k"] == 5  # not an SDK argument: sent in the body as is
    assert "top_p" not in body
    assert "tools" not in body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_sends_tools_in_the_function_format(
    chaos: MockServer, chaos_provider: OpenAIProvider,
) -> None:
    llmock_script(chaos, {"type": "reply", "tool_calls": [
        {"name": "calculator", "arguments": {"expression": "1+1"}}]})
    completion = completion_of(await collect(chaos_provider, ask("add", tools=[CALCULATOR])))
    assert json.loads(completion.tool_calls[0].arguments) == {"expression": "1+1"}

    [record] = llmock_requests(chaos)
    assert record["body"]["tools"] == [{"type": "function", "function": {
        "name": "calculator", "description": CALCULATOR.description,
        "parameters": CALCULATOR.parameters}}]


async def test_uses_the_usage_chunk_when_sent(chaos_provider: OpenAIProvider) -> None:
    completion = completion_of(await collect(chaos_provider, ask("count " * 40)))
    assert completion.usage.prompt_tokens > 10
    assert completion.usage.completion_tokens > 0


async def test_rate_limit_is_retryable_with_retry_after(
    chaos: MockServer, chaos_provider: OpenAIProvider,
) -> None:
    llmock_script(chaos, {"type": "fail", "status": 429, "retry_after": 3})
    error = await failure(chaos_provider, ask("hi"))
    assert (error.retryable, error.status, error.retry_after_s) == (True, 429, 3.0)


async def test_permanent_server_error_is_retryable_every_time(
    chaos: MockServer, chaos_provider: OpenAIProvider,
) -> None:
    llmock_script(chaos, {"type": "fail", "status": 500, "times": None})
    for _attempt in range(2):
        error = await failure(chaos_provider, ask("hi"))
        assert (error.retryable, error.status) == (True, 500)


@pytest.mark.parametrize("status", [408, 409, 502, 503])
async def test_other_transient_statuses_are_retryable(
    chaos: MockServer, chaos_provider: OpenAIProvider, status: int,
) -> None:
    llmock_script(chaos, {"type": "fail", "status": status})
    error = await failure(chaos_provider, ask("hi"))
    assert (error.retryable, error.status) == (True, status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retryable(
    chaos: MockServer, chaos_provider: OpenAIProvider, status: int,
) -> None:
    llmock_script(chaos, {"type": "fail", "status": status, "message": "you did wrong"})
    error = await failure(chaos_provider, ask("hi"))
    assert (error.retryable, error.status) == (False, status)
    assert "you did wrong" in error.message


@pytest.mark.parametrize("kind", ["disconnect", "truncate", "malformed"])
async def test_broken_streams_are_retryable_provider_errors(
    chaos: MockServer, chaos_provider: OpenAIProvider, kind: str,
) -> None:
    llmock_script(chaos, {"type": "stream_fault", "kind": kind, "after_chunks": 2})
    error = await failure(chaos_provider, ask("tell me a long story please"))
    assert error.retryable is True
    assert error.status is None


async def test_a_response_slower_than_the_read_timeout_is_retryable(
    chaos: MockServer, chaos_provider: OpenAIProvider,
) -> None:
    llmock_script(chaos, {"type": "delay", "seconds": 3})
    started = time.monotonic()
    error = await failure(chaos_provider, ask("hi"))
    assert error.retryable is True
    assert "timed out" in error.message
    assert time.monotonic() - started < 2


async def test_a_stall_mid_stream_is_retryable(
    chaos: MockServer, chaos_provider: OpenAIProvider,
) -> None:
    llmock_script(chaos, {"type": "stream_fault", "kind": "stall", "after_chunks": 2,
                          "stall_seconds": 3})
    started = time.monotonic()
    error = await failure(chaos_provider, ask("tell me a long story please"))
    assert error.retryable is True
    assert time.monotonic() - started < 2


async def test_connection_refused_is_retryable() -> None:
    provider = OpenAIProvider(f"http://127.0.0.1:{free_port()}/v1", "k", 1, 1)
    try:
        error = await failure(provider, ask("hi"))
    finally:
        await provider.aclose()
    assert error.retryable is True
    assert error.status is None


async def test_cancellation_propagates_and_closes_the_request(
    chaos: MockServer, chaos_provider: OpenAIProvider,
) -> None:
    llmock_script(chaos, {"type": "slow_first_token", "seconds": 0.4})
    task = asyncio.create_task(collect(chaos_provider, ask("hi")))
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The same provider keeps working afterwards.
    assert completion_of(await collect(chaos_provider, ask("hi"))).finish_reason == "stop"


# The assembler, fed chunks shaped like those of other providers


def chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None,
          usage: dict[str, int] | None = None) -> ChatCompletionChunk:
    choices = [] if delta is None else [
        {"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return ChatCompletionChunk.model_validate({
        "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": choices, "usage": usage,
    })


def test_assembler_surfaces_reasoning_content_and_usage() -> None:
    assembler = StreamAssembler()
    deltas = [
        *assembler.feed(chunk({"role": "assistant", "reasoning_content": "Let me "})),
        *assembler.feed(chunk({"reasoning_content": "think."})),
        *assembler.feed(chunk({"content": "Four."})),
        *assembler.feed(chunk({}, finish_reason="stop")),
        *assembler.feed(chunk(usage={"prompt_tokens": 11, "completion_tokens": 3,
                                     "total_tokens": 14})),
    ]
    assert deltas == [ReasoningDelta("Let me "), ReasoningDelta("think."), TextDelta("Four.")]
    completion = assembler.completion([])
    assert completion.reasoning == "Let me think."
    assert completion.text == "Four."
    assert completion.usage == Usage(prompt_tokens=11, completion_tokens=3)


def test_assembler_joins_interleaved_tool_call_fragments_by_index() -> None:
    assembler = StreamAssembler()

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    for delta in [
        call(0, id="call_a", type="function", function={"name": "calculator", "arguments": ""}),
        call(1, id="call_b", type="function", function={"name": "sleep", "arguments": '{"se'}),
        call(0, function={"arguments": '{"expr'}),
        call(1, function={"arguments": 'conds": 1}'}),
        call(0, function={"arguments": 'ession": "1+1"}'}),
    ]:
        assert assembler.feed(chunk(delta)) == []
    assembler.feed(chunk({}, finish_reason="tool_calls"))

    completion = assembler.completion([{"role": "user", "content": "x" * 40}])
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("call_a", "calculator", '{"expression": "1+1"}'),
        ("call_b", "sleep", '{"seconds": 1}'),
    ]
    assert completion.usage.prompt_tokens == 10  # estimated: no usage chunk came


def test_assembler_rejects_a_stream_without_finish_reason() -> None:
    assembler = StreamAssembler()
    assembler.feed(chunk({"content": "half an ans"}))
    with pytest.raises(ProviderError) as caught:
        assembler.completion([])
    assert caught.value.retryable is True
