"""Hostile or broken upstream answers: bodies too large to hold, bodies nobody needs to hold,
redirects, SSE comment floods, HTML where JSON belongs, and Retry-After values that are no number.

Most cases run in-process on the mock transport. Where the HTTP client's own behaviour is the point
(aiohttp reading a body in pieces, an endless body), the proxy runs in-process on the real transport
against tiny raw asyncio upstreams; one case goes through the real `llm-sidecar run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.control import status as api
from sidecar.formats.sse import Splitter
from sidecar.nodes.health import Failure, Source
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import AiohttpTransport, Request, UpstreamError
from sidecar.proxy.answer import MAX_RETRY_AFTER, SSE_HOLD_LIMIT, retry_after

from .conftest import Upstream, chat, two_node_config
from .inproc import Answer, Harness, config

JSON = (("content-type", "application/json"),)
SSE = (("content-type", "text/event-stream"),)
OK = b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'
EVENT = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
CAP = 4096  # max_response_bytes in these tests (the config's minimum is 1024)


def on(primary: Script, backup: Script | None = None) -> Callable[[str, Request], Script]:
    return lambda node, request: primary if node == "primary" else (backup or Script(body=[OK]))


def failures(h: Harness) -> list[dict[str, Any]]:
    """The failed attempts without their fault kind and duration (the journal's, checked in test_journal)."""
    return [{k: v for k, v in a.items() if k not in ("kind", "ms")} for a in h.last_event()["failed"]]


def passive(h: Harness, node: str) -> dict[str, int]:
    return dict(h.node(node).health.counters[Source.PASSIVE].as_dict())


# ---------------------------------------------------------------------------- 6. bodies held and bodies streamed


async def test_a_json_answer_past_max_response_bytes_is_the_nodes_failure_and_fails_over() -> None:
    big = [b'{"content": "' + b"x" * 3000, b"x" * 3000 + b'"}']  # no Content-Length: found out while reading
    h = Harness(on(Script(200, JSON, big)), config(max_response_bytes=CAP))
    got = await h.request(chat())
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup" and got.body == OK
    assert failures(h) == [{"node": "primary", "reason": "response too large"}]
    assert passive(h, "primary")["http_failures"] == 1
    h.assert_nothing_held()


async def test_every_node_too_large_is_502_upstream_response_too_large() -> None:
    big = Script(200, JSON, [b"[" + b"1," * CAP + b"1]"])
    h = Harness(on(big, big), config(max_response_bytes=CAP))
    got = await h.request(chat())
    assert got.status == 502 and got.headers["x-should-retry"] == "false"
    error = got.json()["error"]
    assert error["code"] == "upstream_response_too_large" and error["type"] == "upstream_error"
    assert "primary: response too large; backup: response too large" in error["message"]
    h.assert_nothing_held()


async def test_a_json_answer_under_the_cap_in_pieces_is_read_whole_before_it_is_sent() -> None:
    pieces = [OK[:10], 0.002, OK[10:40], 0.002, OK[40:]]
    h = Harness(on(Script(200, (("content-type", "application/json; charset=utf-8"),), pieces)), config())
    got = await h.request(chat())
    assert got.status == 200 and got.parts == [OK] and got.headers["content-length"] == str(len(OK))
    assert h.last_event()["tokens_in"] == 3


STREAMED = [
    ("/v1/audio/speech", (("content-type", "audio/mpeg"),)),
    ("/v1/files/file-1/content", (("content-type", "application/octet-stream"), ("content-length", "6000"))),
    ("/v1/files/file-1/content", (("content-type", "text/plain"),)),
    ("/v1/files/file-1/content", ()),  # no type at all, on a path that may carry anything
    # JSON, but declared larger than the sidecar holds: streamed rather than refused
    ("/v1/chat/completions", (("content-type", "application/json"), ("content-length", "6000"))),
]


@pytest.mark.parametrize(("path", "headers"), STREAMED, ids=[f"{p} {dict(h)}" for p, h in STREAMED])
async def test_bodies_nobody_inspects_are_streamed_as_they_arrive(path: str, headers: Any) -> None:
    parts = [b"a" * 2000, b"b" * 2000, b"c" * 2000]
    h = Harness(on(Script(200, headers, [parts[0], 0.002, parts[1], 0.002, parts[2]])), config(max_response_bytes=CAP))
    got = await h.request(chat(), path=path)
    assert got.status == 200 and got.complete and got.headers["x-llm-sidecar-node"] == "primary"
    assert got.parts == [*parts, b""]  # one message per upstream chunk: nothing was held back
    assert got.headers.get("content-length") == dict(headers).get("content-length")  # the node's own, if any
    assert passive(h, "primary")["successes"] == 1
    h.assert_nothing_held()


async def test_a_streamed_body_cut_after_bytes_went_out_is_left_unfinished_and_is_the_nodes_failure() -> None:
    cut = UpstreamError(Failure.TCP, "connection closed mid-body")
    headers = (("content-type", "audio/mpeg"), ("content-length", "5000"))
    h = Harness(on(Script(200, headers, [b"a" * 1000, 0.002, cut])), config())
    got = await h.request(chat(), path="/v1/audio/speech")
    # Unfinished: the server closes the connection, so the client sees the cut (5000 declared, 1000 sent).
    assert got.status == 200 and not got.complete and got.body == b"a" * 1000
    assert got.headers["content-length"] == "5000"
    assert h.calls("backup") == 0  # bytes reached the client: no retry
    assert passive(h, "primary")["tcp_failures"] == 1
    assert h.last_event()["error"] == "body interrupted: connection closed mid-body"
    h.assert_nothing_held()


async def test_a_streamed_body_cut_before_any_byte_still_fails_over() -> None:
    cut = UpstreamError(Failure.TCP, "connection closed mid-body")
    audio = (("content-type", "audio/mpeg"),)
    h = Harness(on(Script(200, audio, [cut]), Script(200, audio, [b"sound"])), config())
    got = await h.request(chat(), path="/v1/audio/speech")
    assert got.status == 200 and got.complete and got.body == b"sound" and got.headers["x-llm-sidecar-node"] == "backup"


async def test_an_empty_answer_is_passed_as_it_is() -> None:
    h = Harness(on(Script(204, (), [])), config())
    got = await h.request(b"", path="/v1/files/file-1", method="DELETE", headers=[])
    assert got.status == 204 and got.complete and got.body == b""
    h.assert_nothing_held()


# ---------------------------------------------------------------------------- 7. redirects


async def test_a_redirect_is_the_nodes_failure_and_fails_over() -> None:
    h = Harness(on(Script(307, (("location", "http://elsewhere.invalid/v1/chat/completions"),), [b""])), config())
    got = await h.request(chat())
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup"
    assert failures(h) == [{"node": "primary", "reason": "redirect (307)"}]
    assert passive(h, "primary")["http_failures"] == 1
    h.assert_nothing_held()


async def test_when_every_node_redirects_the_last_redirect_is_passed_through() -> None:
    def handler(node: str, request: Request) -> Script:
        return Script(302, (("location", f"http://{node}.elsewhere.invalid/"),), [b"moved"])

    h = Harness(handler, config())
    got = await h.request(chat())
    assert got.status == 302 and got.body == b"moved"
    assert got.headers["location"] == "http://backup.elsewhere.invalid/" and got.headers["x-should-retry"] == "false"
    assert got.headers["x-llm-sidecar-attempts"] == "2"
    h.assert_nothing_held()


async def test_a_304_answers_the_clients_own_conditional_request_and_is_no_redirect() -> None:
    h = Harness(on(Script(304, (("etag", '"v1"'),), [])), config())
    headers = [(b"if-none-match", b'"v1"')]
    got = await h.request(b"", path="/v1/files/file-1/content", method="GET", headers=headers)
    assert got.status == 304 and got.headers["etag"] == '"v1"' and h.calls("backup") == 0
    assert passive(h, "primary")["successes"] == 1


# ---------------------------------------------------------------------------- 8. SSE comment floods


async def test_an_sse_comment_flood_fails_over_past_the_hold_limit_quickly() -> None:
    comments = b": keep-alive\n\n" * 512  # 7 KiB a chunk, as fast as the node can send
    flood = Script(200, SSE, [comments] * (SSE_HOLD_LIMIT // len(comments) + 10))
    h = Harness(on(flood, Script(200, SSE, [EVENT, b"data: [DONE]\n\n"])), config(read=30))
    got = await h.request(chat(stream=True))
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup" and got.body.startswith(EVENT)
    assert failures(h) == [{"node": "primary", "reason": "no data before limit"}]
    h.assert_nothing_held()


@pytest.mark.timeout(60)  # a hang guard, not a speed test: the quadratic scan took hours
async def test_the_first_event_scan_is_linear_in_small_chunks() -> None:
    # 1 MiB in 64-byte chunks: rescanning the held bytes on every chunk was 8 GiB of work.
    chunk = b": keep-alive\n\n:" + b"x" * 48 + b"\n"
    steps: list[Any] = [chunk] * (SSE_HOLD_LIMIT // len(chunk) - 1) + [EVENT, b"data: [DONE]\n\n"]
    h = Harness(on(Script(200, SSE, steps)), config(read=30))  # no timer races a slow machine here
    got = await h.request(chat(stream=True))
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "primary"
    assert got.body.startswith(chunk) and got.body.endswith(EVENT + b"data: [DONE]\n\n")  # comments forwarded


@pytest.mark.timeout(30)  # a hang guard: a rescan per chunk never finishes
def test_the_event_split_is_linear_on_blank_runs() -> None:
    buffer = bytearray()
    splitter = Splitter()
    for _ in range(16):
        for piece in (b" " * 65536, b":" + b" " * 65536 + b"\n", b"\r" * 3):
            buffer += piece
            splitter.events(buffer)
    assert splitter.searched == len(buffer)


# ---------------------------------------------------------------------------- 9. HTML where JSON belongs

JSON_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/responses/resp_1"]


@pytest.mark.parametrize("path", JSON_PATHS)
@pytest.mark.parametrize("media", ["text/html; charset=utf-8", "text/plain", "application/xml"])
async def test_a_2xx_that_is_neither_json_nor_sse_on_a_json_api_path_is_the_nodes_failure(
    path: str, media: str
) -> None:
    portal = Script(200, (("content-type", media),), [b"<html>Sign in to the Wi-Fi</html>"])
    h = Harness(on(portal), config())
    got = await h.request(chat(), path=path)
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup" and got.body == OK
    assert failures(h) == [{"node": "primary", "reason": f"bad content-type ({media.split(';')[0]})"}]
    assert passive(h, "primary")["http_failures"] == 1
    h.assert_nothing_held()


async def test_when_every_node_answers_html_the_client_gets_502_json() -> None:
    html = Script(200, (("content-type", "text/html"),), [b"<html></html>"])
    h = Harness(on(html, html), config())
    got = await h.request(chat())
    assert got.status == 502 and got.json()["error"]["code"] == "upstream_unavailable"
    assert "bad content-type (text/html)" in got.json()["error"]["message"]


async def test_a_content_type_chosen_by_a_hostile_node_is_made_printable_in_the_reason() -> None:
    h = Harness(on(Script(200, (("content-type", 'text/x\u00e9 "evil" ' + "y" * 200),), [b"x"])), config())
    await h.request(chat())
    reason = failures(h)[0]["reason"]
    assert reason.startswith("bad content-type (text/x?") and len(reason) < 100
    assert reason.isascii() and reason.isprintable() and " " not in reason.removeprefix("bad content-type ")


ACCEPTED = [
    ("/v1/chat/completions", 200, "application/json"),
    ("/v1/chat/completions", 200, "application/vnd.example+json"),
    ("/v1/chat/completions", 200, None),  # no type: read whole as the JSON it should be
    ("/v1/chat/completions", 400, "text/html"),  # an error status passes as before
    ("/v1/files/file-1/content", 200, "text/html"),
    ("/v1/models", 200, "text/html"),
]


@pytest.mark.parametrize(("path", "status", "media"), ACCEPTED)
async def test_other_answers_keep_whatever_type_they_have(path: str, status: int, media: str | None) -> None:
    headers = () if media is None else (("content-type", media),)
    h = Harness(on(Script(status, headers, [OK])), config())
    got = await h.request(chat(), path=path)
    assert got.status == status and got.body == OK and got.headers["x-llm-sidecar-node"] == "primary"
    assert h.calls("backup") == 0 and failures(h) == []


# ---------------------------------------------------------------------------- 10. Retry-After


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "inf"}, MAX_RETRY_AFTER),
        ({"retry-after": "Infinity"}, MAX_RETRY_AFTER),
        ({"retry-after": "1e999"}, MAX_RETRY_AFTER),
        ({"retry-after": "1e300"}, MAX_RETRY_AFTER),
        ({"retry-after": "-inf"}, 0.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_RETRY_AFTER),
        ({"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after-ms": "inf", "retry-after": "2"}, MAX_RETRY_AFTER),
        ({"retry-after-ms": "nan", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "30"}, 30.0),
    ],
)
def test_retry_after_is_always_finite_and_clamped(headers: dict[str, str], expected: float | None) -> None:
    got = retry_after(headers.get)
    assert got == expected
    assert got is None or math.isfinite(got)


