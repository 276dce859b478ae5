"""Regressions, end to end: the real `llm-sidecar run`, fake or hand-made providers, loopback sockets.

Each test pins down a bug that was fixed; its name says what must hold.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import tomli_w
from aiohttp import web

from .conftest import Sidecar, chat, cli, eventually, two_node_config

CHAT = "/v1/chat/completions"
PASSIVE_ONLY = {"passive": {"unhealthy": {"http_failures": 1}, "base_ejection_time": 0.5}}
TRANSITION = re.compile(r"node \w+: \w+ -> \w+")
FIRST_EVENT = b'data: {"id": "x", "choices": [{"delta": {"content": "hi"}}]}\n\n'
PARTIAL = b'data: {"partial'


# ---------------------------------------------------------------------------- helpers


async def in_flight(car: Sidecar, name: str) -> int:
    return (await car.node(name))["traffic"]["in_flight"]


def data_lines(body: bytes | str) -> list[str]:
    text = body.decode() if isinstance(body, bytes) else body
    return [line for line in text.splitlines() if line.startswith("data: ")]


def last_error_event(body: bytes) -> dict[str, Any]:
    last = data_lines(body)[-1]
    return json.loads(last.removeprefix("data: "))["error"]


def node(name: str, url: str, priority: int, key: str = "${PRIMARY_KEY}", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "priority": priority, "weight": 1, "api_key": key, **extra}


def clean_log(log: str) -> None:
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Start a hand-made aiohttp upstream on loopback; its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


# ---------------------------------------------------------------------------- 1. trials


async def test_ejected_node_whose_trial_stream_client_leaves_gets_another_trial_and_recovers(
    fakes, sidecar, client
) -> None:
    primary = await fakes("primary", fail_rate=1.0, chunks=40, chunk_delay=0.1)
    backup = await fakes("backup")
    car = await sidecar(
        two_node_config(primary, backup, checks=PASSIVE_ONLY, recovery="trial")
    )  # trials: this is about them
    first = await client.post(car.url + CHAT, json=chat())
    assert first.headers["x-llm-sidecar-node"] == "backup"
    assert (await car.node("primary"))["state"] == "ejected"
    primary.set(fail_rate=0.0)
    await asyncio.sleep(0.6)  # past base_ejection_time: the next request is the primary's trial
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
        assert r.headers["x-llm-sidecar-node"] == "primary"
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break  # leave mid-stream: closing the stream closes the connection
    assert await eventually(lambda: _idle(car, "primary"), 2), "the abandoned trial never ended"
    await asyncio.sleep(0.6)  # past the ejection time again, had the trial counted as a failure
    later = await client.post(car.url + CHAT, json=chat())
    assert later.status_code == 200 and later.headers["x-llm-sidecar-node"] == "primary"
    assert (await car.node("primary"))["state"] == "healthy"
    assert backup.stats.chat == 1


async def _idle(car: Sidecar, name: str) -> bool:
    return await in_flight(car, name) == 0


async def test_trial_request_with_a_broken_json_body_gets_400_and_the_trial_comes_again(fakes, sidecar, client) -> None:
    primary = await fakes("primary", fail_rate=1.0)
    backup = await fakes("backup")
    nodes = [
        node("primary", primary.url, 0, models={"*": "gpt-4o-mini"}),
        node("backup", backup.url, -1, key="${BACKUP_KEY}"),
    ]
    car = await sidecar(two_node_config(primary, backup, checks=PASSIVE_ONLY, nodes=nodes, recovery="trial"))
    assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "backup"
    assert (await car.node("primary"))["state"] == "ejected"
    primary.set(fail_rate=0.0)
    await asyncio.sleep(0.6)
    bad = await client.post(
        car.url + CHAT, content=b'{"model": "gpt-4o", oops', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert (primary.stats.chat, backup.stats.chat) == (1, 1)  # the broken body reached nobody
    ok = await client.post(car.url + CHAT, json=chat())
    assert ok.status_code == 200 and ok.headers["x-llm-sidecar-node"] == "primary"
    assert primary.stats.models_seen[-1] == "gpt-4o-mini"
    assert (await car.node("primary"))["state"] == "healthy"


# ---------------------------------------------------------------------------- 2. reload under load


async def test_reload_while_a_request_waits_on_a_hung_node_still_fails_over(fakes, sidecar, client) -> None:
    primary = await fakes("primary", fail_rate=1.0, fault="hang")
    backup = await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    pending = asyncio.create_task(client.post(car.url + CHAT, json=chat()))
    await asyncio.sleep(0.2)
    async with car.control() as control:
        assert (await control.post("/v1/reload")).status_code == 200
    r = await pending
    assert r.status_code == 200, r.text
    assert r.headers["x-llm-sidecar-node"] == "backup" and r.headers["x-llm-sidecar-attempts"] == "2"
    log = car.log()
    assert "failed=[primary:read timeout]" in log
    clean_log(log)


async def test_reload_that_changes_timeouts_lets_a_running_stream_finish(fakes, sidecar, client) -> None:
    # 7 s: longer than the old generation used to be kept after a reload (new read timeout + 5 s)
    primary = await fakes("primary", chunks=70, chunk_delay=0.1)
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    lines: list[str] = []
    reloaded: httpx.Response | None = None
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
        assert r.headers["x-llm-sidecar-node"] == "primary"
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            lines.append(line)
            if len(lines) == 3:
                config = tomllib.loads(car.config_path.read_text())
                config["upstream"]["timeout"]["read"] = 0.5
                car.config_path.write_text(tomli_w.dumps(config))
                async with car.control() as control:
                    reloaded = await control.post("/v1/reload")
    assert reloaded is not None and reloaded.status_code == 200, reloaded and reloaded.text
    # the role chunk, 70 words, the stop chunk and [DONE]
    assert len(lines) == 73 and lines[-1] == "data: [DONE]"
    assert sum('" word' in line for line in lines) == 70
    assert await eventually(lambda: _idle(car, "primary"), 2)
    assert "config reloaded" in car.log()


# ---------------------------------------------------------------------------- 3. clients that leave


async def test_client_that_gives_up_on_a_hung_node_is_not_retried_on_the_backup(fakes, sidecar) -> None:
    primary = await fakes("primary", fail_rate=1.0, fault="hang")
    backup = await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    async with httpx.AsyncClient(timeout=0.5) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(car.url + CHAT, json=chat())
    await asyncio.sleep(2.0)  # past the read timeout (2 s) the abandoned attempt would have hit
    assert primary.stats.chat == 1 and backup.stats.chat == 0
    log = car.log()
    assert "status=499" in log
    assert not TRANSITION.search(log), log
    for state in (await car.status())["nodes"]:
        assert state["state"] == "healthy"
        assert state["passive"]["counters"]["timeouts"] == 0


async def test_client_that_gives_up_cancels_its_upstream_request_at_once(fakes, sidecar) -> None:
    primary = await fakes("primary", latency=5)
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    async with httpx.AsyncClient(timeout=0.5) as impatient:
        pending = asyncio.create_task(impatient.post(car.url + CHAT, json=chat()))
        await asyncio.sleep(0.25)
        assert await in_flight(car, "primary") == 1
        with pytest.raises(httpx.ReadTimeout):
            await pending
    gave_up = time.monotonic()
    assert await eventually(lambda: _idle(car, "primary"), 1.0), "the upstream request outlived its client"
    assert time.monotonic() - gave_up < 1.2
    assert "status=499" in car.log()


# ---------------------------------------------------------------------------- 5. uploads


async def test_multipart_upload_goes_byte_for_byte_to_nodes_with_a_models_map(
    fakes, sidecar, client, serve_app
) -> None:
    seen: list[tuple[str, str, bytes]] = []

    async def failing(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("content-type", ""), await request.read()))
        return web.json_response({"error": {"message": "down", "type": "server_error", "code": None}}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", failing)
    # The fake answers 404 to unknown paths whatever its fail_rate, so the failing primary is hand-made.
    primary_url = await serve_app(app)
    backup = await fakes("backup")
    nodes = [
        node("primary", primary_url, 0, models={"*": "gpt-4o-mini"}),
        node("backup", backup.url, -1, key="${BACKUP_KEY}", models={"*": "deepseek-chat"}),
    ]
    car = await sidecar(two_node_config(primary_url, backup, nodes=nodes))
    audio = bytes(range(256)) * 64  # neither UTF-8 nor JSON
    request = client.build_request(
        "POST",
        car.url + "/v1/audio/transcriptions",
        files={"file": ("speech.wav", audio, "audio/wav")},
        data={"model": "whisper-1"},
    )
    sent = request.read()
    r = await client.send(request)
    assert r.status_code == 404, r.text
    assert r.json() == {
        "error": {
            "message": "unknown path /v1/audio/transcriptions",
            "type": "invalid_request_error",
            "code": None,
        }
    }
    assert r.headers["x-llm-sidecar-node"] == "backup" and r.headers["x-llm-sidecar-attempts"] == "2"
    assert "/v1/audio/transcriptions" in backup.stats.paths
    assert seen == [("/v1/audio/transcriptions", request.headers["content-type"], sent)]
    assert "not valid JSON" not in car.log()


# ---------------------------------------------------------------------------- 6. named failover


async def test_failover_naming_a_node_that_does_not_serve_is_refused_and_changes_nothing(
    fakes, sidecar, client
) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))

    async def unchanged() -> None:
        status = await car.status()
        assert status["serving"] == "primary"
        assert [(n["state"], n["manual"]) for n in status["nodes"]] == [("healthy", "auto")] * 2

    async with car.control() as control:
        refused = await control.post("/v1/failover", json={"node": "backup"})
        assert refused.status_code == 409, refused.text
        assert "backup no longer serves" in refused.json()["error"]["message"]
        await unchanged()
        by_cli = await asyncio.to_thread(cli, "failover", "--node", "backup", "--control-socket", str(car.socket))
        assert by_cli.returncode != 0
        assert len(by_cli.stderr.strip().splitlines()) == 1 and "backup" in by_cli.stderr, by_cli.stderr
        assert "Traceback" not in by_cli.stderr and by_cli.stdout == ""
        await unchanged()
        assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "primary"
        moved = await control.post("/v1/failover", json={"node": "primary"})
        assert moved.status_code == 200 and moved.json() == {"down": "primary", "serving": "backup"}
    r = await client.post(car.url + CHAT, json=chat())
    assert r.headers["x-llm-sidecar-node"] == "backup"
    assert (primary.stats.chat, backup.stats.chat) == (1, 1)


# ---------------------------------------------------------------------------- 7/9. stop with open requests


async def _stream_until_first_chunk(client: httpx.AsyncClient, url: str) -> asyncio.Task[bytes]:
    """Start reading a stream in the background; return once its first bytes arrived."""
    first = asyncio.Event()

    async def read() -> bytes:
        body = b""
        async with client.stream("POST", url + CHAT, json=chat(stream=True)) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_bytes():
                body += chunk
                first.set()
        return body

    task = asyncio.create_task(read())
    await asyncio.wait_for(first.wait(), 5)
    return task


async def test_sigterm_ends_an_open_stream_with_an_error_event_when_the_grace_runs_out(fakes, sidecar, client) -> None:
    primary = await fakes("primary", chunks=100, chunk_delay=0.1)
    car = await sidecar(two_node_config(primary, await fakes("backup")), "--grace", "1")
    reading = await _stream_until_first_chunk(client, car.url)
    car.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    body = await asyncio.wait_for(reading, 5)
    ended = time.monotonic() - signalled
    assert 0.8 < ended < 3.0, ended  # the grace (1 s) was given, then the stream was ended
    assert b"data: [DONE]" not in body
    assert last_error_event(body)["code"] == "sidecar_stopping"
    assert await asyncio.to_thread(car.proc.wait, 5) == 0
    clean_log(car.log())


async def test_second_sigint_ends_open_streams_at_once(fakes, sidecar, client) -> None:
    primary = await fakes("primary", chunks=100, chunk_delay=0.1)
    car = await sidecar(two_node_config(primary, await fakes("backup")))  # --grace 5
    reading = await _stream_until_first_chunk(client, car.url)
    car.proc.send_signal(signal.SIGINT)

    async def announced() -> bool:
        return "waiting for 1 in-flight request" in car.log_path.read_text(errors="replace")

    assert await eventually(announced, 2), car.log_path.read_text()
    assert not reading.done()  # the first SIGINT lets the stream go on
    car.proc.send_signal(signal.SIGINT)
    second = time.monotonic()
    body = await asyncio.wait_for(reading, 4)
    assert time.monotonic() - second < 1.5
    assert last_error_event(body)["code"] == "sidecar_stopping"
    assert await asyncio.to_thread(car.proc.wait, 5) == 0
    clean_log(car.log())


async def test_answer_not_started_when_the_grace_runs_out_gets_503_sidecar_stopping(fakes, sidecar, client) -> None:
    primary = await fakes("primary", latency=10)
    car = await sidecar(two_node_config(primary, await fakes("backup")), "--grace", "1")
    pending = asyncio.create_task(client.post(car.url + CHAT, json=chat()))
    assert await eventually(lambda: _busy(car, "primary"), 2)
    car.proc.send_signal(signal.SIGTERM)
    r = await asyncio.wait_for(pending, 5)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "sidecar_stopping"
    assert await asyncio.to_thread(car.proc.wait, 5) == 0
    clean_log(car.log())


async def _busy(car: Sidecar, name: str) -> bool:
    return await in_flight(car, name) == 1


# ---------------------------------------------------------------------------- 8. a stream cut inside an event


async def chunked_cut(serve_app: Any, together: bool) -> str:
    """An upstream answering with chunked encoding, aborted inside its second SSE event."""

    async def cut(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if together:
            await response.write(FIRST_EVENT + PARTIAL)
        else:
            await response.write(FIRST_EVENT)
            await asyncio.sleep(0.05)
            await response.write(PARTIAL)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response

    app = web.Application()
    app.router.add_post(CHAT, cut)
    return await serve_app(app)


async def close_delimited_cut(raw_server: Any) -> str:
    """An upstream whose body ends with the connection (no length, not chunked), aborted inside an event."""

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # the request head; its small body may stay unread
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        writer.write(head + FIRST_EVENT)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(PARTIAL)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    return await raw_server(cut)


@pytest.mark.parametrize("upstream", ["chunked-event-then-partial", "chunked-together", "close-delimited"])
async def test_stream_cut_inside_an_event_ends_with_a_clean_error_event(
    fakes, sidecar, client, serve_app, raw_server, upstream
) -> None:
    if upstream == "close-delimited":
        primary_url = await close_delimited_cut(raw_server)
    else:
        primary_url = await chunked_cut(serve_app, together=upstream == "chunked-together")
    car = await sidecar(two_node_config(primary_url, await fakes("backup")))
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
        assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "primary"
        body = await r.aread()
    assert body.startswith(FIRST_EVENT), body
    assert b'{"partial' not in body, body
    assert body.endswith(b"\n\n")
    assert last_error_event(body)["code"] == "stream_interrupted"

    sdk = openai.AsyncOpenAI(base_url=car.url + "/v1", api_key="x", max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        got: list[str | None] = []
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content)
    finally:
        await sdk.close()
    assert got == ["hi"]
    assert "failed mid-stream" in raised.value.message
    assert 'error="stream interrupted' in car.log()


# ---------------------------------------------------------------------------- 10. file descriptors


async def test_low_soft_fd_limit_is_raised_to_the_hard_limit(fakes, sidecar, client) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard open file limit is {hard}")
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")), nofile=(256, hard))
    assert (await client.post(car.url + CHAT, json=chat())).status_code == 200
    assert "open file limit raised from 256" in car.log()
    limits = Path(f"/proc/{car.proc.pid}/limits")
    if limits.exists():
        line = next(x for x in limits.read_text().splitlines() if x.startswith("Max open files"))
        assert line.split()[3] != "256", line


async def test_near_the_fd_limit_connections_wait_for_room_and_no_node_is_blamed(fakes, sidecar) -> None:
    """With soft = hard = 200 descriptors, 250 concurrent streams: the server caps its client connections
    below what the descriptors allow (the rest wait in the backlog), so every request is answered, and
    whatever runs out is never held against a node. (Running out anyway is a 503 `sidecar_overloaded`:
    tests/test_failover_matrix.py.)"""
    primary = await fakes("primary", chunks=5, chunk_delay=0.3)
    backup = await fakes("backup", chunks=5, chunk_delay=0.3)
    car = await sidecar(two_node_config(primary, backup), nofile=(200, 200))
    assert "could not raise" not in car.log()  # soft == hard: nothing to raise, nothing to complain about

    async def one(c: httpx.AsyncClient) -> tuple[int, bytes]:
        try:
            async with c.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
                return r.status_code, await r.aread()
        except httpx.TransportError as exc:  # accepted, then dropped: not an answer at all
            return 0, repr(exc).encode()

    limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        results = await asyncio.wait_for(asyncio.gather(*(one(c) for _ in range(250))), 60)
    statuses = [status for status, _ in results]
    ok = statuses.count(200)
    overloaded = [json.loads(body)["error"]["code"] for status, body in results if status == 503]
    assert ok + len(overloaded) == 250, sorted(set(statuses))  # no 502, no dropped connection
    assert set(overloaded) <= {"sidecar_overloaded"}
    assert ok >= 200
    assert "connection limit reached" in car.log()  # the cap was really hit
    for state in (await car.status())["nodes"]:
        assert state["state"] == "healthy", state
        counters = state["passive"]["counters"]
        assert counters["tcp_failures"] == counters["timeouts"] == counters["http_failures"] == 0, state
    clean_log(car.log())


# ---------------------------------------------------------------------------- 11. request ids and the log


async def test_answers_carry_a_request_id_and_the_access_log_prints_no_none(fakes, sidecar, client) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    generated = await client.post(car.url + CHAT, json=chat())
    rid = generated.headers.get("x-request-id", "")
    assert generated.status_code == 200 and len(rid) >= 8
    echoed = await client.post(car.url + CHAT, json=chat(), headers={"X-Request-Id": "regress-11"})
    assert echoed.headers["x-request-id"] == "regress-11"
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True), headers={"X-Request-Id": "s-11"}) as r:
        await r.aread()
    assert r.headers["x-request-id"] == "s-11"
    again = await client.post(car.url + CHAT, json=chat())
    assert again.headers["x-request-id"] != rid  # a fresh one per request
    lines = [line for line in car.log().splitlines() if " id=" in line]
    assert len(lines) == 4
    assert any(f"id={rid} " in line for line in lines) and any("id=regress-11 " in line for line in lines)
    non_stream = next(line for line in lines if "id=regress-11 " in line)
    assert "ttft_ms=None" not in non_stream and " ttft_ms=- " in non_stream, non_stream
    assert "=None" not in "\n".join(lines)


async def test_sighup_reloads_the_file_and_cuts_no_request(fakes, sidecar, client) -> None:
    # SIGHUP's default action killed the sidecar at once: every stream cut, the socket file left behind.
    primary = await fakes("primary", chunks=20, chunk_delay=0.05)
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    lines: list[str] = []
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                lines.append(line)
            if len(lines) == 3:
                config = tomllib.loads(car.config_path.read_text())
                config["upstream"]["nodes"][0]["weight"] = 7
                car.config_path.write_text(tomli_w.dumps(config))
                car.proc.send_signal(signal.SIGHUP)
    assert lines[-1] == "data: [DONE]" and sum('" word' in line for line in lines) == 20
    assert await eventually(lambda: _weight(car, "primary", 7), 5)
    # A broken edit is refused with one log line; the running config and the process stay.
    car.config_path.write_text(car.config_path.read_text().replace("weight = 7", 'weight = "heavy"'))
    car.proc.send_signal(signal.SIGHUP)
    assert await eventually(lambda: _logged(car, 'upstream.nodes[0] ("primary").weight'), 5)
    assert car.proc.poll() is None and (await car.node("primary"))["weight"] == 7
    assert car.socket.exists()


async def _weight(car: Any, name: str, weight: int) -> bool:
    return (await car.node(name))["weight"] == weight


async def _logged(car: Any, text: str) -> bool:
    return text in car.log_path.read_text(errors="replace")


async def test_a_node_url_ending_in_v1_reaches_the_right_path(fakes, sidecar, client) -> None:
    # Every provider documents its base URL with /v1; kept, each request went to /v1/v1/... and got 404.
    primary = await fakes("primary")
    car = await sidecar(two_node_config(primary.url + "/v1", await fakes("backup")))
    r = await client.post(car.url + CHAT, json=chat())
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "primary"
    assert primary.stats.paths[-1] == "/v1/chat/completions"
    assert "the /v1 at the end of its url is dropped" in car.log()


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_client_that_leaves_a_stalled_stream_is_noticed_at_once(fakes, sidecar, api: str) -> None:
    """A client that closes while the node is silent mid-stream: its FIN alone looks like a half-close, so
    the sidecar writes an empty SSE comment and sees the reset. It used to wait for the read timeout (20 s
    here), log a 200 with a read-timeout error and blame the node."""
    primary, backup = await fakes("primary", api=api), await fakes("backup", api=api)
    config = two_node_config(primary, backup, timeout={"connect": 1, "send": 5, "read": 20})
    for node in config["upstream"]["nodes"]:
        node["api"] = api
    car = await sidecar(config)
    path = "/v1/messages" if api == "anthropic" else CHAT
    body = {
        "model": "fault-stall-fin",
        "stream": True,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    }
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", car.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    seen = b""
    async with asyncio.timeout(10):
        while b"charlie" not in seen:  # some words went out; then the node stalls
            seen += await reader.read(4096)
    left = time.monotonic()
    writer.close()  # the client is gone (not a half-close)

    async def logged_499() -> bool:
        return "status=499" in car.log()

    assert await eventually(logged_499, 8)
    assert time.monotonic() - left < 8  # well before the 20 s read timeout
    node = await car.node("primary")
    assert node["state"] == "healthy" and node["passive"]["counters"]["timeouts"] == 0


async def test_a_half_closed_client_mid_stream_still_gets_the_whole_stream(fakes, sidecar) -> None:
    primary = await fakes("primary", chunks=6, chunk_delay=0.1)
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    payload = json.dumps(chat(stream=True)).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", car.port)
    writer.write(
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    seen = await reader.read(4096)  # the stream began
    writer.write_eof()  # done sending, still reading
    async with asyncio.timeout(10):
        while not seen.endswith(b"0\r\n\r\n"):
            chunk = await reader.read(4096)
            if not chunk:
                break
            seen += chunk
    writer.close()
    assert seen.count(b"data: {") >= 6 and b"data: [DONE]" in seen and b"HTTP/1.1 200" in seen
