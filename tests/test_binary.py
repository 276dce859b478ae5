"""The one-file executable, built with PyInstaller and used the way a user would.

Skipped when PyInstaller is not installed (`pip install '.[build]'`); CI installs it, so CI runs it.
It runs outside the source tree, with neither the venv nor the repo on PATH or PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomli_w

from .conftest import free_port

pytest.importorskip("PyInstaller")
pytestmark = [pytest.mark.binary, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pyinstaller")
    subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--distpath", str(work / "dist"), "--workpath", str(work / "build"), str(ROOT / "build.spec")],
        cwd=ROOT, check=True, timeout=840,
    )  # fmt: skip
    built = work / "dist" / "llm-sidecar"
    assert built.is_file() and os.access(built, os.X_OK)
    # Used from elsewhere, as a user would after downloading it.
    home = tmp_path_factory.mktemp("user")
    target = home / "llm-sidecar"
    shutil.copy2(built, target)
    return target


def user_env(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(home / "tmp"), **extra}


@pytest.fixture
def home(binary: Path, tmp_path: Path) -> Path:
    (tmp_path / "tmp").mkdir()
    return tmp_path


class Started:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, binary: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(binary), *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def started() -> Iterator[Started]:
    s = Started()
    yield s
    s.stop_all()


def wait_http(url: str, seconds: float = 30) -> float:
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        try:
            httpx.get(url, timeout=1)
            return time.monotonic() - began
        except httpx.TransportError:
            time.sleep(0.02)
    raise TimeoutError(url)


def test_version_and_check_on_the_shipped_config(binary: Path, home: Path) -> None:
    began = time.monotonic()
    out = subprocess.run(
        [str(binary), "--version"], env=user_env(home), cwd=home, capture_output=True, text=True, timeout=60
    )
    cold = time.monotonic() - began
    from sidecar import __version__

    assert out.returncode == 0 and out.stdout.strip() == f"llm-sidecar, version {__version__}"
    shutil.copy(ROOT / "llm-sidecar.toml", home / "llm-sidecar.toml")
    env = user_env(home, OPENAI_API_KEY="sk-dummy-openai", DEEPSEEK_API_KEY="sk-dummy-deepseek")
    checked = subprocess.run([str(binary), "check"], env=env, cwd=home, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "openai" in checked.stdout and "* -> deepseek-chat" in checked.stdout and "sk-dummy" not in checked.stdout
    size = binary.stat().st_size / 1e6
    print(f"\nbinary size {size:.1f} MB, cold --version {cold * 1000:.0f} ms")


def test_run_failover_status_and_monitor_from_the_binary(binary: Path, home: Path, started: Started) -> None:
    env = user_env(home, PRIMARY_KEY="sk-primary", BACKUP_KEY="sk-backup")
    p_port, b_port, port = free_port(), free_port(), free_port()
    primary = started.start(binary, "fake-provider", "--port", str(p_port), "--name", "primary", env=env, cwd=home)
    started.start(binary, "fake-provider", "--port", str(b_port), "--name", "backup", env=env, cwd=home)
    wait_http(f"http://127.0.0.1:{p_port}/v1/models")
    wait_http(f"http://127.0.0.1:{b_port}/v1/models")
    sock = home / "run" / "ctl.sock"
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "control_socket": str(sock)},
        "upstream": {
            "timeout": {"connect": 1, "read": 5},
            "checks": {"active": {"interval": 0.5}, "passive": {}},
            "nodes": [
                {"name": "primary", "url": f"http://127.0.0.1:{p_port}", "api_key": "${PRIMARY_KEY}"},
                {"name": "backup", "url": f"http://127.0.0.1:{b_port}", "priority": -1, "api_key": "${BACKUP_KEY}"},
            ],
        },
    }
    (home / "sidecar.toml").write_text(tomli_w.dumps(config))
    began = time.monotonic()
    started.start(binary, "run", "-c", "sidecar.toml", env=env, cwd=home)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    while True:
        try:
            first = httpx.post(url, json=body, timeout=5)
            break
        except httpx.TransportError:
            assert time.monotonic() - began < 30
            time.sleep(0.01)
    to_first = time.monotonic() - began
    assert first.status_code == 200 and first.headers["x-llm-sidecar-node"] == "primary"
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=10) as r:
        text = r.read().decode()
    assert "Hello from primary" in text and text.rstrip().endswith("data: [DONE]")

    primary.send_signal(signal.SIGTERM)
    primary.wait(10)
    moved = httpx.post(url, json=body, timeout=10)
    assert moved.status_code == 200 and moved.headers["x-llm-sidecar-node"] == "backup"

    status = subprocess.run([str(binary), "status", "--json", "--control-socket", str(sock)], env=env, cwd=home,
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert status.returncode == 0, status.stderr
    nodes = {n["name"]: n for n in json.loads(status.stdout)["nodes"]}
    assert nodes["backup"]["traffic"]["requests"] >= 1 and "sk-primary" not in status.stdout

    # Reload on save works from the binary too (its watch library must be bundled) and /metrics answers.
    config["upstream"]["nodes"][1]["weight"] = 7
    (home / "sidecar.toml").write_text(tomli_w.dumps(config))
    deadline = time.monotonic() + 15
    weight = None
    while time.monotonic() < deadline and weight != 7:
        time.sleep(0.2)
        again = subprocess.run([str(binary), "status", "--json", "--control-socket", str(sock)], env=env, cwd=home,
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        weight = {n["name"]: n["weight"] for n in json.loads(again.stdout)["nodes"]}["backup"]
    assert weight == 7
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert metrics.status_code == 200 and "llm_sidecar_requests_total{" in metrics.text

    # The monitor under a real pseudo-terminal: it draws, stays up, and quits on q.
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    monitor = subprocess.Popen([str(binary), "monitor", "--control-socket", str(sock)],
                               env={**env, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"},
                               cwd=home, stdin=follower, stdout=follower, stderr=follower)  # fmt: skip
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and b"backup" not in screen:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                screen += os.read(leader, 65536)
            except OSError:
                break
    assert monitor.poll() is None, screen[-2000:]
    assert b"backup" in screen
    try:
        # As a person would: press q once the screen is up (again, if the first press
        # arrived while Textual was still reading the terminal's answers to its queries).
        for _ in range(20):
            time.sleep(0.5)
            os.write(leader, b"q")
            with contextlib.suppress(OSError):
                while select.select([leader], [], [], 0)[0]:
                    os.read(leader, 65536)
            if monitor.poll() is not None:
                break
        assert monitor.wait(5) == 0
    finally:
        if monitor.poll() is None:
            monitor.kill()
        os.close(leader)
    print(f"\nrun: first request answered {to_first * 1000:.0f} ms after start")
    # Nothing but the socket directory we named and the journal (its default place) was written under HOME.
    written = {p.relative_to(home).parts[0] for p in home.rglob("*")}
    assert written <= {"tmp", "run", "sidecar.toml", "llm-sidecar", ".local"}, written
    journal = home / ".local" / "state" / "llm-sidecar" / "journal.db"
    assert {p.relative_to(home / ".local") for p in (home / ".local").rglob("*") if p.is_file()} <= {
        journal.relative_to(home / ".local"), Path(f"{journal}-wal").relative_to(home / ".local"),
        Path(f"{journal}-shm").relative_to(home / ".local"),
    }  # fmt: skip
    shown = subprocess.run([str(binary), "log", "--json", "--journal", str(journal)], env=env, cwd=home,
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) >= 3, shown.stderr  # the binary journals
