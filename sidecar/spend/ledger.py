"""Spend per node and model, today and this month, and which budget is spent. Pure: the time is passed in.

Days and months are local calendar ones: a daily budget resets at local midnight, a monthly one on the 1st.
A budget is spent once spend reaches it; the verdict holds until the period ends (or the budget is raised).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.config.schema import Budget
from sidecar.nodes.budget import Out, resets
from sidecar.observe.shapes import ModelSpendJSON, NodeSpendJSON, SpendJSON

SIDECAR = ""  # the scope of the whole sidecar's budget


def day_bounds(now: float) -> tuple[float, float]:
    """The local day around `now`: (its midnight, the next midnight), as Unix times (DST included)."""
    t = time.localtime(now)
    start = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))
    end = time.mktime((t.tm_year, t.tm_mon, t.tm_mday + 1, 0, 0, 0, 0, 0, -1))
    return start, end


def month_bounds(now: float) -> tuple[float, float]:
    t = time.localtime(now)
    start = time.mktime((t.tm_year, t.tm_mon, 1, 0, 0, 0, 0, 0, -1))
    end = time.mktime((t.tm_year, t.tm_mon + 1, 1, 0, 0, 0, 0, 0, -1))
    return start, end


def usd(value: float) -> str:
    """Dollars as people read them: $12.34, and cents' fractions for small amounts ($0.0042)."""
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.4f}" if value >= 0.0001 else f"${value:.6f}"


@dataclass(frozen=True)
class Verdict:
    """A spent budget: whose (SIDECAR or a node), which, how much was spent, and when it resets."""

    scope: str
    period: str  # "daily" | "monthly"
    limit: float
    spent: float
    until: float

    @property
    def words(self) -> str:
        """`the sidecar's daily budget of $20.00 (budget.daily_usd) is spent: $20.04 today`."""
        when = "today" if self.period == "daily" else "this month"
        whose = "the sidecar's" if self.scope == SIDECAR else f"node {self.scope}'s"
        limit = usd(self.limit)
        return f"{whose} {self.period} budget of {limit} (budget.{self.period}_usd) is spent: {usd(self.spent)} {when}"

    def out(self) -> Out:
        return Out(self.words, self.until)


class Ledger:
    """What was spent, by node and model, in the current day and month."""

    def __init__(self, budget: Budget, nodes: Mapping[str, Budget], now: float) -> None:
        self.budget = budget
        self.nodes = dict(nodes)
        self.day = (0.0, 0.0)
        self.month = (0.0, 0.0)
        self.today: dict[tuple[str, str], float] = {}  # (node, model) -> USD
        self.requests: dict[tuple[str, str], int] = {}  # (node, model) -> priced requests today
        self.node_month: dict[str, float] = {}
        self.total_today = 0.0
        self.total_month = 0.0
        self.unpriced = 0  # answered requests today that no price applied to
        self.roll(now)

    def roll(self, now: float) -> bool:
        """Start a new day (and month) when `now` is past the current one; True when it did."""
        if self.day[0] <= now < self.day[1]:
            return False
        self.day = day_bounds(now)
        self.today, self.requests = {}, {}
        self.total_today = 0.0
        self.unpriced = 0
        if not self.month[0] <= now < self.month[1]:
            self.month = month_bounds(now)
            self.node_month = {}
            self.total_month = 0.0
        return True

    def configure(self, budget: Budget, nodes: Mapping[str, Budget]) -> None:
        """New budgets (a reload): what was spent stays."""
        self.budget, self.nodes = budget, dict(nodes)

    def add(self, node: str, model: str | None, cost: float, when: float) -> None:
        """One answered request's cost, at `when` (Unix time)."""
        if not self.day[0] <= when < self.day[1]:
            if when < self.day[0]:
                return  # a request of yesterday finishing after midnight's roll: yesterday is closed
            self.roll(when)
        key = (node, model or "")
        today = self.today
        today[key] = today.get(key, 0.0) + cost
        self.requests[key] = self.requests.get(key, 0) + 1
        self.node_month[node] = self.node_month.get(node, 0.0) + cost
        self.total_today += cost
        self.total_month += cost

    def node_today(self, node: str) -> float:
        return sum(cost for (name, _), cost in self.today.items() if name == node)

    def unpriced_request(self, when: float) -> None:
        """An answered request with token counts that no price applied to."""
        if when >= self.day[1]:
            self.roll(when)
        self.unpriced += 1

    def restore(self, node: str, model: str | None, cost: float, today: bool, requests: int = 0) -> None:
        """Spend read back from the journal at start: this month's, whether it was today, and of how many
        priced requests (so that today's figures pair a sum with its count after a restart)."""
        self.node_month[node] = self.node_month.get(node, 0.0) + cost
        self.total_month += cost
        if today:
            key = (node, model or "")
            self.today[key] = self.today.get(key, 0.0) + cost
            self.total_today += cost
            self.requests[key] = self.requests.get(key, 0) + requests

    def _verdict(self, scope: str, budget: Budget, today: float, month: float) -> Verdict | None:
        if budget.monthly_usd is not None and month >= budget.monthly_usd:
            return Verdict(scope, "monthly", budget.monthly_usd, month, self.month[1])
        if budget.daily_usd is not None and today >= budget.daily_usd:
            return Verdict(scope, "daily", budget.daily_usd, today, self.day[1])
        return None

    def sidecar_over(self) -> Verdict | None:
        return self._verdict(SIDECAR, self.budget, self.total_today, self.total_month)

    def nodes_over(self) -> dict[str, Verdict]:
        over = {}
        for name, budget in self.nodes.items():
            verdict = self._verdict(name, budget, self.node_today(name), self.node_month.get(name, 0.0))
            if verdict is not None:
                over[name] = verdict
        return over

    def report(self, now: float, table_date: str) -> SpendJSON:
        """The spend section of the status JSON (observe/shapes.py)."""
        self.roll(now)
        over = self.sidecar_over()
        names = sorted(set(self.nodes) | set(self.node_month))
        nodes: list[NodeSpendJSON] = []
        for name in names:
            budget = self.nodes.get(name, Budget())
            today = self.node_today(name)
            verdict = self._verdict(name, budget, today, self.node_month.get(name, 0.0))
            nodes.append(
                {
                    "node": name,
                    "today_usd": round(today, 6),
                    "month_usd": round(self.node_month.get(name, 0.0), 6),
                    "daily_usd": budget.daily_usd,
                    "monthly_usd": budget.monthly_usd,
                    "over": f"{verdict.words}; {resets(verdict.until, now)}" if verdict else None,
                    "until": verdict.until if verdict else None,
                }
            )
        models: list[ModelSpendJSON] = [
            {
                "node": node,
                "model": model or None,
                "today_usd": round(cost, 6),
                "requests": self.requests.get((node, model), 0),
            }
            for (node, model), cost in sorted(self.today.items())
        ]
        return {
            "day": time.strftime("%Y-%m-%d", time.localtime(self.day[0])),
            "today_usd": round(self.total_today, 6),
            "month_usd": round(self.total_month, 6),
            "daily_usd": self.budget.daily_usd,
            "monthly_usd": self.budget.monthly_usd,
            "day_ends_at": self.day[1],
            "month_ends_at": self.month[1],
            "over": f"{over.words}; {resets(over.until, now)}" if over else None,
            "unpriced_today": self.unpriced,
            "prices_as_of": table_date,
            "nodes": nodes,
            "models": models,
        }
