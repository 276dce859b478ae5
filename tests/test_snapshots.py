"""Snapshots of the monitor's main screen at 80x24 and 120x40, from canned control-API data."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tui.app import MonitorApp
from tui.widgets import RatePlot

NOW = 1_795_600_000.0  # a fixed clock, so ages and times are the same on every run


def node(
    name: str, priority: int, weight: int, state: str, serving: bool, rps: float, p95: float, errors: int
) -> dict[str, Any]:
    return {
        "name": name, "url": f"https://{name}.example", "priority": priority, "weight": weight, "state": state,
        "manual": "auto", "serving": serving, "reason": "http 503" if state == "unhealthy" else "probe http 200",
        "changed_at": NOW - 42, "blocked_until": None, "trial_at": None,
        "active": {"enabled": True, "counters": {"successes": 0, "http_failures": 0, "tcp_failures": 0, "timeouts": 0},
                   "last_probe": {"time": NOW - 3, "status": 503 if state == "unhealthy" else 200, "latency_ms": 40.0, "result": "x"}},
        "passive": {"enabled": True, "counters": {"successes": 0, "http_failures": 0, "tcp_failures": 0, "timeouts": 0}},
        "traffic": {"requests": 120, "errors": errors, "in_flight": 2, "rps": rps, "p50_ms": 640.0, "p95_ms": p95,
                    "tokens_in": 1000, "tokens_out": 400},
    }  # fmt: skip


STATUS = {
    "sidecar": {"version": "0.1.0", "pid": 4242, "uptime_s": 754.0, "started_at": NOW - 754,
                "listen": "http://127.0.0.1:8787/v1", "config_path": "/home/me/llm-sidecar.toml",
                "config_loaded_at": NOW - 754, "control_socket": "/run/user/1000/llm-sidecar.sock"},
    "serving": "deepseek",
    "nodes": [node("openai", 0, 100, "unhealthy", False, 0.4, 2210.0, 9), node("deepseek", -1, 1, "healthy", True, 1.8, 1180.0, 0)],
}  # fmt: skip


def request(i: int) -> dict[str, Any]:
    failover = i == 6
    return {
        "type": "request", "seq": i, "time": NOW - 30 + i * 2, "id": f"beefcafe{i:08x}", "method": "POST",
        "path": "/v1/chat/completions", "model": "gpt-4o-mini", "node": "openai" if i < 6 else "deepseek",
        "status": 200, "attempts": 2 if failover else 1,
        "failed": [{"node": "openai", "reason": "http 503"}] if failover else [], "stream": i % 3 == 0,
        "ttfb_ms": 300.0 + i, "ttft_ms": None, "total_ms": 900.0 + 10 * i, "tokens_in": 12, "tokens_out": 30, "error": None,
    }  # fmt: skip


EVENTS = [
    *[request(i) for i in range(6)],
    {"type": "health", "seq": 7, "time": NOW - 19, "node": "openai", "before": "healthy", "after": "unhealthy", "reason": "http 503"},
    *[request(i) for i in range(6, 12)],
]  # fmt: skip


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


async def fill(pilot: Any) -> None:
    app = pilot.app
    app.show_status(STATUS)
    app.show_events(EVENTS)
    plot = app.query_one(RatePlot)
    for second in range(60):
        before = second < 40
        plot.sample(
            {"openai": 2 if before else 0, "deepseek": 0 if before else 2},
            900.0 + 10 * (second % 7),
            ["openai", "deepseek"],
        )
    await pilot.pause()


def canned_app() -> MonitorApp:
    return MonitorApp(Path("/run/user/1000/llm-sidecar.sock"), connect=False, clock=lambda: NOW)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_main_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    assert os.environ["TZ"] == "UTC"
    assert snap_compare(canned_app(), terminal_size=size, run_before=fill)
