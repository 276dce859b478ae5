"""The proxy's HTTP/1.1 server (sidecar/listener/connection.py) over real sockets: limits, slow clients, framing, smuggling.

A tiny ASGI app stands behind it; clients are raw sockets, so every byte on the wire is the test's choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sidecar.listener.bind import bind_tcp
from sidecar.listener.connection import Limits
from sidecar.listener.cycle import DISCONNECT_EXTENSION
from sidecar.server import Server

FAST = Limits(max_header_bytes=8 * 1024, header_timeout=0.3, body_timeout=0.3, keepalive_timeout=0.3)


class App:
    """Echoes the request; `/stream` answers without a length; `/wait` waits until the client leaves;
    `/later` echoes after 0.3 s."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.heads: list[list[tuple[bytes, bytes]]] = []  # each request's headers, once its body was read
        self.gone = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((scope["method"], scope["path"], body))
        self.heads.append(list(scope["headers"]))
        if scope["path"] == "/wait":
            scope["extensions"][DISCONNECT_EXTENSION].on_disconnect = self.gone.set
            await asyncio.sleep(5)
            return
        if scope["path"] == "/later":
            await asyncio.sleep(0.3)
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for part in (b"one ", b"two ", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        answer = b"echo:" + body
        headers = [(b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[Server, asyncio.Future[None]]] = []

    async def start(limits: Limits = FAST) -> tuple[int, App]:
        app = App()
        sock = bind_tcp("127.0.0.1", 0)
        server = Server(app, limits)
        running.append((server, asyncio.ensure_future(server.serve(sock))))
        await asyncio.sleep(0)
        return sock.getsockname()[1], app

    yield start
    for server, task in running:
        server.stop()
        await asyncio.wait_for(task, 10)


def exchange(port: int, data: bytes, *, shut: bool = False, timeout: float = 3.0, delay: float = 0.0) -> bytes:
    """Send `data` (optionally half-closing), read until the server closes or `timeout` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        if delay:
            try:
                for byte in data:
                    conn.sendall(bytes([byte]))
                    time.sleep(delay)
            except OSError:
                pass  # cut off: what the server said is still there to read
        else:
            # The server may close before taking it all (that is the point of a limit).
            with contextlib.suppress(OSError):
                conn.sendall(data)
        if shut:
            conn.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def request(path: str = "/x", body: bytes = b"", method: str = "POST", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_a_request_is_answered_and_the_head_leaves_with_the_body(serve) -> None:
    port, app = await serve()
    out = await asyncio.to_thread(exchange, port, request(body=b"hi", extra="Connection: close\r\n"))
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\necho:hi")
    assert app.seen == [("POST", "/x", b"hi")]


async def test_headers_past_the_limit_get_431_before_more_is_buffered(serve) -> None:
    port, app = await serve()
    huge = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (5 * 1024 * 1024) + b"\r\n\r\n"
    started = time.monotonic()
    out = await asyncio.to_thread(exchange, port, huge)
    assert out.startswith(b"HTTP/1.1 431 ") and b"too large" in out
    assert time.monotonic() - started < 2.5 and app.seen == []
    many = b"GET /x HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(2000)) + b"\r\n"
    assert (await asyncio.to_thread(exchange, port, many)).startswith(b"HTTP/1.1 431 ")


async def test_slow_or_silent_clients_are_cut_off(serve) -> None:
    port, app = await serve()
    # A head trickling in (slowloris): 408 once header_timeout has passed since it began.
    started = time.monotonic()
    out = await asyncio.to_thread(exchange, port, b"GET /x HTTP/1.1\r\nHo", delay=0.02)
    assert out.startswith(b"HTTP/1.1 408 ") and 0.3 <= time.monotonic() - started < 2
    # Connected and silent: closed.
    assert await asyncio.to_thread(exchange, port, b"") == b""
    # A body that never completes: 408.
    out = await asyncio.to_thread(exchange, port, request(body=b"0123456789")[:-5])
    assert out.startswith(b"HTTP/1.1 408 ") and b"body" in out
    assert app.seen == []


async def test_an_idle_keepalive_connection_is_closed(serve) -> None:
    port, _ = await serve()
    started = time.monotonic()
    out = await asyncio.to_thread(exchange, port, request(body=b"a"))
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"echo:a")  # then the server closed it
    assert time.monotonic() - started < 2


async def test_a_half_closed_client_still_gets_its_answer(serve) -> None:
    port, app = await serve()
    out = await asyncio.to_thread(exchange, port, request(body=b"q"), shut=True)
    assert out.startswith(b"HTTP/1.1 ") and out.endswith(b"echo:q")
    assert app.seen == [("POST", "/x", b"q")]


async def test_a_client_that_closes_while_waiting_is_reported_at_once(serve) -> None:
    port, app = await serve(Limits())

    def leave() -> None:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(request("/wait"))
            time.sleep(0.2)

    await asyncio.to_thread(leave)
    await asyncio.wait_for(app.gone.wait(), 2)


async def test_http10_streams_are_close_delimited_never_chunked(serve) -> None:
    port, _ = await serve()
    out = await asyncio.to_thread(exchange, port, b"GET /stream HTTP/1.0\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower() and body == b"one two three"
    chunked = await asyncio.to_thread(exchange, port, b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert b"transfer-encoding: chunked" in chunked.lower() and chunked.endswith(b"0\r\n\r\n")


async def test_head_keeps_the_length_and_sends_no_body(serve) -> None:
    port, _ = await serve()
    out = await asyncio.to_thread(exchange, port, b"HEAD /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and b"content-length: 5\r\n" in out and out.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /x\r\n\r\n",  # no version
        b"GET /x HTTP/1.1\r\n\r\n",  # no Host
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts
        b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["no version", "no host", "two hosts", "http/2 line", "upgrade"],
)
async def test_malformed_requests_get_400(serve, raw: bytes) -> None:
    port, app = await serve()
    out = await asyncio.to_thread(exchange, port, raw)
    assert out.startswith(b"HTTP/1.1 400 ") and app.seen == []


SMUGGLING = {
    "cl and te": b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /evil HTTP/1.1\r\nHost: t\r\n\r\n",
    "two lengths": b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabcGET /evil HTTP/1.1\r\nHost: t\r\n\r\n",
    "te not last chunked": b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /evil HTTP/1.1\r\nHost: t\r\n\r\n",
    "te obfuscated": b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /evil HTTP/1.1\r\nHost: t\r\n\r\n",
    "space before colon": b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nGET /evil HTTP/1.1\r\nHost: t\r\n\r\n",
    "obs-fold": b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\nGET /evil HTTP/1.1\r\nHost: t\r\n\r\n",
    "bad chunk size": b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\nGET /evil HTTP/1.1\r\nHost: t\r\n\r\n",
    "chunk size overflow": b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nabc\r\n0\r\n\r\n",
    "negative length": b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: -3\r\n\r\nabcGET /evil HTTP/1.1\r\nHost: t\r\n\r\n",
    "nul in header": b"POST /x HTTP/1.1\r\nHost: t\r\nX-A: b\x00c\r\nContent-Length: 0\r\n\r\n",
    "bare cr": b"POST /x HTTP/1.1\r\nHost: t\rContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(SMUGGLING.values()), ids=list(SMUGGLING))
async def test_request_smuggling_shapes_are_refused(serve, raw: bytes) -> None:
    port, app = await serve()
    out = await asyncio.to_thread(exchange, port, raw)
    assert out.startswith(b"HTTP/1.1 400 "), out[:80]
    assert all(path != "/evil" for _, path, _ in app.seen)


async def test_pipelined_requests_are_answered_in_order(serve) -> None:
    port, app = await serve()
    raw = request(body=b"1") + request(body=b"22") + request(body=b"333", extra="Connection: close\r\n")
    out = await asyncio.to_thread(exchange, port, raw)
    assert out.count(b"HTTP/1.1 200 ") == 3
    assert out.index(b"echo:1") < out.index(b"echo:22") < out.index(b"echo:333")
    assert [body for _, _, body in app.seen] == [b"1", b"22", b"333"]


async def test_expect_100_continue(serve) -> None:
    port, _ = await serve()

    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
            conn.sendall(request(body=b"", extra="Expect: 100-continue\r\nConnection: close\r\n").replace(
                b"Content-Length: 0", b"Content-Length: 4"))  # fmt: skip
            interim = conn.recv(100)
            conn.sendall(b"body")
            return interim + b"|" + conn.recv(1000)

    out = await asyncio.to_thread(talk)
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n|HTTP/1.1 200 ") and out.endswith(b"echo:body")


async def test_at_the_connection_cap_idle_connections_make_room(serve) -> None:
    port, _ = await serve(Limits(max_connections=3, keepalive_timeout=30, header_timeout=30))

    def run() -> list[bytes]:
        idle = []
        for _ in range(3):
            conn = socket.create_connection(("127.0.0.1", port), timeout=3)
            conn.sendall(request(body=b"k"))
            assert conn.recv(1000).endswith(b"echo:k")
            idle.append(conn)
        # A fourth client is served: the oldest idle keep-alive connection was closed for it.
        out = exchange(port, request(body=b"new", extra="Connection: close\r\n"))
        closed = [conn.recv(10) for conn in idle[:1]]
        for conn in idle:
            conn.close()
        return [out, *closed]

    out, oldest = await asyncio.to_thread(run)
    assert out.endswith(b"echo:new") and oldest == b""


async def test_at_the_connection_cap_busy_connections_make_new_ones_wait(serve) -> None:
    port, _ = await serve(Limits(max_connections=2, header_timeout=0.5))

    def run() -> tuple[float, bytes]:
        busy = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for conn in busy:
            conn.sendall(b"GET /x HTTP/1.1\r\n")  # in the middle of a head
        started = time.monotonic()
        out = exchange(port, request(body=b"w", extra="Connection: close\r\n"))
        for conn in busy:
            conn.close()
        return time.monotonic() - started, out

    waited, out = await asyncio.to_thread(run)
    assert out.endswith(b"echo:w") and waited >= 0.3  # served once the slow heads timed out


async def test_an_error_answer_is_not_lost_to_a_reset_while_the_client_is_still_sending(serve) -> None:
    port, _ = await serve(Limits(max_header_bytes=8 * 1024))

    def send_then_read() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            # Far past the limit, in one go: the server answers 431 while this is still being sent.
            conn.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (2 * 1024 * 1024) + b"\r\n\r\n")
            out = b""
            while chunk := conn.recv(65536):
                out += chunk
            return out

    out = await asyncio.to_thread(send_then_read)  # a reset would raise ConnectionResetError here
    assert out.startswith(b"HTTP/1.1 431 ")


def chunked(body: bytes, trailer: bytes = b"", encoding: bytes = b"chunked", extra: bytes = b"") -> bytes:
    head = b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: %b\r\n%b\r\n" % (encoding, extra)
    return head + b"%x\r\n%b\r\n0\r\n%b\r\n" % (len(body), body, trailer)


async def test_trailers_never_become_request_headers(serve) -> None:
    port, app = await serve()
    raw = chunked(b"hi", b"Authorization: Bearer trailer-key\r\nX-Api-Key: k\r\nHost: evil\r\n", extra=b"X-A: 1\r\n")
    out = await asyncio.to_thread(exchange, port, raw + request(body=b"next", extra="Connection: close\r\n"))
    assert out.count(b"HTTP/1.1 200 ") == 2 and b"echo:hi" in out and out.endswith(b"echo:next")
    assert app.heads[0] == [(b"host", b"t"), (b"transfer-encoding", b"chunked"), (b"x-a", b"1")]
    assert (b"authorization", b"Bearer trailer-key") not in app.heads[1]


async def test_trailers_still_count_against_the_head_limit(serve) -> None:
    port, _ = await serve()
    out = await asyncio.to_thread(exchange, port, chunked(b"hi", b"X-Big: " + b"a" * (16 * 1024) + b"\r\n"))
    assert b"HTTP/1.1 431 " in out


@pytest.mark.parametrize(
    "last",
    [
        request(body=b"first", extra="Connection: close\r\n"),
        b"POST /x HTTP/1.0\r\nContent-Length: 5\r\n\r\nfirst",
        b"POST /x HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, close\r\nContent-Length: 5\r\n\r\nfirst",
    ],
    ids=["connection close", "http/1.0", "close among tokens"],
)
async def test_what_is_pipelined_after_the_last_request_is_ignored_and_the_last_is_answered(serve, last: bytes) -> None:
    port, app = await serve()
    out = await asyncio.to_thread(exchange, port, last + request("/evil", body=b"x") + b"garbage\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"echo:first") and out.count(b"HTTP/1.1") == 1
    assert app.seen == [("POST", "/x", b"first")]


async def test_what_comes_after_the_last_request_in_a_later_read_is_ignored_too(serve) -> None:
    port, app = await serve(Limits(header_timeout=5, body_timeout=5, keepalive_timeout=5))

    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
            conn.sendall(request("/later", body=b"first", extra="Connection: close\r\n"))
            time.sleep(0.1)
            conn.sendall(b"GET /evil HTTP/1.1\r\n\x00\r\n\r\n")
            out = b""
            while chunk := conn.recv(65536):
                out += chunk
            return out

    out = await asyncio.to_thread(talk)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"echo:first")
    assert [path for _, path, _ in app.seen] == ["/later"]


async def test_a_pipelined_head_that_trickles_gets_the_header_timeout_not_the_keepalive_one(serve) -> None:
    port, app = await serve(Limits(header_timeout=0.4, body_timeout=5, keepalive_timeout=30))

    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(request(body=b"1") + b"GET /slow HTTP/1.1\r\n")
            out = b""
            for _ in range(40):  # one header byte every 0.1 s: the head would take 4 s
                try:
                    conn.sendall(b"X")
                except OSError:
                    break
                time.sleep(0.1)
            conn.settimeout(1)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    out += chunk
            return out

    out = await asyncio.to_thread(talk)
    assert out.startswith(b"HTTP/1.1 200 ") and b"echo:1" in out
    assert b"HTTP/1.1 408 " in out and b"request headers not received in time" in out
    assert [path for _, path, _ in app.seen] == ["/x"]


async def test_no_100_continue_for_http10(serve) -> None:
    port, _ = await serve()

    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
            conn.sendall(b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            time.sleep(0.2)  # the server is waiting for the body by now
            conn.sendall(b"body")
            out = b""
            while chunk := conn.recv(65536):
                out += chunk
            return out

    out = await asyncio.to_thread(talk)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"echo:body") and b"100 Continue" not in out


@pytest.mark.parametrize(
    "encoding",
    [
        b"gzip, chunked",
        b"deflate,chunked",
        b"gzip\r\nTransfer-Encoding: chunked",
        b"identity, chunked",
        b"x-custom;q=1, chunked",
    ],
)
async def test_transfer_codings_other_than_chunked_are_refused_with_501(serve, encoding: bytes) -> None:
    port, app = await serve()
    out = await asyncio.to_thread(exchange, port, chunked(b"hi", encoding=encoding))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501 ") and b"content-type: application/json" in head
    assert b"Transfer-Encoding" in json.loads(body)["error"]["message"].encode()
    assert app.seen == []


async def test_chunked_in_any_case_is_still_accepted(serve) -> None:
    port, _ = await serve()
    out = await asyncio.to_thread(exchange, port, chunked(b"hi", encoding=b"Chunked", extra=b"Connection: close\r\n"))
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"echo:hi")
