"""Translated attempts through the proxy, in-process on the mock transport: failover across formats, the retry
plan and the first-token limit as for native attempts, errors in the client's format before and mid-stream, a
node answering garbage in its format, a dead node mid-way, the client leaving, a reload, held state that sticks
to its node, and the count endpoints."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.formats.translate import answers, pair
from sidecar.formats.translate.ir import Answer, Request, Text, ToolCall, Usage
from sidecar.nodes.health import Failure
from sidecar.nodes.mock import Script, Step
from sidecar.nodes.transport import Request as Sent
from sidecar.nodes.transport import UpstreamError
from tests.inproc import Harness
from tests.sdk_replay import events

ANTHROPIC_CLIENT = [(b"content-type", b"application/json"), (b"anthropic-version", b"2023-06-01")]
JSON = (("content-type", "application/json"),)
SSE = (("content-type", "text/event-stream"),)
MESSAGES = "/v1/messages"
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANTHROPIC_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}


def setup(*nodes: dict[str, Any], read: float = 0.3, **upstream: Any) -> Config:
    data = {"upstream": {"timeout": {"connect": 0.05, "send": 1, "read": read}, "checks": {"passive": {}},
                         "retry": {"backoff": 0.001, "max_backoff": 0.001}, "nodes": list(nodes), **upstream}}  # fmt: skip
    return parse(data, "<test>", env={})


def node(name: str, priority: int, api: str = "openai", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": f"http://{name}.invalid", "priority": priority, "api": api, **extra}


def answer_of(text: str = "", calls: tuple[tuple[str, str, str], ...] = (), node_id: str = "n1") -> Answer:
    parts: list[Any] = [Text(text)] if text else []
    parts += [ToolCall(i, name, args) for i, name, args in calls]
    return Answer(node_id, "node-model", parts, "tool_calls" if calls else "stop", usage=Usage(11, 3, 2), created=1)


def body_of(form: str, answer: Answer) -> bytes:
    request = Request()
    return pair.write_answer(form, answer, request)


def stream_of(form: str, answer: Answer, cut_after: int | None = None) -> list[Step]:
    """The node's stream of `answer` in `form`, event by event; cut (a reset) after `cut_after` events."""
    writer = pair.writer(form, Request(stream_usage=True), "n")
    steps: list[Step] = [writer.feed(e) for e in pair.events_of(answer)]
    steps = [s for s in steps if s]
    if cut_after is not None:
        steps = [*steps[:cut_after], UpstreamError(Failure.TCP, "connection reset")]
    return steps


def sent_json(request: Sent) -> dict[str, Any]:
    return dict(json.loads(request.body))


class Nodes:
    """Scripted nodes: each answers from its own list of scripts (the last one repeats); requests are kept."""

    def __init__(self, **scripts: Any) -> None:
        self.scripts = scripts
        self.seen: list[tuple[str, Sent]] = []

    def __call__(self, name: str, request: Sent) -> Script:
        self.seen.append((name, request))
        script = self.scripts[name]
        if callable(script):
            return script(request)  # type: ignore[no-any-return]
        return script.pop(0) if len(script) > 1 else script[0]  # type: ignore[no-any-return]

    def to(self, name: str) -> list[Sent]:
        return [r for n, r in self.seen if n == name]


