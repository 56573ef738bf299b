"""Map what the `openai` SDK (and the transport under it) raises to `ProviderError`."""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import openai

from app.providers.base import ProviderError
from app.providers.status import is_retryable_status


def _transport_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [httpx.TransportError, httpx.StreamError]
    try:  # the transport of openai >= 3; older SDKs run on httpx alone
        import httpx2
    except ImportError:
        pass
    else:
        errors += [httpx2.TransportError, httpx2.StreamError]
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()
"""Transport failures the SDK may let through unwrapped, e.g. while a stream is read."""


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return f"{exc.status_code}: {body['message']}"
    return exc.message


def to_provider_error(exc: BaseException) -> ProviderError | None:
    """The `ProviderError` for a failed call, or None when `exc` is not a provider failure."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return ProviderError(
            _status_message(exc),
            retryable=is_retryable_status(status) or status == 409,
            status=status,
            retry_after_s=parse_retry_after(exc.response.headers),
        )
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError("the provider timed out", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return ProviderError(f"connection to the provider failed{detail}", retryable=True)
    if isinstance(exc, openai.APIError):
        # No HTTP status: an `error` event inside the stream, or a response of the wrong shape.
        return ProviderError(f"provider error: {exc.message}", retryable=True)
    if isinstance(exc, json.JSONDecodeError):
        # The SDK parses each SSE event itself and lets a malformed one escape as-is.
        return ProviderError(f"malformed stream chunk: {exc}", retryable=True)
    if isinstance(exc, TRANSPORT_ERRORS):
        return ProviderError(f"transport error: {type(exc).__name__}: {exc}", retryable=True)
    if isinstance(exc, openai.OpenAIError):
        return ProviderError(f"provider client error: {exc}", retryable=False)
    return None
