"""One signed POST to a hook's URL: the way every hook request (gating call, event, ping) is
sent, and what is stored of its answer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx2

from app.hooks.signing import signed_headers
from app.tools import net

EXCERPT_CHARS = 1024
"""How much of an answer or an error a delivery keeps (its columns hold this much)."""


def storable(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` cut to `limit`, fit for a text column."""
    # Postgres text cannot hold NUL characters, and whatever a receiver sends is stored.
    return text.replace("\x00", "\ufffd")[:limit]


@dataclass(frozen=True)
class Attempt:
    """How one request to a hook went."""

    status_code: int | None
    """The receiver's HTTP status; None when no answer came."""
    duration_ms: int
    error: str | None
    """Why no answer came (refused by the guard, connection, timeout), or None."""
    content: bytes = b""
    """The answer's body (at most `net.MAX_BODY_BYTES` of it)."""

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def failure(self) -> str | None:
        """Why the attempt failed (no answer, or not a 2xx one); None when delivered."""
        if self.error is not None:
            return self.error
        return None if self.delivered else f"it answered {self.status_code}"

    @property
    def excerpt(self) -> str | None:
        """The start of the answer, as a delivery stores it."""
        if self.status_code is None or not self.content:
            return None
        return storable(self.content[:EXCERPT_CHARS * 4].decode("utf-8", "replace"))


async def post_signed(client: httpx2.AsyncClient, url: str, secret: str, message_id: str,
                      body: str, timeout_ms: int) -> Attempt:
    """POST `body`, signed with `secret` under `message_id`, within `timeout_ms`; never
    raises for a failing receiver."""
    timeout_s = timeout_ms / 1000
    started = time.monotonic()
    try:
        async with (
            asyncio.timeout(timeout_s),
            client.stream("POST", url, content=body.encode(), timeout=timeout_s,
                          headers=signed_headers(secret, message_id, body)) as response,
        ):
            content, _truncated = await net.read_capped(response)
    except (httpx2.TimeoutException, TimeoutError):
        return Attempt(None, _ms(started), f"timed out: no answer within {timeout_ms} ms")
    except Exception as exc:  # refused connections, the guard, broken answers
        return Attempt(None, _ms(started), storable(net.failure_text(exc, timeout_s)))
    return Attempt(response.status_code, _ms(started), None, content)


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
