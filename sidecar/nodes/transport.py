"""The seam between the proxy and the HTTP client that reaches the nodes.

Like httpx's transports: two small types (a response, and a transport that sends
a request to a named node), and the client library's exceptions translated into
the sidecar's failure kinds at this one boundary. The proxy, the relay and the
health checker see only these types, so an in-memory transport (`mock.py`)
drives every failure case in tests without sockets.

The real one uses aiohttp's client: httpx's pool collapses under concurrency
(0.38k vs 6.6k req/s at 16 concurrent, measured on this project).
"""

from __future__ import annotations

import asyncio
import errno
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from yarl import URL

from sidecar.config.schema import Config, Timeouts

from .health import Failure
from .watchdog import SendWatch

# aiohttp adds these unless told not to; a proxy must pass the client's own.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
KEEPALIVE_SECONDS = 60
DNS_CACHE_SECONDS = 300
# The sidecar's own resources, not the node's fault: never held against a node's health.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class UpstreamError(Exception):
    """An attempt failed, classified; carries the node's own error answer when there was one."""

    def __init__(
        self,
        kind: Failure | None,
        reason: str,
        *,
        status: int = 0,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        retry_after: float | None = None,
        code: str | None = None,
        local: bool = False,
        moved: bool = False,
        quoted: str = "",
    ) -> None:
        super().__init__(reason)
        # None: no health verdict: the sidecar's own trouble (`local`, out of file descriptors), or a
        # request this node cannot take through no fault of its own (too long for its context window).
        self.kind = kind
        self.local = local
        self.reason = reason
        self.status = status
        self.headers = headers
        self.body = body
        self.retry_after = retry_after
        self.code = code  # the client's error code when this is the last failure (default upstream_unavailable)
        self.moved = moved  # no failure: the node was judged out while this attempt waited (nodes/waiting.py)
        # The node's own words `reason` ends with, "(...)": a key is taken out of these, never of the sidecar's.
        self.quoted = quoted


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: URL
    headers: list[tuple[str, str]]
    body: bytes = b""
    # The task that sends it, when the caller knows it (saves looking it up): a stalled send cancels it.
    owner: asyncio.Task[Any] | None = None


class Response(Protocol):
    """An upstream response whose body has not been read yet."""

    @property
    def status(self) -> int: ...

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...

    def header(self, name: str) -> str | None: ...

    async def read(self, limit: int) -> bytes:
        """The body's first `limit` bytes (reads until then or the end); raises UpstreamError."""

    async def chunk(self) -> bytes:
        """The next bytes as they arrive; b"" at the end; raises UpstreamError."""

    def release(self) -> None:
        """Done with a fully read body: the connection may be reused."""

    def close(self) -> None:
        """Abandon the response: the connection is closed, the node stops sending."""


class Transport(Protocol):
    async def send(self, node: str, request: Request) -> Response:
        """Send `request` to `node` and return once the response headers are in; raises UpstreamError."""

    async def aclose(self) -> None: ...


def translate(exc: BaseException) -> UpstreamError:
    """aiohttp's exceptions (and the timeouts it raises) as the sidecar's failure kinds."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamError(Failure.TIMEOUT, "connect timeout")
    if isinstance(exc, TimeoutError):  # sock_read: silence longer than timeout.read
        return UpstreamError(Failure.TIMEOUT, "read timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        if exc.os_error.errno in LOCAL_ERRNOS:
            return UpstreamError(None, f"sidecar out of resources ({exc.os_error.strerror})", local=True)
        return UpstreamError(Failure.TCP, f"connect failed ({exc.os_error.strerror or exc.os_error})")
    if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
        return UpstreamError(None, f"sidecar out of resources ({exc.strerror})", local=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(Failure.TCP, "connection closed before a response")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(Failure.TCP, "connection closed mid-body")
    return UpstreamError(Failure.TCP, f"connection error ({type(exc).__name__})")


CLIENT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class AiohttpResponse:
    __slots__ = ("_response", "raw_headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.raw_headers = response.raw_headers

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name)

    async def read(self, limit: int) -> bytes:
        # StreamReader.read(n) returns what is buffered (up to n): loop, so a body that arrives in
        # several segments is whole, and never hold more than `limit` of it. Into one buffer that is never
        # copied (BytesIO hands its bytes over): joining the pieces would hold the body twice.
        content = self._response.content
        with io.BytesIO() as buffer:  # closed on every path: an error's traceback must not keep the bytes
            try:
                while (room := limit - buffer.tell()) > 0 and (chunk := await content.read(room)):
                    buffer.write(chunk)
            except CLIENT_ERRORS as exc:
                raise translate(exc) from None
            return buffer.getvalue()

    async def chunk(self) -> bytes:
        try:
            return await self._response.content.readany()
        except CLIENT_ERRORS as exc:
            raise translate(exc) from None

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


def new_session(t: Timeouts) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # the agent's concurrency is the limit; a cap here would only queue
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ttl_dns_cache=DNS_CACHE_SECONDS,
        enable_cleanup_closed=False,
    )
    # total=None: a 20-minute stream that keeps sending must never be cut.
    timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=t.connect, sock_read=t.read)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=SKIP_AUTO_HEADERS,
        raise_for_status=False,
        trust_env=False,
        # A proxy must not keep one client's cookies (e.g. a CDN's Set-Cookie) and send
        # them along with everybody's later requests; it also skips cookie work per request.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


@dataclass(eq=False)
class AiohttpTransport:
    """One connection pool per node, for one config generation.

    A reload builds a new transport; the old one is closed only once no request
    holds its generation any more, so a reload never breaks a request in flight.
    """

    config: Config
    watch: SendWatch
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.timeouts = {node.name: node.timeout for node in self.config.upstream.nodes}

    async def send(self, node: str, request: Request) -> Response:
        t = self.timeouts.get(node) or self.config.upstream.timeout
        session = self.sessions.get(node)
        if session is None:
            session = self.sessions[node] = new_session(t)
        # aiohttp arms sock_read only once the body is written; the watch bounds a stalled write.
        task = self.watch.watch(t.connect + t.send + t.read, request.owner)
        try:
            response = await session.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.body or None,
                # A redirect is never followed: the prompt and the node's key go nowhere else
                # (the attempt treats it as the node's failure).
                allow_redirects=False,
            )
        except asyncio.CancelledError:
            if self.watch.unwatch(task):
                raise UpstreamError(Failure.TIMEOUT, "send timeout") from None
            raise
        except CLIENT_ERRORS as exc:
            self.watch.unwatch(task)
            raise translate(exc) from None
        self.watch.unwatch(task)
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            await session.close()
