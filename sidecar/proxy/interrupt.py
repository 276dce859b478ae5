"""Why a request was interrupted: its client left, or the sidecar is stopping.

Both end the request's task with a cancellation, so every `async with` on the
way out (the attempt scope, the upstream response) gives back what it took, and
the upstream stops generating at once instead of when its next chunk arrives.
The request's own handler tells the two apart by the reason recorded here and
answers accordingly (nothing for a client that left; a clear error for one that
is still there when the sidecar stops).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from sidecar.formats.errors import Send
from sidecar.listener.cycle import DISCONNECT_EXTENSION


class Reason(Enum):
    CLIENT_GONE = "client disconnected"
    SHUTDOWN = "sidecar stopping"


class Interrupt:
    """Watches one request's client and lets the server interrupt it; tracks what was sent."""

    __slots__ = ("_send", "complete", "reason", "started", "task", "watcher")

    def __init__(self, send: Send) -> None:
        self.task: asyncio.Task[Any] | None = None  # set by watch()
        self._send = send
        self.reason: Reason | None = None
        self.started = False  # the response head went out
        self.complete = False  # the last body message went out
        self.watcher: asyncio.Future[Any] | None = None

    def watch(self, receive: Callable[[], Awaitable[dict[str, Any]]], scope: dict[str, Any] | None = None) -> None:
        """Be told when the client leaves: by our server directly (the `llm_sidecar.disconnect` scope
        extension, see listener/cycle.py), else by waiting for `http.disconnect`, the only message that can
        follow a request body that has been read."""
        cycle = (scope or {}).get("extensions", {}).get(DISCONNECT_EXTENSION)
        if cycle is not None and cycle.task is not None:
            self.task = cycle.task
            cycle.on_disconnect = self.client_gone
            return
        self.task = asyncio.current_task()
        self.watcher = asyncio.ensure_future(receive())
        self.watcher.add_done_callback(self._received)

    def client_gone(self) -> None:
        self.interrupt(Reason.CLIENT_GONE)

    def _received(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if future.result().get("type") == "http.disconnect":
            self.interrupt(Reason.CLIENT_GONE)

    def interrupt(self, reason: Reason) -> None:
        if self.complete or self.reason is not None:
            return
        self.reason = reason
        if self.task is not None:
            self.task.cancel()

    def send(self, message: dict[str, Any]) -> Awaitable[None]:
        """The request's `send`, noting what went out (returns the server's own awaitable: no extra frame)."""
        if message["type"] == "http.response.start":
            self.started = True
        elif not message.get("more_body", False):
            self.complete = True
        return self._send(message)

    def close(self) -> None:
        self.complete = True
        if self.watcher is not None:
            self.watcher.cancel()
