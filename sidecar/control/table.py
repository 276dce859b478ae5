"""`llm-sidecar status` as a plain-text table (from the same JSON the monitor reads)."""

from __future__ import annotations

import time

from sidecar.observe.display import age, ms
from sidecar.observe.shapes import StatusJSON


def render_status(data: StatusJSON) -> str:
    now = time.time()
    s = data["sidecar"]
    lines = [
        f"llm-sidecar {s['version']} pid {s['pid']}  up {age(s['started_at'], now)}  {s['listen']}",
        f"config {s['config_path']} (loaded {age(s['config_loaded_at'], now)} ago)",
        f"serving: {data['serving'] or 'nothing (every node is down)'}",
        "",
    ]
    header = (
        "NODE",
        "API",
        "PRIO",
        "WEIGHT",
        "STATE",
        "MANUAL",
        "REQS",
        "ERR",
        "INFL",
        "RPS",
        "P50ms",
        "P95ms",
        "PROBE",
        "CHANGED",
        "REASON",
    )
    rows = [header]
    for n in sorted(data["nodes"], key=lambda n: -n["priority"]):
        t = n["traffic"]
        probe = n["active"]["last_probe"]
        probe_text = "-" if probe is None else f"{probe['status'] or 'err'} {age(probe['time'], now)}"
        rows.append(
            (
                n["name"] + (" *" if n["serving"] else ""),
                n.get("api", "openai"),
                str(n["priority"]),
                str(n["weight"]),
                n["state"],
                n["manual"],
                str(t["requests"]),
                str(t["errors"]),
                str(t["in_flight"]),
                f"{t['rps']:.1f}",
                ms(t["p50_ms"]),
                ms(t["p95_ms"]),
                probe_text,
                age(n["changed_at"], now),
                "budget spent" if n.get("budget") else n["reason"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    window = next((f"{t['window_s']:g}" for n in data["nodes"] if "window_s" in (t := n["traffic"])), "60")
    lines.append(
        f"(* = serving; REQS and ERR since the sidecar started; RPS, P50ms and P95ms over the last {window} s)"
    )
    lines += spend_lines(data)
    out = [(n["name"], m) for n in data["nodes"] for m in n.get("models", ())]
    if out:
        lines.append("")
        lines.append("models out on a node (the node itself serves its other models):")
        for name, m in out:
            left = f", {max(0, round(m['until'] - now))}s left" if m["until"] else ""
            lines.append(f"  {name}: {m['model']} {m['state']}{left} ({m['reason']})")
    return "\n".join(lines)


def dollars(value: float) -> str:
    return f"${value:,.2f}" if value >= 0.995 or value == 0 else f"${value:.4f}"


def spend_lines(data: StatusJSON) -> list[str]:
    """Spend today and this month against the budgets, by node and model (newer sidecars say it)."""
    spend = data.get("spend")
    if spend is None:
        return []

    def against(value: float, cap: float | None) -> str:
        return dollars(value) + (f" of {dollars(cap)}" if cap is not None else "")

    lines = [
        "",
        f"spend {spend['day']}: {against(spend['today_usd'], spend['daily_usd'])} today, "
        f"{against(spend['month_usd'], spend['monthly_usd'])} this month"
        f" (prices: shipped table {spend['prices_as_of']} unless the config sets them)",
    ]
    if spend["over"]:
        lines.append(f"  new requests get 429: {spend['over']}")
    for n in spend["nodes"]:
        words = f"  {n['node']}: {against(n['today_usd'], n['daily_usd'])} today, "
        words += f"{against(n['month_usd'], n['monthly_usd'])} this month"
        lines.append(words + (f"; out: {n['over']}" if n["over"] else ""))
    for m in spend["models"]:
        lines.append(f"    {m['node']} {m['model'] or '-'}: {dollars(m['today_usd'])} today ({m['requests']} requests)")
    if spend["unpriced_today"]:
        lines.append(f"  {spend['unpriced_today']} answers today had no price (llm-sidecar check says which)")
    return lines
