"""The monitor driven by Textual's Pilot against a real running sidecar with fake providers."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from sidecar.control.status import status
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request
from sidecar.observe.stats import NodeStats
from tui.app import ConfirmScreen, MonitorApp
from tui.widgets import Disconnected, HeaderBar, HealthLog, NodesTable, TrafficTable, error_share, event_line

from .conftest import chat, two_node_config
from .inproc import Harness
from .inproc import config as inproc_config
from .test_snapshots import NOW, STATUS, canned_app, fill

CHAT = "/v1/chat/completions"


async def until(pilot: Pilot, condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.1)


def cell(table: NodesTable, node: str, column: str) -> str:
    return str(table.get_cell(node, column))


def log_text(log: HealthLog) -> str:
    """The log's events, whole (the pane cuts them to its width), newest first."""
    return " ".join(log.texts)


async def test_rows_traffic_and_failover_with_f(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    for _ in range(3):
        await client.post(car.url + CHAT, json=chat())
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        nodes = app.query_one(NodesTable)
        await until(pilot, lambda: nodes.row_count == 2)
        assert cell(nodes, "primary", "node").strip() == "▶ primary"
        assert cell(nodes, "backup", "state") == "healthy"
        traffic = app.query_one(TrafficTable)
        await until(pilot, lambda: traffic.row_count == 3)  # replayed on connect
        for _ in range(4):
            await client.post(car.url + CHAT, json=chat())
        await until(pilot, lambda: traffic.row_count == 7)

        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: cell(nodes, "primary", "state") == "down")
        assert cell(nodes, "backup", "node").strip() == "▶ backup"
        before = (primary.stats.chat, backup.stats.chat)
        for _ in range(3):
            await client.post(car.url + CHAT, json=chat())
        assert (primary.stats.chat, backup.stats.chat) == (before[0], before[1] + 3)
        await until(pilot, lambda: "primary down (drained by hand)" in log_text(app.query_one(HealthLog)))


async def test_failover_refused_shows_the_reason(fakes, sidecar) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    async with car.control() as control:
        await control.post("/v1/nodes/backup/down")
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        nodes = app.query_one(NodesTable)
        await until(pilot, lambda: nodes.row_count == 2)
        await pilot.press("f", "y")
        await until(pilot, lambda: any("no other node" in str(n.message) for n in app._notifications))
    assert (await car.status())["serving"] == "primary"


async def test_d_and_a_drain_and_restore_the_selected_node(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        nodes = app.query_one(NodesTable)
        await until(pilot, lambda: nodes.row_count == 2)
        assert nodes.selected == "primary"
        await pilot.press("d")
        await until(pilot, lambda: cell(nodes, "primary", "man") == "down")
        await client.post(car.url + CHAT, json=chat())
        assert (primary.stats.chat, backup.stats.chat) == (0, 1)
        await pilot.press("a")
        await until(pilot, lambda: cell(nodes, "primary", "man") == "auto")
        await client.post(car.url + CHAT, json=chat())
        assert (primary.stats.chat, backup.stats.chat) == (1, 1)
        nodes.move_cursor(row=1)
        await pilot.press("d")
        await until(pilot, lambda: cell(nodes, "backup", "man") == "down")


async def test_reload_with_a_broken_file_shows_the_error(fakes, sidecar) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    car.config_path.write_text(car.config_path.read_text().replace("weight = 100", 'weight = "heavy"'))
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.query_one(NodesTable).row_count == 2)
        await pilot.press("r")
        log = app.query_one(HealthLog)
        await until(pilot, lambda: 'reload failed: upstream.nodes[0] ("primary").weight' in log_text(log))
        assert any("expected an integer" in str(n.message) for n in app._notifications)
    assert (await car.node("primary"))["weight"] == 100


async def test_disconnect_and_reconnect_when_the_sidecar_restarts(fakes, sidecar) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = two_node_config(primary, backup)
    car = await sidecar(config)
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        header = app.query_one(HeaderBar)
        await until(pilot, lambda: "● connected" in str(header.render()))
        await asyncio.to_thread(car.stop)
        await until(pilot, lambda: "disconnected — retrying" in str(header.render()))
        again = await sidecar({**config, "server": {"control_socket": str(car.socket)}})
        await until(pilot, lambda: "● connected" in str(header.render()), seconds=15)
        assert app.status["sidecar"]["pid"] == again.proc.pid


