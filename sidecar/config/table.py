"""Typed reading of one TOML table, collecting problems instead of stopping at the first.

A key of the wrong type, out of range or unknown becomes a problem located by its full key path (with
a did-you-mean for unknown keys), and the default stands in so reading goes on.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .problems import MAX_KEPT, Problems
from .schema import COUNT_MAX, SECONDS_MAX

PLAIN_KEY = re.compile(r"[^\s.\[\]\"\\]+")


class Table:
    """A TOML table being read: type-checks values and rejects unknown keys. A bad value is recorded
    (`error`) and read as its default; its name goes into `bad`, so checks across keys skip it."""

    def __init__(self, data: Mapping[str, Any], path: str, problems: Problems, order: tuple[int, ...] = ()) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.order = order
        self.seen: set[str] = set()
        self.bad: set[str] = set()
        self.index: dict[str, int] | None = None

    def key(self, name: str) -> str:
        name = key_part(name)
        return f"{self.path}.{name}" if self.path else name

    def position(self, name: str) -> tuple[int, ...]:
        """Where `name` is in the file; a key that is missing sorts at the top of its table."""
        if self.index is None:
            self.index = {k: i for i, k in enumerate(self.data)}
        return (*self.order, self.index.get(name, -1))

    def error(self, name: str, message: str, *, item: int | None = None, key: str | None = None) -> None:
        """Record a problem with `name` (its `item`-th element, at `key`, when given)."""
        self.bad.add(name)
        order = self.position(name) if item is None else (*self.position(name), item)
        self.problems.add(order, self.key(name) if key is None else key, message)

    def missing(self, name: str, message: str, *, key: str | None = None) -> None:
        """A required `name` that is not there (at `key`, when given), reported after the table's own keys: a
        typo of it (`[[upstreams.nodes]]`, with its did-you-mean) is what explains it, so it is read first."""
        self.bad.add(name)
        self.problems.add((*self.order, len(self.data)), self.key(name) if key is None else key, message)

    def ok(self, *names: str) -> bool:
        """None of `names` was bad (checks across keys use only good values)."""
        return not self.bad.intersection(names)

    def get(self, name: str, kinds: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        # bool is an int in Python, never in a config file.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(TYPE_NAMES.get(k, k.__name__) for k in kinds)
            self.error(name, f"expected {names}, got {describe(value)}")
            return default
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0, maximum: float = SECONDS_MAX) -> float:
        """Seconds: TOML allows inf and nan, which would pass every comparison or break every timer."""
        value: int | float = self.get(name, (int, float), default)
        if name in self.bad or name not in self.data:
            return float(default)
        if isinstance(value, float) and not math.isfinite(value):
            self.error(name, f"must be a finite number, got {value}")
        # Compared before float(): an int too large for a float is still compared exactly.
        elif value < minimum:
            self.error(name, f"must be >= {minimum:.10g}, got {show(value)}")
        elif value > maximum:
            self.error(name, f"must be <= {maximum:.10g}, got {show(value)}")
        return float(default) if name in self.bad else float(value)

    def integer(self, name: str, default: int, *, minimum: int = -COUNT_MAX, maximum: int = COUNT_MAX) -> int:
        value: int = self.get(name, int, default)
        if name in self.bad or name not in self.data:
            return default
        if value < minimum:
            self.error(name, f"must be >= {minimum}, got {show(value)}")
        elif value > maximum:
            self.error(name, f"must be <= {maximum}, got {show(value)}")
        return default if name in self.bad else value

    def statuses(self, name: str, default: frozenset[int]) -> frozenset[int]:
        value = self.get(name, list, None)
        if value is None:
            return default
        for i, code in enumerate(value):
            if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                message = f"expected an HTTP status 100-599, got {describe(code)}"
                self.error(name, message, item=i, key=f"{self.key(name)}[{i}]")
        return default if name in self.bad else frozenset(value)

    def table(self, name: str) -> Table | None:
        value = self.get(name, dict, None)
        return None if value is None else Table(value, self.key(name), self.problems, self.position(name))

    def table_or_empty(self, name: str) -> Table:
        return self.table(name) or Table({}, self.key(name), self.problems, self.position(name))

    def done(self, known: Iterable[str] = ()) -> None:
        """Every key not read (nor among `known`, read only when present) is unknown."""
        known = self.seen.union(known)
        for name in self.data:
            if name not in known:
                self.error(name, "unknown key" + self.suggestion(name, known))

    def suggestion(self, name: str, known: set[str]) -> str:
        """The closest known key of this table, as a hint (not for a long key, nor past the bound)."""
        if len(name) > 64 or self.problems.count > MAX_KEPT:
            return ""
        close = difflib.get_close_matches(name, sorted(known), n=1)
        return f' (did you mean "{close[0]}"?)' if close else ""


TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
    bool: "true/false",
}


def describe(value: Any) -> str:
    return (
        f"{TYPE_NAMES.get(type(value), type(value).__name__)} ({show(value)})"
        if not isinstance(value, dict | list)
        else TYPE_NAMES[type(value)]
    )


def show(value: Any) -> str:
    """A value for an error message: short, and never str() of a huge int (which raises)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def key_part(name: str) -> str:
    """A key as written in a key path: quoted (JSON escapes) when it would be ambiguous or unprintable."""
    return name if name.isprintable() and PLAIN_KEY.fullmatch(name) else json.dumps(name)
