"""The journal as people read it: `log` as a table that fits 80 columns, `log show`, `log stats`. Pure."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sidecar.config.problems import one_line
from sidecar.observe.display import mark_lines
from sidecar.observe.shapes import RequestJSON

from .reader import Group, StoredBodies

WIDTH = 80
GAP = " "


def short(text: object, width: int) -> str:
    value = one_line(str(text))
    return value if len(value) <= width else value[: width - 1] + "…"


def dur(ms: float | None) -> str:
    """At most 5 characters: 0.4ms, 312ms, 1.25s, 12.3s, 734s, 12m."""
    if ms is None:
        return "-"
    if ms < 10:
        return f"{ms:.1f}ms"
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 100:
        return f"{seconds:.1f}s"
    return f"{seconds:.0f}s" if seconds < 1000 else f"{seconds / 60:.0f}m"


def count(n: int | float | None) -> str:
    """Tokens in a few characters: 340, 12.3k, 456k, 1.2M."""
    if n is None:
        return "-"
    if n < 1000:
        return f"{n:.0f}"
    if n < 100_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1000:.0f}k" if n < 1_000_000 else f"{n / 1_000_000:.1f}M"


def usd(value: float | None, width: int = 8) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    if value < 0.0001:
        return f"${value:.6f}"  # a few tokens of a cheap model: $0.000004
    text = f"${value:.2f}" if value >= 0.995 else f"${value:.4f}"
    return text if len(text) <= width else f"${value:.0f}"


def row_line(cells: Sequence[str], widths: Sequence[int], right: frozenset[int]) -> str:
    parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
    return GAP.join(parts).rstrip()


def fit(header: Sequence[str], rows: Iterable[Sequence[str]], least: dict[int, int]) -> list[int]:
    """Column widths within WIDTH: each as wide as its widest cell; when that is too wide, the columns in
    `least` (index: the fewest cells it may keep) give way, the widest first."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - WIDTH
    while excess > 0:
        shrinkable = [i for i, most in least.items() if widths[i] > most]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def lines(header: Sequence[str], rows: list[Sequence[str]], widths: Sequence[int], right: frozenset[int]) -> list[str]:
    cut = [[short(c, w) for c, w in zip(row, widths, strict=True)] for row in rows]
    return [row_line(header, widths, right)] + [row_line(row, widths, right) for row in cut]


# ---------------------------------------------------------------------------- log

LOG_HEADER = ("TIME", "ID", "MODEL", "NODE", "ST", "ATT", "TTFT", "TOTAL", "TOKENS", "COST")
LOG_RIGHT = frozenset({4, 6, 7, 8, 9})
LOG_LEAST = {2: 10, 3: 8}  # model and node give way, down to this, when the rows are too wide for 80 columns
LOG_FOLLOW = [8, 8, 12, 10, 3, 3, 5, 5, 7, 9]  # --follow: rows to come are not known, so these widths at least


def log_cells(e: dict[str, Any]) -> tuple[str, ...]:
    failed = bool(e.get("failed")) or bool(e.get("continued"))
    no_tokens = e["tokens_in"] is None and e["tokens_out"] is None
    first = e["ttft_ms"] if e["ttft_ms"] is not None else e["ttfb_ms"]
    return (
        time.strftime("%H:%M:%S", time.localtime(e["time"])),
        one_line(e["id"][-8:]),
        one_line(e.get("model_served") or e["model"] or "-"),
        one_line(e["node"] or "-"),
        str(e["status"]),
        f"{e['attempts']}{'↻' if failed else ''}",
        dur(first),
        dur(e["total_ms"]),
        "-" if no_tokens else f"{count(e['tokens_in'])}/{count(e['tokens_out'])}",
        usd(e.get("cost_usd"), 9),
    )


class LogTable:
    """`llm-sidecar log`: rows that fit 80 columns, a date line where the day changes (and first, when it is
    not today). The widths are set by the first rows (for --follow: at least LOG_FOLLOW)."""

    def __init__(self, follow: bool = False) -> None:
        self.follow = follow
        self.widths: list[int] | None = None
        self.day: str | None = None

    def lines(self, records: Iterable[dict[str, Any]]) -> list[str]:
        rows = list(records)
        cells = [log_cells(e) for e in rows]
        out: list[str] = []
        if self.widths is None:
            floor = [tuple(" " * w for w in LOG_FOLLOW)] if self.follow else []
            self.widths = fit(LOG_HEADER, [*floor, *cells], LOG_LEAST)
            out.append(row_line(LOG_HEADER, self.widths, LOG_RIGHT))
        today = time.strftime("%Y-%m-%d")
        for e, row in zip(rows, cells, strict=True):
            day = time.strftime("%Y-%m-%d", time.localtime(e["time"]))
            if day != self.day and (self.day is not None or day != today):
                out.append(f"-- {day} --")
            self.day = day
            out.append(row_line([short(c, w) for c, w in zip(row, self.widths, strict=True)], self.widths, LOG_RIGHT))
        return out


