"""The spans a request makes, in-process on the mock transport (no collector, no SDK): each attempt's outcome
read from the request's record in the tricky cases (a stream continued elsewhere, a continuation that adds
nothing, a client that leaves, no node at all), the `traceparent` each attempt carried, the trace context a
client sends (valid, malformed, repeated, unsampled), and prompts and completions in the GenAI conventions'
shape for each API format."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.nodes.health import Failure
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request, UpstreamError
from sidecar.telemetry.content import MAX_ATTRIBUTE, MAX_TEXT, inputs_of, output_of
from sidecar.telemetry.context import MAX_TRACESTATE, Trace, Tracing, parse_traceparent
from sidecar.telemetry.spans import Span, error_type, operation, spans_of, where

from .inproc import Harness

SSE = (("content-type", "text/event-stream"),)
ASK = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
DONE = b"data: [DONE]\n\n"


def cfg(**backup: Any) -> Config:
    nodes = [
        {"name": "primary", "url": "https://api.openai.com", "priority": 0},
        {"name": "backup", "url": "http://127.0.0.1:9000", "priority": -1, "models": {"*": "backup-model"}, **backup},
    ]
    upstream = {"timeout": {"connect": 0.05, "send": 1, "read": 1}, "checks": {"passive": {}},
                "retry": {"same_node": 0}, "nodes": nodes}  # fmt: skip
    return parse({"upstream": upstream}, "<test>", env={})


def chunk(content: str | None = None, finish: str | None = None, model: str = "m-1") -> bytes:
    delta = {"content": content} if content is not None else {}
    payload = {"id": "c1", "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class Traced:
    """A harness whose app traces every request into a list, as the exporter's queue would get them."""

    def __init__(self, handler: Any, config: Config, content: bool = False) -> None:
        self.ended: list[tuple[Trace, dict[str, Any]]] = []
        self.h = Harness(handler, config)
        self.h.app.tracing = Tracing(lambda trace, event: self.ended.append((trace, event)), content)

    def spans(self, content: bool = False) -> list[Span]:
        trace, event = self.ended[-1]
        return spans_of(trace, event, content, {})


def outcomes(spans: list[Span]) -> list[tuple[str, Any, Any, Any]]:
    return [(s.attributes.get("llm_sidecar.node"), s.attributes.get("llm_sidecar.outcome"),
             s.attributes.get("error.type"), s.attributes.get("llm_sidecar.continuation")) for s in spans[1:]]  # fmt: skip


def told(request: Request) -> str:
    return dict(request.headers)["traceparent"]


async def test_a_stream_continued_on_another_node_is_a_broken_attempt_and_an_answering_continuation() -> None:
    sent: list[str] = []

    def handler(node: str, request: Request) -> Script:
        sent.append(told(request))
        if node == "primary":
            return Script(200, SSE, [chunk("Hel"), UpstreamError(Failure.TCP, "connection reset mid-body")])
        return Script(200, SSE, [chunk("lo", model="backup-model-7"), chunk(finish="stop"), DONE])

    t = Traced(handler, cfg(continuation="prefill"))
    got = await t.h.request(ASK)
    assert got.status == 200 and got.complete
    spans = t.spans()
    trace, event = t.ended[-1]
    assert event["continued"] == [{"from": "primary", "to": "backup", "reason": "connection reset mid-body"}]
    assert outcomes(spans) == [("primary", "broken", "reset", None), ("backup", "answered", None, True)]
    assert spans[1].error == "connection reset mid-body" and spans[2].error is None
    assert sent == [f"00-{trace.trace_id:032x}-{s.span_id:016x}-01" for s in spans[1:]]
    assert spans[1].attributes["gen_ai.provider.name"] == "openai"  # api.openai.com
    assert spans[1].attributes["server.address"] == "api.openai.com" and spans[1].attributes["server.port"] == 443
    assert spans[2].attributes["gen_ai.request.model"] == "backup-model" and spans[2].name == "chat backup-model"
    # The answer's model is read from the start the client got: the primary's, whose stream it still is.
    assert spans[0].attributes["gen_ai.response.model"] == "m-1" and spans[0].error is None
    assert spans[1].end <= spans[2].start and spans[2].end == spans[0].end


