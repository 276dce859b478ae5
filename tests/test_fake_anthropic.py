"""The fake provider's Anthropic mode (sidecar/fakes/anthropic.py), driven over loopback by the real anthropic SDK."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner

from sidecar.cli import main
from sidecar.fakes.anthropic import ANTHROPIC_FAULT_MODELS, AnthropicFake
from sidecar.fakes.core import (
    CANONICAL,
    CANONICAL_PIECES,
    CANONICAL_WORDS,
    FAULT_MODELS,
    FIXED_PROMPT_TOKENS,
    Behaviour,
    estimate_tokens,
    fault_for_model,
)
from sidecar.fakes.openai import FakeProvider
from sidecar.fakes.serve import provider_class, start
from sidecar.proxy.answer import context_overflow, is_refusal

from .conftest import cli_env, free_port, wait_for_port

KEY = "sk-ant-test-key-0123456789"
# The SDK's HTTP library, whose errors a broken stream raises through it: httpx2 in anthropic 2.x, httpx before.
SDK_HTTP: Any = getattr(anthropic._base_client, "httpx2", None) or httpx
FIRST_WORDS = " ".join(CANONICAL_WORDS[: Behaviour().cut_after])
PLAIN = "Hello from a: word0 word1 word2 word3 word4"  # a plain model's answer from node "a" with 5 chunks
HI: Any = [{"role": "user", "content": "hi"}]  # Any: the SDK types messages as TypedDicts
TOOLS: Any = [
    {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}},
    {"name": "get_time", "description": "Time", "input_schema": {"type": "object", "properties": {}}},
]


@dataclass
class Node:
    provider: AnthropicFake
    runner: web.AppRunner
    url: str

    @property
    def stats(self) -> Any:
        return self.provider.stats

    def client(self, timeout: float = 5.0, **options: Any) -> anthropic.AsyncAnthropic:
        options.setdefault("api_key", KEY)
        return anthropic.AsyncAnthropic(base_url=self.url, max_retries=0, timeout=timeout, **options)


@pytest.fixture(autouse=True)
def no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    started: list[web.AppRunner] = []

    async def start_node(name: str = "a", api_key: str | None = None, **behaviour: Any) -> Node:
        provider = AnthropicFake(name, Behaviour(**behaviour), seed=1, api_key=api_key)
        runner = web.AppRunner(provider.app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        started.append(runner)
        return Node(provider, runner, f"http://127.0.0.1:{runner.addresses[0][1]}")

    yield start_node
    for runner in started:
        await runner.cleanup()


Nodes = Callable[..., Awaitable[Node]]


async def ask(client: anthropic.AsyncAnthropic, model: str, messages: Any = None, **extra: Any) -> Any:
    return await client.messages.create(model=model, max_tokens=64, messages=messages or HI, **extra)


async def ask_stream(client: anthropic.AsyncAnthropic, model: str, messages: Any = None, **extra: Any) -> Any:
    """Stream with the SDK's helper: the final message (its text is what text_stream yielded)."""
    async with (
        asyncio.timeout(10),
        client.messages.stream(model=model, max_tokens=64, messages=messages or HI, **extra) as stream,
    ):
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    if final.content and final.content[0].type == "text":
        assert final.content[0].text == text
    return final


async def streamed_text(client: anthropic.AsyncAnthropic, model: str) -> tuple[str, BaseException | None]:
    """What text_stream yielded before the stream ended, and the exception that ended it, if any."""
    text = ""
    try:
        async with (
            asyncio.timeout(10),
            client.messages.stream(model=model, max_tokens=64, messages=HI) as stream,
        ):
            async for piece in stream.text_stream:
                text += piece
    except Exception as exc:
        return text, exc
    return text, None


