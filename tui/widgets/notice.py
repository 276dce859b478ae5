"""What the monitor says while no sidecar answers: which control socket it watches, and how to fix that."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from .text import clean


class Disconnected(Widget):
    """Shown while no sidecar answers on the socket (the monitor keeps trying every second, so a sidecar
    started later is picked up); hidden once one does."""

    def __init__(self, socket: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.socket = socket
        self.was_connected = False
        self.problem: str | None = None

    def show(self, connected: bool, ever: bool, problem: str | None = None) -> None:
        """`ever`: a sidecar answered on this socket before (it went away, rather than never came);
        `problem`: what answered instead of a sidecar's event stream (a refusal, a socket not ours)."""
        self.display = not connected
        self.was_connected, self.problem = ever, problem
        self.refresh(layout=True)

    def render(self) -> Text:
        socket = clean(self.socket, 300)
        text = Text()
        if self.problem:
            text.append(f"{clean(self.problem, 300)}; trying again every second.\n", style="bold")
        elif self.was_connected:
            text.append(f"The llm-sidecar on control socket {socket} went away; waiting for it to come back.\n")
        else:
            text.append(f"No llm-sidecar answers on control socket {socket}; waiting for one.\n", style="bold")
        text.append("Start one: ", style="bold")
        text.append("llm-sidecar run")
        text.append(" (the same -c or --control-socket as this monitor)\n", style="dim")
        text.append("Or watch another: ", style="bold")
        text.append("llm-sidecar monitor -c CONFIG")
        text.append(" or ", style="dim")
        text.append("--control-socket PATH")
        return text
