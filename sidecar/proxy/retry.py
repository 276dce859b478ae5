"""The retry policy of one request: which node may be tried again, and when. Pure: no I/O, clock passed in.

The sidecar is the only retry owner (clients are told `x-should-retry: false`), so
it must retry the way a good SDK would, across nodes:

- a 429 whose Retry-After fits `max_wait` is waited out on the same node (the
  agent stays on its preferred model and its prompt cache); a longer one fails
  over, and the node is kept out for that long (health's business); a
  Retry-After of 0 names no wait, so that 429 is one without a Retry-After
  (the openai and anthropic SDKs ignore a Retry-After <= 0 too): fail over;
- a 5xx or a connection closed before the answer is retried on the same node
  after a short jittered backoff; either way a node gets at most `same_node`
  such retries in a row before the request fails over;
- a silent node (a timeout: connect, read, first token) is never tried again in
  the same request, and neither is a node that refused the request itself
  (auth, context window, a redirect, a broken answer);
- when every node has failed transiently, rounds start again in priority order
  after the shortest wait (Retry-After or backoff), until `retry_timeout` after
  the request arrived. A first try on each node is always allowed.

Whatever the waits, no node sees more than two attempts within MIN_SPACING seconds.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from enum import Enum

from sidecar.config.schema import RetryPolicy
from sidecar.nodes.health import Failure
from sidecar.nodes.transport import UpstreamError

MIN_SPACING = 1.5  # a third attempt on a node waits until this long after the first of the last two
# One generator for every request: seeding a new one costs more than the rest of a plan (os.urandom).
_JITTER = random.Random()


class Fault(Enum):
    RATE_LIMITED = "rate limited"  # 429
    SERVER = "server"  # 5xx, or the connection closed before the answer: often gone on a retry
    UNREACHABLE = "unreachable"  # connect failed: the node may be back in a later round
    SILENT = "silent"  # a timeout: never again in this request
    FINAL = "final"  # this node will not do for this request (auth, context window, a broken answer)
    MOVED = "moved"  # judged out while the attempt waited: not this attempt's fault; it may be back in a later round


def fault_of(error: UpstreamError) -> Fault:
    if error.moved:
        return Fault.MOVED
    if error.status == 429:
        return Fault.RATE_LIMITED
    if error.kind is Failure.TIMEOUT:
        return Fault.SILENT
    if error.status >= 500:
        return Fault.SERVER
    if error.kind is Failure.TCP and not error.status:
        return Fault.UNREACHABLE if error.reason.startswith("connect ") else Fault.SERVER
    return Fault.FINAL


@dataclass
class NodeTries:
    times: list[float] = field(default_factory=list)  # when each failed attempt started
    ready_at: float = 0.0  # not before (a Retry-After or a backoff)
    same_used: int = 0  # same-node retries spent
    final: bool = False  # never again in this request


@dataclass(frozen=True)
class Decision:
    """After a failure: retry the same node after `wait` seconds, or (`same` False) go on."""

    same: bool
    wait: float = 0.0


GO_ON = Decision(False)


class RetryPlan:
    def __init__(
        self,
        policy: RetryPolicy,
        started: float,
        *,
        nodes: int = 1,
        retry_timeout: float = 0.0,
        retries: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.deadline = started + retry_timeout if retry_timeout else math.inf
        self.max_attempts = math.inf if retries is None else retries + 1
        self.rng = rng or _JITTER
        self.node_count = nodes
        self.nodes: dict[int, NodeTries] = {}
        self.this_round: set[int] = set()
        self.attempts = 0
        self.current = started  # when the attempt under way started

    def tries(self, index: int) -> NodeTries:
        tries = self.nodes.get(index)
        if tries is None:
            tries = self.nodes[index] = NodeTries()
        return tries

    @property
    def exhausted(self) -> bool:
        return self.attempts >= self.max_attempts

    def start(self, index: int, now: float) -> None:
        # Only failed attempts need their start kept (the spacing rule): a success ends the plan.
        self.current = now
        self.this_round.add(index)
        self.attempts += 1

    def excluded(self, now: float) -> set[int]:
        """Nodes the balancer must not offer now: final ones, those tried in this round, and those whose
        Retry-After or backoff is not over (a new round must not undo the wait it began with)."""
        if not self.nodes:
            return self.this_round  # nothing failed yet: the common case, with no set to build
        # A millisecond of slack: a sleep may end a hair before the time it was asked to wait for.
        return self.this_round | {i for i, t in self.nodes.items() if t.final or t.ready_at > now + 0.001}

    def failed(self, index: int, fault: Fault, retry_after: float | None, now: float) -> Decision:
        """Record a failed attempt; say whether the same node goes next (after how long)."""
        if retry_after == 0.0:  # no wait named: an immediate same-node retry would only meet the limit again
            retry_after = None
        tries = self.tries(index)
        if fault is Fault.MOVED:  # no attempt of its own counted: a later round may try it again
            tries.ready_at = max(tries.ready_at, now)
            return GO_ON
        tries.times.append(self.current)
        policy = self.policy
        count = len(tries.times)
        if fault in (Fault.SILENT, Fault.FINAL) or count >= policy.attempts_per_node:
            tries.final = True
            return GO_ON
        if fault is Fault.RATE_LIMITED and retry_after is not None:
            tries.ready_at = self.spaced(tries, now + retry_after)
            worth_waiting = retry_after <= policy.max_wait
        elif retry_after is not None:  # an overloaded node (503, 529) said when: not before, and elsewhere first
            tries.ready_at = self.spaced(tries, now + retry_after)
            worth_waiting = False
        else:
            tries.ready_at = self.spaced(tries, now + self.backoff(count - 1))
            worth_waiting = fault is Fault.SERVER
        if not worth_waiting or tries.same_used >= policy.same_node:
            return GO_ON
        tries.same_used += 1
        if tries.ready_at > self.deadline:
            return GO_ON
        # A same-node retry never takes the place of a first try elsewhere under a `retries` cap.
        untried = self.node_count - len(self.nodes)
        if self.attempts + untried >= self.max_attempts:
            return GO_ON
        return Decision(True, tries.ready_at - now)

    def round_wait(self, now: float) -> float | None:
        """Every node was tried in this round: seconds to wait before the next, or None to give up."""
        if self.exhausted or now >= self.deadline:
            return None
        ready = [t.ready_at for t in self.nodes.values() if not t.final and t.ready_at <= self.deadline]
        if not ready:
            return None
        self.this_round.clear()
        return max(0.0, min(ready) - now)

    def backoff(self, retry: int) -> float:
        """Exponential, with jitter so that many clients hit by the same outage do not retry in step."""
        base = min(self.policy.max_backoff, self.policy.backoff * 2.0 ** min(retry, 30))
        return base * self.rng.uniform(0.5, 1.0)

    @staticmethod
    def spaced(tries: NodeTries, when: float) -> float:
        if len(tries.times) >= 2:
            return max(when, tries.times[-2] + MIN_SPACING)
        return when
