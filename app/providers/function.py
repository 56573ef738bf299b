"""An in-process provider whose answers come from a Python function of the request.

For tests and experiments that need neither a database nor a network:

    def answer(request: LLMRequest) -> Answer | str:
        if request.call_index == 0:
            return Answer(tool_calls=[("calculator", {"expression": "2+3"})])
        return "The answer is 5."

    provider = FunctionProvider(answer)

The function may be sync or async, and may raise `ProviderError`. To stream, make it an
async generator: it yields text deltas (`str` or `TextDelta`) and `ReasoningDelta`s, and
may end with an `Answer` for the rest (tool calls, finish reason, usage).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.providers.base import (
    Chunk,
    Completion,
    LLMRequest,
    ReasoningDelta,
    TextDelta,
    ToolCallOut,
    Usage,
)
from app.providers.estimate import compact_json, estimate_usage

ToolCallLike = ToolCallOut | tuple[str, Mapping[str, Any] | str]
"""A call as the function gives it; `(name, arguments)` gets the id `call_<index>_<n>`."""


@dataclass(frozen=True)
class Answer:
    """What the model answers to one request."""

    text: str | None = None
    tool_calls: Sequence[ToolCallLike] = ()
    finish_reason: str | None = None
    """Default: `tool_calls` when there are tool calls, else `stop`."""
    reasoning: str | None = None
    usage: Usage | None = None
    """Default: estimated from the request and the answer, as the scripted provider does."""
    deltas: Sequence[str] | None = None
    """How `text` is streamed when the function does not stream; default: in one delta."""


AnswerLike = Answer | str
StreamItem = str | TextDelta | ReasoningDelta | Answer
AnswerFunction = Callable[
    [LLMRequest], AnswerLike | Awaitable[AnswerLike] | AsyncIterator[StreamItem]]


class FunctionProvider:
    """A `Provider` that asks `function` for each answer."""

    def __init__(self, function: AnswerFunction) -> None:
        self.function = function

    async def stream(self, request: LLMRequest) -> AsyncGenerator[Chunk, None]:
        """Stream the function's answer to `request`: deltas, then one `Completion`."""
        produced = self.function(request)
        if inspect.isawaitable(produced):
            produced = await produced
        if isinstance(produced, AsyncIterator):
            texts: list[str] = []
            reasoning: list[str] = []
            answer = Answer()
            async for item in produced:
                if isinstance(item, Answer):
                    answer = item
                    break
                chunk = TextDelta(item) if isinstance(item, str) else item
                (texts if isinstance(chunk, TextDelta) else reasoning).append(chunk.text)
                yield chunk
            yield _completion(request, answer, "".join(texts) or None,
                              "".join(reasoning) or None)
            return
        answer = produced if isinstance(produced, Answer) else Answer(text=produced)
        if answer.reasoning:
            yield ReasoningDelta(answer.reasoning)
        for delta in answer.deltas if answer.deltas is not None else [answer.text or ""]:
            if delta:
                yield TextDelta(delta)
        yield _completion(request, answer, None, None)


def _completion(request: LLMRequest, answer: Answer, streamed_text: str | None,
                streamed_reasoning: str | None) -> Completion:
    text = answer.text if answer.text is not None else streamed_text
    calls = [_tool_call(request.call_index, index, call)
             for index, call in enumerate(answer.tool_calls)]
    return Completion(
        text=text, tool_calls=calls,
        finish_reason=answer.finish_reason or ("tool_calls" if calls else "stop"),
        reasoning=answer.reasoning if answer.reasoning is not None else streamed_reasoning,
        usage=(answer.usage if answer.usage is not None
               else estimate_usage(request.messages, text, calls)),
    )


def _tool_call(call_index: int, index: int, call: ToolCallLike) -> ToolCallOut:
    if isinstance(call, ToolCallOut):
        return call
    name, arguments = call
    text = arguments if isinstance(arguments, str) else compact_json(dict(arguments))
    return ToolCallOut(id=f"call_{call_index}_{index}", name=name, arguments=text)
