"""The golden corpus (tests/golden/translate/*.json): a client's request, a node's answer and a node's stream,
each written from the providers' published API references, and what the sidecar sends and returns.

Each case is checked field by field (what the node is sent, what the client gets whole and streamed, what the
header says was dropped), every output is read by the client SDK's own types, the stream as the SDK's stream
helper assembles it equals the whole answer, and what was sent and returned is translated back (the node's
request as a client's, the client's answer as a node's) and compared with where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.formats.sse import DONE
from sidecar.formats.translate import ids, pair
from sidecar.formats.translate.errors import error_body
from sidecar.formats.translate.ir import (
    Answer,
    Document,
    Refusal,
    Request,
    Text,
    Thinking,
    ToolCall,
    ToolResult,
    Untranslatable,
)
from tests.sdk_replay import anthropic_error, assembled, events, openai_error, validate_answer, validate_event

CASES = sorted((Path(__file__).parent / "golden" / "translate").glob("*.json"))
# Times the sidecar stamps when the node gave none: compared by type only.
CLOCK = {"created", "created_at"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def same(got: Any, want: Any, where: str = "") -> None:
    """Field by field, with the path of the first difference."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is no object"
        assert set(got) == set(want), f"{where}: keys {sorted(set(got) ^ set(want))} differ"
        for key in want:
            if key in CLOCK and isinstance(want[key], int):
                assert isinstance(got[key], int), f"{where}.{key}"
            else:
                same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {len(got)} items, want {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def run(case: dict[str, Any]) -> dict[str, Any]:
    request = pair.read(case["client"], case["request"])
    sent, dropped = pair.write(request, case["node"], case["model"], case["node_name"])
    answer = pair.read_answer(case["node"], json.dumps(case["answer"]).encode(), case["node_name"], request)
    returned = json.loads(pair.write_answer(case["client"], answer, request))
    coder = pair.Transcoder(case["node"], case["client"], request, case["node_name"])
    streamed = b"".join(coder.feed(DONE if e == "[DONE]" else e) for e in case["stream"])
    assert coder.done, "the node's stream ends with its own end event"
    return {"sent": sent, "dropped": dropped, "returned": returned, "streamed": streamed}


@pytest.fixture(params=CASES, ids=[p.stem for p in CASES])
def case(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_the_corpus_covers_every_direction() -> None:
    pairs = {(load(p)["client"], load(p)["node"]) for p in CASES}
    assert pairs == {("messages", "chat"), ("chat", "messages"), ("responses", "chat"), ("responses", "messages")}


def test_sent_returned_and_streamed_field_by_field(case: dict[str, Any]) -> None:
    out = run(case)
    same(out["sent"], case["sent"], "sent")
    assert out["dropped"] == case["dropped"]
    same(out["returned"], case["returned"], "returned")
    same(events(out["streamed"]), case["streamed"], "streamed")


def test_the_client_sdk_reads_every_output(case: dict[str, Any]) -> None:
    out = run(case)
    validate_answer(case["client"], out["returned"])
    for event in events(out["streamed"]):
        validate_event(case["client"], event)


def test_the_sdk_stream_helper_assembles_the_whole_answer(case: dict[str, Any]) -> None:
    """The stream, put together by the client SDK's own stream helper, is the non-stream translation."""
    out = run(case)
    whole = validate_whole(case["client"], out["returned"])
    streamed = assembled(case["client"], out["streamed"])
    for key in CLOCK | {"id", "model"}:  # the stream's come from its first event, the answer's from the body
        whole.pop(key, None), streamed.pop(key, None)
    if case["client"] == "chat":
        for call in streamed["choices"][0]["message"].get("tool_calls", ()):
            call.pop("index")  # the helper keeps the chunks' index on each call
        if not pair.read("chat", case["request"]).stream_usage:
            whole.pop("usage")  # a chat stream carries usage only when the client asks (stream_options)
    if case["client"] == "messages" and case["node"] == "chat":  # input tokens arrive only with the last chunk
        assert streamed["usage"]["input_tokens"] == whole["usage"]["input_tokens"]
    same(streamed, whole, "assembled")


def validate_whole(client: str, answer: dict[str, Any]) -> dict[str, Any]:
    from tests.sdk_replay import TYPES

    return dict(TYPES[client].model_validate(answer).model_dump(mode="json", exclude_none=True))


def text_of(parts: list[Any]) -> str:
    """The words of the parts: text, refusals, plain-text documents (a chat node gets those as text)."""
    return "".join(p.text or "" for p in parts if isinstance(p, Text | Refusal) or (isinstance(p, Document) and p.text))


def view(request: Request) -> dict[str, Any]:
    """What chat and Anthropic's requests both express: the conversation, tools and limits."""
    turns = []
    for message in request.messages:
        calls = [(ids.for_anthropic(p.id), p.name, json.loads(p.arguments or "{}")) for p in message.parts
                 if isinstance(p, ToolCall)]  # fmt: skip
        results = [(ids.for_anthropic(p.call_id), text_of(list(p.content)).removeprefix("[tool error] "))
                   for p in message.parts if isinstance(p, ToolResult)]  # fmt: skip
        turns.append((message.role, text_of(message.parts), calls, results))
    return {
        "system": request.system,
        "turns": turns,
        "tools": [(t.name, t.schema) for t in request.tools],
        "stop": request.stop,
        "max_tokens": request.max_tokens,
        "top_p": request.top_p,
    }


def test_the_node_request_read_back_is_the_client_request(case: dict[str, Any]) -> None:
    """Translated back (what the node was sent, read as if a client of its format sent it), the conversation,
    the tools and the limits are the client's, on what both formats express. JSON mode travels as a tool."""
    request = pair.read(case["client"], case["request"])
    back = pair.read(case["node"], case["sent"])
    want, got = view(request), view(back)
    if request.json is not None and case["node"] == "messages":
        assert got.pop("tools") == [("json_answer", request.json["schema"])]
        want.pop("tools")
    if want["max_tokens"] is None:
        want.pop("max_tokens"), got.pop("max_tokens")  # a default was filled in for Anthropic
    same(got, want, "back")


def answer_view(answer: Answer) -> dict[str, Any]:
    return {
        "text": text_of(answer.parts),
        "thinking": "".join(p.text for p in answer.parts if isinstance(p, Thinking)),
        "calls": [
            (ids.for_anthropic(p.id), p.name, json.loads(p.arguments)) for p in answer.parts if isinstance(p, ToolCall)
        ],
        "finish": answer.finish,
        "usage": (answer.usage.input, answer.usage.output, answer.usage.cache_read),
    }


# No node answers in the Responses format: a Responses client's answer has nothing to be read back as.
BACK = [p for p in CASES if load(p)["client"] != "responses"]


@pytest.mark.parametrize("path", BACK, ids=[p.stem for p in BACK])
def test_the_client_answer_read_back_is_the_node_answer(path: Path) -> None:
    """The answer the client got, read back as a node's answer of its format, says what the node said."""
    case = load(path)
    request = pair.read(case["client"], case["request"])
    node = pair.read_answer(case["node"], json.dumps(case["answer"]).encode(), "n", request)
    client = pair.read_answer(case["client"], json.dumps(case["returned"]).encode(), "n", request)
    same(answer_view(client), answer_view(node), "back")


GOLDEN = Path(__file__).parent / "golden"
REFUSED = load(GOLDEN / "refused.json")["cases"]


@pytest.mark.parametrize("item", REFUSED, ids=[f"{c['client']}-{c['needs']}" for c in REFUSED])
def test_what_cannot_be_translated_is_refused_with_its_reason(item: dict[str, Any]) -> None:
    with pytest.raises(Untranslatable) as refused:
        pair.write(pair.read(item["client"], item["request"]), item["node"], "m", "n")
    assert item["needs"] in str(refused.value)


ERRORS = load(GOLDEN / "errors.json")["cases"]


@pytest.mark.parametrize("item", ERRORS, ids=[f"{c['client']}-{c['status']}" for c in ERRORS])
def test_a_node_error_reaches_the_client_in_its_format(item: dict[str, Any]) -> None:
    raw = item["node_body"]
    body = raw.encode() if isinstance(raw, str) else json.dumps(raw).encode()
    got = json.loads(error_body(item["client"], item["status"], body))
    same(got, item["client_body"], "error")
    if item["client"] == "messages":
        anthropic_error(item["status"], got)
    else:
        assert openai_error(item["status"], got)["message"] == item["client_body"]["error"]["message"]