async def test_a_continuation_that_adds_nothing_is_a_failed_attempt_and_the_break_stands() -> None:
    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return Script(200, SSE, [chunk("a"), UpstreamError(Failure.TCP, "closed mid-body")])
        return Script(200, SSE, [DONE])

    t = Traced(handler, cfg(continuation="prefill"))
    await t.h.request(ASK)
    spans = t.spans()
    assert outcomes(spans) == [("primary", "broken", "other", None), ("backup", "failed", "bad_response", True)]
    assert spans[2].error == "continuation: continuation ended without finishing"
    assert spans[0].attributes["error.type"] == "other" and spans[0].error == "stream interrupted: closed mid-body"


async def test_a_failover_before_any_byte_and_the_waits_between_attempts() -> None:
    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return Script(429, (("content-type", "application/json"), ("retry-after", "0.05")), [b"{}"])
        return Script(200, (("content-type", "application/json"),),
                      [b'{"id": "x-9", "model": "backup-model-2", "choices": [{"message": {"content": "ok"},'
                       b' "finish_reason": "length"}]}'])  # fmt: skip

    config = parse({"upstream": {"retry": {"same_node": 1, "max_wait": 1}, "checks": {"passive": {}},
                                 "nodes": [{"name": "primary", "url": "http://a.invalid", "priority": 1},
                                           {"name": "backup", "url": "http://b.invalid"}]}}, "<t>", env={})  # fmt: skip
    t = Traced(handler, config)
    got = await t.h.request({**ASK, "stream": False})
    assert got.status == 200
    spans = t.spans()
    kinds = [(s.kind, s.name) for s in spans]
    assert kinds == [("server", "chat gpt-4o"), ("client", "chat gpt-4o"), ("internal", "wait"),
                     ("client", "chat gpt-4o"), ("client", "chat gpt-4o")]  # fmt: skip
    assert outcomes(spans)[0] == ("primary", "failed", "429", None)
    assert spans[2].attributes["llm_sidecar.wait_ms"] == 50 and spans[2].end - spans[2].start == 50_000_000
    assert spans[1].end == spans[2].start and spans[2].end <= spans[3].start
    assert spans[4].attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert spans[4].attributes["gen_ai.response.id"] == "x-9"
    assert len({s.span_id for s in spans}) == 5


async def test_a_client_that_leaves_mid_attempt_leaves_an_abandoned_attempt() -> None:
    gone = asyncio.Event()

    def handler(node: str, request: Request) -> Script:
        asyncio.get_running_loop().call_later(0.02, gone.set)
        return Script(200, SSE, [chunk("a"), 1.0, DONE])

    t = Traced(handler, cfg())
    await t.h.request(ASK, gone=gone)
    spans = t.spans()
    assert outcomes(spans) == [("primary", "answered", "499", None)]  # it had answered: the client left mid-stream
    assert spans[0].attributes["error.type"] == "499"

    t2 = Traced(lambda node, r: Script(200, SSE, [1.0, chunk("a"), DONE]), cfg())
    gone2 = asyncio.Event()
    asyncio.get_running_loop().call_later(0.02, gone2.set)
    await t2.h.request(ASK, gone=gone2)
    assert outcomes(t2.spans()) == [("primary", "abandoned", None, None)]


async def test_a_request_no_node_serves_is_one_span() -> None:
    t = Traced(lambda node, r: Script(200), cfg())
    t.h.app.runtime.upstream.nodes[0].config  # noqa: B018 - the config is read, not changed
    got = await t.h.request({**ASK, "stream": False}, path="/v1/messages",
                            headers=[(b"content-type", b"application/json"), (b"anthropic-version", b"2023-06-01")])  # fmt: skip
    assert got.status == 404
    (only,) = t.spans()
    assert only.attributes["gen_ai.provider.name"] == "anthropic" and only.attributes["llm_sidecar.attempts"] == 0
    assert only.attributes["error.type"] == "404" and only.kind == "server"


