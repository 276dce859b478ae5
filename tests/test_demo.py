"""`llm-sidecar demo`: what it prints when it ends, what `r` says in its monitor, and that it leaves no
temporary directory behind (the full outage-and-recovery run is in test_control)."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.demo import Demo, Outage, run_demo
from tui.app import MonitorApp
from tui.widgets import NodesTable

from .conftest import cli_env
from .test_monitor import until


def test_a_short_run_prints_a_readable_summary_and_leaves_no_temp_dir(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--no-tui", "--duration", "3"],
        capture_output=True, text=True, timeout=60, env=cli_env(TMPDIR=str(tmp), XDG_STATE_HOME=str(tmp_path / "st")),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Its requests are journaled apart from the user's own (no journal.db), and the summary says where.
    demo_journal = tmp_path / "st" / "llm-sidecar" / "demo-journal.db"
    assert f"each request, kept: llm-sidecar log --journal {demo_journal}" in out
    assert not (tmp_path / "st" / "llm-sidecar" / "journal.db").exists()
    kept = subprocess.run([sys.executable, "-m", "sidecar", "log", "--json", "--journal", str(demo_journal)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert kept.returncode == 0 and kept.stdout.count('"node":"openai-fake"') >= 1, kept
    assert str(tmp) in out  # the control socket was in our TMPDIR...
    assert list(tmp.iterdir()) == []  # ...and its directory is gone
    assert "note: --duration 3 ends before the primary's outage (t=8s); about 36 s shows the whole story" in out
    summary = out[out.index("what happened in ") :]
    assert re.search(r"requests the agent sent: [1-9]\d* \(answered by openai-fake [1-9]\d*\)\n", summary)
    assert "failed over inside a request: 0\n" in summary
    assert "errors the agent saw: 0\n" in summary
    assert "outage: none yet (the primary's scripted outage starts at t=8s)" in summary
    assert "{" not in summary and "served:" not in out  # no Python dict


@pytest.fixture
def demo_logging() -> Iterator[None]:
    """run_demo takes over the root logger (the demo prints its own story): give it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:], root.level = handlers, level


def test_quitting_the_monitor_prints_the_summary_and_leaves_no_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], demo_logging: object
) -> None:
    """The monitor owns the terminal while the demo runs behind it; when it quits (here: after 2 s),
    the story is printed to the terminal it gave back."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[Path] = []

    def monitor(socket: Path) -> None:
        seen.append(socket)
        assert socket.exists()
        time.sleep(2)

    served = run_demo(monitor=monitor)
    assert seen and seen[0].parent.parent == tmp_path
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    assert re.match(r"what happened in [234] s:\n", out)
    assert f"requests the agent sent: {sum(served.values())} (answered by openai-fake" in out
    assert "errors the agent saw: 0" in out


async def test_r_in_the_demo_says_reload_is_not_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's config is built in memory: `r` says so instead of `Reload failed …/<demo>: file not found`."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    demo = Demo(0.0, 0, quiet=True)  # until shut down, as behind the monitor
    thread = threading.Thread(target=lambda: asyncio.run(demo.run()), daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(demo.ready.wait, 15)
        app = MonitorApp(demo.socket)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await until(pilot, lambda: app.query_one(NodesTable).row_count == 2)
            assert app.status is not None and app.status["sidecar"]["config_path"] == "<demo>"
            await pilot.press("r")
            await until(pilot, lambda: bool(app._notifications))
            toasts = [(n.title, str(n.message)) for n in app._notifications]
            assert toasts == [
                ("Reload not available", "the demo's config is built in memory: there is no file to reload")
            ]
            await pilot.pause(0.5)
            assert [n.title for n in app._notifications] == ["Reload not available"]  # no "Reload failed" after
    finally:
        demo.shutdown()
        await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_ends_the_demo_with_its_summary_and_no_errors(tmp_path: Path) -> None:
    """The sidecar takes SIGINT for a graceful stop; in the demo, the traffic stops first (the agent must not
    meet a draining sidecar and count that as errors), then the sidecar, then the summary."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "demo", "--no-tui"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(TMPDIR=str(tmp_path)),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, not a background job
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        assert proc.stdout is not None
        while "req   3" not in proc.stdout.readline():
            assert time.monotonic() < deadline
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "errors the agent saw: 0\n" in out and "outage: none yet" in out
    assert list(tmp_path.iterdir()) == []


async def test_the_summary_tells_a_failover_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manual failover in the demo (`f` in its monitor) is in the closing summary, and is not taken for the
    sidecar detecting the outage."""
    from sidecar.control.client import AsyncControlClient

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    demo = Demo(0.0, 0, quiet=True)
    thread = threading.Thread(target=lambda: asyncio.run(demo.run()), daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(demo.ready.wait, 15)
        await asyncio.sleep(0.5)  # the demo's own reader is attached to the events
        async with AsyncControlClient(demo.socket) as control:
            assert (await control.failover("openai-fake"))["serving"] == "deepseek-fake"
            await asyncio.sleep(0.5)
            await control.node("openai-fake", "auto")
            deadline = time.monotonic() + 5
            while len(demo.by_hand) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        demo.shutdown()
        await asyncio.to_thread(thread.join, 10)
    summary = demo.summary()
    assert "  by hand (f, d, a in the monitor, or the failover and node commands):" in summary
    assert re.search(r"\n    t=\d+\.\ds openai-fake drained \(out of rotation\)\n", summary), summary
    assert re.search(r"\n    t=\d+\.\ds openai-fake given back to automatic health\n", summary), summary
    assert "outage: none yet" in summary  # a drain by hand is no outage the sidecar detected


def test_a_drain_by_hand_is_not_the_outage_detected() -> None:
    demo = Demo(45.0, 0, quiet=True)
    demo.remove_dir()
    demo.outages = [Outage(began=8.0)]
    demo.note_health("healthy", "down", "manual down")
    assert demo.outages[0].detected is None  # a drain by hand is not the outage detected
    demo.note_health("healthy", "ejected", "http 503")
    demo.note_health("ejected", "unhealthy", "probe http 503")
    demo.note_health("unhealthy", "ejected", "probe http 200")
    demo.note_health("ejected", "healthy", "trial request ok")
    assert demo.outages[0].detected_how == "healthy -> ejected: http 503"
    assert demo.outages[0].recovered_how == "ejected -> healthy: trial request ok"
