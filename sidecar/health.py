"""The per-node health state machine: pure, clock passed in, no I/O.

Counters follow APISIX (lua-resty-healthcheck): a success resets the failure
counters, a failure resets the success counter, and a threshold of one kind
flips the state. Active probes and passive outcomes keep their own counters and
thresholds. One trap of APISIX is fixed here: with passive checks only, an
unhealthy node never sees traffic and so never recovers; we give it a single
trial request after an Envoy-style ejection time that doubles per ejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .config import ActiveCheck, PassiveCheck


class Failure(StrEnum):
    HTTP = "http"
    TCP = "tcp"
    TIMEOUT = "timeout"


class Source(StrEnum):
    ACTIVE = "active"
    PASSIVE = "passive"


@dataclass(frozen=True)
class Transition:
    before: str
    after: str
    reason: str


@dataclass
class Counters:
    successes: int = 0
    http_failures: int = 0
    tcp_failures: int = 0
    timeouts: int = 0

    def success(self) -> None:
        self.successes += 1
        self.http_failures = self.tcp_failures = self.timeouts = 0

    def failure(self, kind: Failure) -> int:
        self.successes = 0
        if kind is Failure.HTTP:
            self.http_failures += 1
            return self.http_failures
        if kind is Failure.TCP:
            self.tcp_failures += 1
            return self.tcp_failures
        self.timeouts += 1
        return self.timeouts

    def as_dict(self) -> dict[str, int]:
        return {
            "successes": self.successes,
            "http_failures": self.http_failures,
            "tcp_failures": self.tcp_failures,
            "timeouts": self.timeouts,
        }


def _threshold(check: ActiveCheck | PassiveCheck, kind: Failure) -> int:
    if kind is Failure.HTTP:
        return check.unhealthy_http_failures
    if kind is Failure.TCP:
        return check.unhealthy_tcp_failures
    return check.unhealthy_timeouts


class Health:
    """Health of one node. `now` is a monotonic clock reading in seconds."""

    def __init__(self, active: ActiveCheck | None, passive: PassiveCheck | None, now: float) -> None:
        self.active = active
        self.passive = passive
        self.healthy = True
        self.manual_down = False
        self.reason = "start"
        self.changed_at = now
        self.counters = {Source.ACTIVE: Counters(), Source.PASSIVE: Counters()}
        self.blocked_until = 0.0
        self.ejections = 0
        self.trial_at: float | None = None
        self.trial_in_flight = False

    @property
    def state(self) -> str:
        if self.manual_down:
            return "down"
        return "healthy" if self.healthy else "unhealthy"

    def available(self, now: float) -> bool:
        """May take normal traffic."""
        return self.healthy and not self.manual_down and now >= self.blocked_until

    def trial_ready(self, now: float) -> bool:
        """An ejected node without active checks may take one trial request."""
        return (
            not self.healthy
            and not self.manual_down
            and self.trial_at is not None
            and now >= self.trial_at
            and not self.trial_in_flight
        )

    def begin_trial(self) -> None:
        self.trial_in_flight = True

    def block(self, until: float) -> None:
        """Keep the node out of selection until `until` (a 429's Retry-After)."""
        self.blocked_until = max(self.blocked_until, until)

    def set_manual(self, down: bool, now: float) -> Transition | None:
        before = self.state
        self.manual_down = down
        if self.state == before:
            return None
        return self._changed(before, "manual down" if down else "manual auto", now)

    def record_success(self, source: Source, now: float, reason: str = "ok") -> Transition | None:
        check = self.active if source is Source.ACTIVE else self.passive
        counters = self.counters[source]
        counters.success()
        if source is Source.PASSIVE:
            self.trial_in_flight = False
        if check is None or self.healthy:
            return None
        if counters.successes < check.healthy_successes:
            # A trial succeeded but more successes are needed: allow the next one now.
            if self.trial_at is not None:
                self.trial_at = now
            return None
        before = self.state
        self.healthy = True
        self.trial_at = None
        return self._changed(before, reason, now)

    def record_failure(self, source: Source, kind: Failure, now: float, reason: str) -> Transition | None:
        check = self.active if source is Source.ACTIVE else self.passive
        counters = self.counters[source]
        count = counters.failure(kind)
        was_trial = source is Source.PASSIVE and self.trial_in_flight
        if source is Source.PASSIVE:
            self.trial_in_flight = False
        if check is None:
            return None
        if not self.healthy:
            if was_trial:
                self._eject(now)
            return None
        if count < _threshold(check, kind):
            return None
        before = self.state
        if now - self.changed_at > self._max_ejection():
            self.ejections = 0  # healthy long enough: forget earlier ejections
        self.healthy = False
        self._eject(now)
        return self._changed(before, reason, now)

    def _eject(self, now: float) -> None:
        if self.active is not None or self.passive is None:
            self.trial_at = None  # active probes bring it back
            return
        self.ejections += 1
        wait = min(self.passive.base_ejection_time * 2 ** (self.ejections - 1), self.passive.max_ejection_time)
        self.trial_at = now + wait

    def _max_ejection(self) -> float:
        return self.passive.max_ejection_time if self.passive is not None else 0.0

    def _changed(self, before: str, reason: str, now: float) -> Transition:
        self.reason = reason
        self.changed_at = now
        return Transition(before, self.state, reason)
