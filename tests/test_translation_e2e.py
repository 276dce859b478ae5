"""Real clients end to end on translated nodes: the real `anthropic` and `openai` SDKs against the real CLI's
sidecar, with fake providers of the other format on loopback behind it (they call tools from the request's
schemas and quote tool results back, so a whole tool conversation can be held)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANTHROPIC_TOOL: dict[str, Any] = {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER}
CHAT_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
}
RESPONSES_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather",
    "parameters": WEATHER,
}
ASK = "Use get_weather for Paris."


def config(*nodes: dict[str, Any]) -> dict[str, Any]:
    timeout = {"connect": 1, "send": 5, "read": 3, "first_token": 2}
    retry = {"backoff": 0.05, "max_backoff": 0.1, "same_node": 0}
    return {"upstream": {"timeout": timeout, "retry": retry, "checks": {"passive": {}}, "nodes": list(nodes)}}


def node(name: str, fake: Any, priority: int = 0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": fake.url, "api_key": "${PRIMARY_KEY}", "priority": priority, **extra}


def claude(car: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=car.url, api_key="unused", timeout=20)


def gpt(car: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=car.url + "/v1", api_key="unused", timeout=20)


async def test_the_anthropic_sdk_with_tools_on_an_openai_node(fakes: Any, sidecar: Any) -> None:
    fake = await fakes("gpt")
    car = await sidecar(config(node("gpt", fake, translate=True, models={"*": "gpt-4.1"})))
    async with claude(car) as client:
        messages: list[Any] = [{"role": "user", "content": ASK}]
        async with client.messages.stream(model="claude-sonnet-4-6", max_tokens=256, tools=[ANTHROPIC_TOOL],
                                          messages=messages) as stream:  # fmt: skip
            first = await stream.get_final_message()
        assert first.stop_reason == "tool_use"
        call = next(b for b in first.content if b.type == "tool_use")
        assert call.name == "get_weather" and call.input == {"city": "city"}  # the fake's value from the schema
        messages += [
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}]},
        ]
        second = await client.messages.create(model="claude-sonnet-4-6", max_tokens=256, tools=[ANTHROPIC_TOOL],
                                              messages=messages)  # fmt: skip
        assert second.stop_reason == "end_turn"
        assert second.content[0].type == "text" and second.content[0].text == "get_weather returned: 18 C"
        assert second.usage.input_tokens > 0 and second.usage.output_tokens > 0
    assert fake.stats.chat == 2


async def test_the_openai_sdk_chat_stream_and_tools_on_an_anthropic_node(fakes: Any, sidecar: Any) -> None:
    fake = await fakes("claude", api="anthropic")
    car = await sidecar(config(node("claude", fake, api="anthropic", translate=True)))
    async with gpt(car) as client:
        plain = await client.chat.completions.create(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hi"}]
        )
        assert plain.choices[0].message.content.startswith("Hello from claude")
        assert plain.choices[0].finish_reason == "stop" and plain.usage is not None
        messages: list[Any] = [{"role": "user", "content": ASK}]
        async with client.chat.completions.stream(model="claude-sonnet-4-6", messages=messages, tools=[CHAT_TOOL],
                                                  stream_options={"include_usage": True}) as stream:  # fmt: skip
            done = await stream.get_final_completion()
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and done.usage is not None
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "city"}
        messages += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call.model_dump(exclude_none=True, exclude={"index"})],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "-3 C"},
        ]
        answer = await client.chat.completions.create(model="claude-sonnet-4-6", messages=messages, tools=[CHAT_TOOL])
        assert answer.choices[0].message.content == "get_weather returned: -3 C"


async def test_the_openai_responses_api_on_a_chat_only_node(fakes: Any, sidecar: Any) -> None:
    fake = await fakes("local", responses=False)
    car = await sidecar(config(node("local", fake, responses=False, translate=True)))
    async with gpt(car) as client:
        plain = await client.responses.create(model="qwen", input="hi", instructions="Be brief.")
        assert plain.status == "completed" and plain.output_text.startswith("Hello from local")
        async with client.responses.stream(model="qwen", input=ASK, tools=[RESPONSES_TOOL], store=False) as stream:
            first = await stream.get_final_response()
        call = next(item for item in first.output if item.type == "function_call")
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "city"}
        follow = [
            {"role": "user", "content": ASK},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "22 C"},
        ]
        second = await client.responses.create(model="qwen", input=follow, tools=[RESPONSES_TOOL], store=False)
        assert second.output_text == "get_weather returned: 22 C"
        assert second.usage is not None and second.usage.input_tokens > 0
        # The node keeps nothing of a translated response: a clear 400 naming it, not a 404 from some node.
        with pytest.raises(openai.BadRequestError, match="'local' through translation"):
            await client.responses.create(model="qwen", input="more", previous_response_id=second.id)
    assert fake.stats.responses == 0 and fake.stats.chat == 3


async def test_a_tool_conversation_fails_over_from_anthropic_to_openai_mid_way(fakes: Any, sidecar: Any) -> None:
    primary, backup = await fakes("claude", api="anthropic"), await fakes("gpt")
    car = await sidecar(config(node("claude", primary, 1, api="anthropic"),
                               node("gpt", backup, 0, translate=True, models={"*": "gpt-4.1"})))  # fmt: skip
    async with claude(car) as client:
        messages: list[Any] = [{"role": "user", "content": ASK}]
        first = await client.messages.create(model="claude-sonnet-4-6", max_tokens=256, tools=[ANTHROPIC_TOOL],
                                             messages=messages)  # fmt: skip
        call = next(b for b in first.content if b.type == "tool_use")
        assert call.id.startswith("toolu_")  # the Anthropic primary made it
        primary.set(fail_rate=1.0, fault="error", status=529)
        messages += [
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}]},
        ]
        raw = await client.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=256,
                                                             tools=[ANTHROPIC_TOOL], messages=messages)  # fmt: skip
        second = await raw.parse()
        assert raw.headers["x-llm-sidecar-node"] == "gpt" and "claude" in raw.headers["x-llm-sidecar-trail"]
        assert second.content[0].text == "get_weather returned: 18 C"  # the backup saw the primary's call id
    assert backup.stats.chat == 1
