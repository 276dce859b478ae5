"""The health events pane: health changes, reloads, budgets spent, one a line, newest first."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from sidecar.observe.display import why_changed

from .text import STATE_STYLE, clean, cut


class HealthLog(ScrollView):
    """Health changes, manual actions, reloads: why things moved. One event a line, newest first (as the
    traffic), cut with … to the pane's width: a narrow pane shows more events, not fewer, taller ones."""

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
    """A health, config, budget or gap event as one line of text; None for a type this monitor does not show.

    A `manual` event is not shown: a drain or a give-back that changed the node's state is followed by its
    `health` event, which says what changed (`openai down (drained by hand)`), and one that changed nothing
    has nothing to say; shown both, one keypress read as two events."""
    kind = event.get("type")
    if kind not in ("health", "config", "budget", "missed"):
        return None  # `manual`, or a newer sidecar's event type: nothing to say about it
    stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    line = Text(f"{stamp} ", no_wrap=True, end="")
    if kind == "health":
        line.append(f"{clean(event['node'])} ")
        if event.get("model"):
            line.append(f"{clean(event['model'], 60)}: ")
        line.append(clean(event["after"]), style=STATE_STYLE.get(event["after"], ""))
        reason = why_changed(str(event["after"]), str(event["reason"]), event.get("before"))
        line.append(f" ({clean(reason, 500)})")
    elif kind == "budget":
        if event.get("over"):
            line.append(f"{clean(event.get('reason'), 500)}: new requests get 429", style="bold red")
        else:
            line.append(f"budget: {clean(event.get('reason'), 200)}: requests go on", style="green")
    elif kind == "config":
        if event["ok"]:
            line.append(f"config reloaded: {clean(', '.join(map(str, event['nodes'])), 500)}", style="green")
        else:
            error = event["error"]
            line.append(f"reload failed: {clean(error['key'])}: {clean(error['message'], 500)}", style="red")
    else:
        line.append(f"monitor fell behind: {clean(event['count'])} events skipped", style="dim")
    return line
