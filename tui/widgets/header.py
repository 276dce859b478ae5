"""The header bar: version, listen address, uptime, spend today, config path, and the connection state at the
right."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from sidecar.observe.display import age
from sidecar.observe.shapes import StatusJSON

from .spend import spend_text
from .text import clean, cut


class HeaderBar(Widget):
    """Version, listen address, uptime, spend today, config path; the connection state always at the right edge."""

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
