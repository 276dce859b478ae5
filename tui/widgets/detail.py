"""The detail of one request, opened with Enter on a traffic row: each attempt, its wait, reason and time,
the timings, tokens and cost, as GET /v1/requests/{id} answers them (from the sidecar's recent events or its
journal). Drawn from what the app hands it; it never talks to the sidecar."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from sidecar.observe.display import mark_lines, ms
from sidecar.observe.shapes import RequestJSON

from .text import clean


def dollars(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"


def detail_text(d: RequestJSON) -> Text:
    """The request as lines of inert text (names and reasons come from clients and nodes: never markup)."""
    text = Text(no_wrap=False)

    def line(label: str, value: str, style: str = "") -> None:
        text.append(f"{label:<9}", style="bold")
        text.append(clean(value, 500) + "\n", style=style)

    ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["time"]))
    line("request", d["id"] + ("  (the client's id)" if d["client_id"] else ""))
    line("ended", f"{ended}  ({'the sidecar' if d['source'] == 'recent' else 'the journal'})")
    line("call", f"{d['method']} {d['path']}  {d['api']}{'  stream' if d['stream'] else ''}")
    served = f" (sent as {d['model_served']})" if d["model_served"] and d["model_served"] != d["model"] else ""
    line("model", f"{d['model'] or '-'}{served}")
    ok = d["status"] < 400 and not d["error"]
    line("answer", f"{d['status']} from {d['node'] or 'no node'}", "green" if ok else "bold red")
    line("timings", f"ttfb {ms(d['ttfb_ms'])} ms  ttft {ms(d['ttft_ms'])} ms  total {ms(d['total_ms'])} ms")
    if d["tokens_in"] is not None or d["tokens_out"] is not None:
        cached = f" (cached {d['tokens_cached']})" if d["tokens_cached"] else ""
        line("tokens", f"in {d['tokens_in']}{cached} out {d['tokens_out']}")
    line("cost", dollars(d["cost_usd"]))
    if d["error"]:
        line("error", d["error"], "red")
    for label, words in mark_lines(d["marks"]):
        line(label, words)
    text.append("\nattempts\n", style="bold")
    for i, s in enumerate(d["steps"], 1):
        style = {"failed": "red", "moved": "yellow"}.get(s["outcome"], "green")
        text.append(f" {i}. ")
        text.append(clean(s["node"], 64), style="bold")
        text.append(f"  {s['kind']}  ")
        text.append(s["outcome"], style=style)
        if s["reason"]:
            text.append(f": {clean(s['reason'], 300)}")
        if s.get("request_caused"):
            text.append(" (caused by the request)", style="yellow")
        if s["ms"] is not None:
            text.append(f"  {ms(s['ms'])} ms", style="dim")
        if s["wait_ms"]:
            text.append(f"  then waited {ms(s['wait_ms'])} ms", style="yellow")
        text.append("\n")
    if not d["steps"]:
        text.append(" none: the sidecar answered it itself\n", style="dim")
    if d["bodies"]:
        text.append("\nbodies kept: llm-sidecar log show " + clean(d["id"], 128) + "\n", style="dim")
    return text


class RequestScreen(ModalScreen[None]):
    BINDINGS: ClassVar = [Binding("escape,q,enter", "close", "Close")]

    def __init__(self, detail: RequestJSON) -> None:
        super().__init__()
        self.detail = detail

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="request-detail") as box:
            box.border_title = "request · esc closes"
            yield Static(detail_text(self.detail), id="request-text")

    def action_close(self) -> None:
        self.dismiss(None)
