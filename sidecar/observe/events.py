"""The event hub: a replay buffer plus a bounded queue per subscriber.

A stuck reader must never slow the proxy, so publishing never awaits and costs
each subscriber one length check and one append (or one counter bump once its
queue is full). A reader that takes its events again is told how many it
missed and goes on; one that misses `drop_after` events in a row is dropped,
so it stops costing the publisher anything, and its stream ends with a final
`missed` event. The replay is a snapshot of references taken by the reader's
own task, and each event is encoded once however many readers send it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

Event = dict[str, Any]

CHUNK = 64 * 1024  # bytes per write to a reader
LINES_BUDGET = 8 * 1024 * 1024  # bytes of encoded lines kept for readers that have not sent them yet


class Subscription:
    """One reader's queue: the hub appends to it, only the reader takes from it."""

    __slots__ = ("backlog", "closed", "dropped", "gap_end", "limit", "missed", "on_drop", "pending", "waiter")

    def __init__(self, limit: int, backlog: list[Event]) -> None:
        self.limit = limit
        self.backlog = backlog
        self.pending: deque[Event] = deque()
        self.missed = 0  # events dropped since the reader last took its queue
        self.waiter: asyncio.Future[None] | None = None
        self.dropped = False
        self.closed = False
        self.gap_end = 0  # the seq of the last event it missed, once dropped
        # Called once, from the publisher, when the hub drops this reader: it must be cheap and not raise.
        self.on_drop: Callable[[], None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():  # a cancelled reader's waiter is done before its task unwinds
                waiter.set_result(None)


class EventHub:
    def __init__(self, replay: int = 200, queue_size: int = 1000, drop_after: int = 1000) -> None:
        self.recent: deque[Event] = deque(maxlen=replay)
        self.queue_size = queue_size
        self.drop_after = drop_after
        # Called with every event as it is published, in the publisher (sidecar/metrics/ counts this way): unlike a
        # subscriber, never dropped for falling behind. Each must be cheap and must not raise.
        self.observers: list[Callable[[Event], None]] = []
        self.subscribers: set[Subscription] = set()
        self.seq = 0
        self.dropped = 0  # readers dropped so far, for tests and logs
        # seq -> (event, its NDJSON line); the event is kept to tell it from a `missed` marker with the same seq.
        self.lines: OrderedDict[int, tuple[Event, bytes]] = OrderedDict()
        self.lines_max = replay + queue_size
        self.lines_bytes = 0

    def publish(self, type_: str, **fields: Any) -> Event:
        return self.emit({"type": type_, **fields})

    def note(self, type_: str, **fields: Any) -> None:
        """Tell the observers only (sidecar/metrics/ counts each probe this way): what is counted but not
        streamed, so a probe every few seconds per node does not crowd the monitor's replay."""
        event = {"type": type_, **fields}
        for observe in self.observers:
            observe(event)

    def emit(self, event: Event) -> Event:
        """Publish an event the caller built (it gets `seq` and `time`), without copying it."""
        self.seq += 1
        event["seq"] = self.seq
        event["time"] = time.time()
        self.recent.append(event)
        for observe in self.observers:
            observe(event)
        stuck: list[Subscription] | None = None
        for sub in self.subscribers:
            if len(sub.pending) < sub.limit:
                sub.pending.append(event)
                if sub.waiter is not None:
                    sub.wake()
            else:
                sub.missed += 1
                if sub.missed >= self.drop_after:
                    if stuck is None:
                        stuck = []
                    stuck.append(sub)
        if stuck is not None:
            for sub in stuck:
                self.drop(sub)
        return event

    def attach(self, replay: bool = True) -> Subscription:
        """Register a reader now (so a cap checked just before holds); its replay is a snapshot of references."""
        sub = Subscription(self.queue_size, list(self.recent) if replay else [])
        self.subscribers.add(sub)
        return sub

    def detach(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def drop(self, sub: Subscription) -> None:
        """Stop feeding a reader that stopped reading; it gets what it had queued and a final `missed`."""
        self.subscribers.discard(sub)
        sub.dropped = True
        sub.gap_end = self.seq
        self.dropped += 1
        sub.wake()
        if sub.on_drop is not None:
            sub.on_drop()

    def close(self, sub: Subscription) -> None:
        """End a reader's stream without a marker (its client left)."""
        self.subscribers.discard(sub)
        sub.closed = True
        sub.wake()

    async def batches(self, sub: Subscription) -> AsyncIterator[list[Event]]:
        """The replay, then live events in order as they come, a `missed` marker where some were dropped;
        ends once `sub` is dropped and has been given its final marker."""
        if sub.backlog:
            backlog, sub.backlog = sub.backlog, []
            yield backlog
        loop = asyncio.get_running_loop()
        while True:
            batch = list(sub.pending)
            sub.pending.clear()
            if sub.missed:
                # Missed events came after everything queued (the queue was full until now), and the last one
                # published (before a drop) was among them: its seq marks where the gap ends.
                end = sub.gap_end if sub.dropped else self.seq
                batch.append({"type": "missed", "seq": end, "time": time.time(), "count": sub.missed})
                sub.missed = 0
            if batch:
                yield batch
            elif sub.dropped or sub.closed:
                return
            else:
                sub.waiter = loop.create_future()
                try:
                    await sub.waiter
                finally:
                    sub.waiter = None

    async def subscribe(self, replay: bool = True) -> AsyncIterator[Event]:
        """Yield the replay buffer, then live events, until the consumer stops or is dropped."""
        sub = self.attach(replay)
        try:
            async for batch in self.batches(sub):
                for event in batch:
                    yield event
        finally:
            self.detach(sub)

    def line(self, event: Event) -> bytes:
        """`event` as one NDJSON line, encoded once for all the readers that send it."""
        seq = event.get("seq")
        cached = self.lines.get(seq) if isinstance(seq, int) else None
        if cached is not None and cached[0] is event:
            return cached[1]
        line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        if event.get("type") != "missed" and isinstance(seq, int):
            self.lines[seq] = (event, line)
            self.lines_bytes += len(line)
            while len(self.lines) > self.lines_max or self.lines_bytes > LINES_BUDGET:
                self.lines_bytes -= len(self.lines.popitem(last=False)[1][1])
        return line

    def chunks(self, batch: list[Event]) -> Iterator[bytes]:
        """A batch as writes of about CHUNK bytes: one write per burst, but never a reader's whole
        queue in one buffer (a reader that stalls again holds at most a chunk beyond the socket's)."""
        parts: list[bytes] = []
        size = 0
        for event in batch:
            line = self.line(event)
            parts.append(line)
            size += len(line)
            if size >= CHUNK:
                yield b"".join(parts)
                parts, size = [], 0
        if parts:
            yield b"".join(parts)
