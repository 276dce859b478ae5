"""The fake provider's simulated prompt cache (Behaviour.prompt_cache), straight to the fake over loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from sidecar.fakes.core import (
    CANONICAL_PIECES,
    FIXED_PROMPT_TOKENS,
    PROMPT_CACHE_SIZE,
    Behaviour,
    estimate_tokens,
    prompt_prefixes,
)

Fakes = Callable[..., Awaitable[Any]]  # the `fakes` fixture of conftest.py
CHAT = "/v1/chat/completions"
CHUNKS = Behaviour().chunks  # completion tokens of a plain model's answer
SYSTEM = {"role": "system", "content": "You are a terse assistant that answers in words."}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # Short timeouts: every wait in this file is bounded, and nothing here should take more than a moment.
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as c:
        yield c


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def ask(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, Any]], model: str = "gpt-4o"
) -> dict[str, Any]:
    """One non-streamed answer: its JSON."""
    r = await client.post(url + CHAT, json={"model": model, "messages": messages})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def ask_stream(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, Any]], model: str = "gpt-4o", usage: bool = True
) -> tuple[str, dict[str, Any] | None]:
    """One streamed answer: its text and the usage of its usage chunk (None without one)."""
    payload: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if usage:
        payload["stream_options"] = {"include_usage": True}
    text, found = "", None
    async with asyncio.timeout(5), client.stream("POST", url + CHAT, json=payload) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if chunk.get("usage") is not None:
                found = chunk["usage"]
            if chunk["choices"]:
                text += chunk["choices"][0]["delta"].get("content") or ""
    return text, found


def cached(usage: dict[str, Any]) -> int:
    value: int = usage["prompt_tokens_details"]["cached_tokens"]
    return value


def expected(messages: list[dict[str, Any]], cached_tokens: int, completion: int = CHUNKS) -> dict[str, Any]:
    prompt = estimate_tokens(messages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


# ---------------------------------------------------------------------------------------------- the estimate


def test_prefix_keys_and_estimates_are_the_documented_formula() -> None:
    # prompt_prefixes builds them incrementally; they must equal serializing every prefix, as its docstring says.
    messages: list[Any] = [
        SYSTEM,
        {
            "content": [{"type": "text", "text": "héllo ☃"}, {"type": "image_url", "image_url": {"url": "x"}}],
            "role": "user",
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42", "extra": [1.5, True, None]},
    ]
    for model in ("gpt-4o", "fault-cut-x"):
        naive = [
            (
                hashlib.sha256(json.dumps([model, messages[:k]], sort_keys=True).encode()).hexdigest(),
                max(1, len(json.dumps(messages[:k])) // 4),
            )
            for k in range(1, len(messages) + 1)
        ]
        assert prompt_prefixes(model, messages) == naive
    assert prompt_prefixes("gpt-4o", []) == []
    assert prompt_prefixes("gpt-4o", messages)[-1][1] == estimate_tokens(messages)
    # The key ignores the order of a message's fields, not the model.
    reordered = [{"content": SYSTEM["content"], "role": "system"}]
    assert prompt_prefixes("gpt-4o", [SYSTEM]) == prompt_prefixes("gpt-4o", reordered)
    assert prompt_prefixes("gpt-4o", [SYSTEM]) != prompt_prefixes("gpt-4o-mini", [SYSTEM])
    assert estimate_tokens([]) == 1 and estimate_tokens([user("x" * 400)]) == len(json.dumps([user("x" * 400)])) // 4


# ---------------------------------------------------------------------------------------------- one node


async def test_a_conversation_hits_the_cache_from_its_second_turn(fakes: Fakes, client: httpx.AsyncClient) -> None:
    fake = await fakes("p", prompt_cache=True)
    turn1 = [SYSTEM, user("What is the capital of France?")]
    first = await ask(client, fake.url, turn1)
    assert first["usage"] == expected(turn1, 0)

    # Turn 2 repeats turn 1 and the answer to it: exactly turn 1's prompt is cached.
    turn2 = [*turn1, first["choices"][0]["message"], user("And of Italy?")]
    second = await ask(client, fake.url, turn2)
    assert second["usage"] == expected(turn2, first["usage"]["prompt_tokens"])
    assert 0 < cached(second["usage"]) < second["usage"]["prompt_tokens"]

    # A fork of turn 2 with another last question gets the longest prefix seen: turn 2 up to the assistant
    # message, which was never sent as a request of its own but is a prefix of turn 2, and all of those are kept.
    fork = [*turn1, first["choices"][0]["message"], user("And of Spain?")]
    third = await ask(client, fake.url, fork)
    assert cached(third["usage"]) == estimate_tokens(turn2[:3])

    # Sending the very same request again caches all of it.
    again = await ask(client, fake.url, turn2)
    assert cached(again["usage"]) == again["usage"]["prompt_tokens"] == estimate_tokens(turn2)

    usages = [first["usage"], second["usage"], third["usage"], again["usage"]]
    assert fake.stats.prompt_tokens == sum(u["prompt_tokens"] for u in usages)
    assert fake.stats.cached_tokens == sum(cached(u) for u in usages)
    assert all(cached(u) <= u["prompt_tokens"] for u in usages)


async def test_another_conversation_or_model_gets_nothing(fakes: Fakes, client: httpx.AsyncClient) -> None:
    fake = await fakes("p", prompt_cache=True)
    turn1 = [SYSTEM, user("What is the capital of France?")]
    await ask(client, fake.url, turn1)
    other = [{"role": "system", "content": "You are verbose."}, user("What is the capital of France?")]
    assert cached((await ask(client, fake.url, other))["usage"]) == 0
    # The model is part of the key: a provider caches per model.
    assert cached((await ask(client, fake.url, turn1, model="gpt-4o-mini"))["usage"]) == 0
    # A conversation that shares only its system prompt gets that prefix, as a real provider would.
    shared = [SYSTEM, user("Something else entirely")]
    assert cached((await ask(client, fake.url, shared))["usage"]) == estimate_tokens([SYSTEM])


# ---------------------------------------------------------------------------------------------- two nodes


async def test_two_nodes_do_not_share_a_cache(fakes: Fakes, client: httpx.AsyncClient) -> None:
    a = await fakes("a", prompt_cache=True)
    b = await fakes("b", prompt_cache=True)
    turn1 = [SYSTEM, user("What is the capital of France?")]
    first = await ask(client, a.url, turn1)
    turn2 = [*turn1, first["choices"][0]["message"], user("And of Italy?")]

    # The conversation moved to b: b has never seen it, so nothing is cached; a still has it.
    moved = await ask(client, b.url, turn2)
    assert moved["usage"] == expected(turn2, 0)
    stayed = await ask(client, a.url, turn2)
    assert stayed["usage"] == expected(turn2, first["usage"]["prompt_tokens"])

    # The per-node cached share a proxy test would compare.
    assert (a.stats.prompt_tokens, a.stats.cached_tokens) == (
        estimate_tokens(turn1) + estimate_tokens(turn2),
        estimate_tokens(turn1),
    )
    assert (b.stats.prompt_tokens, b.stats.cached_tokens) == (estimate_tokens(turn2), 0)
    assert a.stats.cached_tokens / a.stats.prompt_tokens > 0
    assert b.stats.cached_tokens / b.stats.prompt_tokens == 0


# ---------------------------------------------------------------------------------------------- streams, faults


async def test_streamed_usage_carries_the_same_numbers(fakes: Fakes, client: httpx.AsyncClient) -> None:
    # Same name, so both answer the same text and turn 2 is the same request for both.
    streamed = await fakes("p", prompt_cache=True)
    plain = await fakes("p", prompt_cache=True)
    turn1 = [SYSTEM, user("What is the capital of France?")]
    text, usage1 = await ask_stream(client, streamed.url, turn1)
    answer = await ask(client, plain.url, turn1)
    assert text == answer["choices"][0]["message"]["content"]
    assert usage1 == answer["usage"] == expected(turn1, 0)

    turn2 = [*turn1, {"role": "assistant", "content": text}, user("And of Italy?")]
    _, usage2 = await ask_stream(client, streamed.url, turn2)
    assert usage2 == (await ask(client, plain.url, turn2))["usage"] == expected(turn2, estimate_tokens(turn1))

    # Without include_usage the stream has no usage chunk, but the node still processed (and cached) the prompt.
    _, none = await ask_stream(client, streamed.url, turn2, usage=False)
    assert none is None
    assert streamed.stats.prompt_tokens == plain.stats.prompt_tokens + estimate_tokens(turn2)
    assert streamed.stats.cached_tokens == plain.stats.cached_tokens + estimate_tokens(turn2)


@pytest.mark.parametrize("stream", [False, True])
async def test_fault_models_answer_with_the_cache_too(fakes: Fakes, client: httpx.AsyncClient, stream: bool) -> None:
    fake = await fakes("p", prompt_cache=True)
    model = "fault-reject-prefill-cache"  # answers CANONICAL normally
    turn1 = [SYSTEM, user("Spell the alphabet.")]
    turn2 = [*turn1, {"role": "assistant", "content": "alpha"}, user("Again.")]
    usages = []
    for messages in (turn1, turn2):
        if stream:
            _, usage = await ask_stream(client, fake.url, messages, model=model)
        else:
            usage = (await ask(client, fake.url, messages, model=model))["usage"]
        usages.append(usage)
    completion = len(CANONICAL_PIECES)
    assert usages == [expected(turn1, 0, completion), expected(turn2, estimate_tokens(turn1), completion)]


async def test_a_refused_request_neither_counts_nor_fills_the_cache(fakes: Fakes, client: httpx.AsyncClient) -> None:
    fake = await fakes("p", prompt_cache=True)
    model = "fault-429-once-cache"
    turn1 = [SYSTEM, user("Hello?")]
    refused = await client.post(fake.url + CHAT, json={"model": model, "messages": turn1})
    assert refused.status_code == 429
    assert (fake.stats.prompt_tokens, fake.stats.cached_tokens, len(fake.provider.cached_prefixes)) == (0, 0, 0)
    answered = await ask(client, fake.url, turn1, model=model)
    assert answered["usage"] == expected(turn1, 0, len(CANONICAL_PIECES))  # the 429 left nothing behind
    assert fake.stats.prompt_tokens == estimate_tokens(turn1)


async def test_a_continuation_is_cached_like_any_prompt(fakes: Fakes, client: httpx.AsyncClient) -> None:
    fake = await fakes("p", prompt_cache=True)
    turn1 = [SYSTEM, user("Spell the alphabet.")]
    model = "fault-malformed-c"  # a stream-only fault: answers a non-stream request normally
    await ask(client, fake.url, turn1, model=model)
    partial = [*turn1, {"role": "assistant", "content": "alpha bravo"}]  # continue a cut answer
    answer = await ask(client, fake.url, partial, model=model)
    assert answer["usage"] == expected(partial, estimate_tokens(turn1), len(CANONICAL_PIECES) - 2)
    assert fake.stats.continuations == 1


# ---------------------------------------------------------------------------------------------- the LRU


async def test_the_cache_is_a_bounded_lru(fakes: Fakes, client: httpx.AsyncClient) -> None:
    fake = await fakes("p", prompt_cache=True)
    assert fake.provider.cache_capacity == PROMPT_CACHE_SIZE == 50_000
    fake.provider.cache_capacity = 2  # small enough to evict within one test
    three = [SYSTEM, user("one"), user("two")]
    await ask(client, fake.url, three)
    assert len(fake.provider.cached_prefixes) == 2  # prefixes [:2] and [:3]; [:1] was the least recently used
    # [:1] is gone, so a new conversation sharing only the system prompt gets nothing...
    assert cached((await ask(client, fake.url, [SYSTEM, user("other")]))["usage"]) == 0
    # ... and that request's two prefixes pushed out the first conversation's: continuing it finds only the
    # system prompt, which the other conversation put back.
    assert cached((await ask(client, fake.url, [*three, user("three")]))["usage"]) == estimate_tokens([SYSTEM])
    assert len(fake.provider.cached_prefixes) == 2


# ---------------------------------------------------------------------------------------------- off, and the switch


async def test_with_prompt_cache_off_usage_is_exactly_as_before(fakes: Fakes, client: httpx.AsyncClient) -> None:
    fake = await fakes("p")
    assert fake.provider.behaviour.prompt_cache is False
    messages = [SYSTEM, user("What is the capital of France?")]
    for _ in range(2):  # a repeat changes nothing either
        answer = await ask(client, fake.url, messages)
        assert answer["usage"] == {
            "prompt_tokens": FIXED_PROMPT_TOKENS,
            "completion_tokens": CHUNKS,
            "total_tokens": 12,
        }
        assert list(answer["usage"]) == ["prompt_tokens", "completion_tokens", "total_tokens"]
        _, usage = await ask_stream(client, fake.url, messages)
        assert usage == {"prompt_tokens": 7, "completion_tokens": CHUNKS, "total_tokens": 7 + CHUNKS}
        fault = await ask(client, fake.url, messages, model="fault-reject-prefill")
        assert fault["usage"] == {"prompt_tokens": 7, "completion_tokens": 24, "total_tokens": 31}
    assert (fake.stats.prompt_tokens, fake.stats.cached_tokens, len(fake.provider.cached_prefixes)) == (0, 0, 0)


async def test_prompt_cache_is_switched_like_any_behaviour(fakes: Fakes, client: httpx.AsyncClient) -> None:
    fake = await fakes("p")
    messages = [SYSTEM, user("What is the capital of France?")]
    r = await client.post(fake.url + "/_fake/behaviour", json={"prompt_cache": "false"})
    assert r.status_code == 400 and "true or false" in r.json()["error"]  # not bool("false"), which is True
    r = await client.post(fake.url + "/_fake/behaviour", json={"prompt_cache": True})
    assert r.status_code == 200 and r.json()["prompt_cache"] is True
    assert (await client.get(fake.url + "/_fake/behaviour")).json()["prompt_cache"] is True
    await ask(client, fake.url, messages)
    assert cached((await ask(client, fake.url, messages))["usage"]) == estimate_tokens(messages)
    stats = (await client.get(fake.url + "/_fake/stats")).json()
    assert (stats["prompt_tokens"], stats["cached_tokens"]) == (
        2 * estimate_tokens(messages),
        estimate_tokens(messages),
    )

    # Off again: the fixed usage, and the cache is neither read nor written meanwhile.
    r = await client.post(fake.url + "/_fake/behaviour", json={"prompt_cache": False})
    assert r.status_code == 200 and r.json()["prompt_cache"] is False
    assert (await ask(client, fake.url, messages))["usage"]["prompt_tokens"] == FIXED_PROMPT_TOKENS
    assert fake.stats.prompt_tokens == 2 * estimate_tokens(messages)
