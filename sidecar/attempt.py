"""One attempt on one node: the scope that owns it, and the wait for its first real bytes.

`Attempt` is the one owner of everything an attempt takes: the node's trial
lease (when the balancer offered a trial), its in-flight count, the upstream
response. On exit it records exactly one outcome, on every path:

- success: the body ended normally;
- failure (a kind and a reason): an `UpstreamError` left the scope, or the
  relay called `fail()` after it had to end a stream with an error event;
- neutral: anything else (the client left, the sidecar is stopping, a bug in
  the sidecar, the request's own retry budget ran out): the lease goes back
  with no verdict on the node.

Nothing reaches the client before `first_bytes` returns, so anything that goes
wrong until then is still retryable: the response headers are held until the
first body byte (for SSE, the first non-comment line), which lets a node that
answers 200 and then stays silent be failed over. Non-stream bodies are read
whole for the same reason.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import TYPE_CHECKING

from .health import Failure
from .transport import Request, Response, UpstreamError

if TYPE_CHECKING:
    from .upstream import NodeState, Upstream

ERROR_BODY_LIMIT = 64 * 1024


class Outcome(Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


@dataclass(slots=True)
class Ready:
    response: Response
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


def retry_after(header: Callable[[str], str | None]) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or OpenAI's retry-after-ms."""
    ms = header("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = header("retry-after")
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


async def first_bytes(response: Response, retry_statuses: frozenset[int]) -> Ready:
    """Wait for what may be sent to the client; raise UpstreamError when the node failed instead."""
    now = time.monotonic
    status = response.status
    if status in retry_statuses:
        data = await response.read(ERROR_BODY_LIMIT)
        raise UpstreamError(
            Failure.HTTP,
            status_reason(status),
            status=status,
            headers=list(response.raw_headers),
            body=data,
            retry_after=retry_after(response.header) if status == 429 else None,
        )
    if (response.header("content-type") or "").startswith("text/event-stream"):
        held = bytearray()
        first_byte = 0.0
        while True:
            chunk = await response.chunk()
            if not chunk:
                raise UpstreamError(Failure.TCP, "stream ended before any data")
            if not held:
                first_byte = now()
            held += chunk
            if has_payload(held):
                return Ready(response, True, bytes(held), first_byte, now())
    data = await response.read()
    return Ready(response, False, data, now(), None)


class Attempt:
    """`with upstream.attempt(choice) as attempt:` — see the module docstring.

    A plain (not async) context manager: taking and giving back never waits, so
    nothing can run between the balancer's offer of a trial and its taking.
    """

    __slots__ = ("failure", "node", "response", "started", "trial", "upstream")

    def __init__(self, upstream: Upstream, node: NodeState, trial: bool) -> None:
        self.upstream = upstream
        self.node = node
        self.trial = trial
        self.response: Response | None = None
        self.failure: UpstreamError | None = None
        self.started = 0.0

    def __enter__(self) -> Attempt:
        # Nothing here awaits, so the trial the balancer offered is still ours to take.
        if self.trial:
            self.node.health.begin_trial()
        self.node.stats.in_flight += 1
        self.started = self.upstream.clock()
        return self

    async def send(self, request: Request) -> Response:
        self.response = await self.upstream.transport.send(self.node.name, request)
        return self.response

    def fail(self, error: UpstreamError) -> None:
        """Record a failure without raising (the relay already told the client)."""
        self.failure = error

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        failure = exc if isinstance(exc, UpstreamError) else self.failure
        if failure is not None:
            outcome = Outcome.FAILURE if failure.kind is not None else Outcome.NEUTRAL
        else:
            outcome = Outcome.SUCCESS if exc is None else Outcome.NEUTRAL
        response = self.response
        if response is not None:
            if outcome is Outcome.SUCCESS:
                response.release()
            else:
                response.close()  # the node stops generating what nobody will read
        self.node.stats.in_flight -= 1
        self.upstream.record(self.node, outcome, failure, self.trial, self.started)
