"""Snapshots of the monitor's main screen at 80x24 and 120x40, from the real status answer after real traffic."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.load import parse
from sidecar.control.status import status
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request
from tui.app import MonitorApp
from tui.widgets import RatePlot

from .inproc import Harness

NOW = 1_795_600_000.0  # a fixed clock, so ages and times are the same on every run


def real_status() -> dict[str, Any]:
    """`api.status` of a real runtime after real traffic (the primary failing, so it is ejected), with the
    values that change from run to run (times, latencies, pid, paths) pinned, so the picture is stable
    but its shape can never drift from what the sidecar answers."""
    cfg = parse(
        {
            "upstream": {
                "timeout": {"connect": 1, "send": 1, "read": 1},
                "checks": {"active": {"interval": 60}, "passive": {"unhealthy": {"http_failures": 1}}},
                "nodes": [
                    {"name": "openai", "url": "https://openai.example", "priority": 0, "weight": 100},
                    {"name": "deepseek", "url": "https://deepseek.example", "priority": -1, "weight": 1},
                    {
                        "name": "claude-sonnet-backup",
                        "url": "https://anthropic.example",
                        "api": "anthropic",
                        "priority": -2,
                        "weight": 1,
                    },
                ],
            }
        },
        "/home/me/llm-sidecar.toml",
        env={},
    )

    def handler(node: str, request: Request) -> Script:
        if node == "openai":
            return Script(503, body=[b'{"error": {"message": "busy"}}'])
        return Script(body=[b'{"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 30}}'])

    async def traffic() -> dict[str, Any]:
        harness = Harness(handler, cfg)
        for _ in range(3):
            await harness.request({"model": "gpt-4o-mini", "messages": []})
        return dict(status(harness.runtime))

    data = asyncio.run(traffic())
    assert [n["state"] for n in data["nodes"]] == ["ejected", "healthy", "healthy"] and data["serving"] == "deepseek"
    assert [n["api"] for n in data["nodes"]] == ["openai", "openai", "anthropic"]
    # the error share is the window's (the one failed attempt on the primary), shown as err%
    assert [(n["traffic"]["window_requests"], n["traffic"]["window_errors"]) for n in data["nodes"]] == [
        (1, 1),
        (3, 0),
        (0, 0),
    ]
    pinned = {"version": "0.1.0", "pid": 4242, "uptime_s": 754.0, "started_at": NOW - 754,
              "config_loaded_at": NOW - 754, "control_socket": "/run/user/1000/llm-sidecar.sock"}  # fmt: skip
    assert pinned.keys() <= data["sidecar"].keys()
    data["sidecar"].update(pinned)
    figures = [(0.4, 2210.0, 503), (1.8, 1180.0, 200), (0.0, None, 200)]
    for n, (rps, p95, probe) in zip(data["nodes"], figures, strict=True):
        n["changed_at"] = NOW - 42
        if n["passive"]["ejected_until"] is not None:
            n["passive"]["ejected_until"] = NOW - 32
        n["active"]["last_probe"] = {
            "time": NOW - 3,
            "status": probe,
            "latency_ms": 40.0,
            "result": f"probe http {probe}",
        }
        traffic = n["traffic"]
        assert {"rps", "p50_ms", "p95_ms", "in_flight"} <= traffic.keys()
        traffic.update(rps=rps, p50_ms=640.0 if p95 else None, p95_ms=p95, in_flight=2 if p95 else 0)
    return data


STATUS = real_status()


def request(i: int) -> dict[str, Any]:
    failed: list[dict[str, Any]] = []
    continued: list[dict[str, str]] = []
    if i == 4:  # a short Retry-After, waited out on the same node
        failed = [{"node": "openai", "reason": "rate limited (429)", "wait_ms": 1000}]
    if i == 5:  # a stream cut mid-way, continued on the backup
        continued = [{"from": "openai", "to": "deepseek", "reason": "connection closed mid-body"}]
    if i == 6:
        failed = [{"node": "openai", "reason": "http 503"}]
    stream = i % 3 == 0 or i == 5
    return {
        "type": "request", "seq": i, "time": NOW - 30 + i * 2, "id": f"beefcafe{i:08x}", "method": "POST",
        "path": "/v1/chat/completions", "model": "gpt-4o-mini", "node": "openai" if i < 5 else "deepseek",
        "status": 200, "attempts": 1 + len(failed) + len(continued), "failed": failed, "continued": continued,
        "stream": stream, "ttfb_ms": 300.0 + i, "ttft_ms": 340.0 + i if stream else None,
        "total_ms": (2400.0 if stream else 900.0) + 10 * i,
        "tokens_in": 12, "tokens_out": 30, "error": None,
    }  # fmt: skip


EVENTS = [
    *[request(i) for i in range(6)],
    {"type": "health", "seq": 7, "time": NOW - 19, "node": "openai", "before": "healthy", "after": "ejected", "reason": "http 503"},
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
            [n["name"] for n in STATUS["nodes"]],
        )
    await pilot.pause()


def canned_app() -> MonitorApp:
    return MonitorApp(Path("/run/user/1000/llm-sidecar.sock"), connect=False, clock=lambda: NOW)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_main_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    assert os.environ["TZ"] == "UTC"
    assert snap_compare(canned_app(), terminal_size=size, run_before=fill)
