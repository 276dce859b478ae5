"""The monitor's widgets. Each one is handed data by the app; none talks to the sidecar.

Everything shown that came from a request or a node (model names, request ids, node names, reasons,
paths) is drawn through `plain`: Textual reads `[...]` in strings as markup, so a client sending
`"model": "[/]"` would otherwise crash every attached monitor, and raw control characters would reach
the terminal.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import DataTable, Label, Sparkline

from sidecar.observe.display import age, ms
from sidecar.observe.shapes import NodeJSON, StatusJSON, TrafficJSON
from sidecar.observe.stats import WINDOW as STATS_WINDOW

from .spend import spend_text

# C0/C1 controls and DEL (terminal escapes), line and paragraph separators, bidi overrides (they reorder
# what is shown), and lone surrogates (valid in JSON escapes, but they cannot be written to a terminal).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
LIMIT = 200  # characters of one value; a megabyte of model name must not become a megabyte-wide column


def clean(value: object, limit: int = LIMIT) -> str:
    """`value` as one line of inert text, at most `limit` characters: unsafe characters shown escaped."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def plain(value: object, style: str = "", limit: int = LIMIT) -> Text:
    """`value` as a Text that is never read as markup (DataTable and Label parse plain strings)."""
    return Text(clean(value, limit), style=style, no_wrap=True, end="")


STATE_STYLE = {
    "healthy": "bold green", "unhealthy": "bold red", "ejected": "bold magenta", "down": "bold yellow",
    "budget": "bold red",
}  # fmt: skip
API_MARK = {"openai": "oai", "anthropic": "anth"}  # the request format a node speaks, in a few cells


def cut(text: Text, width: int) -> Text:
    """`text` in at most `width` cells, ending in … where it was cut."""
    if text.cell_len <= width:
        return text
    short = text.copy()
    short.truncate(max(width, 0), overflow="ellipsis")
    return short


class HeaderBar(Widget):
    """Version, listen address, uptime, config path; the connection state always at the right edge."""

    DEFAULT_CSS = "HeaderBar { height: 1; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.status: StatusJSON | None = None
        self.connected = False
        self.socket = ""

    def show(self, status: StatusJSON | None, connected: bool, socket: str) -> None:
        self.status, self.connected, self.socket = status, connected, socket
        self.refresh()

    def render(self) -> Text:
        left = Text(no_wrap=True, end="")
        left.append(" llm-sidecar ", style="bold reverse")
        if self.status is not None:
            s = self.status["sidecar"]
            uptime = age(s["started_at"], s["started_at"] + s["uptime_s"])
            left.append(f" {clean(s['version'], 40)}  {clean(s['listen'])}  up {uptime}  ")
            spend = self.status.get("spend")
            if spend is not None:
                left.append_text(spend_text(spend))
                left.append("  ")
            left.append(clean(s["config_path"]), style="dim")
        else:
            left.append(f" {clean(self.socket)}", style="dim")
        if self.connected:
            right = Text("● connected ", style="bold green")
        else:
            right = Text("● disconnected — retrying ", style="bold red")
        width = self.size.width or 80
        left = cut(left, max(width - right.cell_len - 1, 0))
        return Text.assemble(left, " " * max(width - left.cell_len - right.cell_len, 1), right, no_wrap=True, end="")


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


class NodesTable(FittedTable):
    """One row per node, by priority; the row key is the node name. Rates, error share and latencies are
    the sidecar's sliding window (the last 60 s), never the process's whole life."""

    # Left to right by how much they tell; at narrow widths the static settings and the redundant `man`
    # (state says `down` exactly when a node is drained by hand) go first, then the detail.
    COLUMNS = (
        Col("node", "node", grow=1, prefer=16, least=8),
        Col("state", "state", grow=2, prefer=9, least=7),
        Col("api", "api", drop=4, most=4),
        Col("req/s", "req/s", most=7),
        Col("err%", "err%", most=5),
        Col("p50", "p50 ms", drop=5, most=8),
        Col("p95", "p95 ms", most=8),
        Col("infl", "infl", drop=6, most=6),
        Col("probe", "probe", drop=7, most=9),
        Col("changed", "changed", drop=8, most=7),
        Col("man", "man", drop=9, most=4),
        Col("prio", "prio", drop=10, most=6),
        Col("wt", "wt", drop=11, most=6),
    )

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True

    def show(self, nodes: Iterable[NodeJSON], now: float) -> None:
        rows = sorted(nodes, key=lambda n: (-n["priority"], n["name"]))
        self.fill([(n["name"], node_cells(n, now)) for n in rows])