async def test_pause_stops_the_traffic_view(fakes, sidecar, client) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        traffic = app.query_one(TrafficTable)
        await until(pilot, lambda: app.status is not None)
        await pilot.press("p")
        await client.post(car.url + CHAT, json=chat())
        await pilot.pause(0.6)
        assert traffic.row_count == 0 and "PAUSED" in str(traffic.border_title)
        await pilot.press("p")
        await client.post(car.url + CHAT, json=chat())
        await until(pilot, lambda: traffic.row_count == 1)


async def test_a_burst_of_events_is_drawn_in_batches(tmp_path) -> None:
    app = MonitorApp(tmp_path / "none.sock", connect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        traffic = app.query_one(TrafficTable)
        calls = 0
        original = traffic.add_events

        def counting(events):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            original(events)

        traffic.add_events = counting  # type: ignore[method-assign]
        now = time.time()
        app.pending.extend(
            {"type": "request", "seq": i, "time": now, "id": f"{i:016x}", "model": "m", "node": "a", "status": 200,
             "attempts": 1, "failed": [], "stream": False, "ttfb_ms": 1.0, "ttft_ms": None, "total_ms": 1.0,
             "tokens_in": 1, "tokens_out": 1, "method": "POST", "path": "/v1/chat/completions", "error": None}
            for i in range(1000)
        )  # fmt: skip
        await until(pilot, lambda: not app.pending)
        assert calls == 1  # one redraw for the whole burst
        assert traffic.row_count == TrafficTable.LIMIT  # bounded
        assert str(traffic.get_row_at(0)[1]) == f"{999:016x}"[-8:]  # newest first


# ---------------------------------------------------------------------------- a monitor that never misleads


def row_cells(table: TrafficTable, row: int) -> dict[str, str]:
    """A traffic row by column key (only the columns on screen)."""
    return dict(zip(table.shown, (str(c) for c in table.get_row_at(row)), strict=True))


async def test_err_pct_is_the_last_minute_not_the_process_life() -> None:
    """The primary failed a minute ago and serves cleanly now: its err% is 0%, although the sidecar's
    lifetime totals (still in the status JSON) hold the old failures. Real status from a real runtime
    whose clock is moved on by 61 s."""
    broken = True
    skew = 0.0

    def handler(node: str, request: Request) -> Script:
        if node == "primary" and broken:
            return Script(503, body=[b'{"error": {"message": "busy"}}'])
        return Script(body=[b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'])

    harness = Harness(handler, inproc_config(recovery="trial"))  # back by a trial after the ejection time
    harness.runtime.upstream.clock = lambda: time.monotonic() + skew
    for _ in range(4):
        await harness.request({"model": "m", "messages": []})
    before = status(harness.runtime)
    broken, skew = False, 61.0  # past the window, and past the primary's ejection
    for _ in range(3):
        await harness.request({"model": "m", "messages": []})
    after = status(harness.runtime)
    primary = next(n for n in after["nodes"] if n["name"] == "primary")["traffic"]
    assert primary["errors"] >= 1 and primary["window_errors"] == 0 and primary["window_requests"] >= 1
    assert primary["window_s"] == 60

    app = MonitorApp(Path("/nonexistent.sock"), connect=False)
    async with app.run_test(size=(120, 40)) as pilot:
        nodes = app.query_one(NodesTable)
        app.show_status(before)
        await pilot.pause()
        assert cell(nodes, "primary", "err%") == "100%"
        app.show_status(after)
        await pilot.pause()
        assert cell(nodes, "primary", "err%") == "0%"  # the lifetime share would say errors/requests > 0
        assert cell(nodes, "backup", "err%") == "-"  # no attempts in the window: no share to show
        assert "last 60 s" in str(nodes.border_title)
        assert [str(c.label) for c in nodes.columns.values()][5:7] == ["p50 ms", "p95 ms"]


def test_error_share_never_rounds_failures_away() -> None:
    base = {"requests": 1000, "errors": 900, "in_flight": 0, "rps": 1.0, "p50_ms": 1.0, "p95_ms": 1.0}
    assert error_share({**base, "window_requests": 1000, "window_errors": 1}) == "<1%"  # type: ignore[typeddict-item]
    assert error_share({**base, "window_requests": 3, "window_errors": 1}) == "33%"  # type: ignore[typeddict-item]
    assert error_share({**base, "window_requests": 0, "window_errors": 0}) == "-"  # type: ignore[typeddict-item]
    assert error_share(base) == "-"  # type: ignore[arg-type]  # an older sidecar: no window counts, no guess


def test_the_window_counts_forget_what_is_older_than_a_minute() -> None:
    stats = NodeStats()
    stats.finished(100.0, 0.5, ok=False)
    stats.finished(130.0, 0.5, ok=True)
    first = stats.snapshot(130.0, 1000.0)
    assert (first["window_requests"], first["window_errors"], first["errors"]) == (2, 1, 1)
    later = stats.snapshot(161.0, 1000.0)  # the failure is 61 s old
    assert (later["window_requests"], later["window_errors"], later["requests"], later["errors"]) == (1, 0, 2, 1)


async def test_streams_show_their_time_to_first_token(fakes, sidecar, client) -> None:
    """A stream's total is the whole stream; the row shows its ttft too. A JSON answer has none."""
    primary = await fakes("primary", chunks=6, chunk_delay=0.1)
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        traffic = app.query_one(TrafficTable)
        await until(pilot, lambda: app.status is not None)
        await pilot.pause(0.3)  # attached to the event stream
        await client.post(car.url + CHAT, json=chat(stream=True))
        await client.post(car.url + CHAT, json=chat())
        await until(pilot, lambda: traffic.row_count == 2)
        plain_row, stream_row = row_cells(traffic, 0), row_cells(traffic, 1)
        assert stream_row["s"] == "S" and plain_row["s"] == "-"
        assert float(stream_row["total"]) >= 500  # six chunks 0.1 s apart
        assert float(stream_row["ttft"]) < float(stream_row["total"]) - 300
        assert plain_row["ttft"] == "-"
        labels = [str(c.label) for c in traffic.columns.values()]
        assert {"ttfb ms", "ttft ms", "total ms"} <= set(labels)


async def test_reload_where_there_is_no_config_file_says_so() -> None:
    """`<demo>` (or any `<...>`) is not a file: `r` says reload is not available instead of asking the
    sidecar to read a file that is not there."""
    app = MonitorApp(Path("/nonexistent.sock"), connect=False)
    calls: list[str] = []
    app.call_control = lambda method, *args: calls.append(method)  # type: ignore[method-assign,assignment,misc]
    async with app.run_test(size=(80, 24)) as pilot:
        demo = json.loads(json.dumps(STATUS))
        demo["sidecar"]["config_path"] = "<demo>"
        app.show_status(demo)
        await pilot.press("r")
        await pilot.pause()
        toasts = [(n.title, str(n.message)) for n in app._notifications]
        assert ("Reload not available", "the demo's config is built in memory: there is no file to reload") in toasts
        assert calls == []
        app.show_status(STATUS)  # a real file: asked for
        await pilot.press("r")
        await pilot.pause()
        assert calls == ["reload"]


# ---------------------------------------------------------------------------- layout at 80x24, 120x40, 200x50

SIZES = [(80, 24), (120, 40), (200, 50)]


def fits(table: NodesTable | TrafficTable) -> bool:
    """Every shown column within the table: nothing behind a horizontal scrollbar."""
    return table.virtual_size.width <= table.scrollable_content_region.width and not table.show_horizontal_scrollbar


@pytest.mark.parametrize("size", SIZES)
async def test_the_important_columns_always_fit(size: tuple[int, int]) -> None:
    app = canned_app()
    async with app.run_test(size=size) as pilot:
        await fill(pilot)
        nodes, traffic = app.query_one(NodesTable), app.query_one(TrafficTable)
        assert fits(nodes) and fits(traffic)
        assert {"node", "state", "api", "req/s", "err%", "p95"} <= set(nodes.shown)
        assert {"time", "model", "node", "st", "att", "ttft", "total", "why"} <= set(traffic.shown)
        if size[0] >= 120:
            assert nodes.shown == [c.key for c in NodesTable.COLUMNS]  # prio and wt too
            assert traffic.shown == [c.key for c in TrafficTable.COLUMNS]  # tok and why too
            assert row_cells(traffic, 0)["tok"] == "12/30"
        else:
            assert nodes.shown[-1] != "wt"  # the static settings go first, deliberately
        names = {str(nodes.get_cell(n, "node")).strip() for n in ("openai", "deepseek", "claude-sonnet-backup")}
        if size[0] >= 120:
            assert "▶ deepseek" in names and "▶ claude-sonnet-backup" in names  # whole
        else:
            assert "▶ claude-sonnet-b…" in names  # cut with an ellipsis, not a hidden column
        assert cell(nodes, "claude-sonnet-backup", "api") == "anth" and cell(nodes, "openai", "api") == "oai"
        why = [row_cells(traffic, i)["why"] for i in range(traffic.row_count)]
        assert "openai:503" in why and "openai:429 wait1.0s" in why
        nodes.move_cursor(row=2)
        await pilot.resize_terminal(size[0] - 7, size[1])  # columns laid out again...
        await pilot.pause()
        assert fits(nodes) and nodes.selected == "claude-sonnet-backup"  # ...the selection stays


@pytest.mark.parametrize("size", SIZES)
async def test_health_events_one_a_line_newest_first_and_plot_labels_whole(size: tuple[int, int]) -> None:
    app = canned_app()
    async with app.run_test(size=size) as pilot:
        await fill(pilot)
        log = app.query_one(HealthLog)
        reasons = ["probe http 503 after a very long explanation of what went wrong upstream", "ok", "http 503"]
        app.show_events(
            {"type": "health", "seq": 100 + i, "time": NOW + i, "node": "claude-sonnet-backup",
             "before": "healthy", "after": "ejected" if i % 2 else "healthy", "reason": reasons[i % 3]}
            for i in range(8)
        )  # fmt: skip
        await pilot.pause()
        shown = [line.text.rstrip() for line in (log.render_line(y) for y in range(min(log.size.height, 8)))]
        assert len(shown) >= 4  # not one event wrapped over two lines
        stamps = [time.strftime("%H:%M:%S", time.localtime(NOW + i)) for i in range(7, 7 - len(shown), -1)]
        assert [line[:8] for line in shown] == stamps  # one event a line, newest first
        assert all(len(line) <= log.scrollable_content_region.width for line in shown)
        if size[0] < 120:
            assert any(line.endswith("…") for line in shown)  # cut, not wrapped
        labels = [str(label.render()).strip() for label in app.query(".plot-label")]
        assert labels[:2] == ["openai", "deepseek"] and labels[-1] == "p95 ms"
        # whole, unless the plot is too narrow for a 20-character name (then cut with an ellipsis)
        assert labels[2] == ("claude-sonnet-backup" if size[0] >= 120 else "claude-sonnet…")


@pytest.mark.parametrize("size", SIZES[:2])
async def test_toasts_cover_neither_the_nodes_nor_the_health_events(size: tuple[int, int]) -> None:
    app = canned_app()
    async with app.run_test(size=size, notifications=True) as pilot:
        await fill(pilot)
        app.show_status(moved_openai_traffic())  # a failover: a toast
        app.tell("a longer message that the sidecar sent, about a refusal", title="Refused", severity="error")
        await pilot.pause(0.3)
        toasts = list(app.screen.query("Toast"))
        assert len(toasts) == 2
        keep_clear = [
            app.query_one(NodesTable).region,
            app.query_one(HealthLog).region,
            app.query_one(HeaderBar).region,
        ]
        for toast in toasts:
            assert not any(toast.region.overlaps(region) for region in keep_clear), (toast.region, keep_clear)


def test_a_stream_that_broke_after_it_began_says_so_in_why() -> None:
    from tui.widgets import why

    broken = {"failed": [], "continued": [], "status": 200, "error": "stream interrupted: read timeout"}
    assert why(broken) == "✗ stream interrupted: read timeout"
    failed_over = {"failed": [{"node": "a", "reason": "http 503"}], "continued": [], "status": 200, "error": None}
    assert why(failed_over) == "a:503"
    refused = {"failed": [], "continued": [], "status": 502, "error": "all upstream attempts failed"}
    assert why(refused) == "-"  # the red status says it; why is for what happened on the way


def moved_openai_traffic() -> Any:
    """STATUS after the OpenAI-format traffic moved to the other OpenAI node (the Anthropic node serves on)."""
    moved = copy.deepcopy(STATUS)
    for node in moved["nodes"]:
        if node["api"] == "openai":
            node["serving"] = not node["serving"]
    return moved


async def test_a_failover_toast_names_the_nodes_of_one_format() -> None:
    app = canned_app()
    async with app.run_test(size=(120, 40)) as pilot:
        first = copy.deepcopy(STATUS)
        app.show_status(first)
        second = moved_openai_traffic()
        app.show_status(second)
        await pilot.pause()
        toasts = [str(n.message) for n in app._notifications if n.title == "Failover"]
        before = next(n["name"] for n in first["nodes"] if n["api"] == "openai" and n["serving"])
        after = next(n["name"] for n in second["nodes"] if n["api"] == "openai" and n["serving"])
        assert toasts == [f"{before} → {after}"]  # not a node of the other format


# ---------------------------------------------------------------------------- the first hour (issue 24)


async def test_with_no_sidecar_it_says_which_socket_it_watches_and_how_to_fix_it(fakes, sidecar, tmp_path) -> None:
    """`monitor` with nothing running waits (a sidecar started later is picked up), and says so on screen:
    the socket it watches, how to start a sidecar there, how to watch another one."""
    sock = tmp_path / "later.sock"
    app = MonitorApp(sock)
    async with app.run_test(size=(80, 24)) as pilot:
        notice = app.query_one(Disconnected)
        await until(pilot, lambda: notice.display)
        said = str(notice.render())
        assert f"No llm-sidecar answers on control socket {sock}; waiting for one." in said
        assert "llm-sidecar run" in said and "-c CONFIG" in said and "--control-socket PATH" in said
        assert notice.region.height >= 3 and app.query_one(NodesTable).row_count == 0
        config = two_node_config(await fakes("primary"), await fakes("backup"))
        await sidecar({**config, "server": {"control_socket": str(sock)}})
        nodes = app.query_one(NodesTable)
        await until(pilot, lambda: nodes.row_count == 2, seconds=15)
        assert not notice.display  # attached: the dashboard has the room


async def test_one_failover_is_one_toast_and_one_health_event(fakes, sidecar) -> None:
    """`f` once: one toast and one line in the health events (it was two of each: the serving node
    changing, the action's answer; the `manual` event, the `health` event)."""
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        nodes = app.query_one(NodesTable)
        await until(pilot, lambda: nodes.row_count == 2)
        await pilot.pause(0.5)  # attached to the event stream
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: cell(nodes, "primary", "state") == "down")
        await pilot.pause(2.5)  # the status polls that follow see the change too
        toasts = [(n.title, str(n.message)) for n in app._notifications]
        assert toasts == [("Failover", "primary is down; backup serves now (a on its row undoes it)")], toasts
        log = app.query_one(HealthLog)
        assert [t[9:] for t in log.texts] == ["primary down (drained by hand)"], log.texts
        await pilot.press("a")  # the cursor is on the primary, the first row
        await until(pilot, lambda: cell(nodes, "primary", "state") == "healthy")
        await pilot.pause(1.5)
        toasts = [(n.title, str(n.message)) for n in app._notifications]
        assert toasts[1:] == [("Node auto", "primary is back to automatic health (healthy); primary serves")], toasts
        assert log.texts[0][9:] == "primary healthy (back to auto by hand)"


def test_a_health_event_says_what_it_means() -> None:
    """`openai-fake ejected (probe http 200)` read as an ejection because of a 200: probes passing again
    while failed requests still hold the node out."""
    back = {"type": "health", "seq": 1, "time": NOW, "node": "openai-fake", "before": "unhealthy",
            "after": "ejected", "reason": "probe http 200"}  # fmt: skip
    line = event_line(back)
    assert line is not None
    assert (
        line.plain[9:]
        == "openai-fake ejected (probes pass (probe http 200); still ejected until a request of the kind that failed succeeds)"
    )
    out = {**back, "before": "healthy", "reason": "http 503"}
    assert event_line(out).plain[9:] == "openai-fake ejected (http 503)"  # type: ignore[union-attr]
    assert event_line({"type": "manual", "seq": 2, "time": NOW, "node": "a", "manual": "down"}) is None


async def test_a_model_out_on_the_serving_node_shows_where_its_requests_go() -> None:
    """▶ stays on the primary (it serves every other model), while gpt-4o, rate-limited there, goes to
    the backup: its state says so, and the backup is marked ▷."""
    data = copy.deepcopy(STATUS)
    serving = next(n for n in data["nodes"] if n["serving"] and n["api"] == "openai")
    serving["models"] = [{"model": "gpt-4o", "state": "rate limited", "reason": "rate limited", "until": NOW + 12,
                          "instead": "openai"}]  # fmt: skip
    app = canned_app()
    async with app.run_test(size=(200, 50)) as pilot:  # wide enough for the whole state (narrower: cut with …)
        app.show_status(data)
        await pilot.pause()
        nodes = app.query_one(NodesTable)
        assert cell(nodes, serving["name"], "node").strip() == f"▶ {serving['name']}"
        assert cell(nodes, "openai", "node").strip() == "▷ openai"
        assert cell(nodes, serving["name"], "state") == "healthy · gpt-4o: rate limited 12s → openai"
        assert "▷ serving a model" in str(nodes.border_title)
        app.show_status(STATUS)
        await pilot.pause()
        assert cell(nodes, "openai", "node").strip() == "openai" and "▷" not in str(nodes.border_title)
