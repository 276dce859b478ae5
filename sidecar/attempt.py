"""One attempt on one node: send the request, wait for the first real bytes.

Nothing reaches the client here, so anything that goes wrong is still
retryable: the response headers are held until the first body byte (for SSE,
the first non-comment line), which lets a node that answers 200 and then stays
silent be failed over. Non-stream bodies are read whole for the same reason.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .health import Failure
from .upstream import NodeState
from .watchdog import SendWatch

ERROR_BODY_LIMIT = 64 * 1024


@dataclass
class Failed:
    kind: Failure
    reason: str
    # the upstream's own error answer, returned when every attempt fails
    status: int = 0
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytes = b""
    retry_after: float | None = None


@dataclass
class Ready:
    response: aiohttp.ClientResponse
    stream: bool
    body: bytes  # the whole body, or what was held back of a stream
    first_byte: float
    first_token: float | None


def status_reason(status: int) -> str:
    if status in (401, 402, 403):
        return f"auth ({status})"
    if status == 429:
        return "rate limited (429)"
    return f"http {status}"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or OpenAI's retry-after-ms."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def has_payload(held: bytes | bytearray) -> bool:
    """True once the SSE bytes carry a line that is not a comment (": keep-alive")."""
    for line in held.split(b"\n"):
        line = line.strip()
        if line and not line.startswith(b":"):
            return True
    return False


def describe(exc: BaseException) -> tuple[Failure, str]:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Failure.TIMEOUT, "connect timeout"
    if isinstance(exc, TimeoutError):  # sock_read: silence longer than timeout.read
        return Failure.TIMEOUT, "read timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Failure.TCP, f"connect failed ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Failure.TCP, "connection closed before a response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Failure.TCP, "connection closed mid-body"
    return Failure.TCP, f"connection error ({type(exc).__name__})"


async def attempt(
    node: NodeState,
    method: str,
    url: URL,
    headers: list[tuple[str, str]],
    body: bytes,
    retry_statuses: frozenset[int],
    send_limit: float,
    watch: SendWatch,
) -> Failed | Ready:
    """Send one request and classify the outcome; never raises for upstream faults."""
    assert node.session is not None
    now = time.monotonic
    response: aiohttp.ClientResponse | None = None
    try:
        # aiohttp arms sock_read only once the body is written; the watch bounds a stalled write.
        task = watch.watch(send_limit)
        try:
            response = await node.session.request(method, url, headers=headers, data=body or None)
        except asyncio.CancelledError:
            if watch.unwatch(task):
                return Failed(Failure.TIMEOUT, "send timeout")
            raise
        watch.unwatch(task)
        status = response.status
        if status in retry_statuses:
            data = await response.content.read(ERROR_BODY_LIMIT)
            response.release()
            return Failed(
                Failure.HTTP,
                status_reason(status),
                status,
                list(response.raw_headers),
                data,
                retry_after(response.headers) if status == 429 else None,
            )
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            held = bytearray()
            first_byte = 0.0
            while True:
                chunk = await response.content.readany()
                if not chunk:
                    response.release()
                    return Failed(Failure.TCP, "stream ended before any data")
                if not held:
                    first_byte = now()
                held += chunk
                if has_payload(held):
                    return Ready(response, True, bytes(held), first_byte, now())
        data = await response.read()
        response.release()
        return Ready(response, False, data, now(), None)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        if response is not None:
            response.close()
        kind, reason = describe(exc)
        return Failed(kind, reason)
