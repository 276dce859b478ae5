"""The fake provider's per-request faults (model `fault-<name><tag>`) and continuations, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from sidecar.fakes.core import CANONICAL, CANONICAL_WORDS, CONTINUATIONS, FAULT_MODELS, Behaviour, fault_for_model

CHAT = "/v1/chat/completions"
CUT_AFTER = 8  # Behaviour.cut_after's default
FIRST_WORDS = " ".join(CANONICAL_WORDS[:CUT_AFTER])
RATE_LIMIT = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
UNSUPPORTED_PREFILL = {
    "error": {
        "message": "continuing a partial assistant message is not supported",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "unsupported_prefill",
    }
}
CONTEXT = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
        " Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
POLICY = {
    "error": {
        "message": "Your request was rejected as a result of our safety system.",
        "type": "invalid_request_error",
        "param": None,
        "code": "content_policy_violation",
    }
}
# What a stream that reaches the client this way says about its cut, to tell the faults apart.
DISCONNECTED = (httpx.RemoteProtocolError, httpx.ReadError)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # One connection per request: a fault that aborts a connection must not spoil the next request.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), limits=limits) as c:
        yield c


def body(model: str, stream: bool = False, prefill: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
    if prefill is not None:
        messages.append({"role": "assistant", **prefill})
    return {"model": model, "messages": messages, "stream": stream, **extra}


@dataclass
class Sse:
    """What a client read from a streamed answer, up to where it ended."""

    status: int
    headers: httpx.Headers
    lines: list[str] = field(default_factory=list)  # non-empty lines, comments included
    error: Exception | None = None  # how reading ended, if not cleanly
    seconds: list[float] = field(default_factory=list)  # when each line arrived, since the request was sent

    @property
    def data(self) -> list[str]:
        return [line.removeprefix("data: ") for line in self.lines if line.startswith("data: ")]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(d) for d in self.data if d != "[DONE]"]

    @property
    def text(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c.get("choices"))


async def read_sse(client: httpx.AsyncClient, url: str, payload: dict[str, Any], within: float = 5.0) -> Sse:
    """Stream one request; give up reading (error TimeoutError) when nothing completes it `within` seconds."""
    started = time.monotonic()
    async with client.stream("POST", url + CHAT, json=payload) as r:
        sse = Sse(r.status_code, r.headers)
        try:
            async with asyncio.timeout(within):
                async for line in r.aiter_lines():
                    if line:
                        sse.lines.append(line)
                        sse.seconds.append(time.monotonic() - started)
        except (TimeoutError, httpx.TransportError) as exc:
            sse.error = exc
    return sse


async def handlers_running() -> int:
    """aiohttp request handlers still running in this loop (the fake runs in the test's loop)."""
    return sum("_handle_request" in repr(t.get_coro()) for t in asyncio.all_tasks())


async def wait_until_no_handlers(seconds: float = 2.0) -> int:
    deadline = time.monotonic() + seconds
    while (running := await handlers_running()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return running


# ---------------------------------------------------------------------------------------------- the table


def test_fault_names_and_longest_prefix_match() -> None:
    assert set(FAULT_MODELS) == {
        "429-once", "429-long", "429-noheader", "429", "500-once", "503", "reset", "reset-once", "hang",
        "slow-first-token", "cut", "stall", "malformed", "error-event", "no-done", "context", "policy",
        "reject-prefill",
    }  # fmt: skip
    assert all(isinstance(doc, str) and doc for doc in FAULT_MODELS.values())
    assert fault_for_model("fault-500-once-t7") == "500-once"
    assert fault_for_model("fault-429-once") == "429-once"
    assert fault_for_model("fault-429-longest") == "429-long"
    assert fault_for_model("fault-429-t1") == "429"
    assert fault_for_model("fault-reset-once9") == "reset-once"
    assert fault_for_model("fault-reset-x") == "reset"
    assert fault_for_model("fault-nothing") is None
    assert fault_for_model("gpt-4o") is None
    assert fault_for_model("429-once") is None  # the prefix is required
    assert len(CANONICAL_WORDS) == len(set(CANONICAL_WORDS)) == 24
    assert " ".join(CANONICAL_WORDS) == CANONICAL


async def test_unknown_fault_model_is_404(fakes, client) -> None:
    fake = await fakes("p")
    r = await client.post(fake.url + CHAT, json=body("fault-nope"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert fake.stats.fault_requests == {"fault-nope": 1}


# ---------------------------------------------------------------------------------------------- answers


async def test_non_stream_answer_is_canonical(fakes, client) -> None:
    fake = await fakes("p")
    r = await client.post(fake.url + CHAT, json=body("fault-reject-prefill-a"))
    assert r.status_code == 200 and r.headers["x-fake-provider"] == "p"
    answer = r.json()
    assert answer["model"] == "fault-reject-prefill-a"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": CANONICAL}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 24, "total_tokens": 31}
    assert (fake.stats.chat, fake.stats.requests) == (1, 1)


async def test_stream_answer_shape(fakes, client) -> None:
    fake = await fakes("p")
    payload = body("fault-reject-prefill-s", stream=True, stream_options={"include_usage": True})
    sse = await read_sse(client, fake.url, payload)
    assert sse.error is None and sse.status == 200 and sse.headers["x-fake-provider"] == "p"
    assert sse.headers["content-type"].startswith("text/event-stream")
    chunks = sse.chunks
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:25]]
    assert words == [CANONICAL_WORDS[0], *(" " + w for w in CANONICAL_WORDS[1:])]
    assert sse.text == CANONICAL
    assert chunks[25]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[26]["choices"] == [] and chunks[26]["usage"]["completion_tokens"] == 24
    assert len(chunks) == 27 and sse.data[-1] == "[DONE]"
    assert {c["id"] for c in chunks} == {"chatcmpl-p-1"}
    assert {c["model"] for c in chunks} == {"fault-reject-prefill-s"}


async def test_stream_without_include_usage_has_no_usage_chunk(fakes, client) -> None:
    fake = await fakes("p")
    sse = await read_sse(client, fake.url, body("fault-reject-prefill", stream=True))
    assert sse.text == CANONICAL and sse.data[-1] == "[DONE]"
    assert all("usage" not in c for c in sse.chunks)


async def test_normal_models_are_unchanged(fakes, client) -> None:
    fake = await fakes("p", chunks=3)
    r = await client.post(fake.url + CHAT, json=body("gpt-4o"))
    assert r.json()["choices"][0]["message"]["content"] == "Hello from p: word0 word1 word2"
    sse = await read_sse(client, fake.url, body("gpt-4o", stream=True))
    assert sse.text == "Hello from p: word0 word1 word2"
    assert sse.chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello from p:"}
    assert fake.stats.fault_requests == {} and fake.stats.continuations == 0


async def test_fail_rate_does_not_touch_fault_models(fakes, client) -> None:
    fake = await fakes("p", fail_rate=1.0)
    assert (await client.post(fake.url + CHAT, json=body("gpt-4o"))).status_code == 500
    r = await client.post(fake.url + CHAT, json=body("fault-reject-prefill"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == CANONICAL


# ---------------------------------------------------------------------------------------------- status faults


@pytest.mark.parametrize(
    ("fault", "retry_after", "again"),
    [("429-once", "1", 200), ("429-long", "60", 200), ("429-noheader", None, 200), ("429", "1", 429)],
)
async def test_rate_limits(fakes, client, fault: str, retry_after: str | None, again: int) -> None:
    fake = await fakes("p")
    model = f"fault-{fault}-k"
    first = await client.post(fake.url + CHAT, json=body(model))
    assert first.status_code == 429 and first.json() == RATE_LIMIT
    assert first.headers.get("retry-after") == retry_after
    second = await client.post(fake.url + CHAT, json=body(model, stream=True))
    assert second.status_code == again
    if again == 200:
        assert "data: [DONE]" in second.text
    other_key = await client.post(fake.url + CHAT, json=body(f"fault-{fault}-other"))
    assert other_key.status_code == 429  # "once" is per full model string
    assert fake.stats.fault_requests == {model: 2, f"fault-{fault}-other": 1}


@pytest.mark.parametrize(("fault", "status", "again"), [("500-once", 500, 200), ("503", 503, 503)])
async def test_server_errors(fakes, client, fault: str, status: int, again: int) -> None:
    fake = await fakes("p")
    first = await client.post(fake.url + CHAT, json=body(f"fault-{fault}"))
    assert first.status_code == status and first.json()["error"]["type"] == "server_error"
    second = await client.post(fake.url + CHAT, json=body(f"fault-{fault}"))
    assert second.status_code == again
    if again == 200:
        assert second.json()["choices"][0]["message"]["content"] == CANONICAL


@pytest.mark.parametrize(("fault", "expected"), [("context", CONTEXT), ("policy", POLICY)])
async def test_request_errors_apply_even_to_continuations(fakes, client, fault: str, expected: Any) -> None:
    fake = await fakes("p")
    for payload in (body(f"fault-{fault}", stream=True), body(f"fault-{fault}", prefill={"content": "alpha"})):
        r = await client.post(fake.url + CHAT, json=payload)
        assert r.status_code == 400 and r.json() == expected
    assert fake.stats.continuations == 0


# ---------------------------------------------------------------------------------------------- connection faults


@pytest.mark.parametrize("stream", [False, True])
async def test_reset_aborts_before_headers(fakes, client, stream: bool) -> None:
    fake = await fakes("p")
    for _ in range(2):
        with pytest.raises(DISCONNECTED):
            await client.post(fake.url + CHAT, json=body("fault-reset", stream=stream))
    assert fake.stats.fault_requests == {"fault-reset": 2}


async def test_reset_once(fakes, client) -> None:
    fake = await fakes("p")
    with pytest.raises(DISCONNECTED):
        await client.post(fake.url + CHAT, json=body("fault-reset-once"))
    r = await client.post(fake.url + CHAT, json=body("fault-reset-once"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == CANONICAL


@pytest.mark.parametrize("stream", [False, True])
async def test_hang_never_answers_and_stops_when_the_client_leaves(fakes, client, stream: bool) -> None:
    fake = await fakes("p")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await client.post(fake.url + CHAT, json=body("fault-hang", stream=stream), timeout=0.5)
    assert time.monotonic() - started < 2
    assert await wait_until_no_handlers() == 0  # the handler noticed the client left


async def test_slow_first_token_stream(fakes, client) -> None:
    fake = await fakes("p", first_token_delay=0.5)
    sse = await read_sse(client, fake.url, body("fault-slow-first-token", stream=True))
    assert sse.error is None and sse.text == CANONICAL and sse.data[-1] == "[DONE]"
    first_data = sse.lines.index(next(line for line in sse.lines if line.startswith("data: ")))
    assert first_data == 0 and sse.seconds[0] < 0.4  # the role chunk comes at once
    assert json.loads(sse.data[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    keepalives = [i for i, line in enumerate(sse.lines) if line == ": keep-alive"]
    assert len(keepalives) >= 2 and keepalives == list(range(1, len(keepalives) + 1))  # between role and words
    first_word = len(keepalives) + 1
    assert sse.seconds[first_word] >= 0.45


async def test_slow_first_token_non_stream(fakes, client) -> None:
    fake = await fakes("p", first_token_delay=0.5)
    started = time.monotonic()
    r = await client.post(fake.url + CHAT, json=body("fault-slow-first-token"))
    assert time.monotonic() - started >= 0.45
    assert r.json()["choices"][0]["message"]["content"] == CANONICAL


async def test_cut_stream_aborts_after_cut_after_words(fakes, client) -> None:
    fake = await fakes("p")
    sse = await read_sse(client, fake.url, body("fault-cut", stream=True))
    assert isinstance(sse.error, DISCONNECTED)
    assert sse.text == FIRST_WORDS and len(sse.chunks) == 1 + CUT_AFTER
    assert all(c["choices"][0]["finish_reason"] is None for c in sse.chunks)


async def test_cut_after_is_a_behaviour(fakes, client) -> None:
    fake = await fakes("p", cut_after=3)
    sse = await read_sse(client, fake.url, body("fault-cut", stream=True))
    assert sse.text == "alpha bravo charlie" and isinstance(sse.error, DISCONNECTED)


async def test_cut_non_stream_sends_a_short_body(fakes, client) -> None:
    fake = await fakes("p")
    async with client.stream("POST", fake.url + CHAT, json=body("fault-cut")) as r:
        assert r.status_code == 200
        declared = int(r.headers["content-length"])
        got = b""
        with pytest.raises(DISCONNECTED):
            async for part in r.aiter_raw():
                got += part
    assert 0 < len(got) < declared and got.startswith(b'{"id": "chatcmpl-p-1"')


async def test_stall_stream_goes_silent_after_cut_after_words(fakes, client) -> None:
    fake = await fakes("p")
    sse = await read_sse(client, fake.url, body("fault-stall", stream=True), within=0.8)
    assert isinstance(sse.error, TimeoutError)
    assert sse.text == FIRST_WORDS and len(sse.chunks) == 1 + CUT_AFTER
    assert await wait_until_no_handlers() == 0


async def test_stall_non_stream_sends_headers_then_nothing(fakes, client) -> None:
    fake = await fakes("p")
    async with client.stream("POST", fake.url + CHAT, json=body("fault-stall")) as r:
        assert r.status_code == 200 and int(r.headers["content-length"]) > 0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await r.aread()
    assert await wait_until_no_handlers() == 0


async def test_malformed_stream(fakes, client) -> None:
    fake = await fakes("p")
    sse = await read_sse(client, fake.url, body("fault-malformed", stream=True))
    assert sse.error is None  # the response ends cleanly
    assert sse.lines[-1] == 'data: {"choices": [{"delta": {"content"'
    good = Sse(sse.status, sse.headers, sse.lines[:-1])
    assert good.text == FIRST_WORDS and "[DONE]" not in sse.data


async def test_error_event_stream(fakes, client) -> None:
    fake = await fakes("p")
    sse = await read_sse(client, fake.url, body("fault-error-event", stream=True))
    assert sse.error is None and "[DONE]" not in sse.data
    assert json.loads(sse.data[-1]) == {"error": {"message": "internal error", "type": "server_error", "code": None}}
    assert sse.text == FIRST_WORDS and len(sse.chunks) == 2 + CUT_AFTER


async def test_no_done_stream(fakes, client) -> None:
    fake = await fakes("p")
    sse = await read_sse(client, fake.url, body("fault-no-done", stream=True))
    assert sse.error is None and "[DONE]" not in sse.data
    assert sse.text == FIRST_WORDS and len(sse.chunks) == 1 + CUT_AFTER
    assert all(c["choices"][0]["finish_reason"] is None for c in sse.chunks)


@pytest.mark.parametrize("fault", ["malformed", "error-event", "no-done"])
async def test_stream_only_faults_answer_normally_without_stream(fakes, client, fault: str) -> None:
    fake = await fakes("p")
    r = await client.post(fake.url + CHAT, json=body(f"fault-{fault}"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == CANONICAL


# ---------------------------------------------------------------------------------------------- continuations


async def test_prefill_continues_the_canonical_text(fakes, client) -> None:
    fake = await fakes("p")
    prefill = "alpha bravo cha"
    r = await client.post(fake.url + CHAT, json=body("fault-cut-c", prefill={"content": prefill}))
    answer = r.json()
    assert r.status_code == 200 and answer["choices"][0]["message"]["content"] == CANONICAL[len(prefill) :]
    assert answer["usage"]["completion_tokens"] == 22  # "rlie" and the 21 words after it
    assert (fake.stats.continuations, fake.stats.last_prefill) == (1, prefill)


@pytest.mark.parametrize(
    "fault", ["cut", "stall", "malformed", "error-event", "no-done", "hang", "reset", "429", "503"]
)
async def test_stream_continuation_ignores_the_fault_and_keeps_word_boundaries(fakes, client, fault: str) -> None:
    fake = await fakes("p")
    prefill = FIRST_WORDS  # what a client got from a cut stream
    sse = await read_sse(client, fake.url, body(f"fault-{fault}", stream=True, prefill={"content": prefill}))
    assert sse.error is None and sse.data[-1] == "[DONE]"
    assert sse.chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert prefill + sse.text == CANONICAL
    pieces = [c["choices"][0]["delta"]["content"] for c in sse.chunks[1:-1]]
    assert pieces == [" " + w for w in CANONICAL_WORDS[CUT_AFTER:]]
    assert sse.chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_continuation_mid_word_and_content_parts(fakes, client) -> None:
    fake = await fakes("p")
    prefill = {"content": [{"type": "text", "text": "alpha br"}, {"type": "text", "text": "av"}]}
    sse = await read_sse(client, fake.url, body("fault-stall", stream=True, prefill=prefill))
    pieces = [c["choices"][0]["delta"]["content"] for c in sse.chunks[1:-1]]
    assert pieces[:2] == ["o", " charlie"] and "alpha brav" + sse.text == CANONICAL
    assert fake.stats.last_prefill == "alpha brav"


@pytest.mark.parametrize(
    ("prefill", "expected"),
    [("", CANONICAL), ("not the text", CANONICAL), (CANONICAL, ""), ("alpha bravo", CANONICAL[len("alpha bravo") :])],
)
async def test_continuation_edges(fakes, client, prefill: str, expected: str) -> None:
    fake = await fakes("p")
    r = await client.post(fake.url + CHAT, json=body("fault-503", prefill={"content": prefill}))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected


async def test_last_prefill_is_truncated(fakes, client) -> None:
    fake = await fakes("p")
    r = await client.post(fake.url + CHAT, json=body("fault-cut", prefill={"content": "x" * 500}))
    assert r.json()["choices"][0]["message"]["content"] == CANONICAL  # not a prefix: the whole text
    assert fake.stats.last_prefill == "x" * 200


async def test_continuation_on_normal_models(fakes, client) -> None:
    fake = await fakes("p", chunks=4)
    prefill = "Hello from p: word0 wo"
    r = await client.post(fake.url + CHAT, json=body("gpt-4o", prefill={"content": prefill}))
    assert r.json()["choices"][0]["message"]["content"] == "rd1 word2 word3"
    sse = await read_sse(client, fake.url, body("gpt-4o", stream=True, prefill={"content": prefill}))
    assert [c["choices"][0]["delta"].get("content") for c in sse.chunks] == ["", "rd1", " word2", " word3", None]
    assert fake.stats.continuations == 2 and fake.stats.fault_requests == {}


# (dialect, how the trailing assistant message marks itself, accepted)
DIALECTS = [
    ("prefill", {}, True),
    ("prefill", {"prefix": True}, False),
    ("prefill", {"prefix": False}, False),
    ("prefix", {"prefix": True}, True),
    ("prefix", {}, False),
    ("prefix", {"prefix": False}, False),
    ("none", {}, False),
    ("none", {"prefix": True}, False),
]


@pytest.mark.parametrize(("dialect", "mark", "accepted"), DIALECTS)
@pytest.mark.parametrize("model", ["fault-cut", "gpt-4o"])
async def test_continuation_dialects(
    fakes, client, dialect: str, mark: dict[str, Any], accepted: bool, model: str
) -> None:
    fake = await fakes("p", continuation=dialect)
    r = await client.post(fake.url + CHAT, json=body(model, prefill={"content": "alpha", **mark}))
    if accepted:
        assert r.status_code == 200 and fake.stats.continuations == 1
        if model == "fault-cut":
            assert r.json()["choices"][0]["message"]["content"] == CANONICAL[len("alpha") :]
    else:
        assert r.status_code == 400 and r.json() == UNSUPPORTED_PREFILL
        assert fake.stats.continuations == 0
    plain = await client.post(fake.url + CHAT, json=body("gpt-4o"))
    assert plain.status_code == 200  # only continuations depend on the dialect


async def test_reject_prefill(fakes, client) -> None:
    fake = await fakes("p")
    r = await client.post(fake.url + CHAT, json=body("fault-reject-prefill", prefill={"content": "alpha"}))
    assert r.status_code == 400 and r.json() == UNSUPPORTED_PREFILL
    sse = await read_sse(client, fake.url, body("fault-reject-prefill", stream=True, prefill={"content": "alpha"}))
    assert sse.status == 400 and json.loads(sse.lines[0]) == UNSUPPORTED_PREFILL
    r = await client.post(fake.url + CHAT, json=body("fault-reject-prefill"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == CANONICAL
    assert fake.stats.continuations == 0


async def test_continuation_is_a_checked_behaviour(fakes, client) -> None:
    fake = await fakes("p")
    with pytest.raises(ValueError, match="continuation must be one of"):
        Behaviour(continuation="maybe")
    r = await client.post(fake.url + "/_fake/behaviour", json={"continuation": "maybe"})
    assert r.status_code == 400
    r = await client.post(fake.url + "/_fake/behaviour", json={"continuation": "prefix", "cut_after": 2})
    assert r.status_code == 200 and (r.json()["continuation"], r.json()["cut_after"]) == ("prefix", 2)
    assert fake.provider.behaviour.continuation in CONTINUATIONS
    stats = (await client.get(fake.url + "/_fake/stats")).json()
    assert {"fault_requests", "continuations", "last_prefill"} <= set(stats)
