"""Properties of translation over generated conversations (hypothesis): tools and their results, images,
reasoning, stops and limits.

- A request translated A -> B -> A is the request it was, for everything both formats express.
- An answer translated A -> B -> A is the answer it was.
- A node's stream, translated and put together by the client SDK's own stream helper, is the translation of
  the node's whole answer.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.formats.sse import DONE
from sidecar.formats.translate import pair
from sidecar.formats.translate.ir import (
    Answer,
    Image,
    Message,
    Part,
    Request,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolResult,
    Untranslatable,
    Usage,
)
from tests.sdk_replay import TYPES, assembled

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)
names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
call_ids = st.from_regex(r"(call|toolu)_[A-Za-z0-9]{1,20}", fullmatch=True)
arguments = st.dictionaries(names, st.one_of(st.integers(-1000, 1000), words, st.booleans()), max_size=3)
images = st.one_of(
    st.builds(Image, media_type=st.sampled_from(["image/png", "image/jpeg"]), data=st.from_regex(r"[A-Za-z0-9+/]{4,40}", fullmatch=True)),
    st.builds(Image, url=st.from_regex(r"https://example\.com/[a-z]{1,10}\.png", fullmatch=True)),
)  # fmt: skip
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
# Field names the formats use, so generated objects hit the code that reads them.
KEYS = (
    "type", "role", "content", "text", "tool_calls", "function", "arguments", "id", "name", "index", "delta",
    "choices", "finish_reason", "usage", "message", "content_block", "partial_json", "input", "tool_use_id",
    "call_id", "output", "source", "data", "image_url", "url", "file", "thinking", "signature", "stop_reason",
    "prompt_tokens", "input_tokens", "summary", "namespace", "tools", "parameters", "input_schema", "tool_choice",
)  # fmt: skip


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """Turns as both formats express them: a user turn of text and images (or tool results for the last
    assistant turn's calls, then text), an assistant turn of at most one text and some tool calls."""
    turns: list[Message] = []
    pending: list[str] = []
    for i in range(draw(st.integers(1, 5))):
        if i % 2 == 0:
            parts: list[Part] = [ToolResult(c, [Text(draw(words))]) for c in pending]
            if not pending or draw(st.booleans()):
                parts.append(Text(draw(words)))
                parts += draw(st.lists(images, max_size=2))
            turns.append(Message("user", parts))
            pending = []
        else:
            parts = [Text(draw(words))] if draw(st.booleans()) else []
            for _ in range(draw(st.integers(0 if parts else 1, 2))):
                call = draw(call_ids)
                if call not in pending:
                    pending.append(call)
                    parts.append(ToolCall(call, draw(names), json.dumps(draw(arguments))))
            turns.append(Message("assistant", parts))
    return turns


@st.composite
def requests(draw: st.DrawFn) -> Request:
    request = Request(model="m", system=draw(st.none() | words), messages=draw(conversations()))
    request.tools = [Tool(n, SCHEMA, draw(st.none() | words)) for n in draw(st.lists(names, max_size=3, unique=True))]
    if request.tools:
        request.tool_choice = draw(st.sampled_from([None, "auto", "none", "required", "tool"]))
        request.tool_name = request.tools[0].name if request.tool_choice == "tool" else None
        request.parallel = draw(st.sampled_from([None, False]))
    request.effort = draw(st.sampled_from([None, "low", "medium", "high"]))
    last = request.messages[-1]
    if request.tool_choice in ("required", "tool") or any(isinstance(p, ToolResult) for p in last.parts):
        # Anthropic takes no thinking with a forced tool, nor in a tool loop whose last turn did not think:
        # not in what both express.
        request.effort = None
    request.max_tokens = 32000 if request.effort else draw(st.integers(1, 8192))
    request.temperature = None if request.effort else draw(st.none() | st.floats(0, 1).map(lambda x: round(x, 2)))
    request.top_p = draw(st.none() | st.floats(0.05, 1).map(lambda x: round(x, 2)))
    request.stop = draw(st.lists(words, max_size=4))
    request.stream = draw(st.booleans())
    request.user = draw(st.none() | names)
    return request


def roundtrip(body: dict[str, Any], source: str, other: str) -> dict[str, Any]:
    there, _ = pair.write(pair.read(source, body), other, "m", "n")
    back, _ = pair.write(pair.read(other, there), source, "m", "n")
    return back


def defaults(body: dict[str, Any]) -> dict[str, Any]:
    """A request as the API reads it: tool_choice auto whether written or not (the default), a call's
    arguments as the JSON value they spell (not the text: Anthropic carries them as an object)."""
    if body.get("tools") and "tool_choice" not in body:
        body["tool_choice"] = {"type": "auto"} if "input_schema" in body["tools"][0] else "auto"
    return spelled(body)


def spelled(value: Any) -> Any:
    """Every call's `arguments` as the JSON value the text spells."""
    if isinstance(value, dict):
        return {k: json.loads(v) if k == "arguments" and isinstance(v, str) else spelled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [spelled(v) for v in value]
    return value


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(requests())
def test_a_chat_request_through_anthropics_format_and_back_is_unchanged(request: Request) -> None:
    chat, _ = pair.write(request, "chat", "m", "n")
    assert defaults(roundtrip(chat, "chat", "messages")) == defaults(chat)


@FAST
@given(requests())
def test_an_anthropic_request_through_chat_and_back_is_unchanged(request: Request) -> None:
    messages, _ = pair.write(request, "messages", "m", "n")
    assert defaults(roundtrip(messages, "messages", "chat")) == defaults(messages)


@FAST
@given(requests())
def test_a_responses_request_reads_as_the_same_conversation_in_either_target(request: Request) -> None:
    """Responses is no node's format, so its requests go one way: to chat and to Anthropic's format, which
    read back as the same conversation."""
    chat, _ = pair.write(request, "chat", "m", "n")
    messages, _ = pair.write(request, "messages", "m", "n")
    via_chat, _ = pair.write(pair.read("chat", chat), "messages", "m", "n")
    assert via_chat == messages


finishes = st.sampled_from(["stop", "length", "tool_calls", "content_filter"])


@st.composite
def node_answers(draw: st.DrawFn) -> Answer:
    parts: list[Part] = []
    if draw(st.booleans()):
        parts.append(Thinking(draw(words), "llm-sidecar:n"))
    if draw(st.booleans()):
        parts.append(Text(draw(words)))
    calls = draw(st.lists(call_ids, max_size=3, unique=True))
    parts += [ToolCall(c, draw(names), json.dumps(draw(arguments))) for c in calls]
    finish = "tool_calls" if calls else draw(finishes.filter(lambda f: f != "tool_calls"))
    prompt = draw(st.integers(0, 10_000))
    usage = Usage(prompt, draw(st.integers(0, 5000)), draw(st.integers(0, prompt)), 0)
    return Answer(draw(call_ids), "node-model", parts, finish, usage=usage, created=1_700_000_000)


def reread(answer: Answer, source: str, other: str) -> dict[str, Any]:
    request = Request()
    body = pair.write_answer(source, answer, request)
    there = pair.write_answer(other, pair.read_answer(source, body, "n", request), request)
    return dict(json.loads(pair.write_answer(source, pair.read_answer(other, there, "n", request), request)))


@FAST
@given(node_answers())
def test_an_answer_through_the_other_format_and_back_is_unchanged(answer: Answer) -> None:
    for source, other in (("chat", "messages"), ("messages", "chat")):
        whole = json.loads(pair.write_answer(source, answer, Request()))
        back = reread(answer, source, other)
        for key in ("id", "created"):  # a format's id prefix is added on the way: each keeps its own
            whole.pop(key, None), back.pop(key, None)
        assert spelled(back) == spelled(whole), (source, other)


def node_stream(form: str, answer: Answer) -> list[Any]:
    """The node's stream of `answer`, as the parsed events a node of `form` sends."""
    writer = pair.writer(form, Request(stream_usage=True), "n")
    raw = b"".join(writer.feed(e) for e in pair.events_of(answer))
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        data = "\n".join(line[6:] for line in block.split("\n") if line.startswith("data: "))
        if data:
            out.append(DONE if data == "[DONE]" else json.loads(data))
    return out


SDK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SDK
@given(node_answers(), st.booleans())
def test_a_translated_stream_assembled_by_the_sdk_is_the_whole_translation(answer: Answer, encrypted: bool) -> None:
    for node, client in (("chat", "messages"), ("chat", "responses"), ("messages", "chat"), ("messages", "responses")):
        request = Request(stream=True, stream_usage=True, encrypted=encrypted)
        coder = pair.Transcoder(node, client, request, "n")
        streamed = b"".join(coder.feed(event) for event in node_stream(node, answer))
        body = pair.write_answer(node, answer, request)
        whole = (
            TYPES[client]
            .model_validate_json(pair.write_answer(client, pair.read_answer(node, body, "n", request), request))
            .model_dump(mode="json", exclude_none=True)
        )
        got = assembled(client, streamed)
        for key in ("id", "created", "created_at", "model"):
            whole.pop(key, None), got.pop(key, None)
        if client == "chat":
            for call in got["choices"][0]["message"].get("tool_calls", ()):
                call.pop("index")
        assert spelled(got) == spelled(whole), (node, client)


# Hostile input: whatever JSON a client or a node sends, translation either works or says why (Untranslatable,
# a ValueError the relay turns into the node's failure); it never raises anything else (a 500 mid-stream).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | words,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(words | st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=25,
)


@st.composite
def shaped(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A plausible object with some of its fields replaced by anything."""
    out = dict(base)
    for key in draw(st.lists(st.sampled_from(sorted(base) + list(KEYS)), max_size=4)):
        out[key] = draw(json_values)
    return out


HOSTILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HOSTILE
@given(st.sampled_from(["chat", "responses", "messages"]), st.data())
def test_a_hostile_request_is_translated_or_refused_never_a_crash(form: str, data: st.DataObject) -> None:
    base = {
        "chat": {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [], "tool_choice": "auto"},
        "responses": {"model": "m", "input": [{"role": "user", "content": "x"}], "tools": []},
        "messages": {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "system": "s"},
    }[form]
    body = data.draw(mutated(base)) if data.draw(st.booleans()) else data.draw(shaped(base))
    try:
        request = pair.read(form, body)
        for target in ("chat", "messages"):
            pair.write(request, target, "m", "n")
    except Untranslatable:
        pass


def paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (as key/index paths)."""
    out = [at]
    if isinstance(value, dict):
        for key, inner in value.items():
            out += paths(inner, (*at, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            out += paths(inner, (*at, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """A valid JSON value with a few of its places, at any depth, replaced by anything."""
    value = json.loads(json.dumps(value))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.sampled_from(paths(value)))
        if not at:
            return draw(json_values)
        holder = value
        for step in at[:-1]:
            holder = holder[step]
        holder[at[-1]] = draw(json_values)
    return value


SAMPLE = Answer(
    "x", "m", [Thinking("t", "llm-sidecar:n"), Text("hi"), ToolCall("call_1", "f", '{"a": 1}'),
               ToolCall("call_2", "g", "{}")], "tool_calls", usage=Usage(5, 2, 1, 0), created=1,
)  # fmt: skip


@HOSTILE
@given(st.sampled_from(["chat", "messages"]), st.data())
def test_a_hostile_node_is_translated_or_failed_never_a_crash(node: str, data: st.DataObject) -> None:
    valid = node_stream(node, SAMPLE)
    events = [data.draw(mutated(e)) if e is not DONE and data.draw(st.booleans()) else e for e in valid]
    for client in ("chat", "responses", "messages"):
        if client == node:
            continue
        coder = pair.Transcoder(node, client, Request(stream=True), "n")
        try:
            for event in events:
                coder.feed(event)
            coder.end()
        except ValueError:
            pass
    whole = json.dumps(data.draw(mutated(json.loads(pair.write_answer(node, SAMPLE, Request()))))).encode()
    with contextlib.suppress(ValueError, Untranslatable):
        answer = pair.read_answer(node, whole, "n", Request())
        for client in ("chat", "responses", "messages"):
            pair.write_answer(client, answer, Request())
