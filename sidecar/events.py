"""The event hub: a replay buffer plus bounded per-subscriber queues.

A stuck reader must never slow the proxy, so publishing never awaits: when a
subscriber's queue is full its events are dropped and counted, and it is told
how many it missed once there is room again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

Event = dict[str, Any]


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.missed = 0

    def offer(self, event: Event) -> None:
        if self.missed and self.queue.qsize() < self.queue.maxsize - 1:
            self.queue.put_nowait({"type": "missed", "time": event["time"], "count": self.missed})
            self.missed = 0
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.missed += 1


class EventHub:
    def __init__(self, replay: int = 200, queue_size: int = 1000) -> None:
        self.recent: deque[Event] = deque(maxlen=replay)
        self.queue_size = queue_size
        self.subscribers: set[Subscription] = set()
        self.seq = 0

    def publish(self, type_: str, **fields: Any) -> Event:
        return self.emit({"type": type_, **fields})

    def emit(self, event: Event) -> Event:
        """Publish an event the caller built (it gets `seq` and `time`), without copying it."""
        self.seq += 1
        event["seq"] = self.seq
        event["time"] = time.time()
        self.recent.append(event)
        for sub in self.subscribers:
            sub.offer(event)
        return event

    async def subscribe(self, replay: bool = True) -> AsyncIterator[Event]:
        """Yield the replay buffer, then live events, until the consumer stops."""
        sub = Subscription(self.queue_size)
        backlog = list(self.recent) if replay else []
        self.subscribers.add(sub)
        try:
            for event in backlog:
                yield event
            while True:
                yield await sub.queue.get()
        finally:
            self.subscribers.discard(sub)
