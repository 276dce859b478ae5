"""Hostile answers a node may give once it does answer, in both formats: token counts too long to be
numbers, the node's own key quoted back (in a body of any type, a header, an event after the first token),
a stream where a non-stream answer belongs, and a choice that finishes twice.

In-process on the mock transport (tests/inproc.py); the key split across reads is what aiohttp does
to a body on real sockets too, and the mock delivers exactly the pieces a test gives it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.formats.dialect import AnthropicUsage
from sidecar.nodes.health import Failure, Source
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request, UpstreamError
from sidecar.proxy.exchange import Exchange, count_tokens
from sidecar.proxy.redact import Redactor

from .inproc import Answer, Harness

SSE = (("content-type", "text/event-stream"),)
JSON = (("content-type", "application/json"),)
TEXT = (("content-type", "text/plain"),)
KEY = "sk-primary-0123456789abcdef"  # what the primary node is sent (and quotes back)
BACKUP_KEY = "sk-backup-fedcba9876543210"
PLAIN_KEY = "hunter2x-plain"  # a key that does not look like one: error_text's mask does not catch it
HUGE = "9" * 5000  # past Python's int-string limit (4,300 digits)
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
ASK = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
OK = b'{"choices": [{"message": {"content": "backup"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'
MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "fine"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 2},
}  # fmt: skip
DONE = b"data: [DONE]\n\n"
FORMATS = [("openai", "/v1/chat/completions", CHAT), ("anthropic", "/v1/messages", ASK)]
IDS = ["openai", "anthropic"]


def cfg(api: str = "openai", *, key: str = KEY, read: float = 1.0, **primary: Any) -> Config:
    """primary (priority 0) and backup (-1), both of format `api`, each with its own key."""
    nodes = [
        {"name": "primary", "url": "http://primary.invalid", "api": api, "api_key": "${PRIMARY}", **primary},
        {"name": "backup", "url": "http://backup.invalid", "api": api, "api_key": "${BACKUP}", "priority": -1},
    ]
    timeout = {"connect": 0.05, "send": 1, "read": read}
    upstream = {"timeout": timeout, "checks": {"passive": {}}, "retry": {"backoff": 0.01, "max_backoff": 0.02}}
    return parse({"upstream": {**upstream, "nodes": nodes}}, "<test>", env={"PRIMARY": key, "BACKUP": BACKUP_KEY})


def chunk(content: str | None = None, *, finish: str | None = None, index: int = 0, role: bool = False) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    payload = {"id": "c1", "model": "m", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def anthropic_stream(text: str, output_tokens: str = "3") -> list[bytes]:
    start = {"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None,
                                                  "usage": {"input_tokens": 12, "output_tokens": 1}}}  # fmt: skip
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    text_delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    closing = (
        b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, '
        b'"usage": {"output_tokens": ' + output_tokens.encode() + b"}}\n\n"
    )
    return [
        event("message_start", start), event("content_block_start", block), event("content_block_delta", text_delta),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}), closing,
        event("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


def anthropic_error(message: str) -> bytes:
    return event("error", {"type": "error", "error": {"type": "overloaded_error", "message": message}})


def on(primary: Script, backup: Script | None = None) -> Any:
    return lambda node, request: primary if node == "primary" else (backup or Script(body=[OK]))


def finishes(body: bytes) -> list[tuple[int, str]]:
    """Each (choice index, finish_reason) the client was sent."""
    found = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                if choice.get("finish_reason"):
                    found.append((choice.get("index", 0), choice["finish_reason"]))
    return found


def text_of(body: bytes, index: int = 0) -> str:
    text = ""
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                if choice.get("index", 0) == index:
                    text += (choice.get("delta") or {}).get("content") or ""
    return text


def nowhere(got: Answer, *keys: str) -> None:
    """None of `keys` reached the client: not in the body, not in any header."""
    for key in keys:
        assert key.encode() not in got.body
        assert all(key.encode() not in name + value for name, value in got.raw_headers)


# ---------------------------------------------------------------------------- 2. counts too long to be numbers


def test_counting_never_raises_and_drops_what_is_no_count() -> None:
    ex = Exchange("r", "POST", "/v1/chat/completions", None, False, 0.0)
    count_tokens(ex, b'{"usage": {"prompt_tokens": ' + HUGE.encode() + b', "completion_tokens": 7}}')
    assert (ex.tokens_in, ex.tokens_out) == (None, 7)
    count_tokens(ex, b'{"usage": {"prompt_tokens": 123456789012345, "cached_tokens": 1' + b"0" * 40 + b"}}")
    assert (ex.tokens_in, ex.tokens_cached) == (123456789012345, None)  # 15 digits still count
    usage = AnthropicUsage()
    usage.feed(b'"usage": {"input_tokens": 4, "output_tokens": ' + HUGE.encode() + b"}")
    assert (usage.input, usage.output) == (4, None)
    assert usage.read_body(b'{"usage": {"input_tokens": 4, "output_tokens": ' + HUGE.encode() + b"}}")
    assert (usage.input, usage.output) == (4, None)


async def test_openai_a_huge_count_in_a_whole_answer_leaves_the_answer_intact() -> None:
    body = b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": ' + HUGE.encode()
    body += b', "completion_tokens": 2}}'
    h = Harness(on(Script(200, JSON, [body])), cfg())
    got = await h.request(CHAT)
    assert got.status == 200 and got.body == body and got.headers["x-llm-sidecar-node"] == "primary"
    record = h.last_event()
    assert (record["tokens_in"], record["tokens_out"], record["status"]) == (None, 2, 200)


async def test_anthropic_a_huge_count_in_a_whole_answer_keeps_the_other_counts() -> None:
    body = json.dumps(MESSAGE).encode().replace(b'"output_tokens": 2', b'"output_tokens": ' + HUGE.encode())
    h = Harness(on(Script(200, JSON, [body])), cfg("anthropic"))
    got = await h.request(ASK, path="/v1/messages")
    assert got.status == 200 and got.body == body and got.headers["x-llm-sidecar-node"] == "primary"
    assert (h.last_event()["tokens_in"], h.last_event()["tokens_out"]) == (5, None)


@pytest.mark.parametrize("continuable", [False, True], ids=["relayed", "continuable"])
async def test_openai_a_huge_count_in_a_stream_reaches_the_client_with_every_event(continuable: bool) -> None:
    usage = b'data: {"id": "c1", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": ' + HUGE.encode()
    usage += b"}}\n\n"
    events = [chunk(role=True), chunk("Hello"), chunk(finish="stop"), usage, DONE]
    h = Harness(on(Script(200, SSE, events)), cfg(**({"continuation": "prefill"} if continuable else {})))
    got = await h.request({**CHAT, "stream": True})
    assert got.status == 200 and got.complete and got.body == b"".join(events)
    assert (h.last_event()["tokens_in"], h.last_event()["tokens_out"], h.last_event()["error"]) == (4, None, None)


async def test_anthropic_a_huge_count_in_a_stream_reaches_the_client_with_every_event() -> None:
    events = anthropic_stream("Hello", output_tokens=HUGE)
    h = Harness(on(Script(200, SSE, events)), cfg("anthropic"))
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.status == 200 and got.complete and got.body == b"".join(events)
    assert (h.last_event()["tokens_in"], h.last_event()["tokens_out"], h.last_event()["error"]) == (12, 1, None)


# ---------------------------------------------------------------------------- 5. the node's key quoted back


@pytest.mark.parametrize(("api", "path", "ask"), FORMATS, ids=IDS)
async def test_a_text_error_body_quoting_the_key_is_redacted_even_split_across_reads(
    api: str, path: str, ask: dict[str, Any]
) -> None:
    said = f"no such model for key {KEY} (see docs)".encode()
    cut = said.index(b"primary")  # the key in two reads
    declared = (*TEXT, ("content-length", str(len(said))))
    h = Harness(on(Script(404, declared, [said[:cut], said[cut:]])), cfg(api))
    got = await h.request(ask, path=path)
    assert got.status == 404 and got.complete
    assert got.body == said.replace(KEY.encode(), b"[redacted]")
    assert "content-length" not in got.headers  # the node's length no longer holds
    nowhere(got, KEY)


@pytest.mark.parametrize(("api", "path", "ask"), FORMATS, ids=IDS)
async def test_headers_quoting_the_key_are_redacted_on_every_answer_passed_on(
    api: str, path: str, ask: dict[str, Any]
) -> None:
    def unauthorized(node: str, request: Request) -> Script:
        key = KEY if node == "primary" else BACKUP_KEY
        challenge = f'Bearer realm="api", error="invalid_token", error_description="bad key {key}"'
        return Script(401, (*JSON, ("www-authenticate", challenge)), [b'{"error": {"message": "no"}}'])

    h = Harness(unauthorized, cfg(api))
    got = await h.request(ask, path=path)  # both fail over; the last 401 is passed on
    assert got.status == 401 and got.headers["www-authenticate"].endswith('"bad key [redacted]"')
    nowhere(got, KEY, BACKUP_KEY)
    teapot = Script(418, (*JSON, ("x-debug", f"key={KEY}")), [b"{}"])  # an answer passed on as it is
    h = Harness(on(teapot), cfg(api))
    got = await h.request(ask, path=path)
    assert got.status == 418 and got.headers["x-debug"] == "key=[redacted]"
    nowhere(got, KEY)


@pytest.mark.parametrize("continuable", [False, True], ids=["relayed", "continuable"])
async def test_openai_an_error_event_after_the_first_token_never_shows_the_key(continuable: bool) -> None:
    error = b'data: {"error": {"message": "key ' + PLAIN_KEY.encode() + b' was revoked", "type": "auth"}}\n\n'
    cut = error.index(b"plain")
    events = [chunk(role=True), chunk("Hello"), error[:cut], error[cut:]]
    h = Harness(
        on(Script(200, SSE, events)), cfg(key=PLAIN_KEY, **({"continuation": "prefill"} if continuable else {}))
    )
    got = await h.request({**CHAT, "stream": True})
    assert got.status == 200 and got.complete and text_of(got.body).startswith("Hello")
    nowhere(got, PLAIN_KEY)
    assert PLAIN_KEY not in json.dumps(h.last_event())  # nor the log or the monitor


async def test_anthropic_an_error_event_after_the_first_token_never_shows_the_key() -> None:
    events = [*anthropic_stream("Hello")[:3], anthropic_error(f"overloaded for key {KEY}")]
    h = Harness(on(Script(200, SSE, events)), cfg("anthropic"))
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.status == 200 and got.complete and b"Hello" in got.body
    assert b"overloaded for key [redacted]" in got.body
    nowhere(got, KEY)


async def test_every_event_of_a_stream_is_redacted_even_with_the_key_across_reads() -> None:
    said = chunk(f"your key is {KEY}")
    cut = said.index(b"0123")
    events = [chunk(role=True), chunk("Hello"), said[:cut], said[cut:], chunk(finish="stop"), DONE]
    h = Harness(on(Script(200, SSE, events)), cfg())
    got = await h.request({**CHAT, "stream": True})
    assert got.complete and text_of(got.body) == "Hello" + "your key is [redacted]"
    nowhere(got, KEY)


@pytest.mark.parametrize("key", ["sk-abcabcabd", "sk-abcad"])  # the shortest key redacted, too
def test_the_redactor_finds_the_key_however_the_bytes_are_split(key: str) -> None:
    # The key's own start recurs in it: what is held back must be the longest end that starts it.
    text = f"{key} and sk-abcabcabcabd, then {key}".encode() + b" sk-abcab"  # ends in the key's start, not the key
    expected = text.replace(key.encode(), b"[redacted]")
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1):
            redactor = Redactor(key)
            pieces = [redactor.feed(p) for p in (text[:first], text[first:second], text[second:])]
            assert b"".join(pieces) + redactor.end() == expected, (first, second)
    assert Redactor("short").feed(b"short") == b"short"  # under 8 characters: no secret, left alone


async def test_a_short_key_is_never_redacted_and_never_garbles_the_sidecars_words() -> None:
    # A one-letter key garbled "overloaded (529)" into "overlo[redacted]ded (529)": a key under 8 characters
    # is no secret worth mangling answers for, and the sidecar's own words are never redacted.
    overloaded = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    h = Harness(
        on(Script(529, JSON, [overloaded]), Script(body=[json.dumps(MESSAGE).encode()])), cfg("anthropic", key="a")
    )
    got = await h.request(ASK, path="/v1/messages")
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup"
    assert got.headers["x-llm-sidecar-trail"].startswith("primary: overloaded (529)")
    assert h.last_event()["failed"][0]["reason"] == "overloaded (529)"


# ---------------------------------------------------------------------------- 7. a stream for a non-stream request


@pytest.mark.parametrize(("api", "path", "ask"), FORMATS, ids=IDS)
async def test_a_stream_answering_a_non_stream_request_is_the_nodes_failure(
    api: str, path: str, ask: dict[str, Any]
) -> None:
    events = anthropic_stream("Hello") if api == "anthropic" else [chunk("Hello"), chunk(finish="stop"), DONE]
    backup = Script(body=[json.dumps(MESSAGE).encode() if api == "anthropic" else OK])
    h = Harness(on(Script(200, SSE, events), backup), cfg(api))
    got = await h.request(ask, path=path)
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup" and got.json()
    assert [(a["node"], a["reason"]) for a in h.last_event()["failed"]] == [
        ("primary", "stream answer to a non-stream request")
    ]
    assert h.node("primary").health.counters[Source.PASSIVE].http_failures == 1
    h.assert_nothing_held()


async def test_a_stream_asked_for_without_a_body_is_still_relayed() -> None:
    # GET /v1/responses/{id}?stream=true streams a stored response: no JSON body says so.
    events = [b'data: {"type": "response.output_text.delta", "delta": "hi"}\n\n', DONE]
    h = Harness(on(Script(200, SSE, events)), cfg())
    got = await h.request(b"", path="/v1/responses/resp_1", method="GET", headers=[])
    assert got.status == 200 and got.body == b"".join(events) and got.headers["x-llm-sidecar-node"] == "primary"


# ---------------------------------------------------------------------------- 12. one finish per choice


async def test_a_choice_that_finishes_twice_reaches_the_client_finished_once() -> None:
    events = [chunk(role=True), chunk("Hello"), chunk(finish="stop"), chunk(" more"), chunk(finish="length"), DONE]
    for config in (cfg(), cfg(continuation="prefill")):  # relayed as is, and read into a transcript
        h = Harness(on(Script(200, SSE, events)), config)
        got = await h.request({**CHAT, "stream": True})
        assert got.complete and finishes(got.body) == [(0, "stop")] and text_of(got.body) == "Hello"
        assert got.body.endswith(DONE)


async def test_a_continuing_node_that_finishes_twice_reaches_the_client_finished_once() -> None:
    calls: list[str] = []

    def handler(node: str, request: Request) -> Script:
        calls.append(node)
        if len(calls) == 1:
            return Script(200, SSE, [chunk(role=True), chunk("Hello"), UpstreamError(Failure.TCP, "closed mid-body")])
        return Script(200, SSE, [chunk(role=True), chunk(" world"), chunk(finish="stop"), chunk(" again"),
                                 chunk(finish="stop"), DONE])  # fmt: skip

    h = Harness(handler, cfg(continuation="prefill"))
    got = await h.request({**CHAT, "stream": True})
    assert got.complete and text_of(got.body) == "Hello world" and finishes(got.body) == [(0, "stop")]
    assert h.last_event()["continued"] == [{"from": "primary", "to": "primary", "reason": "closed mid-body"}]


async def test_each_of_several_choices_finishes_once_and_usage_after_the_finish_still_passes() -> None:
    usage = b'data: {"id": "c1", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}}\n\n'
    events = [
        chunk("a", index=0), chunk("b", index=1), chunk(finish="stop", index=0), chunk("c", index=1),
        chunk("late", index=0), chunk(finish="stop", index=1), chunk(finish="stop", index=0), usage, DONE,
    ]  # fmt: skip
    h = Harness(on(Script(200, SSE, events)), cfg())
    got = await h.request({**CHAT, "stream": True, "n": 2})
    assert finishes(got.body) == [(0, "stop"), (1, "stop")]
    assert (text_of(got.body, 0), text_of(got.body, 1)) == ("a", "bc")
    assert usage in got.body and got.body.endswith(DONE) and h.last_event()["tokens_out"] == 6