async def test_content_is_captured_only_when_exported() -> None:
    answer = [chunk("Hel"), chunk("lo"), chunk(finish="stop"), DONE]
    for content in (False, True):
        t = Traced(lambda node, r: Script(200, SSE, answer), cfg(), content=content)
        await t.h.request(ASK)
        trace, _ = t.ended[-1]
        assert (trace.body is not None) is content and (trace.answer is not None) is content
        spans = t.spans(content)
        if content:
            assert json.loads(str(spans[0].attributes["gen_ai.output.messages"])) == [
                {"role": "assistant", "parts": [{"type": "text", "content": "Hello"}], "finish_reason": "stop"}
            ]
        else:
            assert not any(k.startswith("gen_ai.output") for k in spans[0].attributes)


# ---------------------------------------------------------------------------- the client's trace context


def test_traceparent_parsing_follows_w3c() -> None:
    good = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert parse_traceparent(good) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1)
    assert parse_traceparent(b" " + good + b"\t") is not None  # optional whitespace around a header value
    for bad in (
        good.upper(),  # hex is lowercase
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
        good + b"-extra",  # version 00 has exactly four fields
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        b"",
        b"x" * 10_000,
    ):
        assert parse_traceparent(bad) is None, bad[:80]
    assert parse_traceparent(b"01" + good[2:] + b"-what-comes-later") is not None  # a later version may add fields


def test_what_a_client_sends_decides_the_trace() -> None:
    tracing = Tracing(lambda trace, event: None, content=False)
    parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    trace = tracing.begin([(b"traceparent", parent), (b"tracestate", b"a=1"), (b"tracestate", b"b=2")], 0.0, b"{}")
    assert trace is not None and trace.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert trace.parent == 0xB7AD6B7169203331 and trace.state == "a=1,b=2" and trace.body is None
    assert tracing.begin([(b"traceparent", parent[:-2] + b"00")], 0.0, b"") is None  # unsampled: untraced
    twice = tracing.begin([(b"traceparent", parent), (b"traceparent", parent)], 0.0, b"")
    assert twice is not None and twice.parent is None and twice.trace_id != 0x0AF7651916CD43DD8448EB211C80319C
    long_state = b",".join(b"k%d=%s" % (i, b"v" * 20) for i in range(40))
    kept = tracing.begin([(b"traceparent", parent), (b"tracestate", long_state)], 0.0, b"")
    assert kept is not None and kept.state is not None and len(kept.state) <= MAX_TRACESTATE
    assert long_state.decode().startswith(kept.state + ",")  # whole entries only
    fresh = tracing.begin([], 0.0, b"")
    assert fresh is not None and fresh.parent is None and fresh.state is None and fresh.trace_id > 0
    tally = SimpleNamespace(attempts=[], continued=[])
    node = cfg().upstream.nodes[0]
    sent = [("traceparent", "old"), ("tracestate", "a=1"), ("x-other", "1")]
    # A new trace: the client's tracestate went with its traceparent. A continued one: it goes on upstream.
    assert [name for name, _ in fresh.attempt(node, sent, tally)] == ["x-other", "traceparent"]
    assert [name for name, _ in trace.attempt(node, sent, tally)] == ["tracestate", "x-other", "traceparent"]
    assert [step.node for step in trace.steps] == [node] and trace.steps[0].failed == 0


