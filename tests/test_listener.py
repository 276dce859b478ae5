"""The proxy's listener under attack, through the real `llm-sidecar run`: a flood of idle connections at the
connection cap, liveness (`llm-sidecar status`) covering the listener, and the sidecar's key checked only in
the request's head, never in a trailer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

from .conftest import Sidecar, cli, cli_env, two_node_config

ROUNDS = 3  # the wedge showed in 5 of 5 single rounds at max_connections = 100


def healthz(port: int, timeout: float = 5.0) -> bytes:
    """The status line of GET /healthz, or what went wrong (a timeout: the listener took nobody)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
            return conn.recv(1000).split(b"\r\n")[0]
    except OSError as exc:
        return repr(exc).encode()


def flood_then_ask(port: int, idle: int) -> list[bytes]:
    """`idle` connections that send nothing, closed all at once, then /healthz; ROUNDS times."""
    answers = []
    for _ in range(ROUNDS):
        conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(idle)]
        time.sleep(0.3)  # the sidecar accepts up to its cap; the rest wait in the backlog
        for conn in conns:
            conn.close()
        answers.append(healthz(port))
    return answers


async def sidecar_with(fakes: Any, sidecar: Any, nofile: tuple[int, int] | None = None, **server: Any) -> Sidecar:
    config = two_node_config(await fakes("primary"), await fakes("backup"))
    return await sidecar({**config, "server": server}, nofile=nofile)


# ---------------------------------------------------------------------------- the idle flood


@pytest.mark.parametrize("cap", [20, 60])
async def test_closing_three_times_the_cap_of_idle_connections_at_once_leaves_the_listener_accepting(
    fakes, sidecar, cap: int
) -> None:
    car = await sidecar_with(fakes, sidecar, max_connections=cap)
    answers = await asyncio.to_thread(flood_then_ask, car.port, 3 * cap)
    assert answers == [b"HTTP/1.1 200 OK"] * ROUNDS, car.log()[-2000:]


async def test_the_same_flood_at_the_cap_the_open_file_limit_derives(fakes, sidecar) -> None:
    """soft = hard = 124 descriptors: nothing to raise, and the cap is (124 - 64) / 2 = 30 (server.connection_cap)."""
    car = await sidecar_with(fakes, sidecar, nofile=(124, 124))
    answers = await asyncio.to_thread(flood_then_ask, car.port, 3 * 30)
    assert answers == [b"HTTP/1.1 200 OK"] * ROUNDS, car.log()[-2000:]
    assert "connection limit reached" in car.log()  # the derived cap was really hit


# ---------------------------------------------------------------------------- liveness


async def test_status_fails_while_the_proxy_listener_does_not_answer(fakes, sidecar) -> None:
    """The control socket answers, the proxy port does not (here: its only connections hold half a head):
    `status` must not call that alive."""
    car = await sidecar_with(fakes, sidecar, max_connections=2, header_timeout=60)
    sock = ("--control-socket", str(car.socket))
    alive = await asyncio.to_thread(cli, "status", *sock)
    assert alive.returncode == 0, alive.stderr
    shown = json.loads((await asyncio.to_thread(cli, "status", "--json", *sock)).stdout)
    assert shown["listener"] == {"address": f"127.0.0.1:{car.port}", "answering": True, "healthz": 200}
    assert set(shown) == {"sidecar", "serving", "nodes", "spend", "listener"}  # GET /v1/status's shape, one field more

    holders = [socket.create_connection(("127.0.0.1", car.port), timeout=5) for _ in range(2)]
    try:
        for conn in holders:
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        await asyncio.sleep(0.3)
        stuck = await asyncio.to_thread(cli, "status", *sock)
        stuck_json = await asyncio.to_thread(cli, "status", "--json", *sock)
    finally:
        for conn in holders:
            conn.close()
    assert stuck.returncode == 1 and "serving: primary" in stuck.stdout  # the table, then why it failed
    assert stuck.stderr.strip() == (
        f"llm-sidecar: proxy listener on 127.0.0.1:{car.port} not answering /healthz within 2s"
    ), stuck.stderr
    assert stuck_json.returncode == 1
    assert json.loads(stuck_json.stdout)["listener"] == {
        "address": f"127.0.0.1:{car.port}",
        "answering": False,
        "healthz": None,
    }
    again = await asyncio.to_thread(cli, "status", *sock)  # the holders are gone: room again
    assert again.returncode == 0, again.stderr


async def test_status_counts_a_503_from_healthz_as_a_listener_that_answers(fakes, sidecar) -> None:
    """/healthz is 503 while no node is usable: a provider outage, not a dead sidecar (README: liveness)."""
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    sock = ("--control-socket", str(car.socket))
    for name in ("primary", "backup"):
        assert (await asyncio.to_thread(cli, "node", "down", name, "--force", *sock)).returncode == 0
    shown = await asyncio.to_thread(cli, "status", "--json", *sock)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["listener"]["healthz"] == 503


# ---------------------------------------------------------------------------- the sidecar's key

CLIENT_KEY = "sk-sidecar-client-key-42"


def chunked_chat(*head: str, trailer: str = "", encoding: str = "chunked") -> bytes:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: sidecar", "Content-Type: application/json",
             f"Transfer-Encoding: {encoding}", "Connection: close", *head, "", ""]  # fmt: skip
    chunk = b"%x\r\n%b\r\n" % (len(body), body)
    return "\r\n".join(lines).encode() + chunk + b"0\r\n" + trailer.encode() + b"\r\n"


def answer(port: int, raw: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_key_counts_only_in_the_head_and_its_scheme_in_any_case(fakes, sidecar) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = {**two_node_config(primary, backup), "server": {"api_key": "${SIDECAR_CLIENT_KEY}"}}
    car = await sidecar(config, env=cli_env(SIDECAR_CLIENT_KEY=CLIENT_KEY))
    in_trailer = chunked_chat(trailer=f"Authorization: Bearer {CLIENT_KEY}\r\n")
    status, body = await asyncio.to_thread(answer, car.port, in_trailer)
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    as_x_api_key = chunked_chat(trailer=f"X-Api-Key: {CLIENT_KEY}\r\n")
    assert (await asyncio.to_thread(answer, car.port, as_x_api_key))[0] == 401
    assert primary.stats.requests == 0
    for scheme in ("Bearer", "bearer", "BEARER"):
        status, _ = await asyncio.to_thread(answer, car.port, chunked_chat(f"Authorization: {scheme} {CLIENT_KEY}"))
        assert status == 200, scheme
    status, _ = await asyncio.to_thread(answer, car.port, chunked_chat(f"Authorization: Basic {CLIENT_KEY}"))
    assert status == 401
    assert (await asyncio.to_thread(answer, car.port, chunked_chat(f"x-api-key: {CLIENT_KEY}")))[0] == 200
