"""The monitor's request detail (Enter on a traffic row) and its spend in the header, under Pilot against a
real running sidecar: the TUI gets both through the control API only."""

from __future__ import annotations

from typing import Any

import httpx
from rich.text import Text
from textual.widgets import Static

from tui.app import MonitorApp
from tui.widgets import HeaderBar, HealthLog, NodesTable, RequestScreen, TrafficTable, detail_text

from .conftest import chat, two_node_config
from .test_monitor import until

CHAT = "/v1/chat/completions"


async def test_enter_on_a_traffic_row_opens_that_requests_detail(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = two_node_config(primary, backup)
    config["budget"] = {"daily_usd": 10}
    config["upstream"]["nodes"][1]["price"] = {"input": 1000, "output": 1000}  # $0.012 an answer
    car = await sidecar(config)
    answer = await client.post(car.url + CHAT, json=chat(model="fault-503"))  # 503 on the primary, then backup
    await client.post(car.url + CHAT, json=chat())
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        traffic = app.query_one(TrafficTable)
        await until(pilot, lambda: traffic.row_count == 2)
        header = app.query_one(HeaderBar)
        # $0.012 on the backup, and the primary's gpt-4o at the shipped price (7 in, 5 out: $0.0000675).
        await until(pilot, lambda: "$0.0121 of $10.00 today" in header.render().plain)
        assert app.query_one(NodesTable).has_focus and traffic.cursor_type == "none"  # no cursor until tab
        await pilot.press("tab")
        await until(pilot, lambda: traffic.has_focus and traffic.cursor_type == "row")
        await pilot.press("down")  # the newest is on top: the failover is the second row
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RequestScreen))
        screen = app.screen
        assert isinstance(screen, RequestScreen) and screen.detail["id"] == answer.headers["x-request-id"]
        shown = str(screen.query_one("#request-text", Static).render())
        assert "answer   200 from backup" in shown and "model    fault-503 (sent as deepseek-chat)" in shown
        assert "1. primary  first  failed: http 503" in shown and "2. backup  failover  answered" in shown
        assert "cost     $0.012000" in shown
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, RequestScreen))
        # The sidecar's budget spent: the header says so.
        config["budget"] = {"daily_usd": 0.01}
        import tomli_w

        server = {"listen": f"127.0.0.1:{car.port}", "control_socket": str(car.socket)}
        car.config_path.write_text(tomli_w.dumps({**config, "server": server}))
        async with car.control() as control:
            assert (await control.post("/v1/reload")).status_code == 200
        await until(pilot, lambda: "today: budget spent" in header.render().plain)
        health = app.query_one(HealthLog)  # the lower budget is spent as the reload takes it
        await until(pilot, lambda: any("new requests get 429" in line for line in health.texts))


def test_the_detail_is_inert_text() -> None:
    hostile = "[bold]x[/]\x1b[31m"
    detail: Any = {
        "id": hostile, "client_id": hostile, "time": 0.0, "method": "POST", "path": hostile, "api": "openai",
        "api_upstream": "openai", "model": hostile, "model_served": None, "node": hostile, "status": 502,
        "stream": True, "attempts": 1, "failovers": 0, "ttfb_ms": None, "ttft_ms": None, "total_ms": 3.0,
        "tokens_in": None, "tokens_out": None, "tokens_cached": None, "tokens_cache_write": None,
        "tokens_reasoning": None, "cost_usd": None, "error": hostile, "marks": {}, "bodies": False,
        "source": "journal",
        "steps": [{"node": hostile, "kind": "first", "outcome": "failed", "reason": hostile, "fault": None,
                   "wait_ms": 1000.0, "ms": 2.0}],
    }  # fmt: skip
    text = detail_text(detail)
    assert isinstance(text, Text) and "\x1b" not in text.plain and "[bold]x[/]" in text.plain
    assert "then waited 1000 ms" in text.plain


def test_the_detail_shows_what_the_request_met_beyond_its_attempts() -> None:
    """Hedges, a translation, a node passed over, request-caused failures and the trace, as the journal marks
    them; an attempt moved on is told from a failed one. Hostile values stay inert."""
    hostile = "[bold]x[/]\x1b[31m"
    step = {"kind": "first", "fault": None, "wait_ms": None, "ms": 2.0}
    detail: Any = {
        "id": "r1", "client_id": None, "time": 0.0, "method": "POST", "path": "/v1/messages", "api": "anthropic",
        "api_upstream": "openai", "model": "m", "model_served": None, "node": "gpt", "status": 200,
        "stream": True, "attempts": 3, "failovers": 1, "ttfb_ms": 1.0, "ttft_ms": 1.0, "total_ms": 3.0,
        "tokens_in": None, "tokens_out": None, "tokens_cached": None, "tokens_cache_write": None,
        "tokens_reasoning": None, "cost_usd": None, "error": None, "bodies": False, "source": "recent",
        "marks": {"request_caused": "500", "hedged": [{"node": "gpt", "over": hostile, "won": True}],
                  "translated": "messages to chat", "form": "messages",
                  "skipped": [{"node": "x", "reason": "cannot translate: tool"}], "trace_id": "ab" * 16,
                  "span_id": "cd" * 8},
        "steps": [{**step, "node": "claude", "outcome": "moved", "reason": "moved on: claude ejected",
                   "request_caused": False},
                  {**step, "node": "claude", "outcome": "failed", "reason": "http 500", "request_caused": True},
                  {**step, "node": "gpt", "kind": "hedge", "outcome": "answered", "reason": None,
                   "request_caused": False}],
    }  # fmt: skip
    text = detail_text(detail).plain
    assert "\x1b" not in text and "hedged   gpt over [bold]x[/]\\x1b[31m (won)" in text
    assert "format   messages to chat" in text and "skipped  x: cannot translate: tool" in text
    assert "caused   by the request itself (500" in text and f"trace    {'ab' * 16} span {'cd' * 8}" in text
    assert "1. claude  first  moved: moved on: claude ejected" in text
    assert "2. claude  first  failed: http 500 (caused by the request)" in text
    assert "3. gpt  hedge  answered" in text
