"""Anthropic-format nodes end to end: the real `anthropic` SDK against the real CLI's sidecar, with
Anthropic fake providers on loopback behind it (and an OpenAI one beside them)."""

from __future__ import annotations

import hashlib
from typing import Any

import anthropic
import openai
import pytest

from sidecar.fakes.core import CANONICAL

from .conftest import NODE_KEYS

# A fault model that answers CANONICAL normally (it only refuses continuations, which these tests never ask).
PLAIN = "fault-reject-prefill-e2e"
ASK: dict[str, Any] = {"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather at a place",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def anthropic_config(
    primary: Any, backup: Any, gpt: Any = None, rewrite: bool = True, **upstream: Any
) -> dict[str, Any]:
    nodes = [
        {"name": "claude", "url": primary.url, "api": "anthropic", "api_key": "${PRIMARY_KEY}", "priority": 0},
        # The backup serves every name as PLAIN: a fault model asked of the primary is answered here.
        {"name": "claude-backup", "url": backup.url, "api": "anthropic", "api_key": "${BACKUP_KEY}", "priority": -1,
         "models": {"*": PLAIN} if rewrite else {}},
    ]  # fmt: skip
    if gpt is not None:
        nodes.append({"name": "gpt", "url": gpt.url, "api_key": "${PRIMARY_KEY}", "priority": 0})
    timeout = {"connect": 1, "send": 5, "read": 3, "first_token": 1}
    retry = {"backoff": 0.05, "max_backoff": 0.1}
    return {"upstream": {"timeout": timeout, "retry": retry, "checks": {"passive": {}}, "nodes": nodes, **upstream}}


def sdk(car: Any) -> anthropic.AsyncAnthropic:
    # The SDK's own retries stay on (2 by default): the sidecar's answers must keep it from retrying.
    return anthropic.AsyncAnthropic(base_url=car.url, api_key="the-agents-own-key", timeout=20)


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def test_messages_stream_and_not_through_the_sidecar(fakes: Any, sidecar: Any) -> None:
    primary, backup = await fakes("claude", api="anthropic"), await fakes("claude-b", api="anthropic")
    car = await sidecar(anthropic_config(primary, backup))
    async with sdk(car) as client:
        message = await client.messages.create(model=PLAIN, **ASK)
        assert message.content[0].type == "text" and message.content[0].text == CANONICAL
        async with client.messages.stream(model=PLAIN, **ASK) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert text == CANONICAL and final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert backup.stats.requests == 0
    # The node's key went as x-api-key; the agent's own key never reached a provider.
    assert primary.stats.api_key_sha256 == [sha(NODE_KEYS["PRIMARY_KEY"])]
    assert sha("Bearer the-agents-own-key") not in primary.stats.auth_sha256
    assert sha("the-agents-own-key") not in primary.stats.api_key_sha256
    assert all(v == anthropic._constants.ANTHROPIC_API_VERSION for v in primary.stats.anthropic_versions)
    events = [e for e in (await car.status())["nodes"] if e["name"] == "claude"]
    assert events[0]["api"] == "anthropic" and events[0]["traffic"]["requests"] == 2


async def test_a_tool_use_payload_passes_untouched(fakes: Any, sidecar: Any) -> None:
    primary, backup = await fakes("claude", api="anthropic"), await fakes("claude-b", api="anthropic")
    car = await sidecar(anthropic_config(primary, backup))
    async with sdk(car) as client:
        message = await client.messages.create(
            model="claude-sonnet-4-6", tools=[WEATHER_TOOL], tool_choice={"type": "any"}, **ASK
        )
        async with client.messages.stream(
            model="claude-sonnet-4-6", tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "get_weather"}, **ASK
        ) as stream:
            final = await stream.get_final_message()
    for answer in (message, final):
        assert answer.stop_reason == "tool_use"
        block = answer.content[-1]
        assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("fault-529-{}", "overloaded (529)"),
        ("fault-500-once-{}", "http 500"),
        ("fault-reset-{}", "connection"),
        ("fault-hang-{}", "no first token in 1s"),
        ("fault-stall-{}", None),  # stalls after some words: a stream went out, the SDK must see the break
    ],
)
async def test_failover_on_anthropic_faults(fakes: Any, sidecar: Any, fault: str, reason: str | None) -> None:
    primary, backup = await fakes("claude", api="anthropic"), await fakes("claude-b", api="anthropic")
    car = await sidecar(anthropic_config(primary, backup, retry={"same_node": 0, "backoff": 0.05, "max_backoff": 0.1}))
    model = fault.format("e2e")
    async with sdk(car) as client:
        if reason is None:
            with pytest.raises(anthropic.APIStatusError) as raised:
                async with client.messages.stream(model=model, **ASK) as stream:
                    async for _ in stream.text_stream:
                        pass
            assert "failed mid-stream" in str(raised.value)
            assert backup.stats.requests == 0
            return
        async with client.messages.stream(model=model, **ASK) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            headers = stream.response.headers
    assert text == CANONICAL
    assert headers["x-llm-sidecar-node"] == "claude-backup" and reason in headers["x-llm-sidecar-trail"]
    assert "node=claude-backup" in car.log()


