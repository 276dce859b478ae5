"""Prices and budgets: `price`, `prices` and `budget` on a node, the top-level `[prices]` and `[budget]`.

A price is USD per million tokens; a budget is USD per local calendar day or month (docs/journal.md).
"""

from __future__ import annotations

from .schema import Budget, Price
from .table import Table, describe, key_part

PRICE_MAX = 1_000_000.0  # USD per million tokens: far past any model's, so a typo in the exponent is caught
BUDGET_MAX = 1_000_000_000.0
PRICE_KEYS = ("input", "output", "cached_input", "cache_write")


def price(t: Table) -> Price:
    """One price table; `input` and `output` are required."""
    values: dict[str, float | None] = {}
    for name in PRICE_KEYS:
        if name in t.data:
            values[name] = t.number(name, 0.0, maximum=PRICE_MAX)
        else:
            t.get(name, (int, float), None)  # seen, so it is not reported as unknown
            values[name] = None
            if name in ("input", "output"):
                t.error(name, "is required (USD per million tokens)")
    t.done()
    return Price(
        input=values["input"] or 0.0,
        output=values["output"] or 0.0,
        cached_input=values["cached_input"],
        cache_write=values["cache_write"],
    )


def price_of(t: Table, name: str) -> Price | None:
    """`name = { input = ..., output = ... }` in table `t`, if there."""
    sub = t.table(name)
    return None if sub is None else price(sub)


def prices(t: Table, name: str) -> dict[str, Price]:
    """`name = { "gpt-4o" = { input = 2.5, output = 10 }, ... }`: a price per model name."""
    raw = t.table(name)
    if raw is None:
        return {}
    found: dict[str, Price] = {}
    for i, (model, value) in enumerate(raw.data.items()):
        raw.seen.add(model)
        if not model or not model.isprintable():
            raw.error(model, "expected a model name without control characters", item=i)
        elif not isinstance(value, dict):
            raw.error(model, f"expected a price table like {{ input = 2.5, output = 10 }}, got {describe(value)}")
        else:
            found[model] = price(Table(value, f"{raw.path}.{key_part(model)}", raw.problems, raw.position(model)))
    raw.done()
    return found


def budget(t: Table | None) -> Budget:
    """`daily_usd` and `monthly_usd`, each more than 0 when set."""
    if t is None:
        return Budget()
    caps: dict[str, float | None] = {}
    for name in ("daily_usd", "monthly_usd"):
        if name in t.data:
            value = t.number(name, 0.0, maximum=BUDGET_MAX)
            if value <= 0 and t.ok(name):
                t.error(name, "must be more than 0 (leave it out for no cap)")
            caps[name] = value if t.ok(name) else None
        else:
            t.get(name, (int, float), None)
            caps[name] = None
    t.done()
    return Budget(daily_usd=caps["daily_usd"], monthly_usd=caps["monthly_usd"])
