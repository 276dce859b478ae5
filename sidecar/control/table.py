"""`llm-sidecar status` as a plain-text table (from the same JSON the monitor reads), fitted to the terminal.

Like the monitor's tables, it never wraps a row: when the terminal is narrow the least useful columns leave
first (each has a rank), then the reason is cut with …; the legend names what was left out (`--json` has all).
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass

from sidecar.observe.display import age, ms, why_changed
from sidecar.observe.shapes import NodeJSON, StatusJSON

GAP = "  "


@dataclass(frozen=True)
class Column:
    title: str
    drop: int = 0  # ranked columns leave, highest rank first, until the rows fit
    prefer: int = 0  # a column cut (with …) rather than dropped: columns leave while it is below this...
    least: int = 0  # ...and once none is left to drop, it is cut, never below this


# Left to right as before; the settings (they are in the config) and `MANUAL` (STATE says `down` exactly
# when a node is drained by hand) go first, then the detail; NODE, STATE, ERR, RPS, P95ms and REASON stay.
COLUMNS = (
    Column("NODE"),
    Column("API", drop=4),
    Column("PRIO", drop=7),
    Column("WEIGHT", drop=8),
    Column("STATE"),
    Column("MANUAL", drop=9),
    Column("REQS", drop=3),
    Column("ERR"),
    Column("INFL", drop=6),
    Column("RPS"),
    Column("P50ms", drop=5),
    Column("P95ms"),
    Column("PROBE", drop=2),
    Column("CHANGED", drop=1),
    Column("REASON", prefer=24, least=12),
)


def node_row(n: NodeJSON, now: float) -> tuple[str, ...]:
    t = n["traffic"]
    probe = n["active"]["last_probe"]
    return (
        n["name"] + (" *" if n["serving"] else ""),
        n.get("api", "openai"),
        str(n["priority"]),
        str(n["weight"]),
        "budget" if n.get("budget") else n["state"],  # out for its budget, whatever its health
        n["manual"],
        str(t["requests"]),
        str(t["errors"]),
        str(t["in_flight"]),
        f"{t['rps']:.1f}",
        ms(t["p50_ms"]),
        ms(t["p95_ms"]),
        "-" if probe is None else f"{probe['status'] or 'err'} {age(probe['time'], now)}",
        age(n["changed_at"], now),
        "budget spent" if n.get("budget") else why_changed(n["state"], n["reason"]),
    )


def shorten(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[: max(width - 1, 0)] + "…"


def fit(rows: list[tuple[str, ...]], width: int) -> tuple[list[int], dict[int, int]]:
    """Which columns to show (their indexes) and how wide, for rows of at most `width` characters."""
    natural = {i: max(len(row[i]) for row in rows) for i in range(len(COLUMNS))}
    shown = list(range(len(COLUMNS)))

    def need(cut: bool) -> int:
        """The row's width, with the cuttable column at its preferred width (`cut`) or whole."""
        widths = (min(natural[i], COLUMNS[i].prefer) if cut and COLUMNS[i].prefer else natural[i] for i in shown)
        return sum(widths) + len(GAP) * (len(shown) - 1)

    for i in sorted((i for i, c in enumerate(COLUMNS) if c.drop), key=lambda i: -COLUMNS[i].drop):
        if need(cut=True) <= width:
            break
        shown.remove(i)
    widths = dict(natural)
    excess = need(cut=False) - width
    for i in shown:
        floor = min(natural[i], COLUMNS[i].least or natural[i])
        if excess > 0 and natural[i] > floor:
            cut = min(excess, natural[i] - floor)
            widths[i] -= cut
            excess -= cut
    return shown, widths


