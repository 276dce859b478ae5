"""The monitor driven by Textual's Pilot against a real running sidecar with fake providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from textual.pilot import Pilot

from tui.app import ConfirmScreen, MonitorApp
from tui.widgets import HeaderBar, HealthLog, NodesTable, TrafficTable

from .conftest import chat, two_node_config

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
    """The log's text with wrapped lines joined back together."""
    return " ".join(" ".join("".join(segment.text for segment in strip).split()) for strip in log.lines)


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
        await until(pilot, lambda: "primary: manual down" in log_text(app.query_one(HealthLog)))


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
        await until(pilot, lambda: "reload failed: upstream.nodes[0].weight" in log_text(log))
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
