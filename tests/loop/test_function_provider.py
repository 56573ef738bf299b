"""The function provider: answers from a Python function of the request."""

from __future__ import annotations

from typing import Any

import pytest

from app.providers.base import (
    Chunk,
    Completion,
    LLMRequest,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    ToolCallOut,
    Usage,
)
from app.providers.function import Answer, AnswerFunction, FunctionProvider

REQUEST = LLMRequest(model="test", messages=[{"role": "user", "content": "What is 2+3?"}],
                     call_index=4)


async def chunks(function: AnswerFunction, request: LLMRequest = REQUEST) -> list[Chunk]:
    return [chunk async for chunk in FunctionProvider(function).stream(request)]


class TestFunctionProvider:
    async def test_a_string_is_a_text_answer_in_one_delta(self):
        streamed = await chunks(lambda request: "Five.")
        assert streamed[:-1] == [TextDelta("Five.")]
        completion = streamed[-1]
        assert isinstance(completion, Completion)
        assert (completion.text, completion.finish_reason) == ("Five.", "stop")
        assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0

    async def test_an_async_function_answers_with_tool_calls(self):
        async def answer(request: LLMRequest) -> Answer:
            return Answer(tool_calls=[("calculator", {"expression": "2+3"}),
                                      ToolCallOut("mine", "lookup", "not json")])

        [completion] = await chunks(answer)

        assert isinstance(completion, Completion)
        assert completion.text is None and completion.finish_reason == "tool_calls"
        assert completion.tool_calls == [
            ToolCallOut("call_4_0", "calculator", '{"expression":"2+3"}'),
            ToolCallOut("mine", "lookup", "not json")]

    async def test_an_answer_keeps_what_it_sets(self):
        answer = Answer(text="Part one", finish_reason="length", reasoning="hmm",
                        usage=Usage(3, 2), deltas=["Part ", "one"])
        streamed = await chunks(lambda request: answer)
        assert streamed[:-1] == [ReasoningDelta("hmm"), TextDelta("Part "), TextDelta("one")]
        assert streamed[-1] == Completion("Part one", [], "length", "hmm", Usage(3, 2))

    async def test_an_async_generator_streams_and_may_end_with_an_answer(self):
        async def answer(request: LLMRequest) -> Any:
            yield ReasoningDelta("adding")
            yield "It is "
            yield TextDelta("5.")
            yield Answer(tool_calls=[("calculator", {"expression": "2+3"})])

        streamed = await chunks(answer)

        assert streamed[:-1] == [ReasoningDelta("adding"), TextDelta("It is "), TextDelta("5.")]
        completion = streamed[-1]
        assert isinstance(completion, Completion)
        assert (completion.text, completion.reasoning) == ("It is 5.", "adding")
        assert [call.name for call in completion.tool_calls] == ["calculator"]

    async def test_the_function_sees_the_request(self):
        seen: list[LLMRequest] = []

        def answer(request: LLMRequest) -> str:
            seen.append(request)
            return "ok"

        await chunks(answer)
        assert seen == [REQUEST]

    async def test_a_provider_error_propagates(self):
        def answer(request: LLMRequest) -> str:
            raise ProviderError("rate limited", retryable=True, status=429)

        with pytest.raises(ProviderError, match="rate limited"):
            await chunks(answer)
