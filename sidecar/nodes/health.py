"""The per-node health state machine: pure, clock passed in, no I/O.

Two independent verdicts, as in Envoy: active health (probes) and passive
ejection (outlier detection on real traffic). A node takes normal traffic only
when it is active-healthy AND not ejected AND not manually down AND not inside
a provider's Retry-After. Keeping them apart fixes two traps:

- APISIX's: with passive checks only, an unhealthy node never sees traffic and
  so never recovers. An ejection here ends by its own timer (Envoy's ejection
  time, doubling per ejection, capped), then one trial request decides.
- A probe (`GET /v1/models`) that succeeds says nothing about a chat endpoint
  that hangs, so a probe never ends an ejection; otherwise such a node flaps
  and every other request waits the full read timeout.

Counters follow APISIX (lua-resty-healthcheck): a success resets the failure
counters, a failure resets the success counter, and a threshold of one kind
flips the verdict. Active and passive keep their own counters and thresholds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from sidecar.config.schema import ActiveCheck, PassiveCheck
from sidecar.observe.shapes import CountersJSON

from .recovery import Recovery

# A 429's Retry-After at least this long is the whole verdict: the node (or the model on it) is held that
# long and nothing is counted, since many requests hitting one short limit at once must not eject it. A
# shorter one ("Retry-After: 0", a few retry-after-ms) holds nothing (the next request comes after it), so
# that 429 counts as a failure: a limit that repeats takes the node out like any repeated failure.
MIN_RETRY_AFTER = 1.0


class Failure(StrEnum):
    HTTP = "http"
    TCP = "tcp"
    TIMEOUT = "timeout"


class Source(StrEnum):
    ACTIVE = "active"
    PASSIVE = "passive"


class State(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # active probes failed
    EJECTED = "ejected"  # real traffic failed; back after a timer and a trial request
    DOWN = "down"  # drained by hand


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

    def clear(self) -> None:
        self.successes = self.http_failures = self.tcp_failures = self.timeouts = 0

    def undo(self, kind: Failure) -> None:
        """Take back one failure of `kind` (it was the request's, not the node's)."""
        if kind is Failure.HTTP:
            self.http_failures = max(0, self.http_failures - 1)
        elif kind is Failure.TCP:
            self.tcp_failures = max(0, self.tcp_failures - 1)
        else:
            self.timeouts = max(0, self.timeouts - 1)

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

    def as_dict(self) -> CountersJSON:
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
        self.active_healthy = True
        # No probe has answered yet: the first failed probe takes the node out at once, so a node wrong
        # from the start (a bad port) is not shown healthy, nor sent traffic, until enough probes failed.
        self.proven = False
        self.ejected_until: float | None = None  # set while ejected; the trial is due from then
        self.manual_down = False
        self.blocked_until = 0.0
        self.ejections = 0
        self.restored_at = now
        self.trial_in_flight = False
        # Ejected with recovery probes on (recovery.py): no user request is a trial; a probe ends it.
        self.probing = False
        self.reason = "start"
        self.changed_at = now
        self.counters = {Source.ACTIVE: Counters(), Source.PASSIVE: Counters()}

    @property
    def state(self) -> State:
        if self.manual_down:
            return State.DOWN
        if not self.active_healthy:
            return State.UNHEALTHY
        if self.ejected_until is not None:
            return State.EJECTED
        return State.HEALTHY

    @property
    def healthy(self) -> bool:
        """Neither verdict is against the node (manual state and Retry-After aside)."""
        return self.active_healthy and self.ejected_until is None

    def available(self, now: float) -> bool:
        """May take normal traffic."""
        return self.active_healthy and self.ejected_until is None and not self.manual_down and now >= self.blocked_until

    def trial_ready(self, now: float) -> bool:
        """An ejected node whose ejection time has passed may take one trial request."""
        return (
            self.ejected_until is not None
            and not self.probing
            and now >= self.ejected_until
            and not self.trial_in_flight
            and self.active_healthy
            and not self.manual_down
            and now >= self.blocked_until
        )

    def begin_trial(self) -> None:
        self.trial_in_flight = True

    def end_trial(self) -> None:
        """Give the trial back without a verdict (the client left, the sidecar failed)."""
        self.trial_in_flight = False

    def block(self, until: float, now: float) -> None:
        """Keep the node out of selection until `until` (a 429's Retry-After), capped."""
        if not math.isfinite(until):
            until = now + self._max_ejection()
        until = min(until, now + self._max_ejection())
        self.blocked_until = max(self.blocked_until, until)

    def set_manual(self, down: bool, now: float) -> Transition | None:
        """`down`: drained by hand. Back to automatic (`node auto`) is "trust it now": every verdict
        against the node is cleared (ejection, Retry-After hold, failure counts, a failed probe), and
        the checks then judge it afresh, as at start."""
        before = self.state
        self.manual_down = down
        if not down:
            self.active_healthy = True
            self.ejected_until = None
            self.probing = False
            self.blocked_until = 0.0  # a trial under way keeps its lease: its attempt gives it back
            self.restored_at = now
            for counters in self.counters.values():
                counters.clear()
        return self._changed(before, "manual down" if down else "manual auto", now)

    def record_success(self, source: Source, now: float, reason: str = "ok", trial: bool = False) -> Transition | None:
        before = self.state
        counters = self.counters[source]
        counters.success()
        if source is Source.ACTIVE:
            active = self.active
            self.proven = True
            if active is not None and not self.active_healthy and counters.successes >= active.healthy_successes:
                self.active_healthy = True
            return self._changed(before, reason, now)
        if trial:
            self.trial_in_flight = False
        if self.ejected_until is not None and self.passive is not None:
            if counters.successes >= self.passive.healthy_successes:
                self.ejected_until = None
                self.probing = False
                self.restored_at = now
            else:
                self.ejected_until = now  # more successes needed: the next trial may go now
        return self._changed(before, reason, now)

    def record_failure(
        self, source: Source, kind: Failure, now: float, reason: str, trial: bool = False
    ) -> Transition | None:
        before = self.state
        count = self.counters[source].failure(kind)
        if source is Source.ACTIVE:
            first = not self.proven
            self.proven = True
            if self.active is not None and self.active_healthy and (first or count >= _threshold(self.active, kind)):
                self.active_healthy = False
            return self._changed(before, reason, now)
        if trial:
            self.trial_in_flight = False
        if self.passive is None:
            return None
        if self.ejected_until is not None:
            if trial:
                self._eject(now)  # the trial failed: out again, for twice as long
                self.reason = reason
            return None
        if count >= _threshold(self.passive, kind):
            if now - self.restored_at > self._max_ejection():
                self.ejections = 0  # healthy long enough: forget earlier ejections
            self._eject(now)
        return self._changed(before, reason, now)

    def recovered(self, now: float, reason: str) -> Transition | None:
        """A recovery probe succeeded: the ejection ends at once (the node is judged afresh from here)."""
        before = self.state
        self.probing = False
        if self.ejected_until is not None:
            self.ejected_until = None
            self.restored_at = now
            self.counters[Source.PASSIVE].clear()
        return self._changed(before, reason, now)

    def take_back(self, kind: Failure, ejected_until: float | None, now: float, reason: str) -> Transition | None:
        """Undo one passive failure: the request caused it (proxy/poison.py). If it began the ejection that
        still stands (`ejected_until`), the ejection ends; else its count goes back."""
        before = self.state
        if ejected_until is not None and self.ejected_until == ejected_until:
            self.ejected_until = None
            self.probing = False
            self.ejections = max(0, self.ejections - 1)
            self.counters[Source.PASSIVE].clear()
        else:
            self.counters[Source.PASSIVE].undo(kind)
        return self._changed(before, reason, now)

    def ejection_time(self) -> float:
        """How long the next ejection lasts."""
        assert self.passive is not None
        # The exponent is bounded: a node dead for days must not overflow the float.
        base: float = self.passive.base_ejection_time * 2 ** min(self.ejections, 40)
        return min(base, self.passive.max_ejection_time)

    def _eject(self, now: float) -> None:
        self.ejected_until = now + self.ejection_time()
        self.ejections += 1

    def _max_ejection(self) -> float:
        return (self.passive or PassiveCheck()).max_ejection_time

    def _changed(self, before: State, reason: str, now: float) -> Transition | None:
        after = self.state
        if after == before:
            return None
        self.reason = reason
        self.changed_at = now
        return Transition(before, after, reason)


class ModelHealth:
    """One model on one node, where the failure is the model's (providers rate-limit and overload per
    model): out for a Retry-After, or ejected after failures of that model alone, back by its timer.
    The node's own health is untouched, so its other models keep flowing."""

    __slots__ = ("ejections", "failures", "out_until", "reason", "recovery")

    def __init__(self) -> None:
        self.out_until = 0.0
        self.failures = 0
        self.ejections = 0
        self.reason = ""
        self.recovery: Recovery | None = None  # out until a recovery probe succeeds (recovery.py)

    def available(self, now: float) -> bool:
        return self.recovery is None and now >= self.out_until

    def recovered(self) -> None:
        self.recovery = None
        self.out_until = 0.0
        self.failures = 0

    def take_back(self, ejected_until: float | None) -> bool:
        """Undo one failure the request caused; True when that ends the ejection it began."""
        if ejected_until is not None and self.out_until == ejected_until:
            self.recovered()
            self.ejections = max(0, self.ejections - 1)
            return True
        self.failures = max(0, self.failures - 1)
        return False

    def rate_limited(self, until: float, now: float, cap: float) -> None:
        self.out_until = max(self.out_until, min(until, now + cap))
        self.reason = "rate limited"

    def failed(self, now: float, threshold: int, base: float, cap: float, reason: str) -> bool:
        """Count a failure; True when it ejected the model (for `base` doubling per ejection, capped)."""
        self.failures += 1
        if self.failures < threshold:
            return False
        self.out_until = now + min(cap, base * 2 ** min(self.ejections, 40))
        self.ejections += 1
        self.failures = 0
        self.reason = reason
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.recovery = None  # a real answer of the model here: no probe needed any more


class ModelStates:
    """A node's per-model health and when each model last succeeded; bounded (least recently used go
    first), since model names come from clients."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.health: OrderedDict[str, ModelHealth] = OrderedDict()
        self.succeeded: dict[str, float] = {}

    def get(self, model: str) -> ModelHealth:
        state = self.health.get(model)
        if state is None:
            state = self.health[model] = ModelHealth()
            if len(self.health) > self.size:
                self.health.popitem(last=False)
        else:
            self.health.move_to_end(model)
        return state

    def ok(self, model: str, now: float) -> None:
        """A success of `model` (once per successful request: kept to a dict store)."""
        succeeded = self.succeeded
        if len(succeeded) >= self.size and model not in succeeded:
            succeeded.clear()  # rare (many model names): forgetting old successes only delays a verdict
        succeeded[model] = now
        if self.health:
            state = self.health.get(model)
            if state is not None:
                state.succeeded()

    def lately_ok(self, besides: str, now: float, within: float = 600.0) -> str | None:
        """The model that last succeeded here, other than `besides`, within `within` seconds; None if none."""
        found = [(t, m) for m, t in self.succeeded.items() if m != besides and now - t <= within]
        return max(found)[1] if found else None

    def others_fine(self, model: str, now: float, within: float) -> bool:
        """Another model on this node succeeded lately: a failure of `model` is the model's, not the node's."""
        return any(m != model and now - t <= within for m, t in self.succeeded.items())

    def available(self, model: str, now: float) -> bool:
        state = self.health.get(model)
        return state is None or state.available(now)

    def clear(self) -> None:
        """Forget every per-model verdict (the node is trusted again by hand)."""
        self.health.clear()

    def out(self, now: float) -> list[tuple[str, ModelHealth]]:
        return [(m, s) for m, s in self.health.items() if not s.available(now)]

    def probing(self) -> list[tuple[str, Recovery]]:
        return [(m, s.recovery) for m, s in self.health.items() if s.recovery is not None]
