"""A first-token limit that learns, per (node, model), from that pair's own recent first tokens. Pure.

With fewer than MIN_SAMPLES recent first tokens the configured `first_token` stands. With enough, the
limit is MULTIPLIER times their 99th percentile, far above anything the pair has shown, so a slow but
healthy answer is not cut, clamped between `first_token_min` and `first_token`: a node whose first
tokens come within a second is declared silent after 10 s, not 60 s, while a model that thinks in
silence for 40 s keeps its 60 s because its own history says so. A timeout at a learned limit below
the configured one doubles the pair's limit (a node that got slower is not cut again and again); each
first token that comes halves that doubling again.
"""

from __future__ import annotations

from collections import OrderedDict, deque

MIN_SAMPLES = 20  # first tokens before the limit learns
WINDOW = 64  # the most recent first tokens kept per (node, model)
MAX_AGE = 1800.0  # seconds: older first tokens say little about the node now
MULTIPLIER = 4.0
MAX_STRETCH = 64.0


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class FirstTokens:
    """The recent first tokens of one (node, model)."""

    __slots__ = ("samples", "stretch")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=WINDOW)  # (when, seconds)
        self.stretch = 1.0

    def observe(self, now: float, seconds: float) -> None:
        self.samples.append((now, seconds))
        if self.stretch > 1.0:
            self.stretch = max(1.0, self.stretch / 2)

    def percentile(self, now: float, q: float) -> float | None:
        """The q-quantile of the recent first tokens; None with too few to say."""
        recent = [s for t, s in self.samples if now - t <= MAX_AGE]
        return nearest_rank(recent, q) if len(recent) >= MIN_SAMPLES else None

    def limit(self, now: float, configured: float, floor: float, stretched: bool = True) -> float:
        """The limit in force; `stretched` False: before any widening after timeouts (what a recovery
        probe starts from: it widens its own way, see prober.py)."""
        p99 = self.percentile(now, 0.99)
        if p99 is None:
            return configured
        return min(configured, max(floor, MULTIPLIER * p99) * (self.stretch if stretched else 1.0))

    def timed_out(self, limit: float, configured: float) -> None:
        """A stream got no first token within `limit`: if that was a learned limit, widen it."""
        if limit < configured:
            self.stretch = min(self.stretch * 2, MAX_STRETCH)


class FirstTokenHistory:
    """A node's FirstTokens per model, bounded (least recently used go first: model names come from clients)."""

    __slots__ = ("models", "size")

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.models: OrderedDict[str, FirstTokens] = OrderedDict()

    def get(self, model: str | None) -> FirstTokens:
        key = model or ""
        found = self.models.get(key)
        if found is None:
            found = self.models[key] = FirstTokens()
            if len(self.models) > self.size:
                self.models.popitem(last=False)
        else:
            self.models.move_to_end(key)
        return found

    def limits(self, now: float, configured: float, floor: float) -> dict[str, float]:
        """Each known model's limit now ("" for requests without a model), for status and the monitor."""
        return {model: round(ft.limit(now, configured, floor), 3) for model, ft in self.models.items()}
