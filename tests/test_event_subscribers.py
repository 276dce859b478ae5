"""Event stream readers cannot cost the proxy: a cap on readers (503 past it), stuck readers dropped.

The hub is tested directly (bounded loops, no clocks), the control handler in-process over a Unix socket with
raw, non-blocking sockets (a reader that never reads is simply one that never calls recv), and the cap and the
drop end to end against a real `llm-sidecar run`. Nothing here asserts a speed.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.load import parse
from sidecar.control import server as control
from sidecar.control.server import ControlServer
from sidecar.nodes.runtime import Runtime
from sidecar.observe import events
from sidecar.observe.events import EventHub, Subscription
from tui.app import MonitorApp

from .conftest import chat, two_node_config
from .test_monitor import until as until_drawn

CHAT = "/v1/chat/completions"


def drain(hub: EventHub, sub: Subscription) -> list[dict[str, Any]]:
    """Everything a reader would get from now on, without waiting (it must end or run dry)."""

    async def take() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        batches = hub.batches(sub)
        while True:
            try:
                batch = await asyncio.wait_for(anext(batches), 0.05)
            except (StopAsyncIteration, TimeoutError):
                return got
            got.extend(batch)

    return asyncio.run(take())


# ---------------------------------------------------------------------------------------------- the hub


def test_a_reader_that_stays_full_is_dropped_with_a_final_missed_event() -> None:
    hub = EventHub(replay=0, queue_size=10, drop_after=20)
    sub = hub.attach()
    for i in range(29):
        hub.publish("request", n=i)
    assert hub.subscribers == {sub} and sub.missed == 19  # full, but not for long enough yet
    hub.publish("request", n=29)
    assert not hub.subscribers and sub.dropped and hub.dropped == 1
    for i in range(30, 100):
        hub.publish("request", n=i)  # no longer touches it
    assert sub.missed == 20 and len(sub.pending) == 10
    got = drain(hub, sub)
    assert [e["n"] for e in got[:10]] == list(range(10))  # what it had queued, in order
    assert got[10:] == [{"type": "missed", "seq": 30, "time": got[10]["time"], "count": 20}]  # then it ends


def test_a_slow_reader_that_takes_its_events_again_goes_on() -> None:
    hub = EventHub(replay=0, queue_size=10, drop_after=20)

    async def run() -> None:
        stream = hub.subscribe(replay=False)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        for i in range(29):
            hub.publish("request", n=i)  # 19 missed: fewer than drop_after
        assert (await first)["n"] == 0
        rest = [await anext(stream) for _ in range(10)]
        assert [e.get("n") for e in rest[:9]] == list(range(1, 10))
        assert rest[9]["type"] == "missed" and rest[9]["count"] == 19 and rest[9]["seq"] == 29
        for i in range(29, 29 + 25):
            hub.publish("request", n=i)  # the count starts again after it took its queue
        assert len(hub.subscribers) == 1
        assert (await anext(stream))["n"] == 29
        await stream.aclose()
        assert not hub.subscribers

    asyncio.run(run())


def test_100k_events_with_64_stuck_readers_complete_and_drop_them_all() -> None:
    hub = EventHub()  # the sidecar's defaults
    stuck = [hub.attach() for _ in range(64)]
    for i in range(100_000):
        hub.publish("request", n=i)
        assert len(hub.subscribers) <= 64
    assert not hub.subscribers and hub.dropped == 64
    for sub in stuck:  # each holds one queue's worth, no more, and was dropped once its queue stayed full
        assert sub.dropped and len(sub.pending) == hub.queue_size and sub.missed == hub.drop_after
    got = drain(hub, stuck[0])
    assert len(got) == hub.queue_size + 1  # its queue, then the end
    assert got[-1]["type"] == "missed" and got[-1]["count"] == hub.drop_after


def test_replay_is_a_snapshot_and_each_line_is_encoded_once() -> None:
    hub = EventHub(replay=3)
    for i in range(5):
        hub.publish("request", n=i)
    a, b = hub.attach(), hub.attach()
    hub.publish("request", n=5)  # after attaching: live, not in the replay
    got_a, got_b = drain(hub, a), drain(hub, b)
    assert [e["n"] for e in got_a] == [e["n"] for e in got_b] == [2, 3, 4, 5]
    assert all(hub.line(x) is hub.line(y) for x, y in zip(got_a, got_b, strict=True))  # one encoding for all
    assert json.loads(hub.line(got_a[0])) == got_a[0]
    missed = {"type": "missed", "seq": got_a[-1]["seq"], "time": 0.0, "count": 1}
    assert json.loads(hub.line(missed)) == missed  # a marker never takes the line of the event with its seq
    for i in range(hub.lines_max * 2):
        hub.line(hub.publish("request", n=i))
    assert len(hub.lines) == hub.lines_max  # bounded


def test_a_burst_is_written_in_bounded_chunks_and_the_line_cache_in_bounded_bytes() -> None:
    hub = EventHub()
    batch = [hub.publish("request", pad="x" * 5000) for _ in range(1000)]
    chunks = list(hub.chunks(batch))
    assert b"".join(chunks) == b"".join(map(hub.line, batch))
    assert len(chunks) > 1 and all(len(c) < events.CHUNK + 6000 for c in chunks)
    for _ in range(2000):
        hub.line(hub.publish("request", pad="y" * 20_000))
    assert hub.lines_bytes <= events.LINES_BUDGET
    assert hub.lines_bytes == sum(len(line) for _, line in hub.lines.values())


def test_publishing_right_after_a_waiting_reader_is_cancelled_does_not_raise() -> None:
    async def run() -> None:
        hub = EventHub()
        stream = hub.subscribe()
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        waiting.cancel()  # its waiter is cancelled now; the reader's own cleanup runs only at its next turn
        hub.publish("request", n=1)  # the publisher (a proxied request) must not be the one to fail
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await stream.aclose()

    asyncio.run(run())


# ------------------------------------------------------------------------ the control handler in-process


@pytest.fixture
async def control_server(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    servers: list[ControlServer] = []

    async def start(hub: EventHub, cap: int = 64) -> ControlServer:
        config = parse(
            {
                "server": {"max_event_subscribers": cap},
                "upstream": {"nodes": [{"name": "a", "url": "http://a.invalid"}]},
            },
            "<test>",
            env={},
        )
        server = ControlServer(Runtime(config, events=hub), tmp_path / f"c{len(servers)}.sock")
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


class RawReader:
    """An events request on a raw non-blocking socket: it reads only when told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    @classmethod
    async def open(cls, path: Path, replay: bool = True) -> RawReader:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, str(path))
        query = "" if replay else "?replay=0"
        await loop.sock_sendall(
            sock, f"GET /v1/events{query} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n".encode()
        )
        reader = cls(sock)
        while b"\r\n\r\n" not in reader.data:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            assert chunk, "closed before the response head"
            reader.data += chunk
        return reader

    @property
    def status(self) -> int:
        return int(self.data.split(b" ", 2)[1])

    async def read_to_end(self, seconds: float = 10) -> bytes:
        """Read until the peer closes (or resets); the body so far."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(seconds):
            while True:
                try:
                    chunk = await loop.sock_recv(self.sock, 1 << 16)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                self.data += chunk
        return self.data.split(b"\r\n\r\n", 1)[1]

    def close(self) -> None:
        self.sock.close()


def lines(body: bytes) -> list[dict[str, Any]]:
    """NDJSON lines out of a chunked body (chunk sizes are hex-only lines, never JSON objects)."""
    return [json.loads(line) for line in body.split(b"\r\n") for line in line.split(b"\n") if line.startswith(b"{")]


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def test_readers_past_the_cap_get_a_503_json_error_and_a_freed_slot_is_reused(control_server) -> None:
    hub = EventHub()
    server = await control_server(hub, cap=3)
    readers = [await RawReader.open(server.path) for _ in range(3)]
    assert [r.status for r in readers] == [200, 200, 200] and len(hub.subscribers) == 3
    refused = await RawReader.open(server.path)
    body = await refused.read_to_end()
    assert refused.status == 503
    error = json.loads(body)["error"]
    assert error["type"] == "overloaded" and "max_event_subscribers" in error["message"]
    assert len(hub.subscribers) == 3
    readers[0].close()
    await until(lambda: len(hub.subscribers) == 2)
    again = await RawReader.open(server.path)
    assert again.status == 200 and len(hub.subscribers) == 3
    for r in [*readers[1:], again, refused]:
        r.close()


async def test_a_stuck_reader_is_dropped_and_gets_its_last_line_if_it_reads_in_time(control_server) -> None:
    hub = EventHub(queue_size=5, drop_after=5)
    server = await control_server(hub)
    stuck = await RawReader.open(server.path, replay=False)
    live = await RawReader.open(server.path, replay=False)
    reading = asyncio.ensure_future(live.read_to_end(60))
    pad = "x" * 32_768  # fills the socket's buffers after a few events, so the stuck reader's writer blocks
    for i in range(200):
        hub.publish("request", n=i, pad=pad)
        await asyncio.sleep(0.005)
        if hub.dropped:
            break
    assert hub.dropped == 1 and len(hub.subscribers) == 1  # the stuck one went; the one reading stays
    got = lines(await stuck.read_to_end())  # reading now, within the grace: the rest, the marker, the end
    assert got[-1]["type"] == "missed" and got[-1]["count"] == 5
    assert [e["n"] for e in got[:-1]] == list(range(len(got) - 1))  # in order, nothing after the gap
    live.close()
    reading.cancel()
    stuck.close()


async def test_a_stuck_reader_that_never_reads_again_is_cut_after_the_grace(control_server, monkeypatch) -> None:
    monkeypatch.setattr(control, "DROP_GRACE", 0.2)
    hub = EventHub(queue_size=5, drop_after=5)
    server = await control_server(hub)
    stuck = await RawReader.open(server.path, replay=False)
    pad = "x" * 32_768
    for _ in range(200):
        hub.publish("request", pad=pad)
        await asyncio.sleep(0)
        if hub.dropped:
            break
    assert hub.dropped == 1 and not hub.subscribers
    await asyncio.sleep(0.5)  # past the grace: the connection is gone, unsent bytes and all
    body = await stuck.read_to_end()
    assert len(body) < 200 * 32_768  # what the buffers held, not the whole run
    stuck.close()


# ------------------------------------------------------------------------------------- a real sidecar


async def open_readers(path: Path, n: int) -> list[RawReader]:
    return [await RawReader.open(path) for _ in range(n)]


async def test_a_real_sidecar_refuses_the_65th_reader_with_503(fakes, sidecar, client) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    await client.post(car.url + CHAT, json=chat())
    readers = await open_readers(car.socket, 64)  # the default max_event_subscribers; none reads on
    assert {r.status for r in readers} == {200}
    extra = await RawReader.open(car.socket)
    body = await extra.read_to_end()
    assert extra.status == 503 and "max_event_subscribers" in json.loads(body)["error"]["message"]
    async with car.control() as ctl:  # the rest of the control API still answers
        assert (await ctl.get("/v1/status")).status_code == 200
    readers[0].close()
    deadline = asyncio.get_running_loop().time() + 10
    while (again := await RawReader.open(car.socket)).status != 200:  # the freed slot is taken again
        again.close()
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    for r in [*readers[1:], again, extra]:
        r.close()


async def proxy_load(port: int, n: int, request_id: str, connections: int = 8) -> None:
    """`n` chat requests over keep-alive connections, as fast as the sidecar answers them (raw HTTP/1.1: cheap
    enough on the test's side that the sidecar, not the client, sets the pace)."""
    body = json.dumps(chat()).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def one_connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(head + body)
            answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
            length = next(
                int(h.split(b":")[1]) for h in answer.lower().split(b"\r\n") if h.startswith(b"content-length")
            )
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(one_connection(n // connections) for _ in range(connections)))


async def test_a_real_sidecar_drops_readers_that_never_read_and_frees_their_slots(fakes, sidecar) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    stuck = await open_readers(car.socket, 64)
    assert {r.status for r in stuck} == {200}
    # The socket buffers take a few hundred events (long request ids make them fewer), then each reader's
    # queue takes 1000, and after 1000 more missed in a row the sidecar drops it.
    await proxy_load(car.port, 3600, "r" * 128)
    fresh = await open_readers(car.socket, 64)  # all 64 slots are free again
    assert {r.status for r in fresh} == {200}
    got = lines(await stuck[0].read_to_end())  # read within the grace: all it had, then the final marker
    assert got[-1] == {**got[-1], "type": "missed", "count": 1000}
    assert "dropped an event stream reader" in car.log()
    for r in [*stuck, *fresh]:
        r.close()


async def test_the_monitor_says_why_its_event_stream_was_refused(fakes, sidecar) -> None:
    car = await sidecar(
        {**two_node_config(await fakes("primary"), await fakes("backup")), "server": {"max_event_subscribers": 1}}
    )
    taken = await RawReader.open(car.socket)
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        await until_drawn(pilot, lambda: any("max_event_subscribers" in str(n.message) for n in app._notifications))
        assert app.status is not None and app.is_running  # status still works; it retries the stream
    taken.close()