async def raw_events(url: str, payload: dict[str, Any], within: float = 5.0) -> list[tuple[str, Any, float]]:
    """The SSE lines of one streamed request, read with httpx: (field, value, seconds since sent) per non-empty line;
    data values parsed as JSON where they are JSON."""
    started, lines = time.monotonic(), []
    headers = {"x-api-key": KEY}
    async with (
        httpx.AsyncClient(timeout=within) as client,
        client.stream("POST", url + "/v1/messages", json=payload, headers=headers) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(within):
            async for line in r.aiter_lines():
                if not line:
                    continue
                name, _, value = line.partition(": ")
                parsed: Any = value
                if name == "data":
                    with contextlib.suppress(ValueError):
                        parsed = json.loads(value)
                lines.append((name, parsed, time.monotonic() - started))
    return lines


def payload(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": HI, "stream": True, **extra}


# ---------------------------------------------------------------------------------------------- the table, the API


def test_fault_table_extends_openais() -> None:
    assert set(ANTHROPIC_FAULT_MODELS) == set(FAULT_MODELS) | {"529", "529-once"}
    assert "529" not in FAULT_MODELS  # the OpenAI dialect's table is unchanged
    assert fault_for_model("fault-529-once-t3", ANTHROPIC_FAULT_MODELS) == "529-once"
    assert fault_for_model("fault-529-t3", ANTHROPIC_FAULT_MODELS) == "529"
    assert fault_for_model("fault-529-t3") is None
    assert provider_class("anthropic") is AnthropicFake and provider_class() is FakeProvider
    assert issubclass(AnthropicFake, FakeProvider)
    with pytest.raises(ValueError, match="api must be one of"):
        provider_class("gemini")


async def test_start_helper_serves_anthropic() -> None:
    provider, runner = await start("s", "127.0.0.1", 0, api="anthropic")
    try:
        assert isinstance(provider, AnthropicFake)
        async with anthropic.AsyncAnthropic(
            base_url=f"http://127.0.0.1:{runner.addresses[0][1]}", api_key=KEY, max_retries=0, timeout=5
        ) as client:
            answer = await ask(client, "claude-sonnet-4-6")
        assert answer.content[0].text == "Hello from s: word0 word1 word2 word3 word4"
    finally:
        await runner.cleanup()


async def test_non_stream_answer_and_usage(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client() as client:
        raw = await client.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=64, messages=HI)
        answer: Any = await raw.parse()
        assert raw.headers["x-fake-provider"] == "a"
        assert answer.id == "msg_a_1" and answer.type == "message" and answer.role == "assistant"
        assert answer.model == "claude-sonnet-4-6"
        assert [(b.type, b.text) for b in answer.content] == [("text", PLAIN)]
        assert answer.stop_reason == "end_turn" and answer.stop_sequence is None
        usage = answer.usage
        assert (usage.input_tokens, usage.output_tokens) == (FIXED_PROMPT_TOKENS, 5)
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
        canonical = await ask(client, "fault-reject-prefill-n")
        assert canonical.content[0].text == CANONICAL and canonical.usage.output_tokens == len(CANONICAL_WORDS)
    assert (node.stats.chat, node.stats.models_seen) == (2, ["claude-sonnet-4-6", "fault-reject-prefill-n"])


async def test_stream_with_the_sdk(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client() as client:
        final = await ask_stream(client, "fault-reject-prefill-s")
        assert final.content[0].text == CANONICAL and final.stop_reason == "end_turn"
        assert (final.usage.input_tokens, final.usage.output_tokens) == (FIXED_PROMPT_TOKENS, 24)
        assert final.usage.cache_read_input_tokens == 0
        plain = await ask_stream(client, "claude-haiku-4-5")
        assert plain.content[0].text == PLAIN and plain.usage.output_tokens == 5


async def test_stream_event_sequence_is_anthropics(nodes: Nodes) -> None:
    node = await nodes()
    lines = await raw_events(node.url, payload("fault-reject-prefill-e"))
    names = [value for field, value, _ in lines if field == "event"]
    data = [value for field, value, _ in lines if field == "data"]
    assert names == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * 24,
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert [d["type"] for d in data] == names  # every data names its event
    start = data[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["model"] == "fault-reject-prefill-e"
    assert start["usage"] == {
        "input_tokens": FIXED_PROMPT_TOKENS,
        "output_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert data[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [d["delta"] for d in data[3:27]] == [{"type": "text_delta", "text": p} for p in CANONICAL_PIECES]
    assert data[27] == {"type": "content_block_stop", "index": 0}
    assert data[28]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert data[28]["usage"] == {"output_tokens": 24}


# ---------------------------------------------------------------------------------------------- errors by fault model


async def test_rate_limits(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client() as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await ask(client, "fault-429-once-r")
        error = caught.value
        assert error.status_code == 429 and error.response.headers["retry-after"] == "1"
        assert error.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert error.body["type"] == "error" and error.body["request_id"].startswith("req_")  # type: ignore[index]
        assert (await ask(client, "fault-429-once-r")).content[0].text == CANONICAL
        for _ in range(2):
            with pytest.raises(anthropic.RateLimitError):
                await ask(client, "fault-429-r")
        with pytest.raises(anthropic.RateLimitError) as long:
            await ask(client, "fault-429-long-r")
        assert long.value.response.headers["retry-after"] == "60"
        with pytest.raises(anthropic.RateLimitError) as bare:
            await ask(client, "fault-429-noheader-r")
        assert "retry-after" not in bare.value.response.headers
    assert node.stats.fault_requests["fault-429-once-r"] == 2 and node.stats.fault_requests["fault-429-r"] == 2


@pytest.mark.parametrize(
    ("fault", "status", "kind"), [("500-once", 500, "api_error"), ("529-once", 529, "overloaded_error")]
)
async def test_server_errors_once(nodes: Nodes, fault: str, status: int, kind: str) -> None:
    node = await nodes()
    async with node.client() as client:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await ask(client, f"fault-{fault}-x")
        assert caught.value.status_code == status
        assert caught.value.body["error"]["type"] == kind  # type: ignore[index]
        assert (await ask(client, f"fault-{fault}-x")).content[0].text == CANONICAL


async def test_overloaded_always(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client() as client:
        for _ in range(2):
            with pytest.raises(anthropic.OverloadedError) as caught:
                await ask(client, "fault-529-o")
            assert caught.value.status_code == 529
            assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}  # type: ignore[index]
        with pytest.raises(anthropic.InternalServerError) as unavailable:
            await ask(client, "fault-503-o")
        assert unavailable.value.status_code == 503


async def test_context_and_policy_are_400s_the_sidecar_recognises(nodes: Nodes) -> None:
    node = await nodes()
    prefill = [*HI, {"role": "assistant", "content": "alpha"}]
    async with node.client() as client:
        for messages in (HI, prefill):  # continuations too
            with pytest.raises(anthropic.BadRequestError) as context:
                await ask(client, "fault-context-c", messages)
            assert context.value.body["error"] == {  # type: ignore[index]
                "type": "invalid_request_error",
                "message": "prompt is too long: 250000 tokens > 200000 maximum",
            }
            assert context_overflow(context.value.response.content)
            with pytest.raises(anthropic.BadRequestError) as policy:
                await ask(client, "fault-policy-c", messages)
            assert "safety system" in policy.value.message
            assert is_refusal(policy.value.response.content) and not context_overflow(policy.value.response.content)
    assert node.stats.continuations == 0


async def test_unknown_fault_model_and_path_are_404(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client() as client:
        with pytest.raises(anthropic.NotFoundError) as caught:
            await ask(client, "fault-nope")
        assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(node.url + "/v1/files")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


async def test_reset_hang_and_stall_before_the_body(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client(timeout=0.5) as client:
        with pytest.raises(anthropic.APIConnectionError) as reset:
            await ask(client, "fault-reset-once-h")
        assert not isinstance(reset.value, anthropic.APITimeoutError)
        assert (await ask(client, "fault-reset-once-h")).content[0].text == CANONICAL
        with pytest.raises(anthropic.APIConnectionError):
            await ask(client, "fault-reset-h")
        started = time.monotonic()
        for model in ("fault-hang-h", "fault-stall-h"):
            with pytest.raises(anthropic.APITimeoutError):
                await ask(client, model)
        assert time.monotonic() - started < 4
        with pytest.raises(anthropic.APIConnectionError) as cut:
            await ask(client, "fault-cut-h")  # half a JSON body, short of its Content-Length
        assert not isinstance(cut.value, anthropic.APITimeoutError)


async def test_stream_faults_with_the_sdk(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client(timeout=0.5) as client:
        text, error = await streamed_text(client, "fault-cut-s")
        assert text == FIRST_WORDS and isinstance(error, (SDK_HTTP.TransportError, anthropic.APIConnectionError))
        text, error = await streamed_text(client, "fault-stall-s")
        assert text == FIRST_WORDS and isinstance(error, (SDK_HTTP.TimeoutException, anthropic.APITimeoutError))
        text, error = await streamed_text(client, "fault-error-event-s")
        assert text == FIRST_WORDS and isinstance(error, anthropic.APIStatusError)
        assert error.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        text, error = await streamed_text(client, "fault-malformed-s")
        assert text == FIRST_WORDS and isinstance(error, ValueError)
        text, error = await streamed_text(client, "fault-no-done-s")
        assert text == FIRST_WORDS and error is None  # the SDK does not notice; the events tell (below)


async def test_stream_fault_endings_on_the_wire(nodes: Nodes) -> None:
    node = await nodes()
    no_done = await raw_events(node.url, payload("fault-no-done-w"))
    names = [v for f, v, _ in no_done if f == "event"]
    assert names == ["message_start", "content_block_start", "ping", *["content_block_delta"] * 8]
    error = await raw_events(node.url, payload("fault-error-event-w"))
    assert error[-2:] == [
        ("event", "error", error[-2][2]),
        ("data", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, error[-1][2]),
    ]
    malformed = await raw_events(node.url, payload("fault-malformed-w"))
    assert malformed[-1][0] == "data" and isinstance(malformed[-1][1], str)  # not JSON
    assert not any(v == "message_stop" for f, v, _ in error + malformed)


async def test_slow_first_token_pings_then_answers(nodes: Nodes) -> None:
    node = await nodes(first_token_delay=0.6)
    lines = await raw_events(node.url, payload("fault-slow-first-token-p"))
    events = [(v, t) for f, v, t in lines if f == "event"]
    first_delta = next(i for i, (v, _) in enumerate(events) if v == "content_block_delta")
    assert [v for v, _ in events[:2]] == ["message_start", "content_block_start"]
    assert {v for v, _ in events[2:first_delta]} == {"ping"} and first_delta >= 4
    assert events[first_delta][1] >= 0.5 and events[1][1] < 0.4
    async with node.client() as client:
        final = await ask_stream(client, "fault-slow-first-token-q")
    assert final.content[0].text == CANONICAL


# ---------------------------------------------------------------------------------------------- continuations, tools


async def test_prefill_is_continued(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client() as client:
        prefill = [*HI, {"role": "assistant", "content": "alpha bravo"}]
        answer = await ask(client, "fault-429-p", prefill)  # a continuation skips the fault
        assert "alpha bravo" + answer.content[0].text == CANONICAL
        streamed = await ask_stream(client, "fault-cut-p", prefill)
        assert streamed.content[0].text == CANONICAL.removeprefix("alpha bravo")
        blocks = [*HI, {"role": "assistant", "content": [{"type": "text", "text": "Hello from a: word0"}]}]
        plain = await ask(client, "claude-sonnet-4-6", blocks)
        assert plain.content[0].text == " word1 word2 word3 word4"
        with pytest.raises(anthropic.BadRequestError) as refused:
            await ask(client, "fault-reject-prefill-p", prefill)
        assert "partial assistant message is not supported" in refused.value.message
        assert (await ask(client, "fault-reject-prefill-p")).content[0].text == CANONICAL
    assert node.stats.continuations == 3 and node.stats.last_prefill == "Hello from a: word0"
    node.provider.behaviour.update({"continuation": "none"})
    async with node.client() as client:
        with pytest.raises(anthropic.BadRequestError):
            await ask(client, "claude-sonnet-4-6", prefill)
    assert node.stats.continuations == 3


async def test_tool_use_round_trips(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client() as client:
        answer = await ask(client, "claude-sonnet-4-6", tools=TOOLS, tool_choice={"type": "any"})
        assert answer.stop_reason == "tool_use" and len(answer.content) == 1
        block = answer.content[0]
        assert block.type == "tool_use" and block.name == "get_weather" and block.input == {}
        assert block.id.startswith("toolu_")
        named = await ask_stream(
            client, "claude-sonnet-4-6", tools=TOOLS, tool_choice={"type": "tool", "name": "get_time"}
        )
        assert named.stop_reason == "tool_use"
        assert [(b.type, b.name, b.input) for b in named.content] == [("tool_use", "get_time", {})]
        auto = await ask(client, "claude-sonnet-4-6", tools=TOOLS, tool_choice={"type": "auto"})
        assert auto.stop_reason == "end_turn" and auto.content[0].text == PLAIN
    lines = await raw_events(node.url, payload("claude-sonnet-4-6", tools=TOOLS, tool_choice={"type": "any"}))
    data = [v for f, v, _ in lines if f == "data"]
    assert data[1]["content_block"]["type"] == "tool_use" and data[1]["content_block"]["name"] == "get_weather"
    assert data[3]["delta"] == {"type": "input_json_delta", "partial_json": "{}"}
    assert data[5]["delta"]["stop_reason"] == "tool_use"


# ---------------------------------------------------------------------------------------------- other endpoints


async def test_count_tokens_and_models(nodes: Nodes) -> None:
    node = await nodes()
    async with node.client() as client:
        count = await client.messages.count_tokens(model="claude-sonnet-4-6", messages=HI)
        assert count.input_tokens == FIXED_PROMPT_TOKENS
        node.provider.behaviour.update({"prompt_cache": True})
        count = await client.messages.count_tokens(model="claude-sonnet-4-6", messages=HI, system="be brief")
        assert count.input_tokens == estimate_tokens([{"role": "system", "content": "be brief"}, *HI])
        models = [m async for m in client.models.list()]
        assert [(m.id, m.display_name, m.type) for m in models] == [
            ("claude-sonnet-4-6", "Claude Sonnet 4.6", "model"),
            ("claude-haiku-4-5", "Claude Haiku 4.5", "model"),
        ]
        assert models[0].created_at.isoformat() == "2025-02-19T00:00:00+00:00"
        assert (await client.models.retrieve("claude-haiku-4-5")).display_name == "Claude Haiku 4.5"
        with pytest.raises(anthropic.NotFoundError):
            await client.models.retrieve("claude-nope")
    assert node.stats.count_tokens == 2 and node.stats.models == 3
    assert node.stats.prompt_tokens == 0  # counting is no answer: the cache is untouched
    async with httpx.AsyncClient(timeout=5) as http:
        listed = (await http.get(node.url + "/v1/models")).json()
    assert (listed["has_more"], listed["first_id"], listed["last_id"]) == (
        False,
        "claude-sonnet-4-6",
        "claude-haiku-4-5",
    )


async def test_prompt_cache_counts_as_anthropic_does(nodes: Nodes) -> None:
    node = await nodes(prompt_cache=True)
    first = [{"role": "user", "content": "one " * 40}]
    second = [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "two"}]
    system = "You are terse."
    with_system = [{"role": "system", "content": system}]
    async with node.client() as client:
        a = (await ask(client, "claude-sonnet-4-6", first, system=system)).usage
        assert (a.input_tokens, a.cache_read_input_tokens) == (estimate_tokens(with_system + first), 0)
        b = (await ask_stream(client, "claude-sonnet-4-6", second, system=system)).usage
        cached = estimate_tokens(with_system + first)
        assert b.cache_read_input_tokens == cached > 0
        assert b.input_tokens == estimate_tokens(with_system + second) - cached
        assert b.cache_creation_input_tokens == 0
        c = (await ask(client, "claude-sonnet-4-6", second, system="Another system prompt.")).usage
        assert c.cache_read_input_tokens == 0  # the system prompt leads the prefix
    assert node.stats.cached_tokens == cached


# ---------------------------------------------------------------------------------------------- headers, keys


async def test_keys_are_hashed_and_versions_recorded(nodes: Nodes) -> None:
    node = await nodes()
    beta = {"anthropic-beta": "prompt-caching-2024-07-31"}
    async with node.client() as client:  # the SDK sends its key as Authorization: Bearer
        await ask(client, "claude-sonnet-4-6")
    async with node.client(api_key=None, default_headers={"x-api-key": KEY, **beta}) as client:
        await ask(client, "claude-sonnet-4-6")
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.post(node.url + "/v1/messages", json={"model": "m", "messages": HI}, headers={"x-api-key": "k2"})
    assert r.status_code == 200
    stats = node.stats
    assert stats.api_key_sha256 == [hashlib.sha256(KEY.encode()).hexdigest(), hashlib.sha256(b"k2").hexdigest()]
    assert stats.auth_sha256 == [hashlib.sha256(f"Bearer {KEY}".encode()).hexdigest()]
    sdk_version = anthropic._constants.ANTHROPIC_API_VERSION
    assert stats.anthropic_versions == [sdk_version, sdk_version, None]
    assert stats.anthropic_betas == [None, beta["anthropic-beta"], None]
    async with httpx.AsyncClient(timeout=5) as http:
        served = (await http.get(node.url + "/_fake/stats")).text
    assert KEY not in served and "k2" not in served and sdk_version in served


async def test_a_required_key_is_checked(nodes: Nodes) -> None:
    node = await nodes(api_key=KEY)
    bad: list[dict[str, Any]] = [
        {"api_key": "sk-wrong"},
        {"api_key": None, "default_headers": {"x-api-key": "sk-wrong"}},
    ]
    for options in bad:
        async with node.client(**options) as client:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await ask(client, "claude-sonnet-4-6")
            assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
            with pytest.raises(anthropic.AuthenticationError):
                await client.models.list()
    good: list[dict[str, Any]] = [{}, {"api_key": None, "default_headers": {"x-api-key": KEY}}]
    for options in good:
        async with node.client(**options) as client:
            assert (await ask(client, "claude-sonnet-4-6")).content[0].text == PLAIN
    assert node.stats.chat == 4


# ---------------------------------------------------------------------------------------------- provider-wide faults


async def test_provider_wide_faults(nodes: Nodes) -> None:
    node = await nodes(fail_rate=1.0, status=529)
    async with node.client(timeout=0.5) as client:
        with pytest.raises(anthropic.OverloadedError):
            await ask(client, "claude-sonnet-4-6")
        with pytest.raises(anthropic.OverloadedError):
            await client.models.list()  # faults_on_models
        node.provider.behaviour.update({"fault": "rate_limit", "retry_after": 2})
        with pytest.raises(anthropic.RateLimitError) as limited:
            await ask(client, "claude-sonnet-4-6")
        assert limited.value.response.headers["retry-after"] == "2"
        assert (await ask(client, "fault-reject-prefill-f")).content[0].text == CANONICAL  # the model decides
        for fault in ("hang", "silent"):
            node.provider.behaviour.update({"fault": fault})
            with pytest.raises(anthropic.APITimeoutError):
                await ask(client, "claude-sonnet-4-6")
        node.provider.behaviour.update({"fault": "close"})
        with pytest.raises(anthropic.APIConnectionError):
            await ask(client, "claude-sonnet-4-6")
        node.provider.behaviour.update({"fault": "drop", "drop_after": 2})
        text, error = await streamed_text(client, "claude-sonnet-4-6")
        assert text == "Hello from a: word0" and error is not None
        node.provider.behaviour.update({"fault": "keepalive", "keepalive_for": 0.4})
        assert (await ask_stream(client, "claude-sonnet-4-6")).content[0].text == PLAIN
    lines = await raw_events(node.url, payload("claude-sonnet-4-6"))
    assert lines[0][0] == "" and lines[0][1] == "keep-alive"  # an SSE comment before any event
    assert next(t for f, v, t in lines if v == "message_start") >= 0.3
    assert node.stats.failed == 9


async def test_behaviour_endpoint_is_shared(nodes: Nodes) -> None:
    node = await nodes()
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.post(node.url + "/_fake/behaviour", json={"fail_rate": 1, "status": 500})
        assert r.status_code == 200 and r.json()["fail_rate"] == 1.0
        assert (await http.post(node.url + "/_fake/behaviour", json={"nope": 1})).status_code == 400
    async with node.client() as client:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await ask(client, "claude-sonnet-4-6")
    assert caught.value.status_code == 500 and caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]


async def test_the_sync_client(nodes: Nodes) -> None:
    node = await nodes()

    def call() -> str:
        with (
            anthropic.Anthropic(base_url=node.url, api_key=KEY, max_retries=0, timeout=5) as client,
            client.messages.stream(model="fault-reject-prefill-y", max_tokens=64, messages=HI) as stream,
        ):
            return "".join(stream.text_stream)

    assert await asyncio.wait_for(asyncio.to_thread(call), 10) == CANONICAL


# ---------------------------------------------------------------------------------------------- the command


def test_cli_help_names_the_api_option() -> None:
    result = CliRunner().invoke(main, ["fake-provider", "--help"])
    assert result.exit_code == 0 and "--api [openai|anthropic]" in result.output


async def test_cli_serves_anthropic() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "fake-provider", "--api", "anthropic", "--port", str(port), "--name", "c"],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await wait_for_port(port, proc)
        async with anthropic.AsyncAnthropic(
            base_url=f"http://127.0.0.1:{port}", api_key=KEY, max_retries=0, timeout=5
        ) as client:
            answer = await ask(client, "claude-sonnet-4-6")
        assert answer.content[0].text == "Hello from c: word0 word1 word2 word3 word4"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"(anthropic)" in err
