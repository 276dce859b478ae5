"""Stream-safe failover, in-process on the mock transport: the first-token limit, the retry policy
(Retry-After waits, same-node retries, rounds until retry_timeout), context-window failover, and
mid-stream continuation. Each case checks the client's answer, who was asked what, and that nothing
is held afterwards."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.nodes.health import Failure, Source
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request, UpstreamError

from .inproc import Harness

SSE = (("content-type", "text/event-stream"),)
JSON = (("content-type", "application/json"),)
OK = b'{"choices": [{"message": {"content": "fine"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'
CONTEXT = (
    b'{"error": {"message": "This model\'s maximum context length is 8192 tokens.", '
    b'"type": "invalid_request_error", "code": "context_length_exceeded"}}'
)
POLICY = b'{"error": {"message": "rejected by our safety system", "code": "content_policy_violation"}}'
ASK = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def cfg(read: float = 1.0, first_token: float | None = None, **options: Any) -> Config:
    """primary (priority 0) and backup (-1); options go to [upstream], `primary`/`backup` to the nodes."""
    primary = {"name": "primary", "url": "http://primary.invalid", "priority": 0, **options.pop("primary", {})}
    backup = {"name": "backup", "url": "http://backup.invalid", "priority": -1, **options.pop("backup", {})}
    timeout: dict[str, float] = {"connect": 0.05, "send": 1, "read": read}
    if first_token is not None:
        timeout["first_token"] = first_token
    retry = {"backoff": 0.01, "max_backoff": 0.02, **options.pop("retry", {})}
    upstream = {"timeout": timeout, "checks": {"passive": {}}, "retry": retry, "nodes": [primary, backup], **options}
    return parse({"upstream": upstream}, "<test>", env={})


def chunk(content: str | None = None, *, cid: str = "c1", role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    payload = {"id": cid, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def stream(*pieces: str, cid: str = "c1") -> list[Any]:
    return [chunk(role=True, cid=cid), *(chunk(p, cid=cid) for p in pieces), chunk(cid=cid, finish="stop"), DONE]


DONE = b"data: [DONE]\n\n"


def text_of(body: bytes) -> str:
    """The answer as an SDK assembles it from the deltas."""
    text = ""
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


def failed(h: Harness) -> list[dict[str, Any]]:
    """The failed attempts without their fault kind and duration (the journal's, checked in test_journal)."""
    return [{k: v for k, v in a.items() if k not in ("kind", "ms")} for a in h.last_event()["failed"]]


# ---------------------------------------------------------------------------- 1. time to first token


async def test_a_node_slower_than_first_token_is_abandoned_for_the_backup() -> None:
    slow = Script(200, SSE, [chunk(role=True), b": keep-alive\n\n", 0.2, b": keep-alive\n\n", 0.2, *stream("late")])

    def handler(node: str, request: Request) -> Script:
        return slow if node == "primary" else Script(200, SSE, stream("Hello"))

    h = Harness(handler, cfg(first_token=0.1))
    got = await h.request({**ASK, "stream": True})
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup" and text_of(got.body) == "Hello"
    assert failed(h) == [{"node": "primary", "reason": "no first token in 0.1s"}]
    assert h.calls("primary") == 1  # a silent node is never asked again in the same request
    assert h.node("primary").health.counters[Source.PASSIVE].timeouts == 1
    h.assert_nothing_held()


async def test_a_node_that_never_answers_costs_first_token_not_read() -> None:
    h = Harness(lambda node, r: Script(delay=0.5) if node == "primary" else Script(200, SSE, stream("x")), cfg(1, 0.1))
    got = await h.request({**ASK, "stream": True})
    assert got.headers["x-llm-sidecar-node"] == "backup"
    assert failed(h) == [{"node": "primary", "reason": "no first token in 0.1s"}]  # not "read timeout"


async def test_first_token_does_not_apply_to_non_stream_requests() -> None:
    h = Harness(lambda node, r: Script(delay=0.2, body=[OK]), cfg(first_token=0.1))
    got = await h.request(ASK)
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "primary" and failed(h) == []


async def test_a_per_node_first_token_wins() -> None:
    slow = Script(200, SSE, [chunk(role=True), 0.2, *stream("thought")])
    h = Harness(lambda node, r: slow, cfg(first_token=0.1, primary={"timeout": {"first_token": 0.5}}))
    got = await h.request({**ASK, "stream": True})
    assert got.headers["x-llm-sidecar-node"] == "primary" and text_of(got.body) == "thought"


async def test_an_error_event_before_any_token_fails_over() -> None:
    broken = Script(200, SSE, [chunk(role=True), b'data: {"error": {"message": "overloaded"}}\n\n'])
    h = Harness(lambda node, r: broken if node == "primary" else Script(200, SSE, stream("ok")), cfg())
    got = await h.request({**ASK, "stream": True})
    assert got.headers["x-llm-sidecar-node"] == "backup" and text_of(got.body) == "ok"
    assert failed(h) == [{"node": "primary", "reason": "error event before any token (overloaded)"}]


# ---------------------------------------------------------------------------- 2. retry policy


async def test_a_short_retry_after_is_waited_out_on_the_same_node() -> None:
    answers = iter([Script(429, (("retry-after-ms", "80"),), [b"{}"]), Script(body=[OK])])
    h = Harness(lambda node, r: next(answers) if node == "primary" else Script(body=[OK]), cfg())
    got = await h.request(ASK)
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "primary"
    assert (h.calls("primary"), h.calls("backup")) == (2, 0)  # the agent stays on its preferred node
    assert failed(h) == [{"node": "primary", "reason": "rate limited (429)", "wait_ms": 80}]
    assert "primary" in got.headers["x-llm-sidecar-trail"]
    h.assert_nothing_held()


async def test_a_long_retry_after_fails_over_at_once_and_keeps_the_model_out_on_that_node() -> None:
    h = Harness(
        lambda node, r: Script(429, (("retry-after", "30"),), [b"{}"]) if node == "primary" else Script(body=[OK]),
        cfg(),
    )
    got = await h.request(ASK)
    assert got.headers["x-llm-sidecar-node"] == "backup" and (h.calls("primary"), h.calls("backup")) == (1, 1)
    assert not h.node("primary").models.available("gpt-4o", h.runtime.clock() + 25)  # the model, not the node
    await h.request(ASK)
    assert h.calls("primary") == 1  # still out for the next request of that model
    await h.request({**ASK, "model": "gpt-4o-mini"})
    assert h.calls("primary") == 2  # another model still goes to the primary


async def test_a_5xx_gets_one_same_node_retry_then_fails_over() -> None:
    h = Harness(lambda node, r: Script(500, body=[b"{}"]) if node == "primary" else Script(body=[OK]), cfg())
    got = await h.request(ASK)
    assert got.headers["x-llm-sidecar-node"] == "backup" and (h.calls("primary"), h.calls("backup")) == (2, 1)
    assert [f["reason"] for f in failed(h)] == ["http 500", "http 500"] and "wait_ms" in failed(h)[0]


async def test_a_5xx_once_is_answered_by_the_same_node() -> None:
    answers = iter([Script(502, body=[b"{}"]), Script(body=[OK])])
    h = Harness(lambda node, r: next(answers) if node == "primary" else Script(body=[OK]), cfg())
    got = await h.request(ASK)
    assert got.headers["x-llm-sidecar-node"] == "primary" and h.calls("backup") == 0


async def test_when_every_node_is_rate_limited_briefly_the_request_waits_instead_of_failing() -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.15

    def handler(node: str, request: Request) -> Script:
        if loop.time() < until:
            return Script(429, (("retry-after-ms", "100"),), [b"{}"])
        return Script(body=[OK])

    h = Harness(handler, cfg(retry={"max_wait": 0.01}))  # each Retry-After is past max_wait: fail over
    got = await h.request(ASK)
    assert got.status == 200 and h.calls("primary") + h.calls("backup") >= 3
    h.assert_nothing_held()


async def test_when_every_node_keeps_failing_the_last_error_comes_after_bounded_attempts() -> None:
    h = Harness(lambda node, r: Script(503, JSON, [b'{"error": {"message": "busy"}}']), cfg())
    got = await h.request(ASK)
    assert got.status == 503 and got.headers["x-should-retry"] == "false"
    assert h.calls("primary") == h.calls("backup") == 3  # attempts_per_node
    assert got.headers["x-llm-sidecar-attempts"] == "6"


async def test_retry_timeout_ends_the_waiting() -> None:
    h = Harness(
        lambda node, r: Script(503, JSON, [b"{}"]), cfg(retry_timeout=0.05, retry={"backoff": 0.2, "max_backoff": 0.4})
    )
    got = await h.request(ASK)
    assert got.status == 503 and h.calls("primary") + h.calls("backup") == 2  # first tries only


async def test_a_client_that_leaves_during_a_wait_ends_the_request() -> None:
    h = Harness(lambda node, r: Script(429, (("retry-after", "2"),), [b"{}"]), cfg())
    gone = asyncio.Event()
    h.on_send = lambda node: asyncio.get_running_loop().call_later(0.05, gone.set)
    got = await h.request(ASK, gone=gone)
    assert got.status is None and h.last_event()["status"] == 499
    assert h.calls("primary") == 1
    h.assert_nothing_held()


# ---------------------------------------------------------------------------- 3. context window


async def test_a_context_window_refusal_goes_to_the_next_node_with_no_penalty() -> None:
    h = Harness(lambda node, r: Script(400, JSON, [CONTEXT]) if node == "primary" else Script(body=[OK]), cfg())
    got = await h.request(ASK)
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup"
    assert failed(h) == [{"node": "primary", "reason": "context window exceeded"}]
    assert h.node("primary").health.counters[Source.PASSIVE].as_dict()["http_failures"] == 0
    assert h.calls("primary") == 1


async def test_when_no_node_fits_the_original_refusal_is_the_answer() -> None:
    other = CONTEXT.replace(b"8192", b"4096")
    h = Harness(lambda node, r: Script(400, JSON, [CONTEXT if node == "primary" else other]), cfg())
    got = await h.request(ASK)
    assert got.status == 400 and got.body == CONTEXT  # the first node's words, not the last's


async def test_a_content_policy_refusal_passes_through_untouched() -> None:
    h = Harness(lambda node, r: Script(400, JSON, [POLICY]) if node == "primary" else Script(body=[OK]), cfg())
    got = await h.request(ASK)
    assert got.status == 400 and got.body == POLICY and h.calls("backup") == 0


# ---------------------------------------------------------------------------- 4. mid-stream continuation


async def test_a_cut_stream_is_continued_by_a_prefill_node_in_the_same_stream() -> None:
    asked: list[dict[str, Any]] = []
    cut = Script(
        200, SSE, [chunk(role=True, cid="orig"), chunk("Hello"), UpstreamError(Failure.TCP, "closed mid-body")]
    )

    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return cut
        asked.append(json.loads(request.body))
        return Script(200, SSE, stream(" world", cid="other"))

    h = Harness(handler, cfg(backup={"continuation": "prefill"}))
    got = await h.request({**ASK, "stream": True})
    assert got.status == 200 and got.complete and text_of(got.body) == "Hello world"
    assert b"stream_interrupted" not in got.body and got.body.endswith(DONE)
    assert b'"other"' not in got.body  # re-stamped with the original stream's id
    assert got.body.count(b'"role"') == 1  # the continuing node's role-only opening is dropped
    assert asked[0]["messages"][-1] == {"role": "assistant", "content": "Hello"}
    assert h.last_event()["continued"] == [{"from": "primary", "to": "backup", "reason": "closed mid-body"}]
    assert h.last_event()["node"] == "backup" and h.last_event()["error"] is None
    assert h.node("primary").health.counters[Source.PASSIVE].tcp_failures == 1
    h.assert_nothing_held()


async def test_the_prefix_dialect_marks_the_partial_message() -> None:
    asked: list[dict[str, Any]] = []

    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return Script(200, SSE, [chunk(role=True), chunk("Hel"), b'data: {"choices": [{"del\n\n'])
        asked.append(json.loads(request.body))
        return Script(200, SSE, stream("lo"))

    h = Harness(handler, cfg(backup={"continuation": "prefix"}))
    got = await h.request({**ASK, "stream": True})
    assert text_of(got.body) == "Hello" and b'{"del' not in got.body  # the broken event never reached the client
    assert asked[0]["messages"][-1] == {"role": "assistant", "content": "Hel", "prefix": True}


async def test_the_same_node_continues_first_after_a_cut() -> None:
    calls: list[str] = []

    def handler(node: str, request: Request) -> Script:
        calls.append(node)
        if len(calls) == 1:
            return Script(200, SSE, [chunk(role=True), chunk("a"), UpstreamError(Failure.TCP, "closed mid-body")])
        return Script(200, SSE, stream("b"))

    h = Harness(handler, cfg(primary={"continuation": "prefill"}, backup={"continuation": "prefill"}))
    got = await h.request({**ASK, "stream": True})
    assert text_of(got.body) == "ab" and calls == ["primary", "primary"]


async def test_a_stall_is_continued_on_another_node_never_the_silent_one() -> None:
    h = Harness(
        lambda node, r: (
            Script(200, SSE, [chunk(role=True), chunk("a"), 5.0])
            if node == "primary"
            else Script(200, SSE, stream("b"))
        ),
        cfg(read=0.1, primary={"continuation": "prefill"}, backup={"continuation": "prefill"}),
    )
    got = await h.request({**ASK, "stream": True})
    assert text_of(got.body) == "ab" and h.calls("primary") == 1
    assert h.last_event()["continued"] == [{"from": "primary", "to": "backup", "reason": "read timeout"}]


async def test_a_stream_that_ends_before_its_end_is_continued() -> None:
    h = Harness(
        lambda node, r: (
            Script(200, SSE, [chunk(role=True), chunk("a")])  # no finish_reason, no [DONE]
            if node == "primary"
            else Script(200, SSE, stream("b"))
        ),
        cfg(backup={"continuation": "prefill"}),
    )
    got = await h.request({**ASK, "stream": True})
    assert text_of(got.body) == "ab"
    assert h.last_event()["continued"][0]["reason"] == "stream ended before its end"


async def test_a_refused_continuation_ends_with_the_original_break() -> None:
    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return Script(200, SSE, [chunk(role=True), chunk("a"), UpstreamError(Failure.TCP, "closed mid-body")])
        return Script(400, JSON, [b'{"error": {"message": "prefill not supported"}}'])

    h = Harness(handler, cfg(backup={"continuation": "prefill"}))
    got = await h.request({**ASK, "stream": True})
    assert got.complete and text_of(got.body) == "a"
    assert b"primary failed mid-stream: closed mid-body" in got.body and b"prefill not supported" not in got.body
    assert h.node("backup").health.counters[Source.PASSIVE].http_failures == 0  # a refusal is no ill health
    h.assert_nothing_held()


async def test_tool_call_streams_are_not_continued() -> None:
    tool = b'data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}}]}\n\n'
    h = Harness(
        lambda node, r: (
            Script(200, SSE, [chunk("a"), tool, UpstreamError(Failure.TCP, "closed mid-body")])
            if node == "primary"
            else Script(200, SSE, stream("b"))
        ),
        cfg(backup={"continuation": "prefill"}),
    )
    got = await h.request({**ASK, "stream": True})
    assert b"stream_interrupted" in got.body and h.calls("backup") == 0


async def test_without_continuation_a_break_ends_the_stream_with_an_error_event_as_before() -> None:
    h = Harness(
        lambda node, r: (
            Script(200, SSE, [chunk("a"), UpstreamError(Failure.TCP, "closed mid-body")])
            if node == "primary"
            else Script(200, SSE, stream("b"))
        ),
        cfg(),
    )
    got = await h.request({**ASK, "stream": True})
    assert b"stream_interrupted" in got.body and h.calls("backup") == 0


async def test_a_client_that_leaves_during_a_continuation_holds_nothing() -> None:
    gone = asyncio.Event()

    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return Script(200, SSE, [chunk(role=True), chunk("a"), UpstreamError(Failure.TCP, "closed mid-body")])
        asyncio.get_running_loop().call_later(0.02, gone.set)
        return Script(200, SSE, [chunk("b"), 0.5, *stream("c")])

    h = Harness(handler, cfg(backup={"continuation": "prefill"}))
    got = await h.request({**ASK, "stream": True}, gone=gone)
    assert not got.complete and h.last_event()["status"] == 499
    h.assert_nothing_held()


# ---------------------------------------------------------------------------- what an attacker found


def contd(**backup: Any) -> Config:
    return cfg(backup={"continuation": "prefill", **backup})


def cut_after(*events: bytes) -> Script:
    return Script(200, SSE, [chunk(role=True), *events, UpstreamError(Failure.TCP, "closed mid-body")])


async def test_a_surrogate_pair_split_across_events_is_joined_for_the_continuation() -> None:
    asked: list[dict[str, Any]] = []

    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return cut_after(chunk("smile "), chunk("\ud83d"), chunk("\ude00"))
        asked.append(json.loads(request.body))
        return Script(200, SSE, stream("!"))

    h = Harness(handler, contd())
    got = await h.request({**ASK, "stream": True})
    assert asked[0]["messages"][-1]["content"] == "smile \U0001f600" and text_of(got.body).endswith("!")


async def test_a_lone_surrogate_is_not_continued_and_ends_with_the_error_event() -> None:
    h = Harness(lambda node, r: cut_after(chunk("a"), chunk("\ud83d")), contd())
    got = await h.request({**ASK, "stream": True})
    assert got.complete and b"stream_interrupted" in got.body and h.calls("backup") == 0
    assert h.last_event()["status"] == 200 and "closed mid-body" in h.last_event()["error"]


async def test_a_continuing_node_with_a_number_out_of_range_is_a_break_not_a_crash() -> None:
    bad = b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "b"}, "x": 1e999}]}\n\n'
    h = Harness(lambda node, r: cut_after(chunk("a")) if node == "primary" else Script(200, SSE, [bad]), contd())
    got = await h.request({**ASK, "stream": True})
    assert got.complete and b"Infinity" not in got.body and b"stream_interrupted" in got.body


