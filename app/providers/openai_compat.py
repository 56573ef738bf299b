"""Any OpenAI-compatible Chat Completions endpoint, streamed through the `openai` SDK."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, cast

import openai

from app.providers.base import (
    Chunk,
    Completion,
    LLMRequest,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    ToolCallOut,
    ToolDef,
    Usage,
)
from app.providers.estimate import estimate_usage
from app.providers.openai_errors import to_provider_error

PLACEHOLDER_API_KEY = "no-key"
"""Sent when no key is configured: the server answers 401, which is not retried."""

SAMPLING_ARGUMENTS = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop",
    "presence_penalty", "frequency_penalty", "logit_bias", "n", "user",
})
"""Sampling fields the SDK takes as arguments; any other goes into the request body as is."""

REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Non-standard delta fields some providers (DeepSeek, vLLM, OpenRouter) stream thoughts in."""


def tool_param(tool: ToolDef) -> dict[str, Any]:
    """A tool in the OpenAI function format."""
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _reasoning_text(delta: Any) -> str | None:
    extra = getattr(delta, "model_extra", None) or {}
    for name in REASONING_FIELDS:
        value = getattr(delta, name, None)
        if value is None:
            value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return None


@dataclass
class _ToolCallParts:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class StreamAssembler:
    """Turns streamed chunks into deltas, then into the one `Completion` they add up to."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls: dict[int, _ToolCallParts] = {}
        self._finish_reason: str | None = None
        self._usage: Usage | None = None

    def feed(self, chunk: Any) -> list[Chunk]:
        """Take one `ChatCompletionChunk`; return the deltas it carries."""
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self._usage = Usage(prompt_tokens=usage.prompt_tokens or 0,
                                completion_tokens=usage.completion_tokens or 0)
        deltas: list[Chunk] = []
        for choice in getattr(chunk, "choices", None) or []:
            if getattr(choice, "index", 0) != 0:
                continue
            delta = choice.delta
            if delta is not None:
                reasoning = _reasoning_text(delta)
                if reasoning:
                    self._reasoning.append(reasoning)
                    deltas.append(ReasoningDelta(reasoning))
                if delta.content:
                    self._text.append(delta.content)
                    deltas.append(TextDelta(delta.content))
                for position, call in enumerate(delta.tool_calls or []):
                    self._add_tool_call_fragment(position, call)
            if choice.finish_reason:
                self._finish_reason = choice.finish_reason
        return deltas

    def _add_tool_call_fragment(self, position: int, call: Any) -> None:
        index = call.index if isinstance(getattr(call, "index", None), int) else position
        parts = self._tool_calls.setdefault(index, _ToolCallParts())
        if call.id:
            parts.id = call.id
        function = call.function
        if function is not None:
            # The name comes whole in the first fragment; some servers repeat it later.
            if function.name and not parts.name:
                parts.name = function.name
            if function.arguments:
                parts.arguments.append(function.arguments)

    def completion(self, messages: list[dict[str, Any]]) -> Completion:
        """The assembled answer. Raises a retryable `ProviderError` for a truncated stream."""
        if self._finish_reason is None:
            raise ProviderError("the stream ended without a finish_reason", retryable=True)
        tool_calls = [
            ToolCallOut(id=parts.id or f"call_{uuid.uuid4().hex[:24]}", name=parts.name or "",
                        arguments="".join(parts.arguments))
            for _, parts in sorted(self._tool_calls.items())
        ]
        text = "".join(self._text) or None
        return Completion(
            text=text,
            tool_calls=tool_calls,
            finish_reason=self._finish_reason,
            reasoning="".join(self._reasoning) or None,
            usage=self._usage or estimate_usage(messages, text, tool_calls),
        )


class OpenAIProvider:
    """Streams chat completions from one OpenAI-compatible endpoint; never retries itself."""

    def __init__(
        self, base_url: str, api_key: str | None, connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        self.base_url = base_url
        self._api_key = api_key or PLACEHOLDER_API_KEY
        self._timeout = openai.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._client: openai.AsyncOpenAI | None = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client, made on first use and kept for this provider's life."""
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, max_retries=0,
                timeout=self._timeout,
            )
        return self._client

    def _create_arguments(self, request: LLMRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        extra_body: dict[str, Any] = {}
        for name, value in request.sampling.items():
            if value is None:
                continue
            (arguments if name in SAMPLING_ARGUMENTS else extra_body)[name] = value
        if request.tools:
            arguments["tools"] = [tool_param(tool) for tool in request.tools]
        if extra_body:
            arguments["extra_body"] = extra_body
        return arguments

    async def stream(self, request: LLMRequest) -> AsyncGenerator[Chunk, None]:
        """Stream one completion: text and reasoning deltas, then the assembled `Completion`.

        Every failure (HTTP errors, timeouts, broken, truncated or malformed streams) is
        raised as `ProviderError`; the response is closed on every exit, cancellation included.
        """
        try:
            response = await self.client.chat.completions.create(
                model=request.model,
                messages=cast(Any, request.messages),
                stream=True,
                stream_options={"include_usage": True},
                **self._create_arguments(request),
            )
        except Exception as exc:
            error = to_provider_error(exc)
            if error is None:
                raise
            raise error from exc

        assembler = StreamAssembler()
        chunks = response.__aiter__()
        try:
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    error = to_provider_error(exc)
                    if error is None:
                        raise
                    raise error from exc
                for delta in assembler.feed(chunk):
                    yield delta
            completion = assembler.completion(request.messages)
        finally:
            await _close_stream(response, chunks)
        # Yielded after closing: consumers commonly stop at the Completion without aclose().
        yield completion

    async def list_models(self, timeout_s: float) -> list[str]:
        """The ids from `GET {base_url}/models`; raises the SDK's errors as they are."""
        page = await self.client.models.list(timeout=timeout_s)
        return [model.id for model in page.data]

    async def aclose(self) -> None:
        """Close the SDK client and its connections."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


async def _close_stream(response: Any, chunks: Any) -> None:
    # Closing must not replace the error (or cancellation) that ended the stream.
    for close in (chunks.aclose, response.close):
        with contextlib.suppress(Exception):
            await close()
