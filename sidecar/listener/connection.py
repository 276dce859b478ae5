"""HTTP/1.1 for the proxy's listener: httptools' parser (llhttp) in front of an ASGI app.

Our own protocol rather than uvicorn's, because a sidecar next to an agent needs
limits uvicorn does not enforce and behaviour it does not have, and getting
them from uvicorn meant subclassing its private protocol class:

- a request head larger than `max_header_bytes` is answered 431 before more is
  buffered (httptools accumulates a header value internally, so the bytes fed
  while the head is incomplete are what is counted);
- a head must arrive within `header_timeout` (a pipelined one too, counted from
  when it began), a body within `body_timeout`, and an idle keep-alive
  connection closes after `keepalive_timeout` (slowloris);
- a client that half-closes after its request still gets its answer;
- HTTP/1.0 clients get close-delimited bodies, never chunked ones, and no `100 Continue`;
- a chunked body's trailers are dropped (never merged into the headers the app
  checks), and transfer codings other than chunked are refused (501);
- after a request that ends the connection (`Connection: close`, HTTP/1.0) the
  bytes that follow are ignored: that request is answered, not turned into a 400;
- a request line without a version, or a missing or repeated Host, is a 400;
- the response head goes out with the first body bytes in one write;
- a client that leaves is reported to the app at once through the
  `llm_sidecar.disconnect` scope extension (no task per request to notice it).

The parser is llhttp in its strict mode (no leniencies), which rejects the
request-smuggling shapes (Content-Length with Transfer-Encoding, bad chunk
sizes, bare LF, obs-fold, ...).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import httptools

from .cycle import DISCONNECT_EXTENSION, HIGH_WATER, Cycle, plain

log = logging.getLogger("llm_sidecar")

HEADER_OVERHEAD = 32  # counted per header on top of its bytes, so many tiny headers count too
PEER_CHECK_DELAY = 0.02  # seconds for a closed client's reset to arrive over loopback
LINGER = 2.0  # seconds to drain a client's unread bytes after an error answer, before closing
TCP_CLOSE = 7  # tcp_info.tcpi_state after a reset (linux/tcp_states.h)


@dataclass(frozen=True)
class Limits:
    """What one client may take of the listener (the [server] keys of the same names)."""

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 30.0
    max_connections: int = 4096


class Refused(Exception):
    """Raised in a parser callback once `Connection.refusal` holds the answer (httptools wraps it)."""


class Host(Protocol):
    """What a connection needs of its server (server.py): the loop, the limits, where requests run."""

    loop: asyncio.AbstractEventLoop
    limits: Limits
    stopping: bool

    @property
    def full(self) -> bool: ...

    def opened(self, conn: Connection) -> None: ...

    def closed(self, conn: Connection) -> None: ...

    async def run(self, cycle: Cycle) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs them one at a time, enforces the limits."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.sockname: Any = None
        self.peername: Any = None
        self.deadline = 0.0
        self.on_deadline: Callable[[], None] | None = None
        self.write_paused: asyncio.Future[None] | None = None
        self.reading = True
        self.served = 0  # answers completed on this connection
        self.read_eof = False
        self.closing = False
        # The request being parsed, and the one the app is running (they differ when pipelined).
        self.url: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.in_head = False
        self.head_started = 0.0  # when the head being parsed began
        self.refusal: tuple[int, str] | None = None  # the error answer a parser callback chose
        self.last = False  # the request after which the connection closes was read: what follows is ignored
        self.parsing: Cycle | None = None
        self.active: Cycle | None = None
        self.queue: deque[Cycle] = deque()

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        self.sockname = transport.get_extra_info("sockname")
        self.peername = transport.get_extra_info("peername")
        self.server.opened(self)
        self.arm(self.limits.header_timeout, self.head_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.last:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.reject(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError:
            if self.last:
                return  # llhttp refuses bytes after a request that ends the connection: that request stands
            # httptools wraps what a callback raises; `refusal` says which answer it chose.
            self.reject(*(self.refusal or (400, "invalid HTTP request")))
            return
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_header_bytes:
                self.reject(431, "request headers too large")

    def eof_received(self) -> bool | None:
        """The client sent FIN: it either closed (gone) or only shut down writing (wants its answer).

        TCP tells the two apart only once we write: a closed socket answers with a reset. So an
        HTTP/1.1 request still waiting for its answer gets an interim `103` (clients skip 1xx they
        did not ask for), a stream under way an empty SSE comment, and a moment later the socket's
        state says whether the client is there.
        """
        self.read_eof = True
        if self.closing:
            return None  # lingering after an error answer: the client is done, close now
        if self.in_head or (self.parsing is not None and self.parsing.more_body):
            return None  # the request can never complete: treat it as gone
        active = self.active
        if active is None and not self.queue:
            return None
        if active is not None and not active.response_started and active.http11:
            self.write(b"HTTP/1.1 103 Early Hints\r\n\r\n")
            self.loop.call_later(PEER_CHECK_DELAY, self.check_peer)
        elif active is not None and active.response_started and active.probe():
            # A stream under way, perhaps stalled upstream: nothing else would be written to find out.
            self.loop.call_later(PEER_CHECK_DELAY, self.check_peer)
        return True  # keep writing: a half-closed client still gets its answer

    def check_peer(self) -> None:
        """After the probe: a reset means the client had closed, and its request is abandoned."""
        if self.closing or self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except (OSError, AttributeError):
            return  # no way to tell here: answer as if half-closed
        if state == TCP_CLOSE:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.cancel_timer()
        self.server.closed(self)
        for cycle in (self.active, *self.queue, self.parsing):
            if cycle is not None:
                cycle.lost()
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    def pause_writing(self) -> None:
        if self.write_paused is None:
            self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self.write_paused = self.write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.url = []
        self.headers = []
        self.head_bytes = 0
        self.in_head = True
        self.head_started = self.loop.time()
        if self.active is None:
            self.arm(self.limits.header_timeout, self.head_timed_out)

    def on_url(self, url: bytes) -> None:
        self.url.append(url)
        self.count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count(len(name) + len(value) + HEADER_OVERHEAD)
        if self.in_head:  # else a chunked body's trailer: dropped, never taken for a header
            self.headers.append((name.lower(), value))

    def count(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > self.limits.max_header_bytes:
            self.refuse(431, "request headers too large")

    def refuse(self, status: int, message: str) -> NoReturn:
        self.refusal = (status, message)
        raise Refused

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise httptools.HttpParserError("unsupported HTTP version")
        if parser.should_upgrade():
            raise httptools.HttpParserError("protocol upgrades are not supported")
        hosts = 0
        expect = False
        codings: list[bytes] = []
        for name, value in self.headers:
            if name == b"host":
                hosts += 1
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
            elif name == b"transfer-encoding":
                codings += (coding.strip().lower() for coding in value.split(b","))
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise httptools.HttpParserError("a request needs exactly one Host header")
        if codings and codings != [b"chunked"]:
            if codings[-1] != b"chunked":
                raise httptools.HttpParserError("chunked is not the final transfer coding")  # RFC 9112 6.3: 400
            # llhttp passes codings before a final chunked; decoding only the chunks would hand the app
            # (and a node) a body still gzipped, say, with nothing saying so.
            self.refuse(501, "Transfer-Encoding other than chunked is not supported")
        url = b"".join(self.url)
        parsed = httptools.parse_url(url)
        raw_path: bytes = parsed.path
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path, encoding="latin-1")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "method": parser.get_method().decode("latin-1"),
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "root_path": "",
            "headers": self.headers,
            "server": self.sockname,
            "client": self.peername,
        }
        cycle = Cycle(self, scope, parser.should_keep_alive(), expect and version == "1.1")  # 1.0 has no 100
        scope["extensions"] = {DISCONNECT_EXTENSION: cycle}
        self.parsing = cycle
        if self.active is None:
            self.run(cycle)
        else:
            self.queue.append(cycle)  # pipelined: runs once the one before has answered
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None or cycle.body_done:
            return
        cycle.body.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > HIGH_WATER:
            self.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        self.parsing = None
        if cycle is None:
            return
        cycle.more_body = False
        if not cycle.keep_alive:
            self.last = True
        if cycle is self.active:
            self.cancel_timer()
        cycle.wake()

    # -------------------------------------------------------------- running requests

    def run(self, cycle: Cycle) -> None:
        self.active = cycle
        if cycle.more_body:
            self.arm(self.limits.body_timeout, self.body_timed_out)
        else:
            self.cancel_timer()
        cycle.task = self.loop.create_task(self.server.run(cycle))

    def response_done(self, cycle: Cycle) -> None:
        self.active = None
        self.served += 1
        if not cycle.keep_alive or self.read_eof or self.server.stopping:
            self.close()
            return
        if cycle.more_body:
            self.close()  # the app answered before reading the whole body: the stream is out of sync
            return
        if self.server.full:
            self.close()  # at the connection cap a kept-alive connection makes room for a waiting one
            return
        if self.queue:
            self.run(self.queue.popleft())
            self.resume_reading()
            return
        if self.in_head:
            # A pipelined head that began while this answer was made: its time runs from when it began.
            self.arm(self.head_started + self.limits.header_timeout - self.loop.time(), self.head_timed_out)
        else:
            self.arm(self.limits.keepalive_timeout, self.close)
        self.resume_reading()

    @property
    def idle(self) -> bool:
        """Kept alive after an answer and waiting for the next request: safe to close at the cap."""
        return self.served > 0 and self.active is None and not self.in_head and not self.queue

    # -------------------------------------------------------------- timers and errors

    def arm(self, seconds: float, callback: Callable[[], None]) -> None:
        """A deadline, checked by the server's sweep (a timer per request costs more than a float)."""
        self.deadline = self.loop.time() + seconds
        self.on_deadline = callback

    def cancel_timer(self) -> None:
        self.on_deadline = None

    def head_timed_out(self) -> None:
        if self.in_head:
            self.reject(408, "request headers not received in time")
        else:
            self.close()  # connected and silent

    def body_timed_out(self) -> None:
        cycle = self.active
        if cycle is not None and not cycle.response_started:
            self.write(plain(408, "request body not received in time"))
        self.close()

    def reject(self, status: int, message: str) -> None:
        """Answer an error the app never sees (the request could not be read) and close."""
        active = self.active
        if active is not None and not active.response_started:
            active.lost()  # its body turned out malformed: the app stops, the error below is the answer
        if active is None or not active.response_started or active.response_complete:
            self.write(plain(status, message))
        log.warning("client request rejected: %d %s", status, message)
        self.linger()

    def linger(self) -> None:
        """Close after an error answer without losing it: stop writing, read and drop what the client
        is still sending (for LINGER seconds at most), then close. Closing with unread data would make
        the kernel send a reset, and a client still sending might never read the answer."""
        transport = self.transport
        if self.closing or transport is None:
            return
        self.closing = True  # nothing more is parsed or written
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        self.resume_linger_reading(transport)
        self.deadline = self.loop.time() + LINGER
        self.on_deadline = transport.close

    def resume_linger_reading(self, transport: asyncio.Transport) -> None:
        if not self.reading:
            self.reading = True
            transport.resume_reading()

    # -------------------------------------------------------------- transport

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self.transport is not None and not self.closing:
            self.transport.writelines(parts)

    def pause_reading(self) -> None:
        if self.reading and self.transport is not None and not self.closing:
            self.reading = False
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.reading and self.transport is not None and not self.closing:
            self.reading = True
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.cancel_timer()
            self.transport.close()
