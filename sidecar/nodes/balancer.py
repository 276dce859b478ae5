"""Node selection: priority levels, smooth weighted round-robin, trials, panic.

Pure: it reads health objects and a clock value, opens no sockets and changes
no health. A trial it offers is taken (and given back) by the attempt scope.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .health import Health


class SmoothWeighted:
    """nginx's smooth weighted round-robin: deterministic and burst-free.

    Works over a candidate set that may change between picks (nodes excluded by
    health or by an earlier attempt of the same request).
    """

    def __init__(self) -> None:
        self.current: dict[int, int] = {}

    def pick(self, candidates: Sequence[tuple[int, int]]) -> int:
        total = 0
        best = -1
        best_weight = 0
        current = self.current
        for key, weight in candidates:
            value = current.get(key, 0) + weight
            current[key] = value
            total += weight
            if best < 0 or value > best_weight:
                best, best_weight = key, value
        current[best] -= total
        return best


@dataclass(frozen=True)
class Choice:
    index: int
    panic: bool = False
    trial: bool = False


class Balancer:
    """Chooses the node for the next attempt of a request."""

    def __init__(self, priorities: Sequence[int], weights: Sequence[int], health: Sequence[Health]) -> None:
        self.weights = list(weights)
        self.health = list(health)
        order = sorted(range(len(priorities)), key=lambda i: -priorities[i])
        levels: dict[int, list[int]] = {}
        for i in order:
            levels.setdefault(priorities[i], []).append(i)
        self.levels = list(levels.values())
        self.rr = [SmoothWeighted() for _ in self.levels]
        self.panic_order = order
        self.plain = [Choice(i) for i in range(len(priorities))]  # immutable: reused per pick

    def choose(self, tried: Collection[int], now: float, prefer: int | None = None) -> Choice | None:
        """The highest level with a usable node wins; panic when none is healthy.

        `prefer`: the node a conversation is pinned to (prompt-cache affinity), taken when it is usable
        in the level that wins, without moving the wheel that places new conversations."""
        health = self.health
        for level, rr in zip(self.levels, self.rr, strict=True):
            candidates = []
            for i in level:
                if i in tried:
                    continue
                state = health[i]
                if state.trial_ready(now):
                    return Choice(i, trial=True)
                if state.available(now):
                    candidates.append(i)
            if prefer is not None and prefer in candidates:
                return self.plain[prefer]
            if len(candidates) == 1:
                return self.plain[candidates[0]]
            if candidates:
                return self.plain[rr.pick([(i, self.weights[i]) for i in candidates])]
        # Panic (as Envoy): no untried node is healthy, and health may be stale, so try
        # the rest in priority order rather than fail fast. Drained nodes stay out.
        rest = [i for i in self.panic_order if i not in tried and not health[i].manual_down]
        if not rest:
            return None
        rest.sort(key=lambda i: health[i].blocked_until > now)
        return Choice(rest[0], panic=True)

    def serving(self, now: float, excluded: frozenset[int] = frozenset()) -> int | None:
        """The node new requests go to now (the first pick, without moving the wheel), of those not `excluded`."""
        for level in self.levels:
            usable = [i for i in level if i not in excluded and self.health[i].available(now)]
            if usable:
                return max(usable, key=lambda i: self.weights[i])
        for i in self.panic_order:
            if i not in excluded and not self.health[i].manual_down:
                return i
        return None