async def test_a_silent_200_fails_over(fakes: Any, sidecar: Any) -> None:
    primary = await fakes("claude", api="anthropic", fault="silent", fail_rate=1.0, faults_on_models=False)
    backup = await fakes("claude-b", api="anthropic")
    car = await sidecar(anthropic_config(primary, backup))
    async with sdk(car) as client, client.messages.stream(model="claude-sonnet-4-6", **ASK) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "text" and primary.stats.requests >= 1 and backup.stats.requests == 1


async def test_all_down_is_one_typed_error_and_no_retry_multiplication(fakes: Any, sidecar: Any) -> None:
    primary = await fakes("claude", api="anthropic", fail_rate=1.0, status=529)
    backup = await fakes("claude-b", api="anthropic", fail_rate=1.0, status=500)
    car = await sidecar(anthropic_config(primary, backup, rewrite=False, retry_timeout=0.5))
    async with sdk(car) as client:
        with pytest.raises(anthropic.InternalServerError) as raised:
            await client.messages.create(model="claude-sonnet-4-6", **ASK)
    error = raised.value
    assert error.response.headers["x-should-retry"] == "false"
    attempts = int(error.response.headers["x-llm-sidecar-attempts"])
    # The SDK's 2 retries were not made: the providers saw exactly the sidecar's own attempts.
    assert primary.stats.requests + backup.stats.requests == attempts


async def test_one_sidecar_serves_an_openai_agent_and_an_anthropic_agent(fakes: Any, sidecar: Any) -> None:
    primary, backup = await fakes("claude", api="anthropic"), await fakes("claude-b", api="anthropic")
    gpt = await fakes("gpt")
    car = await sidecar(anthropic_config(primary, backup, gpt))
    async with sdk(car) as claude_client, openai.AsyncOpenAI(base_url=car.url + "/v1", api_key="x") as gpt_client:
        chat = await gpt_client.chat.completions.create(model=PLAIN, messages=[{"role": "user", "content": "hi"}])
        message = await claude_client.messages.create(model=PLAIN, **ASK)
        models = await claude_client.models.list()
    assert chat.choices[0].message.content == CANONICAL and message.content[0].text == CANONICAL  # type: ignore[union-attr]
    assert gpt.stats.requests >= 1 and primary.stats.requests >= 1
    assert [m.type for m in models.data] and all(m.type == "model" for m in models.data)
    nodes = {n["name"]: n["api"] for n in (await car.status())["nodes"]}
    assert nodes == {"claude": "anthropic", "claude-backup": "anthropic", "gpt": "openai"}


async def test_v1_messages_with_no_anthropic_node_is_an_anthropic_not_found(fakes: Any, sidecar: Any) -> None:
    gpt = await fakes("gpt")
    car = await sidecar({"upstream": {"nodes": [{"name": "gpt", "url": gpt.url}]}})
    async with sdk(car) as client:
        with pytest.raises(anthropic.NotFoundError) as raised:
            await client.messages.create(model="claude-sonnet-4-6", **ASK)
    assert 'api = "anthropic"' in str(raised.value) and gpt.stats.requests == 0