LOG_LEGEND = "(TTFT: first token of a stream, else first byte; ATT: attempts, ↻ some failed)"


# ---------------------------------------------------------------------------- log show


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def show(d: RequestJSON, price_note: str | None = None) -> list[str]:
    model = d["model"] or "-"
    if d["model_served"] and d["model_served"] != d["model"]:
        model += f" (sent as {d['model_served']})"
    apis = d["api"] + (f" -> {d['api_upstream']}" if d["api_upstream"] and d["api_upstream"] != d["api"] else "")
    lines = [
        f"request  {one_line(d['id'])}" + ("  (the client's id)" if d["client_id"] else ""),
        f"ended    {stamp(d['time'])}",
        f"call     {d['method']} {one_line(d['path'])}  {apis}{'  stream' if d['stream'] else ''}",
        f"model    {one_line(model)}",
        f"answer   {d['status']} from {d['node'] or 'no node'}; {d['attempts']} attempt(s), {d['failovers']} failover(s)",
        f"timings  ttfb {dur(d['ttfb_ms'])}  ttft {dur(d['ttft_ms'])}  total {dur(d['total_ms'])}",
    ]
    if d["tokens_in"] is not None or d["tokens_out"] is not None:
        extra = [f"cached {d['tokens_cached']}" if d["tokens_cached"] else ""]
        extra.append(f"cache write {d['tokens_cache_write']}" if d["tokens_cache_write"] else "")
        extra.append(f"reasoning {d['tokens_reasoning']}" if d["tokens_reasoning"] else "")
        detail = ", ".join(x for x in extra if x)
        lines.append(f"tokens   in {d['tokens_in']} out {d['tokens_out']}" + (f" ({detail})" if detail else ""))
    cost = "-" if d["cost_usd"] is None else f"${d['cost_usd']:.6f}"
    lines.append(f"cost     {cost}" + (f"  ({price_note})" if price_note else ""))
    if d["error"]:
        lines.append(f"error    {one_line(d['error'])}")
    lines += [f"{label:<8} {one_line(words)}" for label, words in mark_lines(d["marks"])]
    lines.append("attempts:")
    if not d["steps"]:
        lines.append("  none (answered by the sidecar itself)")
    for i, s in enumerate(d["steps"], 1):
        what = s["outcome"] if s["reason"] is None else f"{s['outcome']}: {one_line(s['reason'])}"
        if s["fault"]:
            what += f" [{s['fault']}]"
        if s.get("request_caused"):
            what += " (caused by the request)"
        took = f"  {dur(s['ms'])}" if s["ms"] is not None else ""
        wait = f", then waited {dur(s['wait_ms'])}" if s["wait_ms"] else ""
        lines.append(f"  {i}. {one_line(s['node'])}  {s['kind']}  {what}{took}{wait}")
    return lines


def show_bodies(stored: StoredBodies | None) -> list[str]:
    if stored is None:
        return ["bodies: not kept (the journal keeps them with [journal] bodies = true)"]
    lines = []
    for response, size in ((False, stored.request_size), (True, stored.response_size)):
        kept = len(stored.response if response else stored.request)
        note = "" if stored.whole(response) else f", cut to the first {kept}"
        lines.append(f"{'response' if response else 'request'} body ({size} bytes{note}):")
        lines += ["  " + line for line in stored.text(response).splitlines()]
    return lines


# ---------------------------------------------------------------------------- log stats

STATS_HEADER = ("NODE", "MODEL", "REQS", "ERR", "FAILOVR", "TTFT p50", "p95", "TOKENS in/out", "COST")
STATS_RIGHT = frozenset({2, 3, 4, 5, 6, 7, 8})
STATS_LEAST = {0: 8, 1: 10}


def stats_lines(groups: list[Group], span: str) -> list[str]:
    total_cost = sum(g.cost for g in groups)
    requests = sum(g.requests for g in groups)
    errors = sum(g.errors for g in groups)
    unpriced = sum(g.unpriced for g in groups)
    rows = [
        (
            one_line(g.node), one_line(g.model), str(g.requests), str(g.errors), str(g.failovers), dur(g.p(0.5)),
            dur(g.p(0.95)), f"{count(g.tokens_in)}/{count(g.tokens_out)}" if g.tokens_in or g.tokens_out else "-",
            usd(g.cost if g.priced else None, 9),
        )
        for g in groups
    ]  # fmt: skip
    table = lines(STATS_HEADER, list(rows), fit(STATS_HEADER, rows, STATS_LEAST), STATS_RIGHT)
    out = [f"{span}: {requests} requests, {errors} errors, {usd(total_cost, 12)} spent", *table]
    out.append("(ERR: status >= 400 or a broken stream. FAILOVR: answered after a node failed.")
    out.append(" TTFT: a stream's first token, else the first byte. NODE -: the sidecar's own.)")
    if unpriced:
        out.append(f"({unpriced} requests with tokens had no price: `llm-sidecar check` says where)")
    return out
