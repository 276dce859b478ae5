"""Per-node traffic figures: lifetime totals, and rates, error counts and percentiles over a sliding
one-minute window (`WINDOW`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .shapes import TrafficJSON

WINDOW = 60.0  # seconds that rps, the percentiles and the window_* counts cover
TRIM_EVERY = 4096  # entries appended between trims of the window
MAX_WINDOW_ENTRIES = 100_000  # a bound on memory at very high request rates


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank percentile; the one formula for the status API and the monitor."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass
class NodeStats:
    requests: int = 0  # since the process started
    errors: int = 0
    in_flight: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    retries: int = 0  # same-node retries the retry policy made here (after a 5xx, a reset, a short Retry-After)
    continuations: int = 0  # broken streams this node went on with
    probes: int = 0  # recovery probes sent (nodes/recovery.py): each one a real, if tiny, request
    probes_failed: int = 0
    # (finished at, seconds, ok) of recent attempts on this node
    window: deque[tuple[float, float, bool]] = field(default_factory=deque)

    def probed(self, ok: bool) -> None:
        self.probes += 1
        if not ok:
            self.probes_failed += 1

    def finished(self, now: float, seconds: float, ok: bool) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        window = self.window
        window.append((now, seconds, ok))
        if len(window) > TRIM_EVERY or window[0][0] < now - WINDOW * 2:
            self.trim(now)

    def trim(self, now: float) -> None:
        cutoff = now - WINDOW
        window = self.window
        while window and window[0][0] < cutoff:
            window.popleft()
        while len(window) > MAX_WINDOW_ENTRIES:
            window.popleft()

    def snapshot(self, now: float, uptime: float) -> TrafficJSON:
        self.trim(now)
        latencies = sorted(s for _, s, _ in self.window)
        failed = sum(1 for _, _, ok in self.window if not ok)
        span = min(WINDOW, max(uptime, 1.0))
        p50 = percentile(latencies, 0.5)
        p95 = percentile(latencies, 0.95)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "window_s": WINDOW,
            "window_requests": len(latencies),
            "window_errors": failed,
            "in_flight": self.in_flight,
            "rps": round(len(latencies) / span, 3),
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p95_ms": None if p95 is None else round(p95 * 1000, 2),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens_cached": self.tokens_cached,
            "retries": self.retries,
            "continuations": self.continuations,
            "probes": self.probes,
            "probes_failed": self.probes_failed,
        }
