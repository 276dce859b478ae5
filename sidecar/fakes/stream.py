"""Sending an answer, streamed or not, and breaking it as a fault says: the same for every API format.

A format renders its streamed answer as a `Wire` (its events in order, the deltas marked), and `send` writes it:
keep-alive comments first (the provider-wide keepalive fault), the opening events at once, heartbeats while a
slow first token waits, then the rest. A stream fault (cut, stall, malformed, error-event, no-done) sends the
first `cut_after` deltas and the events between them, never the closing ones, then ends as its name says; the
provider-wide drop fault aborts before delta number `drop_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .core import FOREVER, Behaviour, linger

KEEPALIVE = b": keep-alive\n\n"


@dataclass
class Wire:
    opening: list[bytes]  # events sent at once, before any wait
    frames: list[tuple[bytes, bool]]  # the rest, one event each, in order; True marks a delta
    heartbeat: bytes = KEEPALIVE  # what a slow first token sends while it waits
    broken: bytes = b""  # the malformed fault's event: data that is not the JSON it starts to be
    failure: Callable[[int], bytes] = lambda sent: b""  # the error-event fault's events, after `sent` events


def cut(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def send(
    request: web.Request,
    response: web.StreamResponse,
    wire: Wire,
    behaviour: Behaviour,
    ending: str = "stop",
    wait: float = 0.0,
    keepalive: float = 0.0,
    drop_after: int | None = None,
) -> None:
    """Write `wire` to a prepared `response`, ending as `ending` says: stop, or one of the stream faults."""
    with contextlib.suppress(ConnectionResetError):  # the client left; nothing to tell it
        await _send(request, response, wire, behaviour, ending, wait, keepalive, drop_after)


async def _send(
    request: web.Request,
    response: web.StreamResponse,
    wire: Wire,
    b: Behaviour,
    ending: str,
    wait: float,
    keepalive: float,
    drop_after: int | None,
) -> None:
    await _beat(response, KEEPALIVE, keepalive)
    for data in wire.opening:
        await response.write(data)
    await _beat(response, wire.heartbeat, wait)
    last = max((i for i, (_, delta) in enumerate(wire.frames) if delta), default=-1)
    limit = None if ending == "stop" else b.cut_after
    deltas, sent = 0, len(wire.opening)
    for data, delta in wire.frames[: last + 1]:
        if delta:
            if drop_after is not None and deltas >= drop_after:
                cut(request)
                return
            if limit is not None and deltas >= limit:
                break
            if b.chunk_delay and deltas:
                await asyncio.sleep(b.chunk_delay)
            deltas += 1
        await response.write(data)
        sent += 1
    if ending in ("cut", "stall"):
        if ending == "stall":
            await linger(request, FOREVER)
        cut(request)
        return
    if ending == "malformed":
        await response.write(wire.broken)
    elif ending == "error-event":
        await response.write(wire.failure(sent))
    elif ending == "stop":
        for data, _ in wire.frames[last + 1 :]:
            await response.write(data)
    await response.write_eof()  # no-done, malformed, error-event: a clean end all the same


async def _beat(response: web.StreamResponse, heartbeat: bytes, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await response.write(heartbeat)
        await asyncio.sleep(min(0.2, left))


async def event_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


async def broken_body(request: web.Request, data: bytes, headers: dict[str, str], ending: str) -> web.StreamResponse:
    """A JSON answer that breaks: "cut" sends half of it (short of its Content-Length) and aborts, "stall" sends the
    headers and goes silent."""
    headers = {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    if ending == "cut":
        await response.write(data[: len(data) // 2])
    else:
        await linger(request, FOREVER)
    cut(request)
    return response


async def partial_body(request: web.Request, start: bytes) -> web.StreamResponse:
    """The provider-wide drop fault without a stream: the start of a body that promised 1000 bytes, then a cut."""
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
    await response.prepare(request)
    await response.write(start)
    cut(request)
    return response