def test_names_and_error_types() -> None:
    assert [operation(p) for p in ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/completions",
                                   "/v1/embeddings", "/v1/audio/speech", "/v1/responses/resp_1", "/v1/X")] == [
        "chat", "chat", "chat", "text_completion", "embeddings", "audio", "responses", "other"]  # fmt: skip
    assert [error_type(r) for r in ("http 503", "rate limited (429)", "auth (401)", "overloaded (529)",
                                    "continuation: http 500", "read timeout", "connect failed (refused)",
                                    "stream interrupted: error event mid-stream (x)", "something new")] == [
        "503", "429", "401", "529", "500", "timeout", "connect", "error_event", "other"]  # fmt: skip
    nodes = parse({"upstream": {"nodes": [
        {"name": n, "url": u, **({"api": "anthropic"} if n == "c" else {})} for n, u in (
            ("a", "https://api.deepseek.com"), ("b", "https://x.openai.azure.com/openai"), ("c", "http://localhost:8080"),
            ("d", "https://openrouter.ai/api"))]}}, "<t>", env={}).upstream.nodes  # fmt: skip
    assert [where(n, {}).provider for n in nodes] == ["deepseek", "azure.ai.openai", "anthropic", "openai"]
    assert [where(n, {}).port for n in nodes] == [443, 443, 8080, 443]


# ---------------------------------------------------------------------------- prompts and completions


def test_openai_chat_inputs_with_tools() -> None:
    body = {"model": "m", "messages": [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:..."}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rainy"},
    ]}  # fmt: skip
    system, messages = inputs_of("openai", "/v1/chat/completions", json.dumps(body).encode())
    assert system is None and messages is not None
    assert json.loads(messages) == [
        {"role": "developer", "parts": [{"type": "text", "content": "rules"}]},
        {"role": "user", "parts": [{"type": "text", "content": "look"}, {"type": "image_url"}]},  # named, not copied
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "get", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "rainy"}]},
    ]  # fmt: skip


def test_anthropic_inputs_and_a_streamed_answer_with_a_tool_call() -> None:
    body = {"model": "claude", "system": [{"type": "text", "text": "be brief"}], "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "tool_use", "id": "t1",
                                                                                    "name": "f", "input": {"x": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "2"}]}]},
    ]}  # fmt: skip
    system, messages = inputs_of("anthropic", "/v1/messages", json.dumps(body).encode())
    assert json.loads(str(system)) == [{"type": "text", "content": "be brief"}]
    assert json.loads(str(messages))[1:] == [
        {"role": "assistant", "parts": [{"type": "reasoning", "content": "hmm"},
                                        {"type": "tool_call", "id": "t1", "name": "f", "arguments": {"x": 1}}]},
        {"role": "user", "parts": [{"type": "tool_call_response", "id": "t1", "response": "2"}]},
    ]  # fmt: skip
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "see."}},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t2", "name": "g", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"q": '}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"z"}'}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
        {"type": "message_stop"},
    ]  # fmt: skip
    sse = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events)
    out = output_of("anthropic", "/v1/messages", sse)
    assert (out.model, out.id, out.finishes) == ("claude-x", "msg_1", ["tool_use"])
    assert json.loads(str(out.messages)) == [{"role": "assistant", "finish_reason": "tool_use", "parts": [
        {"type": "text", "content": "Let me see."}, {"type": "tool_call", "id": "t2", "name": "g", "arguments": {"q": "z"}}]}]  # fmt: skip
    whole = {"id": "msg_2", "type": "message", "model": "claude-y", "stop_reason": "end_turn",
             "content": [{"type": "text", "text": "done"}]}  # fmt: skip
    out = output_of("anthropic", "/v1/messages", json.dumps(whole).encode())
    assert (out.model, out.finishes) == ("claude-y", ["end_turn"])
    assert json.loads(str(out.messages))[0]["parts"] == [{"type": "text", "content": "done"}]


