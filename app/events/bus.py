"""In-process fan-out of persisted events to live subscribers.

Each subscriber has a bounded queue. A subscriber that falls behind is cut off rather than
slowing the run: its stream ends and the client resumes with `Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

Event = dict[str, Any]


class Subscription:
    """A bounded queue of one subscriber's events; `None` means it was cut off."""

    def __init__(self, key: str, max_queued: int) -> None:
        self.key = key
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(max_queued + 1)
        self._max = max_queued
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        if self._queue.qsize() >= self._max:
            self.cut_off()
            return
        self._queue.put_nowait(event)

    def cut_off(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            self._queue.put_nowait(None)

    async def get(self) -> Event | None:
        return await self._queue.get()

    def drain(self) -> list[Event | None]:
        """Everything queued now, without waiting."""
        items: list[Event | None] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items


class EventBus:
    """Publishes events by run id, and `run.state` changes to the `*` channel."""

    ALL = "*"

    def __init__(self, max_queued: int = 10_000) -> None:
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._max_queued = max_queued
        self.closed = False

    def subscribe(self, key: str) -> Subscription:
        subscription = Subscription(key, self._max_queued)
        self._subscribers[key].add(subscription)
        if self.closed:
            subscription.cut_off()
        return subscription

    def close(self) -> None:
        """Cut every subscriber off, now and from now on: at shutdown, each open stream
        then ends as a complete response (its client resumes with `Last-Event-ID` from the
        next server) rather than being torn down mid-response."""
        self.closed = True
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription.cut_off()

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.key)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.key]

    def publish(self, key: str, event: Event) -> None:
        for subscription in tuple(self._subscribers.get(key, ())):
            subscription.offer(event)

    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())