def error_share(traffic: TrafficJSON) -> str:
    """Failed attempts in the window as a share of all there; `-` when there were none (0% would claim
    traffic that did not happen), and never `0%` when something failed."""
    asked, failed = traffic.get("window_requests"), traffic.get("window_errors")
    if not asked or failed is None:
        return "-"
    share = 100 * failed / asked
    return "<1%" if 0 < share < 0.5 else f"{share:.0f}%"


def node_cells(n: NodeJSON, now: float) -> dict[str, Text]:
    t = n["traffic"]
    probe = n["active"]["last_probe"]
    probe_text = "-" if probe is None else f"{probe['status'] or 'err'} {age(probe['time'], now)}"
    api = n.get("api", "openai")
    return {
        "node": plain(("▶ " if n["serving"] else "  ") + n["name"], style="bold" if n["serving"] else ""),
        "state": state_text(n, now),
        "api": plain(API_MARK.get(api, api), style="cyan" if api == "anthropic" else ""),
        "req/s": plain(f"{t['rps']:.1f}"),
        "err%": plain(error_share(t), style="red" if t.get("window_errors") else ""),
        "p50": plain(ms(t["p50_ms"])),
        "p95": plain(ms(t["p95_ms"])),
        "infl": plain(t["in_flight"]),
        "probe": plain(probe_text),
        "changed": plain(age(n["changed_at"], now)),
        "man": plain(n["manual"]),
        "prio": plain(n["priority"]),
        "wt": plain(n["weight"]),
    }


def state_text(node: NodeJSON, now: float) -> Text:
    """The node's state, and each model that is out on it while the node is fine:
    `healthy · gpt-4o: rate limited 12s`."""
    text = plain(node["state"], style=STATE_STYLE.get(node["state"], ""))
    if node.get("budget"):
        text.append_text(plain(" · out: budget spent", style="bold red"))
    for m in node.get("models", ()):
        left = f" {max(0, round(m['until'] - now))}s" if m["until"] else ""
        text.append_text(plain(f" · {m['model']}: {m['state']}{left}", style="yellow", limit=48))
    return text


class TrafficTable(FittedTable):
    """Finished requests, newest first; bounded, and redrawn in batches."""

    # `why` last and taking the rest: the marks in `att` (↻ retried or failed over, ⤳ continued) tell at a
    # glance; why says what. For a stream, `total` is the whole stream, so `ttft` (first token) is its
    # latency. At narrow widths ttfb goes first (≈ total for JSON, ≈ ttft for streams), then `s` (a
    # ttft says stream), the tokens, the id and the time.
    COLUMNS = (
        Col("time", "time", drop=5),
        Col("id", "id", drop=6),
        Col("model", "model", grow=1, prefer=12, least=6),
        Col("node", "node", grow=2, prefer=14, least=6),
        Col("st", "st", most=3),
        Col("att", "att", most=5),
        Col("s", "s", drop=8, most=1),
        Col("ttfb", "ttfb ms", drop=9, most=8),
        Col("ttft", "ttft ms", most=8),
        Col("total", "total ms", most=8),
        Col("tok", "tok", drop=7, most=16),
        Col("why", "why", grow=3, prefer=16, least=8, reserve=True),
    )
    LIMIT = 200

    def on_mount(self) -> None:
        # A row cursor for Enter (the request's detail) only while the table has the focus (tab): else the
        # newest row stays at the top, unmarked.
        self.cursor_type = "none"
        self.rows_seen: deque[tuple[str, dict[str, Any]]] = deque(maxlen=self.LIMIT)
        self.keys = itertools.count()  # row keys: an event's seq may repeat (a restarted sidecar) or be missing

    def on_focus(self) -> None:
        self.cursor_type = "row"

    def on_blur(self) -> None:
        self.cursor_type = "none"

    def add_events(self, events: list[dict[str, Any]]) -> None:
        self.rows_seen.extend((str(next(self.keys)), e) for e in events)
        self.fill([(key, traffic_cells(e)) for key, e in reversed(self.rows_seen)])

    def event_of(self, key: str) -> dict[str, Any] | None:
        """The request a row shows."""
        return next((e for k, e in self.rows_seen if k == key), None)


