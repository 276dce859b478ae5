"""Accepting new connections in bursts, so that a loaded sidecar does not starve them, up to a cap.

libuv, under uvloop, accepts one connection per loop iteration (libuv#3696). With
the loop busy an iteration takes tens of milliseconds, so connections opened in a
burst wait in the listen backlog: measured here, 256 connections opened at once
against a saturated sidecar took about 8 s to be accepted (p99 3.9 s, p50 0.1 s).
This accepts everything pending each time the socket is readable, as asyncio's own
loop does, and hands each connection to the loop's transport.

At the pool's connection cap it stops reading the listener, and new connections
wait in the kernel's backlog. The invariant: the listener is paused for room only
while open + starting >= cap, and every event that lowers open + starting (a
connection closing, an accepted one starting or failing to start) calls `recheck`,
which resumes it. `starting` counts the connections accepted whose transport has
not reported back yet, so a burst cannot overshoot the cap. The acceptor alone
starts and stops reading (`update`). It used to be paused here and resumed only
when a connection closed, so accepted ones that closed before they started left
the listener paused for good.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("llm_sidecar")

# Out of descriptors or memory: back off briefly instead of spinning on a readable socket.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
FULL_LOG_EVERY = 10.0  # seconds between "connection limit reached" lines


class Pool(Protocol):
    """The open connections the acceptor feeds (http1.HTTPServer); it calls `recheck` when one closes."""

    capacity: int

    def open_count(self) -> int: ...

    def make_room(self) -> bool:
        """Close an idle connection so that a new one can come in; False if none is idle."""
        ...


class Acceptor:
    """Accepts connections for the proxy's HTTP server (close, wait_closed, pausing at the pool's cap)."""

    BURST = 512
    RETRY_DELAY = 1.0

    def __init__(
        self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol], pool: Pool | None = None
    ) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.pending: set[asyncio.Task[object]] = set()  # accepted, not started yet
        self.serving = True
        self.full = False  # paused for room at the pool's cap
        self.backing_off = False  # paused after running out of descriptors
        self.reading = False
        self.full_logged = -FULL_LOG_EVERY
        self.update()

    def update(self) -> None:
        """Read the listener exactly while nothing says to stop: the only place that adds or removes it."""
        want = self.serving and not self.full and not self.backing_off
        if want and not self.reading:
            self.loop.add_reader(self.sock.fileno(), self.accept)
        elif not want and self.reading:
            self.loop.remove_reader(self.sock.fileno())
        self.reading = want

    def below_cap(self) -> bool:
        pool = self.pool
        return pool is None or pool.open_count() + len(self.pending) < pool.capacity

    def recheck(self) -> None:
        """Open + starting may have dropped: resume if paused for room and there is room now."""
        if self.full and self.below_cap():
            self.full = False
            self.update()

    def accept(self) -> None:
        for _ in range(self.BURST):
            if not self.below_cap() and not (self.pool is not None and self.pool.make_room()):
                self.pause_full()
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up before we got to it
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRORS:
                    raise
                log.error("cannot accept connections (%s); retrying in %.0f s", exc.strerror, self.RETRY_DELAY)
                self.backing_off = True
                self.update()
                self.loop.call_later(self.RETRY_DELAY, self.retry)
                return
            conn.setblocking(False)
            task = self.loop.create_task(self.loop.connect_accepted_socket(self.protocol_factory, conn))
            self.pending.add(task)
            task.add_done_callback(self.connected)

    def pause_full(self) -> None:
        self.full = True
        self.update()
        now = self.loop.time()
        if now - self.full_logged > FULL_LOG_EVERY:  # one line per episode at most, not one per connection
            self.full_logged = now
            log.warning(
                "connection limit reached (%d open, %d starting): new connections wait until one closes "
                "(server.max_connections, and the open-file limit)",
                self.pool.open_count() if self.pool is not None else 0,
                len(self.pending),
            )

    def connected(self, task: asyncio.Task[object]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("connection failed before it started: %r", task.exception())
        self.recheck()

    def retry(self) -> None:
        self.backing_off = False
        self.update()

    def close(self) -> None:
        self.serving = False
        self.update()

    async def wait_closed(self) -> None:
        if self.pending:
            await asyncio.wait(list(self.pending))
