"""An in-memory transport: scripted node answers, for tests that need every failure in milliseconds.

It keeps the real transport's contract (see `transport.py`): `send` returns once
the headers are in or raises `UpstreamError`; a body read that waits longer
than `timeout.read` raises a read timeout, as aiohttp's `sock_read` does. It
also counts what it was asked and what was left open, so a test can prove that
every response was released or closed.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .health import Failure
from .transport import Request, Response, UpstreamError

# A step in a scripted body: bytes to deliver, seconds of silence, or an error to raise.
Step = bytes | float | UpstreamError


@dataclass
class Script:
    """What a node answers: after `delay` seconds (math.inf: never) headers, or `error` instead."""

    status: int = 200
    headers: Sequence[tuple[str, str]] = (("content-type", "application/json"),)
    body: Sequence[Step] = ()
    delay: float = 0.0
    error: UpstreamError | None = None


Handler = Callable[[str, Request], Script | Awaitable[Script]]


class MockResponse:
    def __init__(self, transport: MockTransport, script: Script) -> None:
        self.transport = transport
        self.status = script.status
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in script.headers]
        self.steps = deque(script.body)  # popped from the left: a long script stays linear
        self.state = "open"
        transport.open.add(self)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        return next((v.decode() for k, v in self.raw_headers if k == wanted), None)

    async def chunk(self) -> bytes:
        read = self.transport.read_timeout
        while self.steps:
            step = self.steps.popleft()
            if isinstance(step, UpstreamError):
                raise step
            if isinstance(step, bytes):
                return step
            if step >= read:
                await asyncio.sleep(read)
                raise UpstreamError(Failure.TIMEOUT, "read timeout")
            await asyncio.sleep(step)
        return b""

    async def read(self, limit: int = -1) -> bytes:
        data = bytearray()
        while limit < 0 or len(data) < limit:
            chunk = await self.chunk()
            if not chunk:
                break
            data += chunk
        return bytes(data if limit < 0 else data[:limit])

    def release(self) -> None:
        self._end("released")

    def close(self) -> None:
        self._end("closed")

    def _end(self, state: str) -> None:
        if self.state == "open":
            self.state = state
            self.transport.open.discard(self)


@dataclass(eq=False)
class MockTransport:
    """Answers every request with `handler(node, request)`; records the calls."""

    handler: Handler
    read_timeout: float = 1.0
    calls: list[tuple[str, Request]] = field(default_factory=list)
    open: set[MockResponse] = field(default_factory=set)
    closed: bool = False
    on_send: Callable[[str], None] | None = None

    def count(self, node: str) -> int:
        return sum(1 for name, _ in self.calls if name == node)

    async def send(self, node: str, request: Request) -> Response:
        if self.closed:
            raise AssertionError(f"request to {node} on a closed transport (a reload closed it under a request)")
        self.calls.append((node, request))
        if self.on_send is not None:
            self.on_send(node)
        script = self.handler(node, request)
        if not isinstance(script, Script):
            script = await script
        if script.delay:
            if math.isinf(script.delay) or script.delay >= self.read_timeout:
                await asyncio.sleep(self.read_timeout)
                raise UpstreamError(Failure.TIMEOUT, "read timeout")
            await asyncio.sleep(script.delay)
        if script.error is not None:
            raise script.error
        return MockResponse(self, script)

    async def aclose(self) -> None:
        self.closed = True
