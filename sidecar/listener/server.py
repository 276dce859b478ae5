"""The connections on one listening socket: their deadlines, their cap and a graceful stop.

The deadlines of every connection (head, body, keep-alive) are checked by one sweep, not a timer each.
At the cap an idle keep-alive connection is closed to make room, as nginx does; with none idle, new
connections wait in the listen backlog (the acceptor stops reading it) until one closes.
"""

from __future__ import annotations

import asyncio
import logging

from .acceptor import Acceptor
from .connection import Connection, Limits
from .cycle import App, Cycle, plain

log = logging.getLogger("llm_sidecar")


SWEEP = 0.1  # seconds between deadline checks: timeouts fire up to this late


class HTTPServer:
    """Connections on one listening socket, their cap, and a graceful stop."""

    def __init__(self, app: App, limits: Limits, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.app = app
        self.limits = limits
        self.loop = loop or asyncio.get_running_loop()
        self.connections: dict[Connection, None] = {}  # insertion order: oldest first
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.capacity = limits.max_connections
        self.listener: Acceptor | None = None  # pauses and resumes accepting at the cap

    def protocol(self) -> asyncio.Protocol:
        return Connection(self)

    async def sweep(self) -> None:
        """Fire the connections' deadlines (head, body, keep-alive): one pass per SWEEP seconds."""
        while True:
            await asyncio.sleep(SWEEP)
            now = self.loop.time()
            for conn in list(self.connections):
                callback = conn.on_deadline
                if callback is not None and conn.deadline <= now:
                    conn.on_deadline = None
                    callback()
            if self.listener is not None:
                # Every event that makes room rechecks already; should one be missed, this costs a
                # paused listener SWEEP seconds rather than the rest of the process's life.
                self.listener.recheck()

    async def run(self, cycle: Cycle) -> None:
        task = cycle.task
        if task is not None:
            self.tasks.add(task)
        # The scope refers to the cycle (the disconnect extension) and the app's interrupt to the
        # cycle's send: let go of both ends, so a finished request is freed by reference counting,
        # not left for the cyclic GC (which then ran 8x as often under load).
        scope, cycle.scope = cycle.scope, None
        assert scope is not None
        try:
            await self.app(scope, cycle.receive, cycle.send)
        except asyncio.CancelledError:
            cycle.conn.close()  # stopped from outside the app
            return
        except Exception:
            log.exception("request failed inside the server")
            if not cycle.response_started and not cycle.disconnected:
                cycle.conn.write(plain(500, "internal error"))
            cycle.conn.close()
            return
        finally:
            cycle.on_disconnect = None
            if task is not None:
                self.tasks.discard(task)
        if not cycle.response_complete and not cycle.disconnected:
            # The app could not finish the body (an upstream cut a streamed download): closing is
            # how HTTP/1.1 tells the client its body is short.
            log.warning("response ended incomplete: connection closed")
            cycle.conn.close()

    def opened(self, conn: Connection) -> None:
        self.connections[conn] = None

    def open_count(self) -> int:
        return len(self.connections)

    def make_room(self) -> bool:
        """At the cap: close the oldest idle keep-alive connection for a new one (as nginx reuses them);
        with none idle, the new connection waits in the backlog until one closes (see acceptor.py)."""
        for other in self.connections:
            if other.idle:
                other.close()
                self.connections.pop(other, None)
                return True
        return False

    @property
    def full(self) -> bool:
        """New connections are waiting for room: a kept-alive one should close after its answer."""
        return self.listener is not None and self.listener.full

    def closed(self, conn: Connection) -> None:
        self.connections.pop(conn, None)
        if self.listener is not None:
            self.listener.recheck()

    def stop_accepting_requests(self) -> None:
        """Idle connections close now; busy ones close after their answer."""
        self.stopping = True
        for conn in list(self.connections):
            if conn.idle:
                conn.close()

    async def wait_idle(self) -> None:
        while self.tasks:
            await asyncio.wait(list(self.tasks))

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()