async def test_an_endless_event_is_a_break_when_the_stream_could_be_continued() -> None:
    endless = [chunk(role=True), chunk("a"), b'data: {"choices": [{"delta": {"content": "' + b"x" * (2 << 20)]
    h = Harness(lambda node, r: Script(200, SSE, endless), cfg(primary={"continuation": "prefill"}))
    got = await h.request({**ASK, "stream": True})
    assert b"event larger than 1 MiB" in got.body and len(got.body) < 4096


async def test_a_break_after_the_finish_reason_ends_the_answer_cleanly() -> None:
    finished = cut_after(chunk("a"), chunk(finish="stop"))
    h = Harness(lambda node, r: finished if node == "primary" else Script(200, SSE, stream("b")), contd())
    got = await h.request({**ASK, "stream": True})
    assert text_of(got.body) == "a" and got.body.endswith(DONE) and b"stream_interrupted" not in got.body
    assert h.calls("backup") == 0 and h.last_event()["continued"] == []


async def test_the_answer_ends_at_done_whatever_the_node_does_after_it() -> None:
    for config in (cfg(read=0.3), cfg(read=0.3, backup={"continuation": "prefill"})):
        h = Harness(lambda node, r: Script(200, SSE, [*stream("a"), 5.0]), config)
        got = await h.request({**ASK, "stream": True})
        assert got.complete and got.body.endswith(DONE) and h.last_event()["error"] is None
        assert h.node("primary").health.counters[Source.PASSIVE].timeouts == 0


