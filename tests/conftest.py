"""Fixtures: fake providers on loopback (in the test's loop) and the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from aiohttp import web

from sidecar.fakes.core import Behaviour
from sidecar.fakes.openai import FakeProvider
from sidecar.fakes.serve import provider_class

NODE_KEYS = {"PRIMARY_KEY": "sk-primary-secret-1234", "BACKUP_KEY": "sk-backup-secret-5678"}

# The suite never writes to the real home: the journal's default place ($XDG_STATE_HOME/llm-sidecar/) is a
# temporary directory for the whole run, and each test's sidecar gets its own (`Sidecar.state`).
STATE_HOME = tempfile.mkdtemp(prefix="llm-sidecar-tests-state-")
os.environ["XDG_STATE_HOME"] = STATE_HOME
atexit.register(shutil.rmtree, STATE_HOME, True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Fake:
    provider: FakeProvider
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self) -> Any:
        return self.provider.stats

    def set(self, **changes: Any) -> None:
        self.provider.behaviour.update(changes)

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[..., Any]]:
    started: list[Fake] = []

    async def start(name: str, port: int = 0, api: str = "openai", **behaviour: Any) -> Fake:
        """A fake provider on a free loopback port; `api="anthropic"` serves Anthropic's Messages API."""
        provider = provider_class(api)(name, Behaviour(**behaviour), seed=1)
        runner = web.AppRunner(provider.app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        bound = runner.addresses[0][1]
        fake = Fake(provider, runner, bound)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.stop()


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    port: int
    socket: Path
    config_path: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    state: Path | None = None  # its $XDG_STATE_HOME: the journal is there unless the config moves it

    @property
    def journal(self) -> Path:
        assert self.state is not None
        return self.state / "llm-sidecar" / "journal.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        time.sleep(0.3)  # the access log is flushed every 100 ms, not per line
        return self.log_path.read_text(errors="replace")

    def control(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.socket)), base_url="http://sidecar")

    async def status(self) -> dict[str, Any]:
        async with self.control() as client:
            return (await client.get("/v1/status")).json()

    async def node(self, name: str) -> dict[str, Any]:
        return next(n for n in (await self.status())["nodes"] if n["name"] == name)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **NODE_KEYS, **extra}
    env.pop("LLM_SIDECAR_CONFIG", None)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout,
        cwd=cwd,
    )


async def wait_for_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise TimeoutError(f"sidecar did not listen on {port} within {seconds}s")


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 8.0, step: float = 0.05) -> bool:
    """Poll `check` until it holds or `seconds` pass (bounded); the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)


def two_node_config(primary: Fake | str, backup: Fake | str, **upstream: Any) -> dict[str, Any]:
    """The seed's shape: primary priority 0, backup priority -1 with a model rewrite."""
    checks = upstream.pop("checks", {"passive": {}})
    nodes = upstream.pop("nodes", None) or [
        {
            "name": "primary",
            "url": getattr(primary, "url", primary),
            "priority": 0,
            "weight": 100,
            "api_key": "${PRIMARY_KEY}",
        },
        {
            "name": "backup",
            "url": getattr(backup, "url", backup),
            "priority": -1,
            "weight": 1,
            "api_key": "${BACKUP_KEY}",
            "models": {"*": "deepseek-chat"},
        },
    ]
    return {
        "upstream": {
            "retries": 1,
            "timeout": {"connect": 1, "send": 5, "read": 2},
            **upstream,
            "checks": checks,
            "nodes": nodes,
        }
    }


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start `llm-sidecar run` with a config dict; stopped at teardown."""
    started: list[Sidecar] = []

    async def start(
        config: dict[str, Any],
        *args: str,
        env: dict[str, str] | None = None,
        nofile: tuple[int, int] | None = None,
        port: int | None = None,
    ) -> Sidecar:
        """`nofile`: (soft, hard) RLIMIT_NOFILE for the process, set before it starts; `port`: the one a
        sidecar stopped before had (the journal keeps spend by listen address)."""
        port = port or free_port()
        index = len(started)
        sock = tmp_path / f"ctl{index}.sock"
        server = {"listen": f"127.0.0.1:{port}", "control_socket": str(sock), **config.get("server", {})}
        path = tmp_path / f"sidecar{index}.toml"
        path.write_text(tomli_w.dumps({**config, "server": server}))
        log_path = tmp_path / f"sidecar{index}.log"
        full_env = env or cli_env()
        if full_env.get("XDG_STATE_HOME") == STATE_HOME:  # a test that sets its own keeps it
            full_env = {**full_env, "XDG_STATE_HOME": str(tmp_path / "state")}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run", "-c", str(path), "--grace", "5", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                preexec_fn=None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile),
            )
        car = Sidecar(proc, port, sock, path, log_path, full_env, Path(full_env.get("XDG_STATE_HOME") or tmp_path))
        started.append(car)
        await wait_for_port(port, proc)
        return car

    yield start
    for car in started:
        car.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


def chat(stream: bool = False, model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}


Upstream = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Upstream], Awaitable[str]]]:
    """Start a raw asyncio upstream on loopback (for what aiohttp's server will not send); its base URL."""
    servers: list[asyncio.Server] = []

    async def start(handler: Upstream) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1)


