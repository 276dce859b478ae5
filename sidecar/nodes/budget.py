"""Nodes out of selection because they spent their budget, and the whole sidecar's spent budget.

The spend recorder (spend/recorder.py) sets these when a request's cost reaches a budget; selection
(upstream.py) skips a node that is out, in panic mode too, and the proxy answers 429 while the sidecar's own
budget is spent, or every node of the request's format is out. Pure: each verdict ends at a Unix time
(budgets reset at local midnight or on the 1st, not on the monotonic clock), and the reader passes the time in.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def resets(until: float, now: float) -> str:
    """`resets at 00:00 local time (in 3h12m)`; the date too when it is not within a day."""
    left = max(0, int(until - now))
    shape = "%H:%M" if left < 86400 else "%Y-%m-%d %H:%M"
    return f"resets at {time.strftime(shape, time.localtime(until))} local time (in {left // 3600}h{left % 3600 // 60:02d}m)"


@dataclass(frozen=True)
class Out:
    words: str  # which budget and what was spent: `daily budget $5.00 ([budget] daily_usd) spent: $5.02 today`
    until: float  # Unix time it resets

    def message(self, now: float) -> str:
        return f"{self.words}; {resets(self.until, now)}"


class Budgets:
    """What is out for budget now; shared by every config generation (a reload keeps it)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Out] = {}
        self.sidecar: Out | None = None

    def excluded(self, index: Mapping[str, int], now: float) -> set[int]:
        """The nodes of a generation (`index`: name -> position) out for budget at `now`."""
        out = set()
        for name, verdict in list(self.nodes.items()):
            if now >= verdict.until:
                del self.nodes[name]  # the budget reset: the node is back
            elif name in index:
                out.add(index[name])
        return out

    def node_out(self, name: str, now: float) -> Out | None:
        verdict = self.nodes.get(name)
        return verdict if verdict is not None and now < verdict.until else None

    def sidecar_out(self, now: float) -> Out | None:
        verdict = self.sidecar
        if verdict is not None and now >= verdict.until:
            self.sidecar = verdict = None
        return verdict

    def refusal(self, names: Iterable[str], now: float) -> Out | None:
        """Why a request gets 429: the sidecar's budget is spent, or every node in `names` (those that speak
        the request's format) is out for its own; None when it may go on."""
        if (out := self.sidecar_out(now)) is not None:
            return out
        outs = [(name, self.node_out(name, now)) for name in names]
        if not outs or any(o is None for _, o in outs):
            return None
        spent = [(name, o) for name, o in outs if o is not None]
        words = "; ".join(f"{name}: {o.words}" for name, o in spent)
        return Out(f"every node for this request has spent its budget ({words})", min(o.until for _, o in spent))
