"""One request and its response on a connection: the ASGI `receive`/`send` pair.

The head is built when the app starts its answer and leaves with the first body bytes (one write per
response); the body is framed as the client can take it (chunked for HTTP/1.1, close-delimited for
HTTP/1.0); a client that leaves is reported to the app at once through the `llm_sidecar.disconnect`
scope extension, so no task per request waits for `http.disconnect`. The cycle knows nothing of the
parser or the socket: it sees its connection only as a `Wire`.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

App = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Any]], Awaitable[None]
]
DISCONNECT_EXTENSION = "llm_sidecar.disconnect"
HIGH_WATER = 64 * 1024  # request body bytes buffered before reading pauses
# A response body at least this large is written as it is (one writev with its head and chunk framing):
# joining them would copy it, holding a large answer twice. Smaller ones are joined (one plain write).
WRITEV_BYTES = 64 * 1024
DISCONNECT = {"type": "http.disconnect"}


class Wire(Protocol):
    """What a cycle needs of its connection (connection.py)."""

    loop: asyncio.AbstractEventLoop
    write_paused: asyncio.Future[None] | None

    def write(self, data: bytes) -> None: ...

    def writelines(self, parts: list[bytes]) -> None: ...

    def resume_reading(self) -> None: ...

    def response_done(self, cycle: Cycle) -> None: ...

    def close(self) -> None: ...


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


STATUS_LINE = {status: _status_line(status) for status in range(100, 600)}


def plain(status: int, message: str) -> bytes:
    """A complete JSON error response that closes the connection (for errors before the app runs)."""
    body = b'{"error": {"message": "%s", "type": "invalid_request_error", "code": null}}' % message.encode()
    return (
        STATUS_LINE[status]
        + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        + body
    )


class Cycle:
    """One request and its response: the ASGI receive/send pair and what has gone over the wire."""

    __slots__ = (
        "body", "body_done", "buffered", "chunked", "conn", "disconnected", "expect_continue", "head",
        "head_request", "http11", "keep_alive", "more_body", "no_body", "on_disconnect", "response_complete",
        "response_started", "scope", "sse", "task", "waiter",
    )  # fmt: skip

    def __init__(self, conn: Wire, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
        self.conn = conn
        self.scope: dict[str, Any] | None = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.http11 = scope["http_version"] == "1.1"
        self.head_request = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.buffered = 0
        self.more_body = True  # the parser has more of the body to come
        self.body_done = False  # the app has been given the last body message
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.sse = False  # the response is an event stream: a comment may go between its events
        self.no_body = False
        self.head: bytes | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        # Set by the app through the scope extension: called once if the client goes before the answer is complete.
        self.on_disconnect: Callable[[], None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if not self.body_done:
            while not self.body and self.more_body and not self.disconnected:
                if self.expect_continue:
                    self.expect_continue = False
                    conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                conn.resume_reading()
                self.waiter = conn.loop.create_future()
                await self.waiter
            if self.disconnected:
                return DISCONNECT
            chunks, self.body, self.buffered = self.body, [], 0
            self.body_done = not self.more_body
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            return {"type": "http.request", "body": data, "more_body": self.more_body}
        # The body was delivered: the next message is the client leaving (or the response ending).
        while not self.disconnected and not self.response_complete:
            self.waiter = conn.loop.create_future()
            await self.waiter
        return DISCONNECT

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.write_paused is not None and not self.disconnected:
            await conn.write_paused
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']}")
            self.response_started = True
            self.expect_continue = False
            self.start(message["status"], message.get("headers", ()))
            return
        if message["type"] != "http.response.body" or self.response_complete:
            raise RuntimeError(f"unexpected ASGI message {message['type']} after the response")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.no_body:
            data = b""
        elif len(body) >= WRITEV_BYTES:
            parts = [b"%x\r\n" % len(body), body, b"\r\n"] if self.chunked else [body]
            if self.chunked and not more:
                parts.append(b"0\r\n\r\n")
            if self.head is not None:
                parts.insert(0, self.head)
                self.head = None
            conn.writelines(parts)
            data = b""
        elif self.chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            data = body
        head = self.head
        if head is not None:
            self.head = None
            data = head + data
        if data:
            conn.write(data)
        if not more:
            self.response_complete = True
            self.wake()
            conn.response_done(self)

    def start(self, status: int, headers: Any) -> None:
        """Build the head; it leaves with the first body bytes (one write per response)."""
        parts = [STATUS_LINE.get(status) or _status_line(status)]
        length = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = True
            elif lowered == b"transfer-encoding":
                continue  # framing is ours to choose
            elif lowered == b"connection" and b"close" in value.lower():
                self.keep_alive = False
            elif lowered == b"content-type" and value.lower().startswith(b"text/event-stream"):
                self.sse = True
            parts += (name, b": ", value, b"\r\n")
        self.no_body = self.head_request or status in (204, 304) or status < 200
        if not length and not self.no_body:
            if self.http11:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0 has no chunked: the body ends when the connection does
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)
        # Normally the first body message follows at once and takes the head along (one write);
        # an app that waits first still gets its head out on the next turn of the loop.
        self.conn.loop.call_soon(self.flush_head)

    def probe(self) -> bool:
        """Write an empty SSE comment (`:` and a blank line: no event to any client) to learn whether the
        client is still there; only between writes of a stream whose head is out (writes end at events)."""
        if not self.sse or self.head is not None or self.response_complete or self.disconnected or self.no_body:
            return False
        self.conn.write(b"3\r\n:\n\n\r\n" if self.chunked else b":\n\n")
        return True

    def flush_head(self) -> None:
        head = self.head
        if head is not None and not self.disconnected:
            self.head = None
            self.conn.write(head)

    def lost(self) -> None:
        if self.response_complete:
            return
        self.disconnected = True
        self.wake()
        callback, self.on_disconnect = self.on_disconnect, None
        if callback is not None:
            callback()