async def test_without_continuation_a_stream_that_stops_before_its_end_is_a_break_not_a_whole_answer() -> None:
    h = Harness(lambda node, r: Script(200, SSE, [chunk(role=True), chunk("a")]), cfg())
    got = await h.request({**ASK, "stream": True})
    assert b"stream ended before its end" in got.body and b"stream_interrupted" in got.body


async def test_a_content_filter_error_mid_stream_is_the_answer_not_a_break() -> None:
    refusal = b'data: {"error": {"message": "filtered", "code": "content_filter"}}\n\n'
    h = Harness(lambda node, r: cut_after(chunk("Here is how"), refusal), contd())
    got = await h.request({**ASK, "stream": True})
    assert refusal in got.body and h.calls("backup") == 0 and b"stream_interrupted" not in got.body


async def test_a_continuation_that_only_says_done_is_no_continuation() -> None:
    h = Harness(lambda node, r: cut_after(chunk("a")) if node == "primary" else Script(200, SSE, [DONE]), contd())
    got = await h.request({**ASK, "stream": True})
    assert b"primary failed mid-stream: closed mid-body" in got.body and text_of(got.body) == "a"
    assert failed(h)[-1] == {"node": "backup", "reason": "continuation: continuation ended without finishing"}


async def test_a_new_round_waits_for_each_nodes_retry_after() -> None:
    loop = asyncio.get_running_loop()
    sent: dict[str, list[float]] = {"primary": [], "backup": []}

    def handler(node: str, request: Request) -> Script:
        sent[node].append(loop.time())
        return Script(429, (("retry-after-ms", "200"),), [b"{}"])

    h = Harness(handler, cfg(retry={"max_wait": 0.1}))  # past max_wait: fail over, then rounds
    got = await h.request(ASK)
    assert got.status == 429 and len(sent["primary"]) == len(sent["backup"]) == 3
    for times in sent.values():
        assert all(b - a >= 0.19 for a, b in itertools.pairwise(times))


