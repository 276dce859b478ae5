"""Recovery probes: how a node, or a model on it, that real traffic ejected comes back. Pure.

With `recovery = "probe"` no user request is ever a trial. The sidecar itself sends the smallest real
request of the kind that failed (formats/probe.py), RecoveryProber (prober.py) on this schedule:
FIRST seconds after the ejection (or after a Retry-After hold, never before it), then after intervals
doubling up to MAX_INTERVAL while it keeps failing; the first success ends the ejection at once. A
request whose path has no probe (an upload, say), or that named no model, leaves its node to come back
by a trial request as with `recovery = "trial"`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.formats.probe import probeable

FIRST = 1.0  # seconds from the ejection to the first probe
MAX_INTERVAL = 8.0  # the longest wait between probes of a target that keeps failing
MAX_IN_FLIGHT = 2  # probes of one target at once: a node that comes back answers the next while one hangs


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """What to probe with: the failing request's path, model (as the client named it) and whether it streamed."""

    path: str
    model: str
    stream: bool
    limit: str = "max_tokens"  # the chat field that bounds the answer (formats/probe.py)

    @staticmethod
    def of(path: str, model: str | None, stream: bool, limit: str = "max_tokens") -> ProbeSpec | None:
        return ProbeSpec(path, model, stream, limit) if model and probeable(path) else None


@dataclass(slots=True)
class Recovery:
    """One target out (a node, or a model on it) and its probe schedule."""

    spec: ProbeSpec
    next_at: float
    interval: float = FIRST
    failures: int = 0
    in_flight: int = 0  # probes under way: a second may go while one hangs, never more
    last: str | None = None  # the last probe's result, for status
    # A model the node served well lately, other than the one that failed: every other probe asks for it,
    # so one bad model (a client's, or one the provider dropped) cannot keep a whole node out.
    alternate: str | None = None

    @staticmethod
    def start(spec: ProbeSpec, now: float, not_before: float = 0.0, alternate: str | None = None) -> Recovery:
        return Recovery(spec, max(now + FIRST, not_before), alternate=alternate)

    def next_spec(self) -> ProbeSpec:
        """What the next probe asks: the failed request's kind, and every other time the alternate model."""
        if self.alternate is not None and self.failures % 2 == 1:
            return ProbeSpec(self.spec.path, self.alternate, self.spec.stream, self.spec.limit)
        return self.spec

    def due(self, now: float) -> bool:
        return self.in_flight < MAX_IN_FLIGHT and now >= self.next_at

    def failed(self, now: float, reason: str, not_before: float = 0.0) -> None:
        self.failures += 1
        self.interval = min(self.interval * 2, MAX_INTERVAL)
        self.next_at = max(now + self.interval, not_before)
        self.last = reason
