"""The control socket against other users and other programs: where `run` refuses to put it, what
the CLI refuses to talk to, and how malformed requests and replies are answered (one line, never a
traceback). "Another user" is uid 65534 (nobody), set with chown, so these tests need root."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from .conftest import cli, two_node_config

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def one_line(result: Any, code: int, *words: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("llm-sidecar: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def run_with_socket(tmp_path: Path, control_socket: str | Path) -> Any:
    """`llm-sidecar run` on a config whose nodes it never reaches: it must refuse before serving."""
    path = tmp_path / "run.toml"
    config = two_node_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    path.write_text(
        tomli_w.dumps({"server": {"listen": "127.0.0.1:1", "control_socket": str(control_socket)}, **config})
    )
    return cli("run", "-c", str(path), timeout=20)


def dead_socket(path: Path, owner: int | None = None) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the path stays, nobody listens
    if owner is not None:
        os.chown(path, owner, owner)


@needs_root
def test_dead_socket_of_another_user_is_a_startup_error_and_is_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "mine"
    home.mkdir(mode=0o700)
    dead_socket(home / "ctl.sock", owner=NOBODY)
    one_line(run_with_socket(tmp_path, home / "ctl.sock"), 1, "uid 65534", "not yours", str(home / "ctl.sock"))
    assert os.lstat(home / "ctl.sock").st_uid == NOBODY


def test_unusable_control_socket_paths_are_refused_before_anything_is_made(tmp_path: Path) -> None:
    cases = {
        str(tmp_path / "a\x00b" / "ctl.sock"): "control characters",
        "relative/ctl.sock": "absolute path",
        str(tmp_path / "dir") + "/": "not a directory",
        str(tmp_path / ("x" * 120) / "ctl.sock"): "at most",
    }
    for control_socket, words in cases.items():
        one_line(run_with_socket(tmp_path, control_socket), 2, "server.control_socket", words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]  # no stray directory or socket
    # The same checks guard --control-socket, which bypasses the config's validation.
    long = tmp_path / ("y" * 120) / "ctl.sock"
    (tmp_path / "run.toml").write_text(tomli_w.dumps(two_node_config("http://127.0.0.1:1", "http://127.0.0.1:2")))
    result = cli("run", "-c", str(tmp_path / "run.toml"), "--control-socket", str(long), timeout=20)
    one_line(result, 1, "a Unix socket path may have at most")
    assert not long.parent.exists()


@needs_root
def test_socket_directory_another_user_owns_or_can_write_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # world-writable, not sticky: anyone could swap the socket
    one_line(run_with_socket(tmp_path, open_dir / "ctl.sock"), 1, "writable by other users", "mkdir -m 700")
    one_line(run_with_socket(tmp_path, open_dir / "sub" / "ctl.sock"), 1, f"{open_dir} is writable by other users")
    assert list(open_dir.iterdir()) == []  # nothing made inside a directory we refuse
    group = tmp_path / "group"
    group.mkdir()
    os.chmod(group, 0o770)
    one_line(run_with_socket(tmp_path, group / "ctl.sock"), 1, "writable by other users")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    one_line(run_with_socket(tmp_path, theirs / "ctl.sock"), 1, f"{theirs} belongs to uid 65534")
    # Sticky but owned by another user: its owner may still remove our entry.
    sticky_theirs = tmp_path / "sticky-theirs"
    sticky_theirs.mkdir()
    os.chmod(sticky_theirs, 0o1777)
    os.chown(sticky_theirs, NOBODY, NOBODY)
    one_line(run_with_socket(tmp_path, sticky_theirs / "ctl.sock"), 1, "belongs to uid 65534")


@needs_root
async def test_sticky_world_writable_directory_holds_our_socket_but_not_a_foreign_one(
    fakes, sidecar, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    dead_socket(shared / "theirs.sock", owner=NOBODY)
    one_line(run_with_socket(tmp_path, shared / "theirs.sock"), 1, "uid 65534", "not yours")
    config = two_node_config(await fakes("primary"), await fakes("backup"))
    car = await sidecar({**config, "server": {"control_socket": str(shared / "ours.sock")}})
    st = os.stat(shared / "ours.sock")
    assert stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o600
    shown = await asyncio.to_thread(cli, "status", "--json", "--control-socket", str(shared / "ours.sock"))
    assert shown.returncode == 0 and json.loads(shown.stdout)["sidecar"]["pid"] == car.proc.pid


@needs_root
async def test_cli_talks_only_to_a_socket_of_its_own_user(fakes, sidecar, tmp_path: Path) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    os.chown(car.socket, NOBODY, NOBODY)  # as if another user's program listened there
    for args in (["status"], ["failover"], ["node", "down", "primary"], ["reload"]):
        result = await asyncio.to_thread(cli, *args, "--control-socket", str(car.socket))
        one_line(result, 1, "belongs to uid 65534", "refusing")
    assert (await car.status())["serving"] == "primary"  # nothing was sent
    not_a_socket = tmp_path / "plain"
    not_a_socket.write_text("")
    one_line(cli("status", "--control-socket", str(not_a_socket)), 1, "is not a socket")


# --------------------------------------------------------------------------- malformed replies


@contextmanager
def fake_control(path: Path, answer: Callable[[bytes], bytes]) -> Iterator[None]:
    """A program on the control socket that answers each request line with `answer(line)` and closes."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:")), 0
                )
                while len(body) < length and (chunk := conn.recv(65536)):
                    body += chunk  # read whole, so closing does not reset the connection under the answer
                conn.sendall(answer(head.split(b"\r\n", 1)[0]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


def http(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    head = b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, content_type, len(body)) + body


STATUS = {
    "sidecar": {
        "version": "0",
        "pid": 1,
        "uptime_s": 1.0,
        "started_at": 0.0,
        "listen": "x",
        "config_path": "x",
        "config_loaded_at": 0.0,
        "control_socket": "x",
    },
    "serving": "a",
    "nodes": [],
    "spend": {
        "day": "2026-01-01",
        "today_usd": 0.0,
        "month_usd": 0.0,
        "daily_usd": None,
        "monthly_usd": None,
        "day_ends_at": 0.0,
        "month_ends_at": 0.0,
        "over": None,
        "unpriced_today": 0,
        "prices_as_of": "x",
        "nodes": [],
        "models": [],
    },
}
REPLIES = {
    "not JSON": http(200, b"hello\nworld", b"text/plain"),
    "JSON of the wrong shape": http(200, b"[1, 2]"),
    "missing keys": http(200, b"{}"),
    "wrong types": http(200, json.dumps({**STATUS, "serving": 5}).encode()),
    "nested too deeply": http(200, b"[" * 100_000 + b"]" * 100_000),
    "error that is a list": http(500, b"[1]"),
    "error in plain text over lines": http(500, b"boom\nsecond line\x1b[31m", b"text/plain"),
    "error message of the wrong type": http(409, b'{"error": {"message": ["x"]}}'),
    "not HTTP": b"SSH-2.0-OpenSSH\r\n\r\n",
}


@pytest.mark.parametrize("name", list(REPLIES))
def test_cli_answers_malformed_replies_in_one_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / "ctl.sock"
    with fake_control(path, lambda line: REPLIES[name]):
        for args in (["status"], ["status", "--json"], ["failover"], ["node", "auto", "a/b?c"], ["reload"]):
            result = cli(*args, "--control-socket", str(path), timeout=20)
            one_line(result, 1)
            assert "\x1b" not in result.stderr


def test_cli_checks_each_answer_of_a_failover(tmp_path: Path) -> None:
    """`failover` reads the status, then fails over: a bad status stops it before anything is sent,
    and a bad failover answer is one line too."""
    path = tmp_path / "ctl.sock"
    seen: list[bytes] = []
    status: dict[str, Any] = {**STATUS, "nodes": [{"name": "a"}]}

    def answer(line: bytes) -> bytes:
        seen.append(line)
        return http(200, json.dumps(status if line.startswith(b"GET") else {"down": "a"}).encode())

    with fake_control(path, answer):
        one_line(cli("failover", "--control-socket", str(path)), 1, "answer.nodes[0].url is missing")
        assert seen == [b"GET /v1/status HTTP/1.1"]  # the failover was never sent
        status = STATUS
        one_line(cli("failover", "--control-socket", str(path)), 1, "answer.serving is missing")
        assert seen[1:] == [b"GET /v1/status HTTP/1.1", b"POST /v1/failover HTTP/1.1"]


# --------------------------------------------------------------------------- malformed requests


async def test_malformed_control_requests_get_a_json_error_and_one_warning_line(fakes, sidecar) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    requests = [
        ("POST", "/v1/failover", b"not json", 400),
        ("POST", "/v1/failover", b"[1]", 400),
        ("POST", "/v1/failover", b'"primary"', 400),
        ("POST", "/v1/failover", b'{"node": 5}', 400),
        ("POST", "/v1/failover", b'{"nod": "primary"}', 400),
        ("POST", "/v1/failover", b"\xff\xfe", 400),
        ("POST", "/v1/failover", b"[" * 100_000, 400),
        ("POST", "/v1/failover", b"x" * 2_000_000, 413),
        ("GET", "/v1/nope%0aINJECTED", b"", 404),
        ("DELETE", "/v1/status", b"", 405),
        ("POST", "/v1/nodes/nope/down", b"", 404),
    ]
    async with car.control() as control:
        for method, path, body, status in requests:
            r = await control.request(method, path, content=body)
            assert r.status_code == status, (path, body[:20], r.text)
            error = r.json()["error"]
            assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    raw = await asyncio.to_thread(raw_request, car.socket, b"GET /v1/status HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.") and b" 400 " in raw.split(b"\r\n", 1)[0]
    assert (await car.status())["serving"] == "primary"  # none of them failed over
    log = car.log()
    warnings = [line for line in log.splitlines() if " WARNING " in line and "control socket" in line]
    assert len(warnings) == len(requests) + 1, log
    assert "Traceback" not in log and " ERROR " not in log
    assert "INJECTED" in log and not any(line.startswith("INJECTED") for line in log.splitlines())


def raw_request(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        return sock.recv(65536)
