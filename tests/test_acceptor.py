"""The acceptor takes every pending connection on one readable event (libuv takes one)."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import uvloop

from sidecar.listener.acceptor import Acceptor

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


class Echo(asyncio.Protocol):
    made: ClassVar[list[asyncio.BaseTransport]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Echo.made.append(transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


@pytest.mark.parametrize("loop", LOOPS)
def test_one_readable_event_accepts_every_pending_connection(loop: str) -> None:
    Echo.made = []
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.setblocking(False)
    # The kernel completes these handshakes; they wait in the backlog until accepted.
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(40)]

    async def main() -> int:
        acceptor = Acceptor(listener, Echo)
        # One readiness event, by hand, before the loop could call it again.
        acceptor.loop.remove_reader(listener.fileno())
        acceptor.accept()
        accepted = len(acceptor.pending)
        await acceptor.wait_closed()
        acceptor.close()
        for transport in Echo.made:
            transport.close()
        return accepted

    try:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            accepted = runner.run(main())
    finally:
        for client in clients:
            client.close()
        listener.close()
    assert accepted == 40
    assert len(Echo.made) == 40


def test_served_connections_carry_data_and_close_stops_accepting() -> None:
    Echo.made = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    address = listener.getsockname()

    async def main() -> tuple[bytes, bool]:
        acceptor = Acceptor(listener, Echo)
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"ping")
        echoed = await asyncio.wait_for(reader.readexactly(4), 5)
        writer.close()
        acceptor.close()
        await acceptor.wait_closed()
        # Closed: a new connection completes in the kernel backlog but nobody takes it.
        _, late = await asyncio.open_connection(*address)
        await asyncio.sleep(0.2)
        taken = len(Echo.made) > 1
        late.close()
        for transport in Echo.made:
            transport.close()
        return echoed, taken

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            echoed, taken = runner.run(main())
    finally:
        listener.close()
    assert echoed == b"ping"
    assert taken is False


def test_out_of_descriptors_backs_off_then_resumes(caplog: pytest.LogCaptureFixture) -> None:
    """EMFILE must not spin the loop on a listening socket that stays readable."""
    Echo.made = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    client = socket.create_connection(listener.getsockname(), timeout=5)

    class Exhausted(socket.socket):
        calls = 0

        def accept(self) -> tuple[socket.socket, object]:
            Exhausted.calls += 1
            if Exhausted.calls == 1:
                raise OSError(errno.EMFILE, "Too many open files")
            return super().accept()

    flaky = Exhausted(fileno=listener.detach())

    async def main() -> tuple[int, int]:
        acceptor = Acceptor(flaky, Echo)
        acceptor.RETRY_DELAY = 0.3
        await asyncio.sleep(0.15)
        during = Exhausted.calls  # one failed accept, then no reader: no retry storm
        deadline = asyncio.get_running_loop().time() + 5
        while not Echo.made and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await acceptor.wait_closed()
        acceptor.close()
        for transport in Echo.made:
            transport.close()
        return during, len(Echo.made)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            during, made = runner.run(main())
    finally:
        client.close()
        flaky.close()
    assert during == 1
    assert made == 1
    assert "cannot accept connections (Too many open files)" in caplog.text


class Pool:
    """Counts open connections as http1.HTTPServer does; a closed one tells the acceptor."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.open: set[asyncio.BaseTransport] = set()
        self.acceptor: Acceptor | None = None
        self.broken = 0  # connections whose protocol fails to be made (they never start)
        self.violations = 0  # loop turns on which the acceptor was paused with room to spare
        self.paused = 0  # loop turns on which it was paused at the cap

    def open_count(self) -> int:
        return len(self.open)

    def make_room(self) -> bool:
        return False

    def protocol(self) -> asyncio.Protocol:
        if self.broken:
            self.broken -= 1
            raise OSError("failed before it started")
        return Counted(self)

    def check(self) -> None:
        acceptor = self.acceptor
        if acceptor is not None and acceptor.full:
            self.paused += 1
            self.violations += len(self.open) + len(acceptor.pending) < self.capacity


class Counted(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pool.open.add(transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> None:
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.open.discard(self.transport)
        assert self.pool.acceptor is not None
        self.pool.acceptor.recheck()


async def paused_only_without_room(pool: Pool, clients: list[socket.socket], address: Any) -> bytes:
    """Accept a flood at the cap, close it all at once, then a new client must be served: the invariant
    (paused only while open + starting >= cap) is sampled on every loop turn meanwhile."""
    acceptor = pool.acceptor = Acceptor(socket.socket(fileno=address[0]), pool.protocol, pool)
    loop = asyncio.get_running_loop()
    sampling = True

    def sample() -> None:
        pool.check()
        if sampling:
            loop.call_soon(sample)

    sample()
    deadline = loop.time() + 5
    while not pool.paused and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert pool.paused  # the flood reached the cap
    for client in clients:
        client.close()
    await asyncio.sleep(0.3)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address[1]), 5)
        writer.write(b"ping")
        echoed = await asyncio.wait_for(reader.readexactly(4), 5)
        writer.close()
    finally:
        sampling = False
        acceptor.close()
        await acceptor.wait_closed()
        for transport in list(pool.open):
            transport.close()
    return echoed


@pytest.mark.parametrize("broken", [0, 30], ids=["closed after starting", "failed before starting"])
@pytest.mark.parametrize("loop", LOOPS)
def test_the_listener_is_paused_only_while_open_plus_starting_reach_the_cap(loop: str, broken: int) -> None:
    """Three times the cap of connections that send nothing, all closed at once, then one more: it is served.
    Accepted connections that close before they start, or whose protocol fails, lower open + starting too."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.setblocking(False)
    name = listener.getsockname()
    pool = Pool(capacity=10)
    pool.broken = broken
    clients = [socket.create_connection(name, timeout=5) for _ in range(30)]
    try:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            echoed = runner.run(paused_only_without_room(pool, clients, (listener.detach(), name)))
    finally:
        for client in clients:
            client.close()
    assert echoed == b"ping"
    assert pool.violations == 0