def render_status(data: StatusJSON, width: int = 80) -> str:
    """The status, every line within `width` characters where it can be (a long node name or path cannot)."""
    now = time.time()
    s = data["sidecar"]
    lines = [
        f"llm-sidecar {s['version']} pid {s['pid']}  up {age(s['started_at'], now)}  {s['listen']}",
        f"config {s['config_path']} (loaded {age(s['config_loaded_at'], now)} ago)",
        f"serving: {data['serving'] or 'nothing (every node is down)'}",
        "",
    ]
    nodes = sorted(data["nodes"], key=lambda n: -n["priority"])
    rows = [tuple(c.title for c in COLUMNS), *(node_row(n, now) for n in nodes)]
    shown, widths = fit(rows, width)
    for row in rows:
        cells = [shorten(row[i], widths[i]).ljust(widths[i]) for i in shown]
        lines.append(GAP.join(cells).rstrip())
    window = next((f"{t['window_s']:g}" for n in data["nodes"] if "window_s" in (t := n["traffic"])), "60")
    left = [c.title for i, c in enumerate(COLUMNS) if i not in shown]
    lifetime = ", ".join(c for c in ("REQS", "ERR") if c not in left)
    recent = ", ".join(c for c in ("RPS", "P50ms", "P95ms") if c not in left)
    lines += textwrap.wrap(f"(* serving; {lifetime}: since start; {recent}: last {window} s)", width)
    if left:
        lines += textwrap.wrap(f"(hidden at {width} columns: {', '.join(left)}; --json has all)", width)
    lines += spend_lines(data, width)
    out = [(n, m) for n in nodes for m in n.get("models", ())]
    if out:
        lines.append("")
        lines.append("models out on a node (the node itself serves its other models):")
        for n, m in out:
            left_s = f", {max(0, round(m['until'] - now))}s left" if m["until"] else ""
            why = f" ({m['reason']})" if m["reason"] != m["state"] else ""
            line = f"{n['name']}: {m['model']} {m['state']}{left_s}{why}"
            if "instead" in m:  # an older sidecar does not say
                where = m["instead"]
                line += f"; its requests go to {where}" if where else "; out on every node: tried anyway"
            lines += textwrap.wrap(line, width, initial_indent="  ", subsequent_indent="    ")
    learned = [(n["name"], limits) for n in nodes if (limits := n.get("first_token_limits"))]
    if learned:
        lines.append("")
        lines.append("first-token limits (learned per model from its own first tokens):")
        for name, limits in learned:
            said = ", ".join(f"{model or '(no model)'} {limit:g}s" for model, limit in limits.items())
            lines += textwrap.wrap(f"{name}: {said}", width, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def dollars(value: float) -> str:
    return f"${value:,.2f}" if value >= 0.995 or value == 0 else f"${value:.4f}"


def spend_lines(data: StatusJSON, width: int = 80) -> list[str]:
    """Spend today and this month against the budgets, by node and model (newer sidecars say it)."""
    spend = data.get("spend")
    if spend is None:
        return []

    def against(value: float, cap: float | None) -> str:
        return dollars(value) + (f" of {dollars(cap)}" if cap is not None else "")

    said = [
        (
            "",
            f"spend {spend['day']}: {against(spend['today_usd'], spend['daily_usd'])} today, "
            f"{against(spend['month_usd'], spend['monthly_usd'])} this month"
            f" (prices: shipped table {spend['prices_as_of']} unless the config sets them)",
        )
    ]
    if spend["over"]:
        said.append(("  ", f"new requests get 429: {spend['over']}"))
    for n in spend["nodes"]:
        words = f"{n['node']}: {against(n['today_usd'], n['daily_usd'])} today, "
        words += f"{against(n['month_usd'], n['monthly_usd'])} this month"
        said.append(("  ", words + (f"; out: {n['over']}" if n["over"] else "")))
    for m in spend["models"]:
        said.append(
            ("    ", f"{m['node']} {m['model'] or '-'}: {dollars(m['today_usd'])} today ({m['requests']} requests)")
        )
    if spend["unpriced_today"]:
        said.append(("  ", f"{spend['unpriced_today']} answers today had no price (llm-sidecar check says which)"))
    lines = [""]
    for indent, text in said:
        lines += textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ")
    return lines
