"""The plot: requests per second by node and the p95 of each second's requests, as sparklines."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline

from sidecar.observe.stats import WINDOW as STATS_WINDOW

from .text import clean, cut, plain


class PlotRow(Horizontal):
    """A label and a sparkline fed from a bounded history."""

    def __init__(self, label: str, history: deque[float]) -> None:
        super().__init__(classes="plot-row")
        self.label = Label(plain(label), classes="plot-label")
        self.label_text = clean(label)
        self.history = history
        self.line = Sparkline(list(history))

    def compose(self) -> ComposeResult:
        yield self.label
        yield self.line

    def redraw(self) -> None:
        self.line.data = list(self.history)


class RatePlot(Vertical):
    """Requests per second by node and the p95 of each second's requests, one sample a second, over the same
    window as the nodes table's figures."""

    WINDOW = int(STATS_WINDOW)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history: dict[str, deque[float]] = {}
        self.p95: deque[float] = deque([0.0] * self.WINDOW, maxlen=self.WINDOW)
        self.p95_row = PlotRow("p95 ms", self.p95)

    def compose(self) -> ComposeResult:
        yield self.p95_row

    def sample(self, per_node: dict[str, int], p95: float, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.history:
                self.history[name] = deque([0.0] * self.WINDOW, maxlen=self.WINDOW)
                self.mount(PlotRow(name, self.history[name]), before=self.p95_row)
                self.call_after_refresh(self.align_labels)
        for name, values in self.history.items():
            values.append(float(per_node.get(name, 0)))
        self.p95.append(p95)
        for row in self.query(PlotRow):
            row.redraw()

    def on_resize(self) -> None:
        self.align_labels()

    def align_labels(self) -> None:
        """Every label as wide as the longest, whole, unless that would leave the lines under half the pane."""
        rows = list(self.query(PlotRow))
        longest = max((cell_len(row.label_text) for row in rows), default=0)
        width = min(longest + 1, max(self.size.width // 2, 8))
        for row in rows:
            row.label.styles.width = width
            row.label.update(cut(plain(row.label_text), width - 1))
