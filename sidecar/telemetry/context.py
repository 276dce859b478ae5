"""One request's trace context, on the hot path: the client's W3C `traceparent` continued, a span id per attempt.

Nothing here imports OpenTelemetry, and nothing here makes a span. Ids are drawn as the request arrives and as
each attempt's request is built, so the `traceparent` a node receives already names that attempt's span; the
spans are made once the request has ended, from its record, on the exporter's thread (export.py). With traces
off no `Trace` exists and the client's `traceparent` goes upstream untouched, like any other header.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from sidecar.config.schema import Node

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
# version-traceid-parentid-flags, lowercase hex (W3C Trace Context); a later version may append fields.
TRACEPARENT_RE = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?")
MAX_TRACESTATE = 512  # characters kept of the client's tracestate (W3C: what a participant must pass on at least)
FIRST_BODY = 64 * 1024  # of the answer's first body, kept to read the model and id that answered
CONTENT_BYTES = 1 << 20  # of the answer kept when prompts and completions are exported
SAMPLED = 0x01

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Step(NamedTuple):
    """One attempt as it began: its span id, its node, when (monotonic), and how long the request's lists of failed
    attempts and continuations were then (what was added to them before the next step is this one's)."""

    span_id: int
    node: Node
    start: float
    failed: int
    continued: int


class Tally(Protocol):
    """What an attempt reads of its request's record (proxy/exchange.py)."""

    attempts: list[dict[str, Any]]
    continued: list[dict[str, str]]


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid header, else None (the request starts a trace of its own)."""
    match = TRACEPARENT_RE.fullmatch(value.strip(b" \t"))
    if match is None or match[1] == b"ff" or (match[1] == b"00" and match[5] is not None):
        return None
    trace_id, parent = int(match[2], 16), int(match[3], 16)
    if not trace_id or not parent:
        return None
    return trace_id, parent, int(match[4], 16)


def new_span_id() -> int:
    return random.getrandbits(64) or 1


class Trace:
    """What the spans of one request need that its record does not hold. Made by `Tracing.begin`."""

    __slots__ = ("answer", "body", "ended", "first", "mono", "parent", "sink", "span_id", "state", "steps",
                 "trace_id", "wall")  # fmt: skip

    def __init__(
        self,
        sink: Callable[[Trace, dict[str, Any]], None],
        trace_id: int,
        parent: int | None,
        state: str | None,
        started: float,
        body: bytes | None,
    ) -> None:
        self.sink = sink
        self.trace_id = trace_id
        self.span_id = new_span_id()  # the request's span
        self.parent = parent  # the client's span, when it sent a valid traceparent
        self.state = state  # the client's tracestate, passed on as it came
        self.mono = started  # the request's arrival, monotonic ...
        self.wall = time.time_ns() - int((time.monotonic() - started) * 1e9)  # ... and in ns since the epoch
        self.steps: list[Step] = []
        self.ended = 0.0
        self.body = body  # the request body, kept only when prompts are exported
        self.first: bytes | None = None  # the start of the answer as the client got it
        self.answer: bytearray | None = None if body is None else bytearray()  # the answer, when exported

    def attempt(self, node: Node, headers: list[tuple[str, str]], tally: Tally) -> list[tuple[str, str]]:
        """The headers of an attempt's request: the client's traceparent replaced by one naming the attempt."""
        span_id = new_span_id()
        self.steps.append(Step(span_id, node, time.monotonic(), len(tally.attempts), len(tally.continued)))
        value = f"00-{self.trace_id:032x}-{span_id:016x}-01"
        # A client's tracestate belongs to its traceparent: with none kept (a new trace), it goes too (W3C).
        drop = ("traceparent",) if self.parent is not None else ("traceparent", "tracestate")
        return [*(h for h in headers if h[0] not in drop), ("traceparent", value)]

    def watch(self, send: Send) -> Send:
        """`send`, noting what the client is sent (the first body always; all of it when content is exported)."""

        async def watched(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                self.saw(message.get("body", b""))
            await send(message)

        return watched

    def saw(self, body: bytes) -> None:
        if self.first is None and body:
            self.first = body if len(body) <= FIRST_BODY else body[:FIRST_BODY]
        answer = self.answer
        if answer is not None and len(answer) < CONTENT_BYTES:
            answer += body[: CONTENT_BYTES - len(answer)]

    def end(self, event: dict[str, Any]) -> None:
        """The request ended: its record names the trace (logs join traces by it), and both go to the exporter."""
        self.ended = time.monotonic()
        event["trace_id"] = f"{self.trace_id:032x}"
        event["span_id"] = f"{self.span_id:016x}"
        self.sink(self, event)


class Tracing:
    """Starts a `Trace` per request; `sink` takes each ended one (it must be cheap and must not raise)."""

    def __init__(self, sink: Callable[[Trace, dict[str, Any]], None], content: bool) -> None:
        self.sink = sink
        self.content = content

    def begin(self, headers: list[tuple[bytes, bytes]], started: float, body: bytes) -> Trace | None:
        """None when the client's traceparent says its trace is not sampled: the request then goes on untraced,
        that header passed upstream as it came. An invalid or repeated traceparent starts a new trace."""
        parents: list[bytes] = []
        states: list[bytes] = []
        for name, value in headers:
            if name == TRACEPARENT:
                parents.append(value)
            elif name == TRACESTATE:
                states.append(value)
        parsed = parse_traceparent(parents[0]) if len(parents) == 1 else None
        if parsed is None:
            trace_id, parent, state = random.getrandbits(128) or 1, None, None
        else:
            trace_id, parent, flags = parsed
            if not flags & SAMPLED:
                return None
            joined = b",".join(s.strip() for s in states).decode("latin-1")
            state = (joined[:MAX_TRACESTATE].rpartition(",")[0] if len(joined) > MAX_TRACESTATE else joined) or None
        return Trace(self.sink, trace_id, parent, state, started, body if self.content else None)
