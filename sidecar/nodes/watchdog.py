"""Deadlines for the send phase of attempts, checked by one timer for all requests.

aiohttp has no write timeout and arms `sock_read` only once the body is written.
An `asyncio.timeout` per request would bound that, but measured here it cost about
80 µs of CPU per request on the hot path; one sweep twice a second costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


class SendWatch:
    SWEEP = 0.5

    def __init__(self) -> None:
        self.deadlines: dict[asyncio.Task[object], float] = {}
        self.fired: set[asyncio.Task[object]] = set()

    def watch(self, seconds: float, task: asyncio.Task[Any] | None = None) -> asyncio.Task[Any] | None:
        """Cancel `task` (default: the current one) if it is still watched `seconds` from now."""
        if task is None:
            task = asyncio.current_task()
        if task is not None:
            self.deadlines[task] = time.monotonic() + seconds
        return task

    def unwatch(self, task: asyncio.Task[object] | None) -> bool:
        """Stop watching; True when the deadline had fired (the cancel was ours)."""
        if task is None:
            return False
        self.deadlines.pop(task, None)
        if task in self.fired:
            self.fired.discard(task)
            task.uncancel()
            return True
        return False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.SWEEP)
            now = time.monotonic()
            late = [task for task, deadline in self.deadlines.items() if deadline < now]
            for task in late:
                del self.deadlines[task]
                self.fired.add(task)
                task.cancel()