def overloaded() -> Script:
    return Script(529, JSON, [b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'])


def claude_request(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 512, "stream": stream,
            "tools": [{"name": "get_weather", "input_schema": WEATHER}],
            "messages": [{"role": "user", "content": "Weather in Paris?"}], **extra}  # fmt: skip


async def test_an_anthropic_client_fails_over_to_an_openai_node_whole_and_streamed() -> None:
    call = answer_of("Checking.", (("call_1", "get_weather", '{"city":"Paris"}'),))
    nodes = Nodes(
        claude=[overloaded()],
        gpt=lambda r: Script(200, SSE, stream_of("chat", call)) if sent_json(r).get("stream") else
        Script(200, JSON, [body_of("chat", call)]),
    )  # fmt: skip
    cfg = setup(node("claude", 1, "anthropic"), node("gpt", 0, translate=True, models={"*": "gpt-4.1"}))
    harness = Harness(nodes, cfg)
    whole = await harness.request(claude_request(), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert whole.status == 200, whole.body
    message = whole.json()
    assert message["type"] == "message" and message["stop_reason"] == "tool_use"
    assert message["content"][1] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert whole.headers["x-llm-sidecar-node"] == "gpt"
    assert whole.headers["x-llm-sidecar-translated"] == "messages to chat"
    assert "claude: overloaded (529)" in whole.headers["x-llm-sidecar-trail"]
    sent = sent_json(nodes.to("gpt")[0])
    assert sent["model"] == "gpt-4.1" and sent["tools"][0]["function"]["name"] == "get_weather"
    assert str(nodes.to("gpt")[0].url) == "http://gpt.invalid/v1/chat/completions"
    assert not any(k.lower().startswith("anthropic-") for k, _ in nodes.to("gpt")[0].headers)

    streamed = await harness.request(claude_request(stream=True), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    kinds = [e["type"] for e in events(streamed.body)]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert harness.last_event()["tokens_in"] == 11 and harness.last_event()["tokens_out"] == 3
    harness.assert_nothing_held()


async def test_a_chat_and_a_responses_client_on_an_anthropic_node() -> None:
    reply = answer_of("Bonjour", node_id="msg_01")
    nodes = Nodes(claude=lambda r: Script(200, SSE, stream_of("messages", reply)) if sent_json(r).get("stream")
                  else Script(200, JSON, [body_of("messages", reply)]))  # fmt: skip
    harness = Harness(nodes, setup(node("claude", 0, "anthropic", translate=True)))
    chat = await harness.request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.json()["choices"][0]["message"]["content"] == "Bonjour"
    sent = nodes.to("claude")[0]
    assert str(sent.url) == "http://claude.invalid/v1/messages"
    assert ("anthropic-version", "2023-06-01") in sent.headers and sent_json(sent)["max_tokens"] == 4096
    streamed = await harness.request({"model": "m", "input": "hi", "stream": True}, path=RESPONSES)
    kinds = [e["type"] for e in events(streamed.body)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    harness.assert_nothing_held()


async def test_a_responses_request_goes_to_a_chat_only_node_as_chat() -> None:
    reply = answer_of("Done.")
    nodes = Nodes(local=[Script(200, JSON, [body_of("chat", reply)])])
    harness = Harness(nodes, setup(node("local", 0, responses=False, translate=True)))
    got = await harness.request({"model": "m", "input": "hi", "instructions": "Be brief."}, path=RESPONSES)
    assert got.status == 200 and got.json()["output"][0]["content"][0]["text"] == "Done."
    sent = sent_json(nodes.to("local")[0])
    assert str(nodes.to("local")[0].url).endswith("/v1/chat/completions")
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_a_node_without_translate_is_not_sent_other_formats() -> None:
    nodes = Nodes(gpt=[Script(200, JSON, [body_of("chat", answer_of("x"))])])
    harness = Harness(nodes, setup(node("gpt", 0)))
    got = await harness.request(claude_request(), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.status == 404 and got.json()["type"] == "error" and not nodes.seen
    chat_only = Harness(nodes, setup(node("gpt", 0, responses=False)))
    got = await chat_only.request({"model": "m", "input": "hi"}, path=RESPONSES)
    assert got.status == 404 and "Responses API" in got.json()["error"]["message"]
    assert "translate = true" in got.json()["error"]["message"] and not nodes.seen


async def test_what_a_node_cannot_honour_passes_it_over_or_is_refused_in_the_clients_format() -> None:
    offered = claude_request(tools=[ANTHROPIC_SEARCH, {"name": "get_weather", "input_schema": WEATHER}])
    search = claude_request(tools=[ANTHROPIC_SEARCH], tool_choice={"type": "tool", "name": "web_search"})
    nodes = Nodes(claude=[Script(200, JSON, [body_of("messages", answer_of("found"))])],
                  gpt=[Script(200, JSON, [body_of("chat", answer_of("x"))])])  # fmt: skip
    both = Harness(nodes, setup(node("gpt", 1, translate=True), node("claude", 0, "anthropic")))
    got = await both.request(search, path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "claude"
    assert "gpt: skipped (cannot translate: tool 'web_search_20250305'" in got.headers["x-llm-sidecar-trail"]
    assert not nodes.to("gpt")
    alone = Harness(nodes, setup(node("gpt", 0, translate=True)))
    got = await alone.request(search, path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.status == 400
    assert got.json()["error"]["type"] == "invalid_request_error" and "server tool" in got.json()["error"]["message"]
    got = await alone.request({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 3})
    assert got.status == 200  # a chat request to a chat node is native: nothing to translate
    # Offered, not forced: the model does without it, and the header says the node was not offered it.
    got = await alone.request(offered, path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert (
        got.status == 200 and "tool web_search_20250305 (runs at Anthropic)" in got.headers["x-llm-sidecar-translated"]
    )
    assert [t["function"]["name"] for t in sent_json(nodes.to("gpt")[-1])["tools"]] == ["get_weather"]


async def test_a_node_error_comes_back_in_the_clients_format() -> None:
    bad = Script(
        400, JSON, [b'{"error":{"message":"Invalid schema for function","type":"invalid_request_error","code":null}}']
    )
    harness = Harness(Nodes(gpt=[bad]), setup(node("gpt", 0, translate=True)))
    got = await harness.request(claude_request(), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.status == 400
    assert got.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Invalid schema for function"},
    }
    down = Harness(Nodes(gpt=[Script(503, JSON, [b'{"error":{"message":"down","type":"server_error"}}'])]),
                   setup(node("gpt", 0, translate=True)))  # fmt: skip
    got = await down.request(claude_request(), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.status == 503 and got.json()["type"] == "error" and got.json()["error"]["message"] == "down"
    down.assert_nothing_held()


async def test_garbage_from_a_node_fails_over_before_anything_is_sent() -> None:
    good = answer_of("fine")
    nodes = Nodes(
        junk=[Script(200, JSON, [b'{"object":"list","data":[]}'])],  # JSON, but no chat completion
        junk_stream=[Script(200, SSE, [b"data: {not json\n\n"])],
        gpt=[Script(200, JSON, [body_of("chat", good)])],
    )
    harness = Harness(nodes, setup(node("junk", 2, translate=True), node("gpt", 0, translate=True)))
    got = await harness.request(claude_request(), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "gpt"
    assert "junk: answer cannot be translated" in got.headers["x-llm-sidecar-trail"]
    streaming = Harness(nodes, setup(node("junk_stream", 2, translate=True), node("gpt", 0, translate=True)))
    nodes.scripts["gpt"] = [Script(200, SSE, stream_of("chat", good))]
    got = await streaming.request(claude_request(stream=True), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.headers["x-llm-sidecar-node"] == "gpt" and events(got.body)[-1]["type"] == "message_stop"
    harness.assert_nothing_held()
    streaming.assert_nothing_held()


async def test_a_dead_node_mid_stream_ends_it_with_the_clients_error_event() -> None:
    long = answer_of("one two three", (("call_9", "get_weather", '{"city":"Oslo"}'),))
    for form, path, headers, last in (
        ("messages", MESSAGES, ANTHROPIC_CLIENT, "error"),
        ("chat", CHAT, None, "error"),
        ("responses", RESPONSES, None, "response.failed"),
    ):
        target = "chat" if form == "messages" else "messages"
        nodes = Nodes(n=[Script(200, SSE, stream_of(target, long, cut_after=3))])
        cfg = setup(node("n", 0, "openai" if target == "chat" else "anthropic", translate=True))
        harness = Harness(nodes, cfg)
        body = claude_request(stream=True) if form == "messages" else (
            {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]} if form == "chat"
            else {"model": "m", "stream": True, "input": "x"})  # fmt: skip
        got = await harness.request(body, path=path, headers=headers)
        assert got.complete, form
        told = events(got.body)[-1]
        assert (told.get("type") == last) if form != "chat" else ("error" in told), (form, told)
        assert "connection reset" in json.dumps(told)
        assert harness.node("n").stats.errors == 1  # the node took the failure
        assert "stream interrupted" in (harness.last_event()["error"] or "")
        harness.assert_nothing_held()


async def test_a_silent_translated_node_fails_over_at_the_first_token_limit() -> None:
    nodes = Nodes(silent=[Script(200, SSE, [b": ping\n\n", 5.0])],
                  gpt=[Script(200, SSE, stream_of("chat", answer_of("late but here")))])  # fmt: skip
    cfg = setup(
        node("silent", 1, translate=True, timeout={"first_token": 0.1, "read": 0.3}), node("gpt", 0, translate=True)
    )
    harness = Harness(nodes, cfg)
    got = await harness.request(claude_request(stream=True), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.headers["x-llm-sidecar-node"] == "gpt"
    assert "no first token" in got.headers["x-llm-sidecar-trail"]
    harness.assert_nothing_held()


async def test_the_client_leaving_mid_translated_stream_holds_nothing() -> None:
    slow = [*stream_of("chat", answer_of("a b c d"))]
    slow.insert(2, 0.2)
    harness = Harness(Nodes(gpt=[Script(200, SSE, slow)]), setup(node("gpt", 0, translate=True)))
    got = await harness.request(claude_request(stream=True), path=MESSAGES, headers=ANTHROPIC_CLIENT,
                                leave_after_first_byte=True)  # fmt: skip
    assert not got.complete
    await harness.settle()
    assert harness.last_event()["status"] == 499
    harness.assert_nothing_held()


async def test_a_reload_mid_translated_stream_keeps_the_stream() -> None:
    slow = [*stream_of("chat", answer_of("a b c d"))]
    slow.insert(3, 0.1)
    cfg = setup(node("gpt", 0, translate=True))
    harness = Harness(Nodes(gpt=[Script(200, SSE, slow)]), cfg)
    request = asyncio.create_task(harness.request(claude_request(stream=True), path=MESSAGES, headers=ANTHROPIC_CLIENT))
    await asyncio.sleep(0.05)
    harness.runtime.apply(setup(node("gpt", 0, translate=True, weight=2)))
    got = await request
    assert events(got.body)[-1]["type"] == "message_stop"
    await harness.settle()
    harness.assert_nothing_held()


async def test_a_multi_turn_tool_conversation_fails_over_across_formats_and_back() -> None:
    """Turn 1 on the Anthropic primary (a tool call), turn 2 (its result) on the OpenAI backup while the
    primary is out, turn 3 on the primary again: ids stay paired, and the backup's reasoning never reaches it."""
    first = answers.write_messages(answer_of("", (("toolu_01X", "get_weather", '{"city":"Paris"}'),)))
    chat_reply = {"id": "c2", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
                  "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                      "role": "assistant", "content": None, "reasoning_content": "Oslo next.",
                      "tool_calls": [{"id": "call_2", "type": "function",
                                      "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
                  "usage": {"prompt_tokens": 9, "completion_tokens": 4}}  # fmt: skip
    final = answers.write_messages(answer_of("Paris 18 C, Oslo -3 C."))
    nodes = Nodes(claude=[Script(200, JSON, [json.dumps(first).encode()]), overloaded(),
                          Script(200, JSON, [json.dumps(final).encode()])],
                  gpt=[Script(200, JSON, [json.dumps(chat_reply).encode()])])  # fmt: skip
    cfg = setup(node("claude", 1, "anthropic"), node("gpt", 0, translate=True), retry={"same_node": 0})
    harness = Harness(nodes, cfg)
    thinking = {"type": "enabled", "budget_tokens": 2048}
    turn = claude_request(thinking=thinking)
    one = (await harness.request(turn, path=MESSAGES, headers=ANTHROPIC_CLIENT)).json()
    turn["messages"] += [{"role": "assistant", "content": one["content"]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01X", "content": "18 C"}]}]  # fmt: skip
    two = await harness.request(turn, path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert two.headers["x-llm-sidecar-node"] == "gpt", two.body
    sent = sent_json(nodes.to("gpt")[0])
    assert sent["messages"][1]["tool_calls"][0]["id"] == "toolu_01X"
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "toolu_01X", "content": "18 C"}
    reply = two.json()
    assert reply["content"][0]["type"] == "thinking" and reply["content"][0]["signature"] == "llm-sidecar:gpt"
    assert reply["content"][1]["id"] == "call_2"
    # The primary is back: the next turn carries the backup's thinking, marked as the backup's.
    turn["messages"] += [{"role": "assistant", "content": reply["content"]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_2", "content": "-3 C"}]}]  # fmt: skip
    back = Harness(nodes, cfg)
    three = await back.request(turn, path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert (
        three.headers["x-llm-sidecar-node"] == "claude"
        and three.json()["content"][0]["text"] == "Paris 18 C, Oslo -3 C."
    )
    native = sent_json(nodes.to("claude")[-1])
    blocks = [b for m in native["messages"] if isinstance(m["content"], list) for b in m["content"]]
    assert not any(str(b.get("signature", "")).startswith("llm-sidecar:") for b in blocks)
    assert [b["id"] for b in blocks if b["type"] == "tool_use"] == ["toolu_01X", "call_2"]
    assert "thinking" not in native  # the tool loop's last turn lost its thinking: Anthropic would refuse it
    harness.assert_nothing_held()
    back.assert_nothing_held()


def created(kind: str, made: str) -> Script:
    return Script(200, JSON, [json.dumps({"id": made, "object": kind, "status": "completed", "output": []}).encode()])


async def test_held_state_goes_to_the_node_that_made_it_or_gets_an_error_naming_it() -> None:
    nodes = Nodes(
        a=[
            Script(503, JSON, [b'{"error":{"message":"busy","type":"server_error"}}']),
            created("response", "resp_held"),
        ],
        b=[created("response", "resp_from_b"), Script(404, JSON, [b'{"error":{"message":"not found"}}'])],
    )
    harness = Harness(nodes, setup(node("a", 1), node("b", 0), retry={"same_node": 0}))
    made = await harness.request({"model": "m", "input": "hi"}, path=RESPONSES)
    assert made.json()["id"] == "resp_from_b"  # a was busy: b made it
    nodes.scripts["a"] = [created("response", "resp_a2")]
    await asyncio.sleep(0)
    got = await harness.request(b"", path="/v1/responses/resp_from_b", method="GET", headers=[])
    assert got.headers["x-llm-sidecar-node"] == "b", got.body  # not a, although a is the primary
    follow = await harness.request(
        {"model": "m", "input": "and?", "previous_response_id": "resp_from_b"}, path=RESPONSES
    )
    assert follow.headers["x-llm-sidecar-node"] == "b"
    harness.runtime.upstream.set_manual(harness.node("b"), True)
    out = await harness.request({"model": "m", "input": "and?", "previous_response_id": "resp_from_b"}, path=RESPONSES)
    assert out.status == 503 and "node 'b'" in out.json()["error"]["message"]
    assert out.json()["error"]["code"] == "state_holder_out"
    harness.assert_nothing_held()


async def test_a_response_made_by_translation_keeps_no_state_and_says_so() -> None:
    nodes = Nodes(local=[Script(200, JSON, [body_of("chat", answer_of("hi", node_id="chatcmpl-9"))])])
    harness = Harness(nodes, setup(node("local", 0, responses=False, translate=True)))
    first = (await harness.request({"model": "m", "input": "hi"}, path=RESPONSES)).json()
    again = await harness.request({"model": "m", "input": "more", "previous_response_id": first["id"]}, path=RESPONSES)
    assert again.status == 400 and again.json()["error"]["code"] == "state_not_stored"
    assert "'local'" in again.json()["error"]["message"] and len(nodes.seen) == 1


async def test_a_file_id_in_a_chat_request_goes_to_the_node_that_stored_it() -> None:
    nodes = Nodes(a=[Script(200, JSON, [body_of("chat", answer_of("from a"))])],
                  b=[created("file", "file-abc123"), Script(200, JSON, [body_of("chat", answer_of("from b"))])])  # fmt: skip
    harness = Harness(nodes, setup(node("a", 1), node("b", 0)))
    harness.runtime.upstream.set_manual(harness.node("a"), True)
    upload = await harness.request(
        b"--x\r\n\r\n", path="/v1/files", headers=[(b"content-type", b"multipart/form-data; boundary=x")]
    )
    assert upload.json()["id"] == "file-abc123"
    harness.runtime.upstream.set_manual(harness.node("a"), False)
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc123"}}]}],
    }
    got = await harness.request(chat)
    assert got.headers["x-llm-sidecar-node"] == "b"
    plain = await harness.request({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert plain.headers["x-llm-sidecar-node"] == "a"


async def test_count_tokens_is_estimated_when_only_translating_nodes_can_take_it() -> None:
    nodes = Nodes(gpt=[Script(200, JSON, [b"{}"])], claude=[Script(200, JSON, [b'{"input_tokens": 42}'])])
    body = {"model": "c", "system": "x" * 400, "messages": [{"role": "user", "content": "y" * 400}]}
    path = "/v1/messages/count_tokens"
    harness = Harness(nodes, setup(node("gpt", 0, translate=True)))
    got = await harness.request(body, path=path, headers=ANTHROPIC_CLIENT)
    assert got.json() == {"input_tokens": 200} and "x-llm-sidecar-estimate" in got.headers and not nodes.seen
    native = Harness(nodes, setup(node("claude", 1, "anthropic"), node("gpt", 0, translate=True)))
    assert (await native.request(body, path=path, headers=ANTHROPIC_CLIENT)).json() == {"input_tokens": 42}
    native.runtime.upstream.set_manual(native.node("claude"), True)
    assert (await native.request(body, path=path, headers=ANTHROPIC_CLIENT)).json() == {"input_tokens": 200}
    counted = await harness.request({"model": "m", "input": "z" * 40}, path="/v1/responses/input_tokens")
    assert counted.status == 200  # an OpenAI node implements the Responses API: it counts, natively


async def test_the_model_list_shows_translating_nodes_to_every_client() -> None:
    cfg = setup(node("gpt", 0, translate=True, models={"claude-sonnet-4-5": "gpt-4.1"}))
    harness = Harness(Nodes(gpt=[Script(200, JSON, [b'{"data":[]}'])]), cfg)
    got = await harness.request(b"", path="/v1/models", method="GET", headers=ANTHROPIC_CLIENT)
    assert [m["id"] for m in got.json()["data"]] == ["claude-sonnet-4-5"]


async def test_a_key_the_node_quotes_in_pieces_never_reaches_a_responses_client_put_together() -> None:
    """A chat node quotes its key split across two deltas; a Responses client's stream puts the text together
    (output_text.done): the key is redacted there too."""
    key = "sk-secret-abcdef123456"
    pieces = [
        b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"your key is sk-secr"}}]}\n\n',
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"et-abcdef123456 ok"}}]}\n\n',
        b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    nodes = Nodes(local=[Script(200, (("content-type", "text/event-stream"),), pieces)])
    config = {"upstream": {"timeout": {"connect": 0.05, "send": 1, "read": 0.3},
                           "nodes": [{**node("local", 0, responses=False, translate=True), "api_key": "${K}"}]}}  # fmt: skip
    harness = Harness(nodes, parse(config, "<test>", env={"K": key}))
    got = await harness.request({"model": "m", "input": "hi", "stream": True}, path=RESPONSES)
    assert got.status == 200 and b"response.output_text.done" in got.body
    assert key.encode() not in got.body and b"[redacted]" in got.body