def traffic_cells(e: dict[str, Any]) -> dict[str, Text]:
    failover = e["attempts"] > 1
    retried = bool(e["failed"])
    continued = bool(e.get("continued"))
    style = "bold yellow" if failover else ""
    tokens = "-" if e["tokens_out"] is None else f"{e['tokens_in']}/{e['tokens_out']}"
    if e.get("tokens_cached"):
        tokens += f" ({e['tokens_cached']}c)"  # prompt tokens served from the provider's cache
    return {
        "time": plain(time.strftime("%H:%M:%S", time.localtime(e["time"]))),
        "id": plain(e["id"][-8:]),  # generated ids share a per-process prefix; the tail tells them apart
        "model": plain(e["model"] or "-", limit=14),
        "node": plain(e["node"] or "-", style=style),
        "st": plain(e["status"], style="green" if e["status"] < 400 else "red"),
        "att": plain(f"{e['attempts']}{'↻' if retried else ''}{'⤳' if continued else ''}", style=style),
        "s": plain("S" if e["stream"] else "-"),
        "ttfb": plain(ms(e["ttfb_ms"])),
        "ttft": plain(ms(e.get("ttft_ms")) if e["stream"] else "-"),
        "total": plain(ms(e["total_ms"])),
        "tok": plain(tokens),
        "why": plain(why(e), style="bold red" if e.get("error") and e["status"] < 400 else style, limit=WHY_LIMIT),
    }


WHY_LIMIT = 120
_STATUS = re.compile(r"\b([1-5][0-9][0-9])\b")


def short_reason(reason: str) -> str:
    """A failure reason in a few characters: its status code, `timeout`, or its first words."""
    if status := _STATUS.search(reason):
        return status.group(1)
    if "timeout" in reason or "first token" in reason:
        return "timeout"
    return " ".join(reason.split()[:2])


def why(event: dict[str, Any]) -> str:
    """What the attempts before the answer met, shortest first: `openai:429 wait1.0s openai:429 ⤳deepseek`."""
    parts = []
    for attempt in event["failed"]:
        wait = attempt.get("wait_ms")
        parts.append(
            f"{attempt['node']}:{short_reason(attempt['reason'])}" + (f" wait{wait / 1000:.1f}s" if wait else "")
        )
    parts += [f"⤳{c['to']}" for c in event.get("continued", ())]
    error = event.get("error")
    if error and event["status"] < 400:  # a 200 that broke after it began: the client saw an error event
        parts.append(f"✗ {error}")
    return " ".join(parts) or "-"


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


class HealthLog(ScrollView):
    """Health changes, manual actions, reloads: why things moved. One event a line, newest first (as the
    traffic), cut with … to the pane's width: a narrow pane shows more events, not fewer, taller ones."""

    DEFAULT_CSS = "HealthLog { scrollbar-size-vertical: 1; }"

    def __init__(self, max_lines: int = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entries: deque[Text] = deque(maxlen=max_lines)

    @property
    def texts(self) -> list[str]:
        """The events' whole lines, newest first."""
        return [entry.plain for entry in self.entries]

    def add_event(self, event: dict[str, Any]) -> None:
        line = event_line(event)
        if line is None:
            return
        self.entries.appendleft(line)
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.entries))
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        index = self.scroll_offset.y + y
        style = self.rich_style
        if index >= len(self.entries):
            return Strip.blank(width, style)
        text = cut(self.entries[index], width)
        text.no_wrap, text.end = True, ""
        strip = Strip(text.render(self.app.console)).apply_style(style)
        return strip.crop_extend(0, width, style)


def event_line(event: dict[str, Any]) -> Text | None:
    """A health, manual, config or gap event as one line of text; None for a type this monitor does not know."""
    kind = event.get("type")
    if kind not in ("health", "manual", "config", "budget", "missed"):
        return None  # a newer sidecar's event type: nothing to say about it
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    line = Text(f"{stamp} ", no_wrap=True, end="")
    if kind == "health":
        line.append(f"{clean(event['node'])} ")
        if event.get("model"):
            line.append(f"{clean(event['model'], 60)}: ")
        line.append(clean(event["after"]), style=STATE_STYLE.get(event["after"], ""))
        line.append(f" ({clean(event['reason'], 500)})")
    elif kind == "budget":
        if event.get("over"):
            line.append(f"{clean(event.get('reason'), 500)}: new requests get 429", style="bold red")
        else:
            line.append(f"budget: {clean(event.get('reason'), 200)}: requests go on", style="green")
    elif kind == "manual":
        line.append(f"{clean(event['node'])}: manual {clean(event['manual'])}", style="yellow")
    elif kind == "config":
        if event["ok"]:
            line.append(f"config reloaded: {clean(', '.join(map(str, event['nodes'])), 500)}", style="green")
        else:
            error = event["error"]
            line.append(f"reload failed: {clean(error['key'])}: {clean(error['message'], 500)}", style="red")
    else:
        line.append(f"monitor fell behind: {clean(event['count'])} events skipped", style="dim")
    return line