@pytest.mark.parametrize("value", ["inf", "1e999", "nan", "-1", "Fri, 31 Dec 9999 23:59:59 GMT", "99999999999"])
async def test_a_broken_retry_after_never_reaches_health_or_the_status_json_as_infinity(value: str) -> None:
    limited = Script(429, (("retry-after", value), *JSON), [b'{"error": {"message": "slow down"}}'])
    h = Harness(on(limited), config())
    now = h.runtime.clock()
    got = await h.request(chat())
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup"
    health = h.node("primary").health
    assert math.isfinite(health.blocked_until) and health.blocked_until <= now + 300 + 1  # max_ejection_time
    status = json.loads(json.dumps(api.status(h.runtime), allow_nan=False))  # raises on Infinity or NaN
    (primary,) = [n for n in status["nodes"] if n["name"] == "primary"]
    assert primary["blocked_until"] is None or primary["blocked_until"] < time.time() + 301


# ---------------------------------------------------------------------------- on real sockets


async def read_request(reader: asyncio.StreamReader) -> None:
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)


def answering(head: bytes, body: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> Upstream:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await read_request(reader)
            writer.write(head)
            await body(writer)
        writer.close()

    return handle


def fine() -> Upstream:
    async def body(writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()

    return answering(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(OK), body)


def real_config(primary: str, backup: str, **upstream: Any) -> Config:
    nodes = [
        {"name": "primary", "url": primary, "priority": 0},
        {"name": "backup", "url": backup, "priority": -1},
    ]
    checks = {"passive": {}}
    data = {"upstream": {"timeout": {"connect": 1, "send": 5, "read": 2}, "checks": checks, "nodes": nodes, **upstream}}
    return parse(data, "<test>", env={})


async def on_real_sockets(cfg: Config, body: dict[str, Any] | bytes, **request: Any) -> tuple[Harness, Answer]:
    h = Harness(on(Script()), cfg, transport=AiohttpTransport)
    try:
        return h, await h.request(body, **request)
    finally:
        await h.runtime.close()


async def test_real_an_endless_json_answer_is_cut_at_the_cap(raw_server) -> None:
    sent = 0

    async def endless(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(b'd\r\n{"content": "\r\n')
        piece = b"x" * 65536
        while True:  # until the sidecar stops reading and closes
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
            sent += len(piece)

    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    cfg = real_config(await raw_server(answering(head, endless)), await raw_server(fine()), max_response_bytes=1 << 20)
    h, got = await on_real_sockets(cfg, chat())
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup" and got.body == OK
    assert failures(h) == [{"node": "primary", "reason": "response too large"}]
    await asyncio.sleep(0.05)
    assert sent < 16 << 20  # what the sidecar took before it hung up: the cap plus socket buffers


async def test_real_a_json_answer_in_slow_pieces_is_read_whole(raw_server) -> None:
    async def slowly(writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(OK), 20):
            writer.write(OK[i : i + 20])
            await writer.drain()
            await asyncio.sleep(0.01)

    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(OK)
    cfg = real_config(await raw_server(answering(head, slowly)), await raw_server(fine()))
    h, got = await on_real_sockets(cfg, chat())
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "primary" and got.parts == [OK]
    assert h.last_event()["tokens_out"] == 1


async def test_real_a_large_download_is_streamed_not_held(raw_server) -> None:
    size = 8 << 20

    async def download(writer: asyncio.StreamWriter) -> None:
        piece = b"z" * 65536
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()

    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
    cfg = real_config(await raw_server(answering(head, download)), await raw_server(fine()), max_response_bytes=1 << 20)
    _, got = await on_real_sockets(cfg, b"", path="/v1/files/file-1/content", method="GET", headers=[])
    assert got.status == 200 and got.complete and len(got.body) == size and got.headers["content-length"] == str(size)
    assert len(got.parts) > 8 and max(len(p) for p in got.parts) <= 1 << 20


async def test_real_an_endless_comment_flood_fails_over(raw_server) -> None:
    async def flood(writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(b": keep-alive\n\n" * 1024)
            await writer.drain()

    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    cfg = real_config(await raw_server(answering(head, flood)), await raw_server(fine()))
    h, got = await on_real_sockets(cfg, chat(stream=True))
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup"
    assert failures(h) == [{"node": "primary", "reason": "no data before limit"}]


async def test_real_server_a_streamed_download_cut_midway_is_seen_as_cut_by_the_client(
    raw_server, fakes, sidecar
) -> None:
    async def half(writer: asyncio.StreamWriter) -> None:
        writer.write(b"a" * 50_000)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    car = await sidecar(two_node_config(await raw_server(answering(head, half)), await fakes("backup")))
    received = bytearray()
    async with httpx.AsyncClient(timeout=10) as client:
        with pytest.raises(httpx.RemoteProtocolError):  # not a clean end: the client knows it is short
            async with client.stream("GET", car.url + "/v1/files/file-1/content") as r:
                assert r.status_code == 200 and r.headers["content-length"] == "100000"
                async for chunk in r.aiter_raw():
                    received += chunk
    assert len(received) == 50_000
    node = await car.node("primary")
    assert node["passive"]["counters"]["tcp_failures"] == 1
    assert 'error="body interrupted: connection closed mid-body"' in car.log()
