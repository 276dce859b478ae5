"""`llm-sidecar monitor`: a Textual dashboard over the control socket.

Workers talk to the sidecar and post messages; the widgets only draw what they
are given. Events are buffered and drawn in batches a few times a second, so a
busy sidecar (hundreds of requests a second) never costs a repaint per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Label

from sidecar.control.client import AsyncControlClient, ControlError, NotRunning
from sidecar.observe.shapes import RequestJSON, StatusJSON
from sidecar.observe.stats import WINDOW as STATS_WINDOW
from sidecar.observe.stats import percentile

from .widgets import Disconnected, HeaderBar, HealthLog, NodesTable, RatePlot, RequestScreen, TrafficTable, clean

FLUSH_EVERY = 0.25
STATUS_EVERY = 1.0
TRAFFIC_TITLE = "live traffic, newest first · ttft: a stream's first token"


def nodes_title(window: float | None, stand_in: bool = False) -> str:
    """What the nodes table's figures cover (None: the sidecar did not say, an older one); `stand_in`: a
    node is marked ▷, serving a model that is out on the ▶ node."""
    span = f"last {window:g} s" if window is not None else "the sidecar's window"
    return f"nodes · req/s, err%, p50, p95: {span} · ▶ serving" + (" · ▷ serving a model" if stand_in else "")


def from_file(config_path: str) -> bool:
    """Whether the sidecar's config was read from a file it can read again: `<demo>`, `<memory>` were not."""
    return not (config_path.startswith("<") and config_path.endswith(">"))


@dataclass
class StatusArrived(Message):
    status: StatusJSON
    ours: bool = False  # the answer after an action of this monitor, which says itself what changed


@dataclass
class ConnectionChanged(Message):
    connected: bool
    problem: str | None = None  # why attaching failed when something answered (None: nothing did)


@dataclass
class StreamRefused(Message):
    reason: str


@dataclass
class DetailArrived(Message):
    detail: RequestJSON


