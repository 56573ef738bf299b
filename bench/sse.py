"""A lean SSE reader for loomd's event streams.

It splits raw bytes into frames and reads the `id:` and `event:` lines, leaving the JSON `data`
undecoded until asked: at tens of thousands of events per second the client must not be what
is measured.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

_FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
TERMINAL_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled", "run.interrupted"})


@dataclass(slots=True)
class Frame:
    """One event as received: when it arrived (perf_counter seconds), its type, seq and data."""

    received: float
    type: str
    seq: int
    data: bytes

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES


def _frame(raw: bytes, received: float) -> Frame | None:
    event_type, seq, data = "message", 0, b""
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            data = line[5:].strip()
        elif line.startswith(b"event:"):
            event_type = line[6:].strip().decode()
        elif line.startswith(b"id:"):
            seq = int(line[3:])
    return Frame(received, event_type, seq, data) if data else None


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The event frames of `response`; comments, `retry:` and empty frames are skipped.

    Every frame of one network read carries that read's arrival time.
    """
    if response.status_code != 200:
        await response.aread()
        raise RuntimeError(f"stream answered {response.status_code}: {response.text[:500]}")
    pending = b""
    async for chunk in response.aiter_bytes():
        received = time.perf_counter()
        parts = _FRAME_END.split(pending + chunk)
        pending = parts.pop()
        for raw in parts:
            frame = _frame(raw, received)
            if frame is not None:
                yield frame
