"""The OpenAI fake's chat completions with tools and reasoning, driven over loopback by the real openai SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import openai
import pydantic
import pytest

Fakes = Callable[..., Awaitable[Any]]  # the `fakes` fixture of conftest.py


class Weather(pydantic.BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]
    days: int = pydantic.Field(ge=1, le=7)
    at: list[str]


WEATHER: Any = openai.pydantic_function_tool(Weather, name="get_weather")  # strict: what SDK users send


class Now(pydantic.BaseModel):
    pass


TIME: Any = openai.pydantic_function_tool(Now, name="get_time")
TOOLS = [WEATHER, TIME]
WEATHER_ARGS = {"city": "city", "unit": "celsius", "days": 1, "at": ["at"]}


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def sdk(fakes: Fakes) -> AsyncIterator[tuple[Any, openai.AsyncOpenAI]]:
    fake = await fakes("p")
    async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0, timeout=5) as client:
        yield fake, client


async def raw_chunks(client: openai.AsyncOpenAI, **request: Any) -> list[Any]:
    stream = await client.chat.completions.create(stream=True, **request)
    return [chunk async for chunk in stream]


async def test_a_named_tool_is_called_with_arguments_its_schema_accepts(sdk: Any) -> None:
    fake, client = sdk
    answer = await client.chat.completions.parse(
        model="gpt-4o", messages=user("what does get_weather say?"), tools=TOOLS
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id == "call_p_1_0" and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    assert call.function.parsed_arguments == Weather(**WEATHER_ARGS)  # the SDK's strict parsing took them
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert answer.usage.completion_tokens_details is None  # no reasoning: usage as ever
    assert fake.stats.chat == 1


async def test_the_stream_helper_assembles_the_same_calls(sdk: Any) -> None:
    _, client = sdk
    async with client.chat.completions.stream(model="gpt-4o", messages=user("get_weather please"), tools=TOOLS) as s:
        arguments = [e.arguments_delta async for e in s if e.type == "tool_calls.function.arguments.delta"]
        final = await s.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.function.parsed_arguments == Weather(**WEATHER_ARGS)
    assert len(arguments) > 1 and "".join(arguments) == call.function.arguments  # split across chunks


async def test_streamed_calls_by_hand_index_id_name_then_fragments(sdk: Any) -> None:
    _, client = sdk
    chunks = await raw_chunks(client, model="gpt-4o", messages=user("get_time and get_weather"), tools=TOOLS)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant" and deltas[0].tool_calls is not None
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for part in delta.tool_calls or []:
            if part.id is not None:  # a call's first chunk: its index, id, type and name, no arguments yet
                assert part.type == "function" and part.function is not None and part.function.arguments == ""
                assert part.index not in calls
                calls[part.index] = {"id": part.id, "name": part.function.name or "", "arguments": ""}
            else:
                assert part.function is not None and part.function.name is None
                calls[part.index]["arguments"] += part.function.arguments or ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", WEATHER_ARGS),
        ("get_time", {}),
    ]  # the order of `tools`, in parallel
    assert [c["id"] for c in calls.values()] == ["call_p_1_0", "call_p_1_1"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize(
    ("prompt", "extra", "called"),
    [
        ("get_time and get_weather", {}, ["get_weather", "get_time"]),
        ("get_time and get_weather", {"parallel_tool_calls": False}, ["get_weather"]),
        ("get_time", {"tool_choice": "none"}, []),
        ("get_weather", {"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, ["get_time"]),
        ("hello", {"tool_choice": "required"}, ["get_weather"]),
        ("hello", {"tool_choice": "auto"}, []),
        ("hello", {}, []),
    ],
)
async def test_tool_choice(sdk: Any, prompt: str, extra: dict[str, Any], called: list[str]) -> None:
    _, client = sdk
    for stream in (False, True):
        request = {"model": "gpt-4o", "messages": user(prompt), "tools": TOOLS, **extra}
        if stream:
            async with client.chat.completions.stream(**request) as s:
                answer = await s.get_final_completion()
        else:
            answer = await client.chat.completions.create(**request)
        message = answer.choices[0].message
        assert [c.function.name for c in message.tool_calls or []] == called
        if not called:
            assert message.content == "Hello from p: word0 word1 word2 word3 word4"
            assert answer.choices[0].finish_reason == "stop"


async def test_a_turn_of_tool_results_is_answered_with_text_quoting_them(sdk: Any) -> None:
    _, client = sdk
    first = await client.chat.completions.create(model="gpt-4o", messages=user("get_time and get_weather"), tools=TOOLS)
    message = first.choices[0].message
    results = [
        {"role": "tool", "tool_call_id": call.id, "content": f"result {i}"}
        for i, call in enumerate(message.tool_calls or [])
    ]
    turn: Any = [*user("get_time and get_weather"), message.model_dump(exclude_none=True), *results]
    second = await client.chat.completions.create(model="gpt-4o", messages=turn, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    assert second.choices[0].message.content == "get_weather returned: result 0; get_time returned: result 1"
    parts: Any = [{"role": "tool", "tool_call_id": "call_unknown", "content": [{"type": "text", "text": "42"}]}]
    async with client.chat.completions.stream(model="gpt-4o", messages=[*user("x"), *parts], tools=TOOLS) as s:
        streamed = await s.get_final_completion()
    assert streamed.choices[0].message.content == "call_unknown returned: 42"  # a call not in the conversation


async def test_reasoning_models_stream_reasoning_content_first_and_count_it(sdk: Any) -> None:
    _, client = sdk
    chunks = await raw_chunks(client, model="o3-mini", messages=user("hi"), stream_options={"include_usage": True})
    kinds = []
    for c in chunks:
        delta = c.choices[0].delta if c.choices else None
        extra = (delta.model_extra or {}) if delta is not None else {}
        kinds += ["reasoning"] if extra.get("reasoning_content") else []
        kinds += ["content"] if delta is not None and delta.content else []
    assert kinds == ["reasoning"] * 8 + ["content"] * 6  # before any content, as DeepSeek streams it
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    assert reasoning == "Let me think about this step by step."
    usage = chunks[-1].usage
    assert usage.completion_tokens == 5 + 8 and usage.completion_tokens_details.reasoning_tokens == 8
    answer = await client.chat.completions.create(model="deepseek-reasoner", messages=user("hi"))
    assert (answer.choices[0].message.model_extra or {})["reasoning_content"] == reasoning
    asked = await client.chat.completions.create(model="gpt-4o", messages=user("hi"), reasoning_effort="low")
    assert asked.usage is not None and asked.usage.completion_tokens_details is not None
    plain = await client.chat.completions.create(model="gpt-4o", messages=user("hi"), reasoning_effort="none")
    assert "reasoning_content" not in (plain.choices[0].message.model_extra or {})


async def test_tool_calls_use_the_prompt_cache_like_any_prompt(fakes: Fakes) -> None:
    fake = await fakes("c", prompt_cache=True)
    async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0, timeout=5) as client:
        first = await client.chat.completions.create(model="gpt-4o", messages=user("get_time"), tools=TOOLS)
        message = first.choices[0].message
        [call] = message.tool_calls or []
        turn: Any = [*user("get_time"), message.model_dump(exclude_none=True)]
        turn.append({"role": "tool", "tool_call_id": call.id, "content": "noon"})
        second = await client.chat.completions.create(model="gpt-4o", messages=turn, tools=TOOLS)
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None and first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details is not None
    assert 0 < second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
    assert second.choices[0].message.content == "get_time returned: noon"


async def test_hostile_tools_and_messages_get_an_answer(sdk: Any) -> None:
    _, client = sdk
    hostile: Any = [
        {"type": "function"},
        {"type": "function", "function": "x"},
        {"type": "function", "function": {"name": ""}},
        {"type": "code_interpreter"},
        "tool",
        {"type": "function", "function": {"name": "deep", "parameters": {"$ref": "#"}}},
    ]
    answer = await client.chat.completions.create(
        model="gpt-4o", messages=[*user("deep"), "x", {"role": "tool"}], tools=hostile, tool_choice="weird"
    )
    assert answer.choices[0].message.content == "a tool returned: "  # a trailing tool message without id or content
    called = await client.chat.completions.create(model="gpt-4o", messages=user("deep"), tools=hostile)
    assert [(c.function.name, c.function.arguments) for c in called.choices[0].message.tool_calls or []] == [
        ("deep", "{}")
    ]
