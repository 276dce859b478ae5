"""A table whose columns always fit its width: which columns leave at narrow widths is decided here, by
rank, not by a horizontal scrollbar."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.widgets import DataTable

from .text import LIMIT, cut

GAP = 1  # blank cells after each column: the tables have no cell padding, so none is spent on both sides


@dataclass(frozen=True)
class Col:
    """A column of a `FittedTable`.

    A fixed column (grow 0) is as wide as its widest cell (at most `most`); a flexible one is cut (cells end
    in …) when room is short, not below `prefer` while anything can still be dropped, never below `least`,
    and takes spare room in `grow` order. Columns with a `drop` rank go, highest rank first, when even the
    preferred widths do not fit: which ones leave at narrow widths is decided here, not by a scrollbar.
    """

    key: str
    label: str
    drop: int = 0
    grow: int = 0
    prefer: int = 0
    least: int = 0
    most: int = LIMIT
    reserve: bool = False  # a flexible column that keeps `prefer` cells even when its cells are shorter


def fit(columns: Iterable[Col], natural: dict[str, int], room: int) -> list[tuple[Col, int]]:
    """Which columns to show, how wide, in `room` cells."""
    shown = list(columns)

    def floor(c: Col, hard: bool) -> int:
        if not c.grow:
            return natural[c.key]
        return min(natural[c.key], c.least if hard else c.prefer)

    def need() -> int:
        return sum(floor(c, False) + GAP for c in shown)

    for c in sorted((c for c in shown if c.drop), key=lambda c: -c.drop):
        if need() <= room:
            break
        shown.remove(c)
    widths = {c.key: floor(c, False) for c in shown}
    flexible = sorted((c for c in shown if c.grow), key=lambda c: c.grow)
    spare = room - sum(w + GAP for w in widths.values())
    for c in reversed(flexible):  # still too wide: cut the flexible columns, last to grow first
        if spare >= 0:
            break
        cut_by = min(-spare, widths[c.key] - floor(c, True))
        widths[c.key] -= cut_by
        spare += cut_by
    for c in flexible:
        if spare <= 0:
            break
        add = min(spare, natural[c.key] - widths[c.key])
        widths[c.key] += add
        spare -= add
    return [(c, widths[c.key]) for c in shown]


class FittedTable(DataTable[Any]):
    """A table whose columns always fit its width: no horizontal scrollbar, ever. The rows are kept as given
    and cut to the columns' widths each time the table is drawn, so a resize lays them out again."""

    COLUMNS: ClassVar[tuple[Col, ...]] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cell_padding=0, **kwargs)
        self.given: list[tuple[str | None, dict[str, Text]]] = []
        self.fitted: list[tuple[Col, int]] = []

    def room(self) -> int:
        return max(self.size.width - 1, 0)  # one cell for the vertical scrollbar (scrollbar-size-vertical: 1)

    def natural(self) -> dict[str, int]:
        widths = {}
        for c in self.COLUMNS:
            widest = max((cells[c.key].cell_len for _, cells in self.given), default=0)
            widest = max(widest, len(c.label), c.prefer if c.reserve else 0)
            widths[c.key] = min(widest, c.most)
        return widths

    def fill(self, rows: list[tuple[str | None, dict[str, Text]]]) -> None:
        self.given = rows
        self.redraw()

    def on_resize(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        if not self.size.width:
            return  # not laid out yet: the first resize draws
        layout = fit(self.COLUMNS, self.natural(), self.room())
        keep = self.selected
        if layout != self.fitted:
            self.clear(columns=True)
            for c, width in layout:
                self.add_column(cut(Text(c.label), width), width=width + GAP, key=c.key)
            self.fitted = layout
        else:
            self.clear()
        for key, cells in self.given:
            self.add_row(*(cut(cells[c.key], width) for c, width in layout), key=key)
        if keep is not None and keep in {key for key, _ in self.given}:
            self.move_cursor(row=self.get_row_index(keep))

    @property
    def selected(self) -> str | None:
        """The key of the row under the cursor (kept across redraws and resizes)."""
        if self.row_count == 0 or self.cursor_type != "row":
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    @property
    def shown(self) -> list[str]:
        """The keys of the columns on screen, left to right."""
        return [c.key for c, _ in self.fitted]
