"""`llm-sidecar demo`: a failover and a recovery on screen within a minute, no keys needed.

Two fake providers stand in for OpenAI and DeepSeek, the real sidecar runs in
front of them, a little traffic flows, and the primary has a scripted outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.fakes.openai import FakeProvider
from sidecar.fakes.serve import start
from sidecar.journal.paths import default_path
from sidecar.listener.bind import bind_tcp
from sidecar.observe.display import why_changed

# (seconds from start, what happens, behaviour of the primary)
SCRIPT: list[tuple[float, str, dict[str, Any]]] = [
    (0.0, "both providers up: the primary (openai-fake) serves everything", {"fail_rate": 0.0}),
    (8.0, "OUTAGE: the primary answers 503 to everything", {"fail_rate": 1.0, "fault": "error", "status": 503}),
    (
        24.0,
        "the primary is back: a recovery probe and the liveness probes see it, and it serves again",
        {"fail_rate": 0.0},
    ),
]


CYCLE = 40.0  # seconds per replay of the script when the demo runs until the monitor quits
PRIMARY = "openai-fake"
OUTAGE_AT = min(at for at, _, behaviour in SCRIPT if behaviour["fail_rate"] > 0)  # the primary fails
BACK_AT = max(at for at, _, behaviour in SCRIPT if behaviour["fail_rate"] == 0.0)  # the primary returns
# A recovery probe (a one-token chat, every few seconds) ends the ejection and the liveness probes (every
# 2 s, 2 passes) the unhealthy state: a run this long shows the whole story (the default --duration is longer).
WHOLE_STORY = BACK_AT + 12.0


@dataclass
class Outage:
    """One scripted outage of the primary, in seconds from the start of the demo."""

    began: float
    detected: float | None = None
    detected_how: str = ""
    back: float | None = None  # when the script made the primary answer again
    recovered: float | None = None
    recovered_how: str = ""


def demo_journal() -> Path:
    """The demo's journal: beside the real one, never in it (its fake spend is no one's)."""
    return default_path().with_name("demo-journal.db")


def demo_config(primary: int, backup: int, port: int, socket: Path) -> Config:
    data = {
        "server": {"listen": f"127.0.0.1:{port}", "control_socket": str(socket)},
        "journal": {"path": str(demo_journal())},
        "upstream": {
            "retries": 1,
            "timeout": {"connect": 1, "send": 5, "read": 5},
            "checks": {
                "active": {"interval": 2, "timeout": 1, "healthy": {"successes": 2}},
                # Short ejections: the replayed outage must show a recovery every cycle, not a node whose
                # ejection doubles past the 16 s healthy window (the default would take 10, 20, 40 s...).
                "passive": {"unhealthy": {"http_failures": 3}, "base_ejection_time": 3, "max_ejection_time": 6},
            },
            "nodes": [
                {"name": "openai-fake", "url": f"http://127.0.0.1:{primary}", "weight": 100, "priority": 0,
                 "api_key": "${DEMO_PRIMARY_KEY}"},
                {"name": "deepseek-fake", "url": f"http://127.0.0.1:{backup}", "weight": 1, "priority": -1,
                 "api_key": "${DEMO_BACKUP_KEY}", "models": {"*": "deepseek-chat"}},
            ],
        },
    }  # fmt: skip
    return parse(data, "<demo>", {"DEMO_PRIMARY_KEY": "demo-key-1", "DEMO_BACKUP_KEY": "demo-key-2"})


def free_port() -> int:
    sock = bind_tcp("127.0.0.1", 0)
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class Demo:
    """Runs providers, sidecar, traffic and script in one event loop."""

    def __init__(self, duration: float, port: int, quiet: bool) -> None:
        self.duration = duration
        self.port = port or free_port()
        self.quiet = quiet
        self.dir = Path(tempfile.mkdtemp(prefix="llm-sidecar-demo-"))
        os.chmod(self.dir, 0o700)
        self.socket = self.dir / "control.sock"
        self.ready = threading.Event()
        self.served: dict[str, int] = {}  # answers the agent got, by the node that gave them
        self.sent = 0
        self.failed_over = 0  # requests that met a failure and were answered by another attempt
        self.errors: list[str] = []  # what the agent saw go wrong: a non-2xx status or no answer
        self.outages: list[Outage] = []
        self.by_hand: list[tuple[float, str, str]] = []  # (t, node, "down" or "auto"): failovers, drains, give-backs
        self.began = time.monotonic()
        self.ended: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def now(self) -> float:
        """Seconds since the demo (and its script) began."""
        return time.monotonic() - self.began

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.ended = self.now()
            self.remove_dir()

    def remove_dir(self) -> None:
        """The demo's temporary directory (its control socket) goes with the demo, whatever ended it."""
        shutil.rmtree(self.dir, ignore_errors=True)

    async def _run(self) -> None:
        from .server import serve

        stop = asyncio.Event()
        self.loop, self.stop_event = asyncio.get_running_loop(), stop
        primary, p_runner = await start(PRIMARY, "127.0.0.1", 0)
        _, b_runner = await start("deepseek-fake", "127.0.0.1", 0)
        config = demo_config(p_runner.addresses[0][1], b_runner.addresses[0][1], self.port, self.socket)
        server = asyncio.ensure_future(serve(config, control_socket=self.socket, grace=1.0))
        server.add_done_callback(lambda _: stop.set())  # a sidecar that stopped ends the demo
        try:
            await self._wait_listening()
            if threading.current_thread() is threading.main_thread():
                # Ctrl+C ends the demo, traffic first, then the sidecar (it took the signals before it
                # listened; stopped first, it would refuse the last requests: errors the agent never saw).
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.loop.add_signal_handler(sig, stop.set)
            self.began = time.monotonic()
            self.ready.set()
            self.say(f"sidecar on http://127.0.0.1:{self.port}/v1  (control socket {self.socket})")
            self.say("attach a monitor from another terminal: llm-sidecar monitor --control-socket " + str(self.socket))
            if self.duration and self.duration < WHOLE_STORY:
                missed = (
                    f"outage (t={OUTAGE_AT:g}s)" if self.duration <= OUTAGE_AT else f"recovery (back at t={BACK_AT:g}s)"
                )
                self.say(
                    f"note: --duration {self.duration:g} ends before the primary's {missed};"
                    f" about {WHOLE_STORY:g} s shows the whole story"
                )
            await asyncio.gather(self._script(primary, stop), self._traffic(stop), self._health(stop))
        finally:
            stop.set()
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await server
            await p_runner.cleanup()
            await b_runner.cleanup()

    def shutdown(self) -> None:
        """Stop the demo from another thread."""
        if self.loop is not None and self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)

    async def _wait_listening(self) -> None:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise RuntimeError("the demo sidecar did not start")

    async def _script(self, primary: FakeProvider, stop: asyncio.Event) -> None:
        """Play the outage script; behind the monitor, replay it until the monitor quits."""
        begin = self.began
        cycle = 0
        while not stop.is_set():
            for at, text, behaviour in SCRIPT:
                at += cycle * CYCLE
                if self.duration and at >= self.duration:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, begin + at - time.monotonic()))
                if stop.is_set():
                    return
                primary.behaviour.update(behaviour)
                if behaviour["fail_rate"] > 0:
                    self.outages.append(Outage(began=at))
                elif self.outages and self.outages[-1].back is None:
                    self.outages[-1].back = at
                self.say(f"\n=== t={at:>4.0f}s  {text}")
            if self.duration:
                break
            cycle += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, begin + self.duration - time.monotonic()))
        stop.set()

    async def _traffic(self, stop: asyncio.Event) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        n = 0
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                n += 1
                stream = n % 3 == 0
                body = {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": f"q{n}"}]}
                started = time.monotonic()
                try:
                    async with session.post(url, json=body) as r:
                        await r.read()
                        node = r.headers.get("x-llm-sidecar-node", "-")
                        attempts = r.headers.get("x-llm-sidecar-attempts", "-")
                        status = str(r.status)
                        if r.status >= 300:
                            self.errors.append(f"req {n}: status {r.status}")
                except aiohttp.ClientError as exc:
                    node, attempts, status = "-", "-", f"error {exc}"
                    self.errors.append(f"req {n}: {str(exc)[:80] or type(exc).__name__}")
                self.sent += 1
                self.served[node] = self.served.get(node, 0) + 1
                if attempts not in ("1", "-"):
                    self.failed_over += 1
                ms = (time.monotonic() - started) * 1000
                mark = "  <- failed over inside the request" if attempts not in ("1", "-") else ""
                kind = "stream" if stream else "json  "
                self.say(f"  req {n:>3} {kind} -> {node:<14} status {status} attempts {attempts} {ms:6.1f} ms{mark}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.4)

    async def _health(self, stop: asyncio.Event) -> None:
        """Health changes, read from the control socket the way the monitor does."""
        from sidecar.control.client import AsyncControlClient

        async with AsyncControlClient(self.socket) as control:
            async for event in control.events(replay=False, stop=stop):
                if event["type"] == "health":
                    why = why_changed(event["after"], event["reason"], event["before"])
                    self.say(f"  ** {event['node']}: {event['before']} -> {event['after']} ({why})")
                    if event["node"] == PRIMARY and not event.get("model"):
                        self.note_health(event["before"], event["after"], event["reason"])
                elif event["type"] == "manual":
                    self.by_hand.append((self.now(), event["node"], event["manual"]))

    def note_health(self, before: str, after: str, reason: str) -> None:
        """Date the sidecar's detection of the current outage, and the primary's recovery from it."""
        if not self.outages or reason.startswith("manual "):  # a drain by hand is no detection, nor a recovery
            return
        outage, now = self.outages[-1], self.now()
        how = f"{before} -> {after}: {why_changed(after, reason, before)}"
        if outage.detected is None and before == "healthy" and after != "healthy":
            outage.detected, outage.detected_how = now, how
        elif outage.detected is not None and outage.recovered is None and after == "healthy":
            outage.recovered, outage.recovered_how = now, how

    def summary(self) -> str:
        """What happened, for people: printed when the demo ends (after the monitor, when it quits)."""
        ran = self.ended if self.ended is not None else self.now()
        by_node = ", ".join(f"{node} {count}" for node, count in sorted(self.served.items(), key=lambda i: -i[1]))
        lines = [
            f"what happened in {ran:.0f} s:",
            f"  requests the agent sent: {self.sent}" + (f" (answered by {by_node})" if by_node else ""),
            f"  failed over inside a request: {self.failed_over}"
            + (" (the agent still got its answer)" if self.failed_over else ""),
            f"  errors the agent saw: {len(self.errors)}" + (f" ({'; '.join(self.errors[:3])})" if self.errors else ""),
        ]
        if not self.outages:
            lines.append(f"  outage: none yet (the primary's scripted outage starts at t={OUTAGE_AT:g}s)")
        for i, o in enumerate(self.outages, 1):
            name = "outage" if len(self.outages) == 1 else f"outage {i}"
            lines.append(f"  {name}: {PRIMARY} began failing at t={o.began:g}s")
            if o.detected is not None:
                lines.append(f"    detected at t={o.detected:.1f}s ({o.detected_how})")
            else:
                lines.append("    detected: not within this run")
            if o.back is not None:
                lines.append(f"    the primary was back at t={o.back:g}s")
            if o.recovered is not None:
                lines.append(f"    recovered at t={o.recovered:.1f}s ({o.recovered_how})")
            else:
                hint = f"; about {WHOLE_STORY:g} s shows it" if self.duration and i == 1 else ""
                lines.append(f"    recovered: not within this run{hint}")
        if self.by_hand:
            lines.append("  by hand (f, d, a in the monitor, or the failover and node commands):")
        for at, node, manual in self.by_hand:
            did = "drained (out of rotation)" if manual == "down" else "given back to automatic health"
            lines.append(f"    t={at:.1f}s {node} {did}")
        lines.append(f"  each request, kept: llm-sidecar log --journal {demo_journal()}")
        return "\n".join(lines)


def run_demo(duration: float = 60.0, port: int = 0, monitor: Callable[[Path], None] | None = None) -> dict[str, int]:
    """Run the demo; with `monitor`, show it in the monitor while the demo runs in a thread."""
    root = logging.getLogger()
    root.handlers[:] = [logging.NullHandler() if monitor is not None else logging.StreamHandler()]
    root.setLevel(logging.ERROR)  # the demo prints its own story; the monitor owns the terminal
    # Behind the monitor the demo lasts until the monitor quits (duration 0 = no end).
    demo = Demo(0.0 if monitor is not None else duration, port, quiet=monitor is not None)
    if monitor is None:
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(demo.run())
        finally:
            demo.remove_dir()
        print("\n" + demo.summary(), flush=True)
        return demo.served
    # The monitor owns the terminal and the main thread; the demo gets its own loop.
    thread = threading.Thread(target=lambda: asyncio.run(demo.run()), daemon=True)
    thread.start()
    try:
        if not demo.ready.wait(15):
            raise SystemExit("llm-sidecar: the demo sidecar did not start")
        monitor(demo.socket)
    finally:
        demo.shutdown()
        thread.join(5)
        demo.remove_dir()  # also when the demo's thread did not finish in time
    print(demo.summary(), flush=True)  # the terminal is the shell's again: say what was seen
    return demo.served
