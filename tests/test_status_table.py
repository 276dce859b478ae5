"""`llm-sidecar status` as people read it: fitted to the terminal, in words that cannot be misread."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from sidecar.config.load import parse
from sidecar.control.status import status
from sidecar.control.table import render_status
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request

from .conftest import chat, cli, cli_env, two_node_config
from .inproc import Harness
from .test_snapshots import STATUS

CHAT = "/v1/chat/completions"


def table_rows(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    return lines[start : start + 1 + len(STATUS["nodes"])]


def test_the_table_fits_80_columns_and_says_what_it_left_out() -> None:
    text = render_status(STATUS, 80)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    header = table_rows(text)[0].split()
    assert header[:2] == ["NODE", "STATE"] and {"ERR", "RPS", "P95ms", "REASON"} <= set(header)
    assert "MANUAL" not in header and "WEIGHT" not in header  # the settings leave first
    assert "(hidden at 80 columns: " in text and "(* serving; ERR: since start; RPS, P95ms: last 60 s)" in text
    wide = render_status(STATUS, 200)
    assert table_rows(wide)[0].split() == [
        "NODE", "API", "PRIO", "WEIGHT", "STATE", "MANUAL", "REQS", "ERR", "INFL", "RPS", "P50ms", "P95ms",
        "PROBE", "CHANGED", "REASON",
    ]  # fmt: skip
    assert "hidden" not in wide
    narrow = render_status(STATUS, 64)  # the few columns that stay, and the reason
    assert all(len(line) <= 64 for line in table_rows(narrow)), narrow
    assert table_rows(narrow)[0].split()[-1] == "REASON"


def test_a_long_reason_is_cut_not_wrapped() -> None:
    data = copy.deepcopy(STATUS)
    data["nodes"][0]["reason"] = "connect failed (Connection refused by the far end of a very long road)"
    rows = table_rows(render_status(data, 80))
    assert len(rows) == 4 and all(len(row) <= 80 for row in rows)
    assert any(row.rstrip().endswith("…") for row in rows)


def test_reason_says_what_happened_by_hand() -> None:
    data = copy.deepcopy(STATUS)
    data["nodes"][1].update(state="healthy", manual="auto", reason="manual auto")
    data["nodes"][2].update(state="down", manual="down", reason="manual down")
    text = render_status(data, 120)
    assert "manual auto" not in text and "manual down" not in text
    assert "back to auto by hand" in text and "drained by hand" in text


def test_a_model_out_on_the_serving_node_says_where_its_requests_go() -> None:
    """The primary serves, but gpt-4o is rate-limited on it: every gpt-4o request goes to the backup, and the
    status says so (the ▶/* on the primary alone read as if the primary took them)."""

    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return Script(429, headers=[("content-type", "application/json"), ("retry-after", "30")],
                          body=[b'{"error": {"message": "slow down"}}'])  # fmt: skip
        return Script(body=[b'{"choices": []}'])

    cfg = parse(
        {"upstream": {"checks": {"passive": {}}, "nodes": [
            {"name": "primary", "url": "http://primary.invalid", "priority": 0},
            {"name": "backup", "url": "http://backup.invalid", "priority": -1},
        ]}},
        "<test>", env={},
    )  # fmt: skip
    harness = Harness(handler, cfg)
    answer = asyncio.run(harness.request({"model": "gpt-4o", "messages": []}))
    assert answer.status == 200 and answer.headers["x-llm-sidecar-node"] == "backup"
    data = status(harness.runtime)
    primary = data["nodes"][0]
    assert primary["serving"] and primary["models"][0]["model"] == "gpt-4o"
    assert primary["models"][0]["instead"] == "backup"
    text = render_status(data, 80)
    words = " ".join(text.split())
    assert "primary: gpt-4o rate limited, 30s left; its requests go to backup" in words
    assert all(len(line) <= 80 for line in text.splitlines()), text


async def test_status_of_a_running_sidecar_fits_80_columns(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary-with-a-longer-name"), await fakes("backup")
    config = two_node_config(primary, backup)
    config["upstream"]["nodes"][0]["name"] = "primary-with-a-longer-name"
    car = await sidecar(config)
    await client.post(car.url + CHAT, json=chat())
    shown = await asyncio.to_thread(cli, "status", "--control-socket", str(car.socket), env=cli_env(COLUMNS="80"))
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if not line.startswith("config ")]  # a path is a path
    assert all(len(line) <= 80 for line in lines), shown.stdout
    assert "primary-with-a-longer-name *" in shown.stdout and "hidden at 80 columns" in shown.stdout
    whole: Any = json.loads(
        (await asyncio.to_thread(cli, "status", "--json", "--control-socket", str(car.socket))).stdout
    )
    assert {"priority", "weight", "manual"} <= whole["nodes"][0].keys()  # --json keeps everything
