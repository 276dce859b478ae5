"""The OpenAI fake's Responses API (sidecar/fakes/responses.py), driven over loopback by the real openai SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import openai
import pytest

from sidecar.fakes.core import CANONICAL
from sidecar.fakes.plan import REASONING, REASONING_PIECES

from .conftest import cli_env, free_port, wait_for_port
from .test_fake_fault_paths import Got, read_events

Fakes = Callable[..., Awaitable[Any]]  # the `fakes` fixture of conftest.py
PLAIN = "Hello from p: word0 word1 word2 word3 word4"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER: Any = {"type": "function", "name": "get_weather", "parameters": SCHEMA, "strict": True}
TIME: Any = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
TOOLS = [WEATHER, TIME, {"type": "web_search"}]  # a hosted tool is never called by the fake
TEXT_EVENTS = [
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    *["response.output_text.delta"] * 6, "response.output_text.done", "response.content_part.done",
    "response.output_item.done", "response.completed",
]  # fmt: skip


@pytest.fixture
async def sdk(fakes: Fakes) -> AsyncIterator[tuple[Any, openai.AsyncOpenAI]]:
    fake = await fakes("p")
    async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0, timeout=5) as client:
        yield fake, client


async def raw(url: str, payload: dict[str, Any]) -> Got:
    got = Got()
    async with httpx.AsyncClient(timeout=5) as client, client.stream("POST", url + "/v1/responses", json=payload) as r:
        got.status = r.status_code
        assert r.headers["content-type"].startswith("text/event-stream")
        await read_events(r, got, "openai", 0.0)
    return got


async def test_a_text_answer_and_its_usage(sdk: Any) -> None:
    fake, client = sdk
    answer = await client.responses.create(model="gpt-4o", input="hi", instructions="be brief", temperature=0.2)
    assert answer.id == "resp_p_1" and answer.object == "response" and answer.status == "completed"
    assert answer.output_text == PLAIN and answer.model == "gpt-4o"
    [message] = answer.output
    assert message.type == "message" and message.role == "assistant" and message.id == "msg_p_1"
    assert message.status == "completed" and [c.type for c in message.content] == ["output_text"]
    assert (answer.instructions, answer.temperature, answer.previous_response_id) == ("be brief", 0.2, None)
    usage = answer.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (7, 5, 12)
    assert (usage.input_tokens_details.cached_tokens, usage.output_tokens_details.reasoning_tokens) == (0, 0)
    assert (fake.stats.responses, fake.stats.chat, fake.stats.models_seen) == (1, 0, ["gpt-4o"])


async def test_the_stream_is_the_event_sequence_and_the_sdk_assembles_it(sdk: Any) -> None:
    fake, client = sdk
    async with client.responses.stream(model="gpt-4o", input=[{"role": "user", "content": "hi"}]) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == PLAIN and len(deltas) == 6
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens == 5
    got = await raw(fake.url, {"model": "gpt-4o", "input": "hi", "stream": True})
    assert [name for name, _ in got.events] == TEXT_EVENTS == [d["type"] for _, d in got.events]
    assert [d["sequence_number"] for _, d in got.events] == list(range(len(TEXT_EVENTS)))
    created, added, part = got.events[0][1], got.events[2][1], got.events[3][1]
    assert created["response"]["status"] == "in_progress" and created["response"]["output"] == []
    assert created["response"]["usage"] is None
    assert added["item"] == {"id": "msg_p_2", "type": "message", "status": "in_progress", "role": "assistant"} | {
        "content": []
    }
    assert part == {
        "type": "response.content_part.added",
        "item_id": "msg_p_2",
        "output_index": 0,
        "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        "sequence_number": 3,
    }
    assert got.events[10][1]["text"] == PLAIN
    completed = got.events[-1][1]["response"]
    assert completed["status"] == "completed" and completed["output"][0]["content"][0]["text"] == PLAIN


async def test_a_function_call_and_a_second_turn_by_previous_response_id(sdk: Any) -> None:
    _, client = sdk
    first = await client.responses.create(model="gpt-4o", input="ask get_weather", tools=TOOLS)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert (call.id, call.call_id) == ("fc_p_1_0", "call_p_1_0")
    assert json.loads(call.arguments) == {"city": "city", "unit": "c"}
    assert first.output_text == "" and first.usage is not None and first.usage.output_tokens > 0
    result: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    second = await client.responses.create(model="gpt-4o", input=result, previous_response_id=first.id, tools=TOOLS)
    assert second.output_text == "get_weather returned: sunny" and second.previous_response_id == first.id
    async with client.responses.stream(model="gpt-4o", input="thanks", previous_response_id=second.id) as stream:
        third = await stream.get_final_response()
    assert third.output_text == PLAIN  # the conversation goes on, ending with a user message
    # The same conversation sent whole, without the store: the same answer.
    whole: Any = [{"role": "user", "content": "ask get_weather"}, call.model_dump(exclude_none=True), *result]
    again = await client.responses.create(model="gpt-4o", input=whole, tools=TOOLS)
    assert again.output_text == "get_weather returned: sunny"


async def test_streamed_function_calls_and_their_argument_fragments(sdk: Any) -> None:
    fake, client = sdk
    request: Any = {"model": "gpt-4o", "input": "get_time and get_weather", "tools": TOOLS}
    async with client.responses.stream(**request) as stream:
        fragments = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
        final = await stream.get_final_response()
    calls = [(o.name, json.loads(o.arguments)) for o in final.output if o.type == "function_call"]
    assert calls == [("get_weather", {"city": "city", "unit": "c"}), ("get_time", {})]
    assert len(fragments) > 2 and "".join(fragments) == "".join(
        o.arguments for o in final.output if o.type == "function_call"
    )
    got = await raw(fake.url, {**request, "stream": True})
    names = [name for name, _ in got.events]
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    added = got.events[2][1]["item"]
    assert added["type"] == "function_call" and added["arguments"] == "" and added["status"] == "in_progress"
    done = [d for n, d in got.events if n == "response.function_call_arguments.done"]
    assert [(d["output_index"], d["name"]) for d in done] == [(0, "get_weather"), (1, "get_time")]
    assert names[-1] == "response.completed" and "response.output_text.delta" not in names


@pytest.mark.parametrize(
    ("prompt", "extra", "called"),
    [
        ("get_time", {"tool_choice": "none"}, []),
        ("hello", {"tool_choice": "required"}, ["get_weather"]),
        ("get_weather", {"tool_choice": {"type": "function", "name": "get_time"}}, ["get_time"]),
        ("get_time get_weather", {"parallel_tool_calls": False}, ["get_weather"]),
        ("hello", {"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, []),
    ],
)
async def test_tool_choice(sdk: Any, prompt: str, extra: dict[str, Any], called: list[str]) -> None:
    _, client = sdk
    answer = await client.responses.create(model="gpt-4o", input=prompt, tools=TOOLS, **extra)
    assert [o.name for o in answer.output if o.type == "function_call"] == called


async def test_reasoning_items_for_reasoning_models(sdk: Any) -> None:
    fake, client = sdk
    answer = await client.responses.create(model="o4-mini", input="hi")
    reasoning, _ = answer.output
    assert reasoning.type == "reasoning" and reasoning.id == "rs_p_1"
    assert [s.text for s in reasoning.summary] == [REASONING] and answer.output_text == PLAIN
    assert answer.usage is not None and answer.usage.output_tokens_details.reasoning_tokens == len(REASONING_PIECES)
    asked = await client.responses.create(model="gpt-4o", input="hi", reasoning={"effort": "low"})
    assert asked.output[0].type == "reasoning" and asked.reasoning is not None and asked.reasoning.effort == "low"
    assert (await client.responses.create(model="gpt-4o", input="hi", reasoning={"effort": "none"})).output[
        0
    ].type == "message"
    got = await raw(fake.url, {"model": "o3", "input": "hi", "stream": True})
    names = [name for name, _ in got.events]
    assert names[2:5] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
    ]
    summary = [d["delta"] for n, d in got.events if n == "response.reasoning_summary_text.delta"]
    assert "".join(summary) == REASONING and names.index("response.reasoning_summary_part.done") < names.index(
        "response.output_text.delta"
    )


async def test_the_store_retrieve_and_unknown_ids(sdk: Any) -> None:
    fake, client = sdk
    kept = await client.responses.create(model="gpt-4o", input="hi")
    assert (await client.responses.retrieve(kept.id)).model_dump() == kept.model_dump()
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.responses.create(model="gpt-4o", input="hi", previous_response_id="resp_nope")
    assert unknown.value.body == {
        "message": "Previous response with id 'resp_nope' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_nope")
    unstored = await client.responses.create(model="gpt-4o", input="hi", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="gpt-4o", input="x", previous_response_id=unstored.id)
    fake.provider.response_store.capacity = 2  # bounded: the oldest goes first
    for _ in range(2):
        await client.responses.create(model="gpt-4o", input="hi")
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(kept.id)
    assert len(fake.provider.response_store.kept) == 2


async def test_a_second_turn_hits_the_prompt_cache(fakes: Fakes) -> None:
    fake = await fakes("c", prompt_cache=True)
    async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0, timeout=5) as client:
        first = await client.responses.create(model="gpt-4o", input="a long enough first question")
        second = await client.responses.create(model="gpt-4o", input="and then?", previous_response_id=first.id)
    assert first.usage is not None and second.usage is not None
    assert first.usage.input_tokens_details.cached_tokens == 0
    assert 0 < second.usage.input_tokens_details.cached_tokens < second.usage.input_tokens
    assert fake.stats.cached_tokens == second.usage.input_tokens_details.cached_tokens


async def test_bad_requests_are_400s(sdk: Any) -> None:
    fake, _ = sdk
    async with httpx.AsyncClient(timeout=5) as client:
        for body in ({"model": "gpt-4o", "input": 7}, {"input": "hi"}, [1], "nope"):
            r = await client.post(fake.url + "/v1/responses", json=body)
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = await client.post(fake.url + "/v1/responses", content=b"{not json")
        assert r.status_code == 400


async def test_a_chat_only_node_answers_404_and_can_be_switched(fakes: Fakes) -> None:
    fake = await fakes("c", responses=False)
    async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0, timeout=5) as client:
        with pytest.raises(openai.NotFoundError) as refused:
            await client.responses.create(model="gpt-4o", input="hi")
        assert refused.value.body == {
            "message": "unknown path /v1/responses",
            "type": "invalid_request_error",
            "code": None,
        }
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_c_1")
        chat = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content == "Hello from c: word0 word1 word2 word3 word4"
        assert fake.stats.responses == 0 and fake.stats.chat == 1
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.post(fake.url + "/_fake/behaviour", json={"responses": True})
            assert r.status_code == 200 and r.json()["responses"] is True
            assert (await http.post(fake.url + "/_fake/behaviour", json={"responses": "no"})).status_code == 400
        assert (await client.responses.create(model="gpt-4o", input="hi")).output_text.startswith("Hello from c")


def test_cli_help_names_no_responses() -> None:
    from click.testing import CliRunner

    from sidecar.cli import main

    result = CliRunner().invoke(main, ["fake-provider", "--help"])
    assert result.exit_code == 0 and "--no-responses" in result.output


@pytest.mark.parametrize("flag", [[], ["--no-responses"]])
async def test_cli_serves_responses_unless_told_not_to(flag: list[str]) -> None:
    port = free_port()
    command = [sys.executable, "-m", "sidecar", "fake-provider", "--port", str(port), "--name", "n", *flag]
    proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_for_port(port, proc)
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.post(f"http://127.0.0.1:{port}/v1/responses", json={"model": "m", "input": "hi"})
            chat = await client.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            )
        assert r.status_code == (404 if flag else 200) and chat.status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


async def test_a_trailing_assistant_message_is_continued(sdk: Any) -> None:
    fake, client = sdk
    prefill: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "alpha bravo"}]
    async with client.responses.stream(model="fault-cut-c", input=prefill) as stream:
        final = await stream.get_final_response()
    assert "alpha bravo" + final.output_text == CANONICAL and final.status == "completed"  # the fault is skipped
    parts: Any = [
        {"role": "user", "content": "hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello from p: wo"}]},
    ]
    plain = await client.responses.create(model="gpt-4o", input=parts)
    assert plain.output_text == "rd0 word1 word2 word3 word4"
    assert (fake.stats.continuations, fake.stats.last_prefill) == (2, "Hello from p: wo")
    # A stored answer is context, not something to continue, even when the next input is empty.
    follow = await client.responses.create(model="gpt-4o", input=[], previous_response_id=plain.id)
    assert follow.output_text == PLAIN and fake.stats.continuations == 2
    fake.set(continuation="none")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="gpt-4o", input=prefill)
    assert refused.value.code == "unsupported_prefill"
