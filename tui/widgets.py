"""The monitor's widgets. Each one is handed data by the app; none talks to the sidecar.

Everything shown that came from a request or a node (model names, request ids, node names, reasons,
paths) is drawn through `plain`: Textual reads `[...]` in strings as markup, so a client sending
`"model": "[/]"` would otherwise crash every attached monitor, and raw control characters would reach
the terminal.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, RichLog, Sparkline, Static

from sidecar.display import age, ms
from sidecar.shapes import NodeJSON, StatusJSON

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


STATE_STYLE = {"healthy": "bold green", "unhealthy": "bold red", "ejected": "bold magenta", "down": "bold yellow"}


class HeaderBar(Static):
    """Version, listen address, uptime, config path and the connection state."""

    def show(self, status: StatusJSON | None, connected: bool, socket: str) -> None:
        line = Text()
        line.append(" llm-sidecar ", style="bold reverse")
        if status is not None:
            s = status["sidecar"]
            uptime = age(s["started_at"], s["started_at"] + s["uptime_s"])
            line.append(f" {clean(s['version'], 40)}  {clean(s['listen'])}  up {uptime}  ")
            line.append(clean(s["config_path"]), style="dim")
        else:
            line.append(f" {clean(socket)}", style="dim")
        line.append("  ")
        if connected:
            line.append("● connected", style="bold green")
        else:
            line.append("● disconnected — retrying", style="bold red")
        self.update(line)


class NodesTable(DataTable[Any]):
    """One row per node, by priority; the row key is the node name."""

    # Most telling first, so an 80-column terminal shows them without scrolling.
    COLUMNS = ("node", "state", "man", "req/s", "err%", "p50", "p95", "infl", "probe", "changed", "prio", "wt")

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for column in self.COLUMNS:
            self.add_column(column, key=column)

    @property
    def selected(self) -> str | None:
        if self.row_count == 0:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def show(self, nodes: Iterable[NodeJSON], now: float) -> None:
        rows = sorted(nodes, key=lambda n: (-n["priority"], n["name"]))
        keep = self.selected
        self.clear()
        for n in rows:
            t = n["traffic"]
            errors = 100 * t["errors"] / t["requests"] if t["requests"] else 0.0
            probe = n["active"]["last_probe"]
            probe_text = "-" if probe is None else f"{probe['status'] or 'err'} {age(probe['time'], now)}"
            self.add_row(
                plain(("▶ " if n["serving"] else "  ") + n["name"], style="bold" if n["serving"] else ""),
                state_text(n, now),
                plain(n["manual"]),
                plain(f"{t['rps']:.1f}"),
                plain(f"{errors:.0f}%"),
                plain(ms(t["p50_ms"])),
                plain(ms(t["p95_ms"])),
                plain(t["in_flight"]),
                plain(probe_text),
                plain(age(n["changed_at"], now)),
                plain(n["priority"]),
                plain(n["weight"]),
                key=n["name"],
            )
        if keep is not None and keep in {n["name"] for n in rows}:
            self.move_cursor(row=self.get_row_index(keep))


def state_text(node: NodeJSON, now: float) -> Text:
    """The node's state, and each model that is out on it while the node is fine:
    `healthy · gpt-4o: rate limited 12s`."""
    text = plain(node["state"], style=STATE_STYLE.get(node["state"], ""))
    for m in node.get("models", ()):
        left = f" {max(0, round(m['until'] - now))}s" if m["until"] else ""
        text.append_text(plain(f" · {m['model']}: {m['state']}{left}", style="yellow", limit=48))
    return text


class TrafficTable(DataTable[Any]):
    """Finished requests, newest first; bounded, and redrawn in batches."""

    # `why` last: the marks in `att` (↻ retried or failed over, ⤳ continued) tell at a glance; why says what.
    COLUMNS = ("time", "id", "model", "node", "st", "att", "s", "ttfb", "total", "tok", "why")
    LIMIT = 200

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.rows_seen: deque[dict[str, Any]] = deque(maxlen=self.LIMIT)
        for column in self.COLUMNS:
            self.add_column(column, key=column)

    def add_events(self, events: list[dict[str, Any]]) -> None:
        self.rows_seen.extend(events)
        self.clear()
        for e in reversed(self.rows_seen):
            failover = e["attempts"] > 1
            retried = bool(e["failed"])
            continued = bool(e.get("continued"))
            style = "bold yellow" if failover else ""
            tokens = "-" if e["tokens_out"] is None else f"{e['tokens_in']}/{e['tokens_out']}"
            if e.get("tokens_cached"):
                tokens += f" ({e['tokens_cached']}c)"  # prompt tokens served from the provider's cache
            self.add_row(
                plain(time.strftime("%H:%M:%S", time.localtime(e["time"]))),
                plain(e["id"][-8:]),  # generated ids share a per-process prefix; the tail tells them apart
                plain(e["model"] or "-", limit=14),
                plain(e["node"] or "-", style=style),
                plain(e["status"], style="green" if e["status"] < 400 else "red"),
                plain(f"{e['attempts']}{'↻' if retried else ''}{'⤳' if continued else ''}", style=style),
                plain("S" if e["stream"] else "-"),
                plain(ms(e["ttfb_ms"])),
                plain(ms(e["total_ms"])),
                plain(tokens),
                plain(why(e), style=style, limit=WHY_LIMIT),
            )


WHY_LIMIT = 24
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
    return " ".join(parts) or "-"


class PlotRow(Horizontal):
    """A label and a sparkline fed from a bounded history."""

    def __init__(self, label: str, history: deque[float]) -> None:
        super().__init__(classes="plot-row")
        self.label = label
        self.history = history
        self.line = Sparkline(list(history))

    def compose(self) -> ComposeResult:
        yield Label(plain(self.label), classes="plot-label")
        yield self.line

    def redraw(self) -> None:
        self.line.data = list(self.history)


class RatePlot(Vertical):
    """Requests per second by node and overall p95, one sample a second, last two minutes."""

    WINDOW = 120

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
                self.mount(PlotRow(f"{clean(name, 10)} r/s", self.history[name]), before=self.p95_row)
        for name, values in self.history.items():
            values.append(float(per_node.get(name, 0)))
        self.p95.append(p95)
        for row in self.query(PlotRow):
            row.redraw()


class HealthLog(RichLog):
    """Health changes, manual actions, reloads: why things moved."""

    def add_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind not in ("health", "manual", "config", "missed"):
            return  # a newer sidecar's event type: nothing to say about it
        stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
        line = Text(f"{stamp} ")
        if kind == "health":
            line.append(f"{clean(event['node'])} ")
            if event.get("model"):
                line.append(f"{clean(event['model'], 60)}: ")
            line.append(clean(event["after"]), style=STATE_STYLE.get(event["after"], ""))
            line.append(f" ({clean(event['reason'], 500)})")
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
        self.write(line)