def test_responses_api_and_legacy_completions() -> None:
    body = {"model": "m", "instructions": "sys", "input": [{"role": "user", "content": [{"type": "input_text", "text": "q"}]},
            {"type": "function_call_output", "call_id": "c", "output": "42"}]}  # fmt: skip
    system, messages = inputs_of("openai", "/v1/responses", json.dumps(body).encode())
    assert json.loads(str(system)) == [{"type": "text", "content": "sys"}]
    assert json.loads(str(messages)) == [{"role": "user", "parts": [{"type": "text", "content": "q"}]},
                                         {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c", "response": "42"}]}]  # fmt: skip
    completed = {"type": "response.completed", "response": {"object": "response", "id": "resp_1", "model": "m-2",
                 "status": "completed", "output": [{"type": "message", "role": "assistant",
                                                    "content": [{"type": "output_text", "text": "A"}]}]}}  # fmt: skip
    out = output_of("openai", "/v1/responses", b"data: " + json.dumps(completed).encode() + b"\n\n")
    assert (out.model, out.id, out.finishes) == ("m-2", "resp_1", ["stop"])
    assert json.loads(str(out.messages))[0]["parts"] == [{"type": "text", "content": "A"}]
    _, prompt = inputs_of("openai", "/v1/completions", b'{"model": "m", "prompt": ["a", "b"]}')
    assert json.loads(str(prompt)) == [{"role": "user", "parts": [{"type": "text", "content": p}]} for p in "ab"]
    assert inputs_of("openai", "/v1/embeddings", b'{"input": "x"}') == (None, None)


def test_hostile_or_huge_content_is_bounded_and_never_raises() -> None:
    for body in (b"", b"not json", b"[1]", b'{"messages": "x"}', b'{"messages": [1, null, {"content": 5}]}',
                 b"[" * 100_000):  # fmt: skip
        inputs_of("openai", "/v1/chat/completions", body)
        inputs_of("anthropic", "/v1/messages", body)
        output_of("openai", "/v1/chat/completions", body)
    long = "x" * (MAX_TEXT * 3)
    many = {"messages": [{"role": "user", "content": long} for _ in range(40)]}
    _, messages = inputs_of("openai", "/v1/chat/completions", json.dumps(many).encode())
    assert messages is not None and len(messages) <= MAX_ATTRIBUTE
    kept = json.loads(messages)
    assert 0 < len(kept) < 40 and kept[0]["parts"][0]["content"].endswith(f"[{MAX_TEXT * 2} more characters]")
    truncated = b'{"id": "chatcmpl-1", "model": "gpt-x", "choices": [{"message": {"content": "' + b"y" * 1000
    out = output_of("openai", "/v1/chat/completions", truncated, messages=False)
    assert (out.model, out.id) == ("gpt-x", "chatcmpl-1")  # the start of an answer too large to keep whole


async def test_the_exporters_queue_is_bounded_and_what_it_dropped_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from sidecar.config.telemetry import Export
    from sidecar.telemetry.export import CONTENT_QUEUE, QUEUE_MAX, Exporter

    class Keep(SpanExporter):
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.spans.extend(spans)
            return SpanExportResult.SUCCESS

    plain = Exporter(Export("http://127.0.0.1:9/v1/traces", "x", False, True), "t")
    assert plain.limit == QUEUE_MAX
    plain.processor = SimpleSpanProcessor(Keep())
    await plain.close()
    exporter = Exporter(Export("http://127.0.0.1:9/v1/traces", "x", True, True), "t")
    exporter.stopping.set()
    exporter.thread.join()  # nothing drains the queue now
    keep = Keep()
    exporter.processor = SimpleSpanProcessor(keep)
    t = Traced(lambda node, r: Script(200, SSE, [chunk("a", finish="stop"), DONE]), cfg())
    t.h.app.tracing = exporter.tracing
    assert exporter.limit == CONTENT_QUEUE < QUEUE_MAX  # content on: fewer, larger traces held
    for _ in range(CONTENT_QUEUE + 3):
        await t.h.request(ASK)
    assert len(exporter.queue) == CONTENT_QUEUE and exporter.dropped == 3
    with caplog.at_level("WARNING", logger="llm_sidecar"):
        exporter.drain()
        exporter.drain()
    assert [r.getMessage() for r in caplog.records] == [
        f"traces: 3 requests were not traced (more than {CONTENT_QUEUE} waited for export)"
    ]
    assert len(keep.spans) == 2 * CONTENT_QUEUE and not exporter.queue
    await exporter.close()