# ---------------------------------------------------------------------------- conformance scorecard

CONFORMANCE = "conformance"  # the user property under which a case keeps its scorecard line


@dataclass
class Card:
    """One line of the conformance scorecard: the fault a case covers and what it saw (set as it goes)."""

    fault: str
    detail: str = ""


# nodeid -> (fault, verdict, detail), in the order the cases ran; printed by pytest_terminal_summary.
# The verdict is PASS or FAIL, or XFAIL for a case marked as a known sidecar bug that still fails.
SCORECARD: dict[str, tuple[str, str, str]] = {}


@pytest.fixture
def scorecard(request: pytest.FixtureRequest) -> Callable[[str], Card]:
    """`card = scorecard("429 once")` opens the case's scorecard line; set `card.detail` once it is known."""

    def open_card(fault: str) -> Card:
        card = Card(fault)
        # The report of every phase carries the item's user properties, so the hook below sees the card
        # whether the case passed or failed, and with whatever detail it had set by then.
        request.node.user_properties.append((CONFORMANCE, card))
        return card

    return open_card


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, card in report.user_properties:
        if name != CONFORMANCE or not isinstance(card, Card):
            continue
        key = f"{report.nodeid}::{card.fault}"
        _, verdict, _ = SCORECARD.get(key, (card.fault, "PASS", ""))
        if report.when != "call" and not report.failed:
            continue  # a passing setup or teardown says nothing new
        detail = card.detail or "no detail recorded"
        if hasattr(report, "wasxfail"):
            verdict = "XFAIL" if report.skipped else "XPASS"
            detail += f" | known bug: {report.wasxfail}"
        elif report.failed:
            verdict = "FAIL"
            crash = getattr(report.longrepr, "reprcrash", None)
            why = crash.message if crash is not None else str(report.longrepr)
            detail += f" | {report.when} failed: {why.splitlines()[0] if why else '?'}"
        SCORECARD[key] = (card.fault, verdict, detail)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SCORECARD:
        return  # no conformance case ran
    terminalreporter.write_sep("=", "conformance scorecard")
    width = max(len(fault) for fault, _, _ in SCORECARD.values())
    for fault, verdict, detail in SCORECARD.values():
        terminalreporter.write_line(f"{verdict:<5} {fault:<{width}}  {detail}")
    verdicts = [verdict for _, verdict, _ in SCORECARD.values()]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("PASS", "FAIL", "XFAIL", "XPASS") if v in verdicts)
    terminalreporter.write_line(f"{len(verdicts)} cases: {counts}")
