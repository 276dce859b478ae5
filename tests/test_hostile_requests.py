"""Hostile client requests: paths that escape /v1, odd methods, bodies that break the model rewrite,
Connection-named headers, and fields that would forge access-log lines.

In-process on the mock transport (milliseconds a case); the last tests send raw bytes through the real
`llm-sidecar run`, where the HTTP server's own parsing (raw_path, percent-decoding) is part of the case.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest

from sidecar.logs import JsonFormatter, TextFormatter
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request
from sidecar.proxy.exchange import Exchange
from sidecar.proxy.inbound import REQUEST_DROP, path_is_safe, request_drop

from .conftest import chat, two_node_config
from .inproc import Answer, Harness, config

JSON = [(b"content-type", b"application/json")]
OK = b'{"choices": [{"message": {"content": "hi"}}]}'


def recording() -> tuple[Harness, list[tuple[str, Request]]]:
    """A harness whose primary answers 200 and records what each node was sent."""
    seen: list[tuple[str, Request]] = []

    def handler(node: str, request: Request) -> Script:
        seen.append((node, request))
        return Script(body=[OK])

    return Harness(handler, config()), seen


def assert_openai_error(got: Answer, status: int, code: str) -> dict[str, Any]:
    assert got.status == status and got.complete
    assert got.headers["content-type"] == "application/json"
    error = got.json()["error"]
    assert set(error) == {"message", "type", "code"} and error["code"] == code and error["message"]
    assert error["type"] == "invalid_request_error"
    return error


# ---------------------------------------------------------------------------- 1. paths

# (path as the server decoded it, raw path as it came on the wire)
BAD_PATHS = [
    ("/v1/../_fake/stats", b"/v1/../_fake/stats"),
    ("/v1/../_fake/stats", b"/v1/%2e%2e/_fake/stats"),
    ("/v1/../_fake/stats", b"/v1/%2E%2e/_fake/stats"),
    ("/v1/../_fake/stats", b"/v1/.%2E/_fake/stats"),
    ("/v1/../_fake/stats", b"/v1/..%2f_fake/stats"),
    ("/v1/../_fake/stats", b"/v1/..%2F_fake/stats"),
    ("/v1/./models", b"/v1/./models"),
    ("/v1/./models", b"/v1/%2e/models"),
    ("/v1/chat/..", b"/v1/chat/.."),
    ("/v1/chat/..", b"/v1/chat/%2E%2E"),
    ("/v1/models/..;/x", b"/v1/models/..;/x"),
    ("/v1/files/a/b", b"/v1/files/a%2fb"),
    ("/v1/files/a/b", b"/v1/files/a%2Fb"),
    ("/v1/..\\_fake/stats", b"/v1/..\\_fake/stats"),
    ("/v1/..\\_fake/stats", b"/v1/..%5c_fake/stats"),
    ("/v1/..\\_fake/stats", b"/v1/..%5C_fake/stats"),
    ("/v1/../x", b"/v1/x"),  # a server whose decoded path and raw path disagree: both are checked
    ("/v1/x", b"/v1/../x"),
]
GOOD_PATHS = [
    "/v1/chat/completions",
    "/v1/models/gpt-3.5-turbo",
    "/v1/models/..hidden",
    "/v1/files/file-abc.jsonl/content",
    "/v1/models/...",
    "/v1/models/a.b/c..d",
]


@pytest.mark.parametrize(("path", "raw"), BAD_PATHS, ids=[raw.decode() for _, raw in BAD_PATHS])
async def test_dot_segments_encoded_slashes_and_backslashes_are_400_json(path: str, raw: bytes) -> None:
    h, seen = recording()
    got = await h.request({"model": "m"}, path=path, raw_path=raw, method="GET")
    assert_openai_error(got, 400, "invalid_path")
    assert seen == []  # nothing reached a node
    h.assert_nothing_held()


@pytest.mark.parametrize("path", GOOD_PATHS)
async def test_paths_with_dots_that_are_no_dot_segments_still_go_through(path: str) -> None:
    h, seen = recording()
    got = await h.request({"model": "m"}, path=path)
    assert got.status == 200 and [str(r.url) for _, r in seen] == ["http://primary.invalid" + path]
    h.assert_nothing_held()


def test_what_the_path_check_leaves_alone() -> None:
    assert path_is_safe("/v1/chat/completions", b"/v1/chat/completions")
    assert path_is_safe("/v1/x%20y", b"/v1/x%20y")
    # Double encoding is a dot segment only to a node that decodes twice: left to the node.
    assert path_is_safe("/v1/%2e%2e", b"/v1/%252e%252e")


# ---------------------------------------------------------------------------- 2. methods


@pytest.mark.parametrize("method", ["TRACE", "PUT", "PATCH", "CONNECT", "OPTIONS", "HEAD", "PROPFIND", "get"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/healthz"])
async def test_methods_other_than_get_post_delete_are_405_json_with_allow(method: str, path: str) -> None:
    h, seen = recording()
    auth = [*JSON, (b"authorization", b"Bearer client")]
    got = await h.request({"model": "m"}, path=path, method=method, headers=auth)
    assert_openai_error(got, 405, "method_not_allowed")
    assert got.headers["allow"] == "GET, POST, DELETE"
    assert seen == []
    h.assert_nothing_held()


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_get_post_and_delete_are_forwarded(method: str) -> None:
    h, seen = recording()
    got = await h.request(b"", path="/v1/files/file-1", method=method, headers=[])
    assert got.status == 200 and [r.method for _, r in seen] == [method]


# ---------------------------------------------------------------------------- 3. the model rewrite

HOSTILE_BODIES = {
    "nested 100k deep": b'{"model": "gpt-4o", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "lone surrogate": b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "1e999": b'{"model": "gpt-4o", "temperature": 1e999}',
    "-1e999": b'{"model": "gpt-4o", "temperature": -1e999}',
    "NaN literal": b'{"model": "gpt-4o", "temperature": NaN}',
    "Infinity literal": b'{"model": "gpt-4o", "temperature": Infinity}',
    "huge integer": b'{"model": "gpt-4o", "seed": ' + b"9" * 5000 + b"}",
    "not utf-8": b'{"model": "gpt-4o", "content": "\xff\xfe"}',
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_bodies_the_rewrite_cannot_handle_are_400_json_never_500(body: bytes) -> None:
    seen: dict[str, bytes] = {}

    def handler(node: str, request: Request) -> Script:
        seen[node] = request.body
        return Script(500) if node == "primary" else Script(body=[OK])

    h = Harness(handler, config())
    got = await h.request(body)  # the primary fails, the backup (with a models map) must rewrite
    assert_openai_error(got, 400, "invalid_json")
    assert seen == {"primary": body}  # byte for byte to the node without a models map
    assert h.last_event()["status"] == 400
    h.assert_nothing_held()


async def test_a_hostile_body_goes_byte_for_byte_to_a_node_that_needs_no_rewrite() -> None:
    h, seen = recording()
    body = HOSTILE_BODIES["nested 100k deep"]
    got = await h.request(body)
    assert got.status == 200 and seen[0][1].body == body


async def test_a_valid_body_is_rewritten_exactly_as_before() -> None:
    seen: dict[str, bytes] = {}

    def handler(node: str, request: Request) -> Script:
        seen[node] = request.body
        return Script(500) if node == "primary" else Script(body=[OK])

    h = Harness(handler, config())
    payload = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": 'héllo \u2028 \U0001f600 "q" \\ \n'}],
        "temperature": 0.7,
        "max_tokens": 10,
        "deep": [[[[{"a": None, "b": True, "c": 1e300, "d": -0.0}]]]],
    }
    got = await h.request(payload)
    assert got.status == 200
    expected = {**payload, "model": "backup-model"}
    assert seen["backup"] == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------- 4. Connection-named headers


async def test_headers_named_in_connection_are_not_forwarded() -> None:
    h, seen = recording()
    headers = [
        *JSON,
        (b"connection", b"close, X-Secret"),
        (b"connection", b" x-other ,,"),
        (b"x-secret", b"for the sidecar only"),
        (b"x-other", b"also"),
        (b"x-kept", b"for the node"),
        (b"keep-alive", b"timeout=5"),
    ]
    got = await h.request({"model": "m"}, headers=headers)
    assert got.status == 200
    sent = {name.lower() for name, _ in seen[0][1].headers}
    assert "x-kept" in sent and "content-type" in sent
    assert not sent & {"x-secret", "x-other", "connection", "keep-alive"}


def test_a_connection_header_naming_only_hop_by_hop_tokens_costs_no_new_set() -> None:
    assert request_drop([]) is REQUEST_DROP
    assert request_drop([b"keep-alive"]) is REQUEST_DROP
    assert request_drop([b"close"]) is REQUEST_DROP
    assert request_drop([b"Close, X-Secret"]) == REQUEST_DROP | {b"x-secret"}


# ---------------------------------------------------------------------------- 5. request ids and the access log

GENERATED = re.compile(r"[0-9a-f]{16}")


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"req-42", "req-42"),
        (b"a" * 300, "a" * 128),
        (b"abc status=200", None),
        (b"abc\nstatus=200", None),
        (b'say "hi"', None),
        (b"back\\slash", None),
        (b"\x1b[2J", None),
        (b"caf\xc3\xa9", None),
        (b"", None),
    ],
    ids=["plain", "capped", "space", "newline", "quotes", "backslash", "ansi", "non-ascii", "empty"],
)
async def test_request_ids_are_capped_or_replaced_before_they_are_logged_echoed_or_sent(
    given: bytes, kept: str | None
) -> None:
    h, seen = recording()
    got = await h.request({"model": "m"}, headers=[*JSON, (b"x-request-id", given)])
    rid = got.headers["x-request-id"]
    if kept is None:
        assert GENERATED.fullmatch(rid), rid
    else:
        assert rid == kept
    assert h.last_event()["id"] == rid
    upstream = [v for k, v in seen[0][1].headers if k.lower() == "x-request-id"]
    assert upstream == [rid]


def access_record(**fields: Any) -> logging.LogRecord:
    ex = Exchange(rid="r1", method="POST", path="/v1/chat/completions", model="gpt-4o", stream=False, started=0.0)
    record = {**ex.record(1.0), **fields}
    log = logging.LogRecord("llm_sidecar.access", logging.INFO, __file__, 1, "request", None, None)
    log.access = record
    return log


HOSTILE_FIELDS = {
    "path newline": {"path": "/v1/x\n2026-01-01T00:00:00 INFO    id=forged POST /v1/x status=200"},
    "path ansi": {"path": "/v1/\x1b[2J\x1b[31mred"},
    "path carriage return": {"path": "/v1/x\rstatus=200"},
    "path C1 and DEL": {"path": "/v1/\x9b2J\x7f\u2028\u2029"},
    "path lone surrogate": {"path": "/v1/\ud800"},
    "path space": {"path": "/v1/x status=200 node=evil"},
    "model quote": {"model": 'gpt" status=200 x="'},
    "model newline": {"model": "gpt\nforged"},
    "id": {"id": "x status=200"},
    "error": {"error": 'boom"\nstatus=200 \x1b[2J'},
    "reason": {"failed": [{"node": "primary", "reason": "bad content-type (x] status=200\n)"}]},
}


# An access line, field by field: a value is bare (no blanks or quotes) or quoted with escapes, so a
# forged "status=200" can only sit inside a quoted value, never be a field of its own.
QUOTED = r'"(?:[^"\\]|\\.)*"'
VALUE = rf'(?:{QUOTED}|[^\s"]+)'
ACCESS_LINE = re.compile(
    rf"\S+ INFO +id={VALUE} {VALUE} {VALUE} model={VALUE} node={VALUE} status=\d+ attempts=\d+ "
    rf"failed=\[[^\]]*\] stream=(?:yes|no) ttfb_ms=\S+ ttft_ms=\S+ total_ms=\S+(?: tokens=\d+/\d+)?"
    rf"(?: error={QUOTED})?"
)


def assert_one_access_line(line: str) -> None:
    assert all(c.isprintable() and c.isascii() for c in line), ascii(line)  # no newline, CR, ESC, DEL, C1
    assert ACCESS_LINE.fullmatch(line), line


@pytest.mark.parametrize("fields", HOSTILE_FIELDS.values(), ids=HOSTILE_FIELDS.keys())
def test_the_text_access_log_stays_one_line_with_one_of_each_field(fields: dict[str, Any]) -> None:
    assert_one_access_line(TextFormatter().format(access_record(**fields)))


def test_safe_values_stay_bare_in_the_text_log() -> None:
    line = TextFormatter().format(access_record(failed=[{"node": "primary", "reason": "http 500"}]))
    assert " id=r1 POST /v1/chat/completions model=gpt-4o " in line and "failed=[primary:http 500]" in line
    quoted = TextFormatter().format(access_record(path="/v1/a b", model="my model", error="x"))
    assert ' POST "/v1/a b" model="my model" ' in quoted and 'error="x"' in quoted


@pytest.mark.parametrize("fields", HOSTILE_FIELDS.values(), ids=HOSTILE_FIELDS.keys())
def test_the_json_access_log_stays_one_valid_json_object_per_line(fields: dict[str, Any]) -> None:
    line = JsonFormatter().format(access_record(**fields))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    line.encode("ascii")
    parsed = json.loads(line)
    for key, value in fields.items():
        assert parsed[key] == value


async def test_a_hostile_path_and_model_reach_the_text_log_escaped(caplog: pytest.LogCaptureFixture) -> None:
    h, _ = recording()
    with caplog.at_level(logging.INFO, logger="llm_sidecar.access"):
        await h.request(
            b'{"model": "gpt\x1b[2J status=200"}',  # a raw ESC: not JSON, but the log's model peek reads it
            path="/v1/chat/completions\n\u001b[2Jstatus=200",
            raw_path=b"/v1/chat/completions%0a%1b[2Jstatus=200",
            headers=[*JSON, (b"x-request-id", b"x status=200")],
        )
    (record,) = [r for r in caplog.records if r.name == "llm_sidecar.access"]
    line = TextFormatter().format(record)
    assert_one_access_line(line)
    assert ' POST "/v1/chat/completions\\n\\u001b[2Jstatus=200" model="gpt\\u001b[2J status=200" ' in line


# ---------------------------------------------------------------------------- through the real server


async def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 exchange (clients such as httpx normalise dot segments away)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(target: str, *extra: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: sidecar", "Connection: close", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def test_through_the_real_server_paths_methods_and_the_text_log(fakes, sidecar) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    for target in ("/v1/../_fake/stats", "/v1/%2e%2E/_fake/stats", "/v1/..%2f_fake/stats", "/v1/./models"):
        status, _, body = await raw_request(car.port, get(target))
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_path", target
    status, headers, body = await raw_request(car.port, get("/v1/models", "Authorization: Bearer x", method="TRACE"))
    assert status == 405 and headers["allow"] == "GET, POST, DELETE" and b"Bearer" not in body
    assert primary.stats.requests == backup.stats.requests == 0  # only what was allowed reaches a node
    status, headers, _ = await raw_request(car.port, get("/v1/models%0a%1b%5b2J", "X-Request-Id: x status=200"))
    assert status == 404 and GENERATED.fullmatch(headers["x-request-id"])  # the fake's own 404, forwarded
    log = car.log()
    assert "\x1b" not in log
    (line,) = [line for line in log.splitlines() if " GET " in line and "id=" in line]
    assert_one_access_line(line)
    assert ' GET "/v1/models\\n\\u001b[2J" ' in line, line


async def test_through_the_real_server_the_json_log_is_one_object_per_line(fakes, sidecar) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")), "--log-format", "json")
    status, _, _ = await raw_request(
        car.port, get("/v1/models%0a%1b%5b2J%22%7d", "X-Request-Id: x\tstatus=200", "Content-Type: text/plain")
    )
    assert status == 404
    records = [json.loads(line) for line in car.log().splitlines()]  # every line is one JSON object
    (access,) = [r for r in records if r.get("event") == "request"]
    assert access["path"] == '/v1/models\n\x1b[2J"}' and access["status"] == 404
    assert GENERATED.fullmatch(access["id"])


async def test_chat_through_the_real_server_still_works_with_a_connection_header(fakes, sidecar, client) -> None:
    primary = await fakes("primary")
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    r = await client.post(
        car.url + "/v1/chat/completions", json=chat(), headers={"Connection": "keep-alive, X-Secret", "X-Secret": "s"}
    )
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "primary"