async def test_no_retry_starts_after_retry_timeout() -> None:
    h = Harness(
        lambda node, r: Script(500, body=[b"{}"]) if node == "primary" else Script(503, body=[b"{}"], delay=0.3),
        cfg(retry_timeout=0.2),
    )
    got = await h.request(ASK)
    assert got.status == 503 and (h.calls("primary"), h.calls("backup")) == (2, 1)


async def test_a_nodes_x_should_retry_true_never_reaches_the_client() -> None:
    h = Harness(lambda node, r: Script(429, (("x-should-retry", "true"), ("retry-after", "30")), [b"{}"]), cfg())
    got = await h.request(ASK)
    assert [v for k, v in got.raw_headers if k == b"x-should-retry"] == [b"false"]


async def test_a_stream_true_inside_the_body_does_not_make_a_request_a_stream() -> None:
    schema = {"type": "json_schema", "json_schema": {"schema": {"properties": {"stream": True}}}}
    h = Harness(lambda node, r: Script(delay=0.2, body=[OK]), cfg(first_token=0.1))
    got = await h.request({**ASK, "response_format": schema})
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "primary"


async def test_a_continuation_of_a_request_without_a_model_sends_no_model() -> None:
    asked: list[dict[str, Any]] = []

    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return cut_after(chunk("a"))
        asked.append(json.loads(request.body))
        return Script(200, SSE, stream("b"))

    h = Harness(handler, contd())
    await h.request({"messages": ASK["messages"], "stream": True})
    assert "model" not in asked[0]
