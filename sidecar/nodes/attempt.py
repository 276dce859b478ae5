"""One attempt on one node: the scope that owns it.

`Attempt` is the one owner of everything an attempt takes: the node's trial
lease (when the balancer offered a trial), its in-flight count, the upstream
response. On exit it records exactly one outcome, on every path:

- success: the body ended normally;
- failure (a kind and a reason): an `UpstreamError` left the scope, or the
  relay called `fail()` after the node broke an answer already under way;
- neutral: anything else (the client left, the sidecar is stopping, a bug in
  the sidecar, the request's own retry budget ran out): the lease goes back
  with no verdict on the node.

What the node's answer means (a failure, or what may go to the client) is the
data path's business: proxy/answer.py.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from types import TracebackType
from typing import Protocol

from .held import Budget
from .node import Blame, NodeState
from .recovery import ProbeSpec
from .transport import Request, Response, Transport, UpstreamError


class Outcome(Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


class Owner(Protocol):
    """What an attempt needs of its upstream generation (upstream.py): the clock, the transport, and
    where its one outcome goes."""

    clock: Callable[[], float]
    transport: Transport
    held: Budget

    def record(
        self,
        node: NodeState,
        outcome: Outcome,
        failure: UpstreamError | None,
        trial: bool,
        started: float,
        model: str | None = None,
        spec: ProbeSpec | None = None,
    ) -> Blame | None: ...


class Attempt:
    """`with upstream.attempt(choice) as attempt:` — see the module docstring.

    A plain (not async) context manager: taking and giving back never waits, so
    nothing can run between the balancer's offer of a trial and its taking.
    """

    __slots__ = (
        "blame", "ended", "failure", "held", "lost", "model", "node", "response", "spec", "started", "trial",
        "upstream",
    )  # fmt: skip

    def __init__(
        self, upstream: Owner, node: NodeState, trial: bool, model: str | None = None, spec: ProbeSpec | None = None
    ) -> None:
        self.spec = spec  # what a recovery probe would repeat if this attempt's failure ejects the node
        self.blame: Blame | None = None  # what its failure did to the node's health (set on exit)
        self.lost = False  # a hedge's first token came first: no verdict, whatever else happened
        self.upstream = upstream
        self.node = node
        self.trial = trial
        self.model = model  # what the client asked for: a failure may be the model's, not the node's
        self.response: Response | None = None
        self.failure: UpstreamError | None = None
        self.started = 0.0
        self.ended = 0.0  # when its outcome was recorded (the journal tells each attempt's own time)
        self.held = upstream.held.share()  # what the attempt holds of its answer (held.py)

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

    def lose(self) -> None:
        """Another attempt of the same request won the race to a first token (proxy/hedge.py)."""
        self.lost = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        failure = exc if isinstance(exc, UpstreamError) else self.failure
        if self.lost:
            failure, outcome = None, Outcome.NEUTRAL
        elif failure is not None:
            outcome = Outcome.FAILURE if failure.kind is not None else Outcome.NEUTRAL
        else:
            outcome = Outcome.SUCCESS if exc is None else Outcome.NEUTRAL
        response = self.response
        if response is not None:
            if outcome is Outcome.SUCCESS:
                response.release()
            else:
                response.close()  # the node stops generating what nobody will read
        self.held.give_back()
        self.node.stats.in_flight -= 1
        self.ended = self.upstream.clock()
        self.blame = self.upstream.record(self.node, outcome, failure, self.trial, self.started, self.model, self.spec)
