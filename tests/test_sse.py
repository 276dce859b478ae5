"""SSE reading (pure): events split linearly, tokens told from openings, and continuation's pieces."""

from __future__ import annotations

import json

import pytest

from sidecar.formats.sse import Signal, Splitter, classify, data_of
from sidecar.proxy.continuation import Restamp, Transcript, continuation_body, parse_event, request_fits


def events_of(chunks: list[bytes]) -> list[bytes]:
    buffer = bytearray()
    splitter = Splitter()
    found = []
    for chunk in chunks:
        buffer += chunk
        found += [bytes(buffer[s:e]) for s, e in splitter.events(buffer)]
    return found


@pytest.mark.parametrize(
    ("chunks", "events"),
    [
        ([b"data: a\n\ndata: b\n\n"], [b"data: a\n\n", b"data: b\n\n"]),
        ([b"data: a\n", b"\n"], [b"data: a\n\n"]),  # the end split across chunks
        ([b"data: a\r\n\r", b"\n"], [b"data: a\r\n\r\n"]),
        ([b"data: a\r\r"], [b"data: a\r\r"]),  # a lone CR ends a line too
        ([b": keep", b"-alive\n\n", b"data: x"], [b": keep-alive\n\n"]),  # an incomplete event waits
    ],
)
def test_events_are_split_across_chunks(chunks: list[bytes], events: list[bytes]) -> None:
    assert events_of(chunks) == events


def test_the_splitter_searches_each_byte_once() -> None:
    splitter = Splitter()
    buffer = bytearray()
    for _ in range(10_000):  # one event that never ends, in small pieces: linear, not quadratic
        buffer += b"x" * 64
        assert splitter.events(buffer) == []
        assert splitter.searched == len(buffer)


def test_data_lines_are_joined_and_comments_are_no_data() -> None:
    assert data_of(b": keep-alive\n\n") is None
    assert data_of(b"event: x\ndata: a\ndata:b\n\n") == b"a\nb"


def chunk(**delta: object) -> bytes:
    return json.dumps({"id": "c1", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}).encode()


@pytest.mark.parametrize(
    ("data", "signal"),
    [
        (chunk(role="assistant", content=""), Signal.WAIT),  # role-only: no token yet
        (chunk(role="assistant"), Signal.WAIT),
        (chunk(content="Hi"), Signal.TOKEN),
        (chunk(reasoning_content="thinking"), Signal.TOKEN),  # a model that streams its reasoning
        (chunk(tool_calls=[{"index": 0, "function": {"name": "f"}}]), Signal.TOKEN),
        (b'{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}', Signal.TOKEN),
        (b'{"choices": [], "usage": {"prompt_tokens": 1}}', Signal.TOKEN),
        (b'{"type": "response.created"}', Signal.WAIT),
        (b'{"type": "response.output_text.delta", "delta": "x"}', Signal.TOKEN),
        (b'{"type": "message_start"}', Signal.WAIT),
        (b'{"error": {"message": "boom"}}', Signal.ERROR),
        (b'{"type": "error", "error": {"type": "overloaded_error"}}', Signal.ERROR),
        (b'{"choices": [{"delta": {"content"', Signal.MALFORMED),
        (b"[DONE]", Signal.TOKEN),
    ],
)
def test_what_counts_as_a_token(data: bytes, signal: Signal) -> None:
    assert classify(data) is signal


def test_a_transcript_keeps_the_delivered_text_and_what_forbids_continuing() -> None:
    t = Transcript()
    for data in (chunk(role="assistant", content=""), chunk(content="Hello"), chunk(content=" world")):
        t.feed(parse_event(data))
    assert t.text == "Hello world" and t.id == "c1" and t.continuable() is None and not t.complete
    t.feed(parse_event(chunk(tool_calls=[{"index": 0}])))
    assert t.continuable() == "tool calls"
    t.feed(parse_event(b"[DONE]"))
    assert t.complete


def test_nothing_delivered_is_nothing_to_continue() -> None:
    assert Transcript().continuable() == "nothing delivered"


def test_continuation_bodies_in_both_dialects() -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    prefill = continuation_body(body, "Hello", "prefill")
    assert prefill["messages"][-1] == {"role": "assistant", "content": "Hello"}
    assert continuation_body(body, "Hello", "prefix")["messages"][-1]["prefix"] is True
    assert continuation_body(body, "Hello", "partial")["messages"][-1]["partial"] is True
    vllm = continuation_body(body, "Hello", "continue_final_message")
    assert vllm["continue_final_message"] is True and vllm["add_generation_prompt"] is False
    assert body["messages"] == [{"role": "user", "content": "hi"}]  # the original is untouched
    assert request_fits(body) and not request_fits({**body, "n": 2}) and not request_fits({**body, "stream": False})


def test_restamp_drops_the_role_opening_and_keeps_the_original_id() -> None:
    r = Restamp("orig")
    assert r.event(parse_event(chunk(role="assistant", content=""))) is None
    first = r.event(parse_event(chunk(role="assistant", content="lo")))
    assert first is not None
    payload = json.loads(first[len(b"data: ") :])
    assert payload["id"] == "orig" and payload["choices"][0]["delta"] == {"content": "lo"}
    assert r.event(parse_event(b"[DONE]")) == b"data: [DONE]\n\n"


def test_an_error_events_text_is_short_printable_and_shows_no_key() -> None:
    from sidecar.formats.sse import error_text

    said = b'{"error": {"message": "Incorrect API key provided: sk-proj-abcdef123456. \\u001b[31m"}}'
    text = error_text(said)
    assert "sk-proj" not in text and "[redacted]" in text and "\x1b" not in text
    assert error_text(b'{"error": {"message": "' + b"x" * 500 + b'"}}') == "[redacted]"  # one long token
    assert len(error_text(b'{"error": {"message": "' + b"a " * 500 + b'"}}')) == 120
