"""The live traffic table: finished requests, newest first, and what their failed attempts met."""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from typing import Any

from rich.text import Text

from sidecar.observe.display import ms

from .table import Col, FittedTable
from .text import plain


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
