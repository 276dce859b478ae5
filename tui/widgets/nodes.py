"""The nodes table: one row per node, by priority, with its state, traffic figures and settings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text

from sidecar.observe.display import age, ms
from sidecar.observe.shapes import NodeJSON, TrafficJSON

from .table import Col, FittedTable
from .text import STATE_STYLE, plain

API_MARK = {"openai": "oai", "anthropic": "anth"}  # the request format a node speaks, in a few cells


class NodesTable(FittedTable):
    """One row per node, by priority; the row key is the node name. Rates, error share and latencies are
    the sidecar's sliding window (the last 60 s), never the process's whole life."""

    # Left to right by how much they tell; at narrow widths the static settings and the redundant `man`
    # (state says `down` exactly when a node is drained by hand) go first, then the detail.
    COLUMNS = (
        Col("node", "node", grow=1, prefer=16, least=8),
        Col("state", "state", grow=2, prefer=30, least=7),  # room for a model out on it, before the detail
        Col("api", "api", drop=4, most=4),
        Col("req/s", "req/s", most=7),
        Col("err%", "err%", most=5),
        Col("p50", "p50 ms", drop=5, most=8),
        Col("p95", "p95 ms", most=8),
        Col("limit", "1st tok", drop=12, most=7),  # the learned first-token limit of its latest model
        Col("infl", "infl", drop=6, most=6),
        Col("probe", "probe", drop=7, most=9),
        Col("changed", "changed", drop=8, most=7),
        Col("man", "man", drop=9, most=4),
        Col("prio", "prio", drop=10, most=6),
        Col("wt", "wt", drop=11, most=6),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stand_ins: set[str] = set()  # nodes marked ▷: serving a model that is out on the ▶ node

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True

    def show(self, nodes: Iterable[NodeJSON], now: float) -> None:
        rows = sorted(nodes, key=lambda n: (-n["priority"], n["name"]))
        # ▶ alone would claim the serving node takes every request, while a model out on it goes elsewhere.
        self.stand_ins = {w for n in rows if n["serving"] for m in n.get("models", ()) if (w := m.get("instead"))}
        self.stand_ins -= {n["name"] for n in rows if n["serving"]}
        self.fill([(n["name"], node_cells(n, now, n["name"] in self.stand_ins)) for n in rows])


def error_share(traffic: TrafficJSON) -> str:
    """Failed attempts in the window as a share of all there; `-` when there were none (0% would claim
    traffic that did not happen), and never `0%` when something failed."""
    asked, failed = traffic.get("window_requests"), traffic.get("window_errors")
    if not asked or failed is None:
        return "-"
    share = 100 * failed / asked
    return "<1%" if 0 < share < 0.5 else f"{share:.0f}%"


def node_cells(n: NodeJSON, now: float, stand_in: bool = False) -> dict[str, Text]:
    """`stand_in`: the node serves a model that is out on the serving node of its format (marked ▷)."""
    t = n["traffic"]
    probe = n["active"]["last_probe"]
    probe_text = "-" if probe is None else f"{probe['status'] or 'err'} {age(probe['time'], now)}"
    api = n.get("api", "openai")
    return {
        "node": plain(
            ("▶ " if n["serving"] else "▷ " if stand_in else "  ") + n["name"], style="bold" if n["serving"] else ""
        ),
        "state": state_text(n, now),
        "api": plain(API_MARK.get(api, api), style="cyan" if api == "anthropic" else ""),
        "req/s": plain(f"{t['rps']:.1f}"),
        "err%": plain(error_share(t), style="red" if t.get("window_errors") else ""),
        "p50": plain(ms(t["p50_ms"])),
        "p95": plain(ms(t["p95_ms"])),
        "limit": plain(first_token_limit(n)),
        "infl": plain(t["in_flight"]),
        "probe": plain(probe_text),
        "changed": plain(age(n["changed_at"], now)),
        "man": plain(n["manual"]),
        "prio": plain(n["priority"]),
        "wt": plain(n["weight"]),
    }


def state_text(node: NodeJSON, now: float) -> Text:
    """The node's state, and each model that is out on it while the node is fine, with where its requests
    go meanwhile: `healthy · gpt-4o: rate limited 12s → deepseek`."""
    text = plain(node["state"], style=STATE_STYLE.get(node["state"], ""))
    if node.get("budget"):
        text.append_text(plain(" · out: budget spent", style="bold red"))
    for m in node.get("models", ()):
        left = f" {max(0, round(m['until'] - now))}s" if m["until"] else ""
        where = f" → {m['instead']}" if m.get("instead") else ""
        text.append_text(plain(f" · {m['model']}: {m['state']}{left}{where}", style="yellow", limit=72))
    return text


def first_token_limit(node: NodeJSON) -> str:
    """The first-token limit in force for the model the node served last (learned from its own first tokens:
    below the configured one once it knows them); `-` before any stream."""
    limits = node.get("first_token_limits") or {}
    if not limits:
        return "-"
    return f"{list(limits.values())[-1]:g}s"
