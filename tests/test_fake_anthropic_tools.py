"""The Anthropic fake's tools and thinking (sidecar/fakes/messages.py), driven over loopback by the real anthropic SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import pytest

from sidecar.fakes.plan import REASONING, REASONING_PIECES

from .test_fake_anthropic import KEY, raw_events

Fakes = Callable[..., Awaitable[Any]]  # the `fakes` fixture of conftest.py
PLAIN = "Hello from a: word0 word1 word2 word3 word4"
SCHEMA = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City and state"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "hours": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 23}, "minItems": 2},
        "detail": {"type": "object", "properties": {"wind": {"type": "boolean"}}, "required": ["wind"]},
    },
    "required": ["location", "unit", "hours", "detail"],
}
INPUT = {"location": "location", "unit": "celsius", "hours": [0, 0], "detail": {"wind": True}}
TOOLS: Any = [
    {"name": "get_weather", "description": "Weather", "input_schema": SCHEMA},
    {"name": "get_time", "description": "Time", "input_schema": {"type": "object", "properties": {}}},
    {"type": "web_search_20250305", "name": "web_search"},  # a server tool: never called by the fake
]
THINKING: Any = {"type": "enabled", "budget_tokens": 1024}


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def sdk_for(node: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=node.url, api_key=KEY, max_retries=0, timeout=5)


@pytest.fixture
async def client(fakes: Fakes) -> AsyncIterator[tuple[Any, anthropic.AsyncAnthropic]]:
    node = await fakes("a", api="anthropic")
    async with sdk_for(node) as sdk:
        yield node, sdk


async def ask(sdk: anthropic.AsyncAnthropic, messages: Any, **extra: Any) -> Any:
    return await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=2048, messages=messages, **extra)


async def test_tool_use_input_is_made_from_the_input_schema(client: Any) -> None:
    _, sdk = client
    answer = await ask(sdk, user("what does get_weather say for Paris?"), tools=TOOLS)
    assert answer.stop_reason == "tool_use"
    [block] = answer.content
    assert (block.type, block.id, block.name, block.input) == ("tool_use", "toolu_a_1_0", "get_weather", INPUT)
    assert answer.usage.output_tokens > 0


async def test_the_stream_sends_input_json_fragments_the_sdk_joins(client: Any) -> None:
    node, sdk = client
    request: Any = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": user("get_weather"), "tools": TOOLS}
    async with sdk.messages.stream(**request) as stream:
        fragments = [e.partial_json async for e in stream if e.type == "input_json"]
        final = await stream.get_final_message()
    assert [(b.type, b.name, b.input) for b in final.content] == [("tool_use", "get_weather", INPUT)]
    assert len(fragments) > 2 and json.loads("".join(fragments)) == INPUT
    lines = await raw_events(node.url, {**request, "stream": True})
    names = [v for f, v, _ in lines if f == "event"]
    data = [v for f, v, _ in lines if f == "data"]
    assert names == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * len(fragments),
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert data[1]["content_block"] == {"type": "tool_use", "id": "toolu_a_2_0", "name": "get_weather", "input": {}}
    assert {d["delta"]["type"] for d in data[3:-3]} == {"input_json_delta"}
    assert data[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


async def test_parallel_calls_are_blocks_in_order(client: Any) -> None:
    node, sdk = client
    both = user("get_time, then get_weather")
    answer = await ask(sdk, both, tools=TOOLS)
    assert [(b.name, b.id) for b in answer.content] == [("get_weather", "toolu_a_1_0"), ("get_time", "toolu_a_1_1")]
    lines = await raw_events(
        node.url, {"model": "m", "max_tokens": 64, "messages": both, "tools": TOOLS, "stream": True}
    )
    starts = [v for f, v, _ in lines if f == "data" and v["type"] == "content_block_start"]
    assert [(s["index"], s["content_block"]["name"]) for s in starts] == [(0, "get_weather"), (1, "get_time")]
    stops = [v["index"] for f, v, _ in lines if f == "data" and v["type"] == "content_block_stop"]
    assert stops == [0, 1]
    one = await ask(sdk, both, tools=TOOLS, tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert [b.name for b in one.content] == ["get_weather"]


@pytest.mark.parametrize(
    ("prompt", "choice", "called"),
    [
        ("get_time", {"type": "auto"}, ["get_time"]),
        ("hello", {"type": "auto"}, []),
        ("hello", {"type": "any"}, ["get_weather"]),
        ("get_weather", {"type": "tool", "name": "get_time"}, ["get_time"]),
        ("get_weather", {"type": "none"}, []),
        ("web_search", {"type": "auto"}, []),
    ],
)
async def test_tool_choice(client: Any, prompt: str, choice: Any, called: list[str]) -> None:
    _, sdk = client
    answer = await ask(sdk, user(prompt), tools=TOOLS, tool_choice=choice)
    assert [b.name for b in answer.content if b.type == "tool_use"] == called
    if not called:
        assert answer.stop_reason == "end_turn" and answer.content[0].text == PLAIN


async def test_a_tool_result_turn_is_answered_with_a_quote_errors_included(client: Any) -> None:
    _, sdk = client
    first = await ask(sdk, user("get_weather and get_time"), tools=TOOLS)
    weather, time = first.content
    results: Any = [
        {"type": "tool_result", "tool_use_id": weather.id, "content": "sunny"},
        {
            "type": "tool_result",
            "tool_use_id": time.id,
            "content": [{"type": "text", "text": "clock broke"}],
            "is_error": True,
        },
        {"type": "text", "text": "and?"},
    ]
    turn: Any = [*user("get_weather and get_time"), {"role": "assistant", "content": first.content}]
    turn.append({"role": "user", "content": results})
    second = await ask(sdk, turn, tools=TOOLS)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "get_weather returned: sunny; get_time failed: clock broke"
    async with sdk.messages.stream(model="m", max_tokens=64, messages=turn, tools=TOOLS) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == second.content[0].text


async def test_thinking_blocks_with_a_signature(client: Any) -> None:
    node, sdk = client
    answer = await ask(sdk, user("hi"), thinking=THINKING)
    thinking, text = answer.content
    assert thinking.type == "thinking" and thinking.thinking == REASONING and len(thinking.signature) > 20
    assert text.text == PLAIN and answer.usage.output_tokens == 5 + len(REASONING_PIECES)
    request: Any = {"model": "claude-sonnet-4-6", "max_tokens": 2048, "messages": user("hi"), "thinking": THINKING}
    async with sdk.messages.stream(**request) as stream:
        kinds = [e.type async for e in stream if e.type in ("thinking", "signature", "text")]
        final = await stream.get_final_message()
    assert kinds == ["thinking"] * 8 + ["signature"] + ["text"] * 6
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in answer.content]  # same signature
    lines = await raw_events(node.url, {**request, "stream": True})
    data = [v for f, v, _ in lines if f == "data"]
    assert data[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    deltas = [(d["index"], d["delta"]["type"]) for d in data if d["type"] == "content_block_delta"]
    assert deltas == [(0, "thinking_delta")] * 8 + [(0, "signature_delta")] + [(1, "text_delta")] * 6
    order = [(d["type"], d.get("index")) for d in data if d["type"].startswith("content_block_s")]
    assert order == [
        ("content_block_start", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_stop", 1),
    ]
    adaptive = await ask(sdk, user("hi"), thinking={"type": "adaptive"})
    assert adaptive.content[0].type == "thinking"
    assert [b.type for b in (await ask(sdk, user("hi"), thinking={"type": "disabled"})).content] == ["text"]


async def test_thinking_then_tools_then_the_result_turn(client: Any) -> None:
    _, sdk = client
    first = await ask(sdk, user("get_time"), tools=TOOLS, thinking=THINKING)
    assert [b.type for b in first.content] == ["thinking", "tool_use"] and first.stop_reason == "tool_use"
    result: Any = [{"type": "tool_result", "tool_use_id": first.content[1].id, "content": "noon"}]
    turn: Any = [
        *user("get_time"),
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": result},
    ]
    second = await ask(sdk, turn, tools=TOOLS, thinking=THINKING)
    assert [b.type for b in second.content] == ["thinking", "text"] and second.content[
        1
    ].text == "get_time returned: noon"


async def test_a_result_turn_reads_the_cache_of_the_first(fakes: Fakes) -> None:
    node = await fakes("a", api="anthropic", prompt_cache=True)
    async with sdk_for(node) as sdk:
        first = await ask(sdk, user("get_time"), tools=TOOLS)
        result: Any = [{"type": "tool_result", "tool_use_id": first.content[0].id, "content": "noon"}]
        turn: Any = [*user("get_time"), {"role": "assistant", "content": first.content}]
        second = await ask(sdk, [*turn, {"role": "user", "content": result}], tools=TOOLS)
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens > 0 and second.usage.input_tokens > 0
    assert node.stats.cached_tokens == second.usage.cache_read_input_tokens
