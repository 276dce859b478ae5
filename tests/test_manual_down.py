"""Draining a node by hand (issue 15): the last usable node is refused (409) unless forced, and routine
manual changes are logged at INFO in plain words."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.control.server import ControlServer
from sidecar.nodes.health import Failure
from sidecar.nodes.mock import Script

from .conftest import cli, two_node_config
from .inproc import Harness, config
from .test_monitor import until

LOGGER = "llm_sidecar"


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[tuple[Harness, TestClient[Any, Any]]]:
    """The control API in-process (no socket) over a runtime of two nodes: primary, then backup."""
    h = Harness(lambda node, request: Script(body=[b"{}"]), config(checks={"active": {}, "passive": {}}))
    server = ControlServer(h.runtime, tmp_path / "ctl.sock")
    async with TestClient(TestServer(server.app)) as client:
        yield h, client


def unhealthy(h: Harness, name: str) -> None:
    """Active probes failed until the node is out (it is still tried in panic mode)."""
    for _ in range(5):
        h.runtime.upstream.probed(h.node(name), Failure.TCP, "connect refused")
    assert h.node(name).health.state == "unhealthy"


async def test_draining_the_last_node_not_down_is_refused_unless_forced(control: Any, caplog: Any) -> None:
    h, client = control
    r = await client.post("/v1/nodes/backup/down")
    assert r.status == 200 and (await r.json())["serving"] == "primary"
    r = await client.post("/v1/nodes/primary/down")
    assert r.status == 409
    error = (await r.json())["error"]
    assert error["type"] == "conflict"
    assert error["message"] == (
        "refused: primary is the last usable node: every other node is down by hand, so with it down every "
        "request would get 503; nothing was changed (to drain it anyway: llm-sidecar node down --force primary)"
    )
    assert not h.node("primary").health.manual_down and h.runtime.upstream.serving() is h.node("primary")
    # Forced: drained, nothing serves, and a WARNING says why it is not routine.
    with caplog.at_level(logging.INFO, logger=LOGGER):
        r = await client.post("/v1/nodes/primary/down", json={"force": True})
    assert r.status == 200 and await r.json() == {
        "node": "primary",
        "manual": "down",
        "state": "down",
        "serving": None,
    }
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert warnings == [
        "node primary: drained with --force although it was the last usable node: every other node is down by "
        "hand, so with it down every request would get 503"
    ]
    # Already down: draining it again is no change, so not refused.
    assert (await client.post("/v1/nodes/primary/down")).status == 200
    assert (await client.post("/v1/nodes/primary/down", json={"force": False})).status == 200


async def test_draining_the_only_healthy_node_is_refused_while_an_unhealthy_one_is_allowed(control: Any) -> None:
    h, client = control
    unhealthy(h, "backup")
    r = await client.post("/v1/nodes/primary/down", json={"force": False})
    assert r.status == 409
    message = (await r.json())["error"]["message"]
    assert message.startswith("refused: primary is the last usable node: no other node is healthy to take traffic;")
    assert not h.node("primary").health.manual_down
    # A node that is not healthy itself may go while another is not drained (panic mode still tries it).
    unhealthy(h, "primary")
    assert (await client.post("/v1/nodes/primary/down")).status == 200
    # ... but never the last one not drained.
    assert (await client.post("/v1/nodes/backup/down")).status == 409
    assert (await client.post("/v1/nodes/backup/down", json={"force": True})).status == 200


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"force": "yes"}', b'{"force": true, "x": 1}', b"{}", b"null"])
async def test_a_bad_down_body_is_a_400(control: Any, body: bytes) -> None:
    h, client = control
    r = await client.post("/v1/nodes/backup/down", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request"
    assert not h.node("backup").health.manual_down


async def test_routine_manual_changes_are_info_in_plain_words(control: Any, caplog: Any) -> None:
    h, client = control
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert (await client.post("/v1/nodes/primary/down")).status == 200
        assert (await client.post("/v1/nodes/primary/auto")).status == 200
        unhealthy(h, "backup")
        caplog.clear()
        assert (await client.post("/v1/nodes/backup/down", json={"force": True})).status == 200
        assert (await client.post("/v1/nodes/backup/auto")).status == 200
    manual = [(rec.levelname, rec.getMessage()) for rec in caplog.records if "by hand" in rec.getMessage()]
    assert manual == [("INFO", "node backup: taken out of rotation by hand (was unhealthy)")]
    assert [(rec.levelname, rec.getMessage()) for rec in caplog.records if "automatic" in rec.getMessage()] == [
        ("INFO", "node backup: back to automatic health checks (was manually down), now healthy")  # trusted now
    ]
    assert all(rec.levelno < logging.WARNING for rec in caplog.records), caplog.text


async def test_routine_down_and_auto_log_nothing_above_info(control: Any, caplog: Any) -> None:
    h, client = control
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        await client.post("/v1/nodes/primary/down")
        await client.post("/v1/nodes/primary/auto")
    assert [(rec.levelname, rec.getMessage()) for rec in caplog.records] == [
        ("INFO", "node primary: taken out of rotation by hand (was healthy)"),
        ("INFO", "node primary: back to automatic health checks (was manually down), now healthy"),
    ]
    # The monitor's health log still gets its events.
    kinds = [(e["type"], e.get("after") or e.get("manual")) for e in h.runtime.events.recent if e["type"] != "request"]
    assert kinds == [("manual", "down"), ("health", "down"), ("manual", "auto"), ("health", "healthy")]


async def test_cli_node_down_refuses_the_last_usable_node_and_force_drains_it(fakes: Any, sidecar: Any) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    sock = ["--control-socket", str(car.socket)]
    done = await asyncio.to_thread(cli, "node", "down", "backup", *sock)
    assert done.returncode == 0 and done.stdout == "backup is down; serving: primary\n"
    refused = await asyncio.to_thread(cli, "node", "down", "primary", *sock)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        "llm-sidecar: refused: primary is the last usable node: every other node is down by hand, so with it down "
        "every request would get 503; nothing was changed (to drain it anyway: llm-sidecar node down --force "
        "primary)\n"
    )
    assert (await car.status())["serving"] == "primary"
    forced = await asyncio.to_thread(cli, "node", "down", "--force", "primary", *sock)
    assert forced.returncode == 0 and forced.stdout == "primary is down; serving: nothing\n"
    assert (await car.node("primary"))["manual"] == "down"
    log = car.log()
    assert "INFO    node backup: taken out of rotation by hand (was healthy)" in log
    assert "WARNING node primary: drained with --force although it was the last usable node" in log


async def test_monitor_d_on_the_last_usable_node_shows_the_refusal(fakes: Any, sidecar: Any) -> None:
    from tui.app import MonitorApp
    from tui.widgets import NodesTable

    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    async with car.control() as control:
        assert (await control.post("/v1/nodes/backup/down")).status_code == 200
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        nodes = app.query_one(NodesTable)
        await until(pilot, lambda: nodes.row_count == 2)
        assert nodes.selected == "primary"
        await pilot.press("d")
        await until(pilot, lambda: any("last usable node" in str(n.message) for n in app._notifications))
        toast = next(n for n in app._notifications if "last usable node" in str(n.message))
        assert toast.title == "Refused" and "primary" in str(toast.message)
    assert (await car.status())["serving"] == "primary"