class Seen:
    """The newest event drawn from one sidecar process. Each attach replays the last 200 events, and
    the sidecar drops a reader that falls far behind (the monitor then attaches again): what was
    already drawn must not be drawn twice. A restarted sidecar counts from 1 again."""

    def __init__(self) -> None:
        self.origin: tuple[object, object] | None = None
        self.seq = 0

    def attach(self, status: StatusJSON) -> None:
        origin = (status["sidecar"]["pid"], status["sidecar"]["started_at"])
        if origin != self.origin:
            self.origin, self.seq = origin, 0

    def fresh(self, event: dict[str, Any]) -> bool:
        seq = event.get("seq")
        if not isinstance(seq, int) or event.get("type") == "missed":
            return True  # a gap marker says where events were lost, not that they were drawn
        if seq <= self.seq:
            return False
        self.seq = seq
        return True


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(clean(self.question, 300)))  # a Text: node names are never read as markup
            with Horizontal():
                yield Button("Yes (y)", variant="warning", id="yes")
                yield Button("No (n)", id="no")

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class MonitorApp(App[None]):
    CSS_PATH = "monitor.tcss"
    TITLE = "llm-sidecar monitor"
    BINDINGS: ClassVar = [
        Binding("f", "failover", "Failover"),
        Binding("d", "node_down", "Node down"),
        Binding("a", "node_auto", "Node auto"),
        Binding("r", "reload", "Reload"),
        Binding("p", "pause", "Pause"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, socket: Path, *, connect: bool = True, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.socket = socket
        self.connect = connect
        self.clock = clock
        self.status: StatusJSON | None = None
        self.connected = False
        self.paused = False
        self.pending: list[dict[str, Any]] = []
        self.second: list[dict[str, Any]] = []
        self.serving: str | None = None
        self.serving_by_api: dict[str, str] = {}
        self.seen = Seen()
        self.refused: str | None = None  # the last reason the event stream was refused, told once
        self.acting = 0  # actions of this monitor under way: the serving node changing then is their doing

    def compose(self) -> ComposeResult:
        # Stacked at every size: the traffic table is the widest thing on screen and gets the full width;
        # the plot and the health events share the bottom row.
        yield HeaderBar(id="header")
        yield Disconnected(str(self.socket), id="disconnected")
        nodes = NodesTable(id="nodes")
        nodes.border_title = nodes_title(STATS_WINDOW)
        yield nodes
        traffic = TrafficTable(id="traffic")
        traffic.border_title = TRAFFIC_TITLE
        yield traffic
        with Horizontal(id="bottom"):
            plot = RatePlot(id="plot")
            plot.border_title = f"req/s, p95 ms · last {STATS_WINDOW:g} s"
            yield plot
            health = HealthLog(id="health", max_lines=500)
            health.border_title = "health events (newest first)"
            yield health
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(HeaderBar).show(None, False, str(self.socket))
        self.query_one(Disconnected).display = False  # until an attempt to attach failed
        if self.connect:
            self.watch_events()
            self.set_interval(STATUS_EVERY, self.poll_status)
            self.set_interval(1.0, self.sample_second)
        self.set_interval(FLUSH_EVERY, self.flush)

    # ------------------------------------------------------------------ data in

    @work(exclusive=True, group="events")
    async def watch_events(self) -> None:
        """Follow the event stream; reconnect by itself when the sidecar goes and comes back."""
        while True:
            problem: str | None = None
            try:
                async with AsyncControlClient(self.socket) as client:
                    status = await client.status()
                    self.post_message(StatusArrived(status))
                    self.seen.attach(status)
                    async for event in client.events():
                        if "type" not in event and "error" in event:  # refused, e.g. 503: too many readers
                            raise ControlError(0, event)
                        self.refused = None  # attached: a later refusal is news again
                        if self.seen.fresh(event):
                            self.pending.append(event)
            except ControlError as exc:
                self.post_message(StreamRefused(str(exc)))
                problem = str(exc)
            except (NotRunning, OSError):
                pass
            self.post_message(ConnectionChanged(False, problem))
            await asyncio.sleep(1.0)

    @work(exclusive=True, group="status")
    async def poll_status(self) -> None:
        try:
            async with AsyncControlClient(self.socket, timeout=3.0) as client:
                self.post_message(StatusArrived(await client.status()))
        except (NotRunning, ControlError, OSError):
            self.post_message(ConnectionChanged(False))

    def on_status_arrived(self, message: StatusArrived) -> None:
        with contextlib.suppress(NoMatches):  # a worker's answer can land while the app is closing
            self.show_status(message.status, quiet=self.acting > 0)
        if message.ours:
            self.acting -= 1

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        self.connected = message.connected
        with contextlib.suppress(NoMatches):
            self.query_one(HeaderBar).show(self.status, self.connected, str(self.socket))
            self.query_one(Disconnected).show(self.connected, ever=self.status is not None, problem=message.problem)

    def on_stream_refused(self, message: StreamRefused) -> None:
        if message.reason != self.refused:  # retried every second: say it once
            self.refused = message.reason
            self.tell(message.reason, title="Event stream refused", severity="error", timeout=10)

    def tell(
        self, message: str, *, title: str, severity: SeverityLevel = "information", timeout: float | None = None
    ) -> None:
        """A toast whose text is never read as markup: it quotes node names and the sidecar's messages."""
        self.notify(clean(message, 500), title=title, severity=severity, timeout=timeout, markup=False)

    def show_status(self, status: StatusJSON, quiet: bool = False) -> None:
        """Draw a status answer (also the entry point for tests with canned data). `quiet`: a change of the
        serving node is this monitor's own doing, which its action's toast tells (one toast per action)."""
        self.status = status
        self.connected = True
        self.query_one(HeaderBar).show(status, True, str(self.socket))
        self.query_one(Disconnected).show(True, ever=True)
        nodes = self.query_one(NodesTable)
        nodes.show(status["nodes"], self.clock())
        windows = {n["traffic"].get("window_s") for n in status["nodes"]} - {None}
        nodes.border_title = nodes_title(windows.pop() if len(windows) == 1 else None, bool(nodes.stand_ins))
        # One serving node per format (a mixed config serves OpenAI and Anthropic requests apart).
        by_api: dict[str, str] = {n.get("api", "openai"): n["name"] for n in status["nodes"] if n["serving"]}
        for api, before in self.serving_by_api.items():
            after = by_api.get(api)
            if after != before and not quiet:
                self.tell(f"{before} → {after or 'nothing'}", title="Failover", severity="warning")
        self.serving_by_api = by_api
        self.serving = status["serving"]

    def show_events(self, events: Iterable[dict[str, Any]]) -> None:
        """Draw a batch of events (also the entry point for tests with canned data)."""
        requests = []
        health = self.query_one(HealthLog)
        for event in events:
            if event.get("type") == "request":
                requests.append(event)
            else:
                health.add_event(event)
        self.second.extend(requests)
        if requests and not self.paused:
            self.query_one(TrafficTable).add_events(requests)

    def flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            with contextlib.suppress(NoMatches):  # a timer can fire while the app is closing
                self.show_events(batch)

    def sample_second(self) -> None:
        requests, self.second = self.second, []
        per_node = Counter(e["node"] for e in requests if e["node"])
        totals = sorted(e["total_ms"] or 0.0 for e in requests)
        p95 = percentile(totals, 0.95) or 0.0
        names = [n["name"] for n in self.status["nodes"]] if self.status else []
        with contextlib.suppress(NoMatches):
            self.query_one(RatePlot).sample(per_node, p95, names)

    @on(DataTable.RowSelected, "#traffic")
    def request_chosen(self, message: DataTable.RowSelected) -> None:
        """Enter on a traffic row: that request's detail, from the sidecar (its events, else its journal)."""
        event = self.query_one(TrafficTable).event_of(str(message.row_key.value))
        if event is not None and isinstance(event.get("id"), str):
            self.fetch_detail(event["id"])

    @work(group="detail", exclusive=True)
    async def fetch_detail(self, rid: str) -> None:
        try:
            async with AsyncControlClient(self.socket, timeout=5.0) as client:
                self.post_message(DetailArrived(await client.request_detail(rid)))
        except (NotRunning, ControlError, OSError) as exc:
            self.tell(f"request {rid}: {exc}", title="No detail", severity="warning")

    def on_detail_arrived(self, message: DetailArrived) -> None:
        self.push_screen(RequestScreen(message.detail))

    # ------------------------------------------------------------------ actions

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Failover", "Force failover away from the serving node", self.action_failover)
        yield SystemCommand("Node down", "Drain the selected node", self.action_node_down)
        yield SystemCommand("Node auto", "Give the selected node back to health checks", self.action_node_auto)
        yield SystemCommand("Reload config", "Re-read llm-sidecar.toml", self.action_reload)
        yield SystemCommand("Pause traffic", "Pause or resume the live traffic view", self.action_pause)

    def action_failover(self) -> None:
        serving = self.serving  # fixed now: the sidecar refuses (409) if another node serves by the time of "yes"

        def confirmed(answer: bool | None) -> None:
            if answer:
                self.call_control("failover", *([serving] if serving else []))

        self.push_screen(ConfirmScreen(f"Force failover away from {serving or 'the serving node'}?"), confirmed)

    def action_node_down(self) -> None:
        name = self.query_one(NodesTable).selected
        if name:
            self.call_control("node", name, "down")

    def action_node_auto(self) -> None:
        name = self.query_one(NodesTable).selected
        if name:
            self.call_control("node", name, "auto")

    def action_reload(self) -> None:
        path = self.status["sidecar"]["config_path"] if self.status else None
        if path is not None and not from_file(path):
            what = "the demo's config is built in memory" if path == "<demo>" else f"this config ({path}) is not a file"
            self.tell(f"{what}: there is no file to reload", title="Reload not available", severity="warning")
            return
        self.call_control("reload")

    def action_pause(self) -> None:
        self.paused = not self.paused
        traffic = self.query_one(TrafficTable)
        traffic.border_title = "live traffic — PAUSED (p)" if self.paused else TRAFFIC_TITLE

    @work(group="control")
    async def call_control(self, method: str, *args: str) -> None:
        self.acting += 1  # until the status after it is drawn: a status polled meanwhile shows its effect quietly
        posted = False
        try:
            async with AsyncControlClient(self.socket) as client:
                answer = await getattr(client, method)(*args)
                self.post_message(StatusArrived(await client.status(), ours=True))
                posted = True
        except NotRunning as exc:
            self.tell(str(exc), title="Disconnected", severity="error")
            return
        except ControlError as exc:
            title = "Reload failed" if method == "reload" else "Refused"
            self.tell(str(exc), title=title, severity="error", timeout=10)
            return
        finally:
            if not posted:
                self.acting -= 1
        if method == "failover":
            self.tell(
                f"{answer['down']} is down; {answer['serving']} serves now (a on its row undoes it)", title="Failover"
            )
        elif method == "node":
            serving = f"; {answer['serving']} serves" if answer["serving"] else "; nothing serves"
            if answer["manual"] == "down":
                self.tell(f"{answer['node']} is drained by hand{serving}", title="Node down")
            else:
                self.tell(
                    f"{answer['node']} is back to automatic health ({answer['state']}){serving}", title="Node auto"
                )
        else:
            self.tell(f"reloaded {answer['config_path']}", title="Reload")
