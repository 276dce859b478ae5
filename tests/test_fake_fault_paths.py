"""Every fault on every new path of the fakes: tool calls, reasoning and thinking in chat and Messages, the Responses
API and embeddings, streamed or not, each fault model and each provider-wide fault, read off the wire over loopback.

One generic reader tells, per format, what a client got: its deltas, whether the stream reached its terminal event
(`[DONE]`, `message_stop`, `response.completed`), an error event, data that is not JSON, and how reading ended.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from sidecar.fakes.anthropic import ANTHROPIC_FAULT_MODELS
from sidecar.fakes.core import CANONICAL, FAULT_MODELS, FAULTS, Behaviour
from sidecar.fakes.serve import provider_class

CUT_AFTER = 3
FIRST_TOKEN_DELAY = 0.4
PATIENCE = 0.4  # how long a client waits for what a hang or a stall never sends
DISCONNECTED = (httpx.RemoteProtocolError, httpx.ReadError)
BIG = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 20},
        "days": {"type": "array", "items": {"type": "string", "format": "date"}, "minItems": 3},
    },
    "required": ["city", "days"],
}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": BIG}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "parameters": BIG}]
MESSAGES_TOOLS = [{"name": "get_weather", "input_schema": BIG}]
ASK = "what does get_weather say?"


@dataclass(frozen=True)
class Path:
    name: str
    api: str  # the fake's
    route: str
    extra: dict[str, Any]  # the request besides its model
    stream: bool
    whole: Callable[[dict[str, Any]], bool]  # a non-stream answer is the one this path asks for

    def body(self, model: str) -> dict[str, Any]:
        return {"model": model, **self.extra, **({"stream": True} if self.stream else {})}


def chat_calls(answer: dict[str, Any]) -> bool:
    return answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


PATHS = [
    Path("chat-tools", "openai", "/v1/chat/completions", {"messages": [{"role": "user", "content": ASK}], "tools": CHAT_TOOLS}, True, chat_calls),
    Path("chat-tools-json", "openai", "/v1/chat/completions", {"messages": [{"role": "user", "content": ASK}], "tools": CHAT_TOOLS}, False, chat_calls),
    Path(
        "chat-reasoning",
        "openai",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"},
        True,
        lambda a: bool(a["choices"][0]["message"]["reasoning_content"]),
    ),
    Path("responses", "openai", "/v1/responses", {"input": "hi"}, True, lambda a: a["status"] == "completed"),
    Path(
        "responses-tools",
        "openai",
        "/v1/responses",
        {"input": ASK, "tools": RESPONSES_TOOLS, "reasoning": {"effort": "low"}},
        True,
        lambda a: [o["type"] for o in a["output"]] == ["reasoning", "function_call"],
    ),
    Path(
        "responses-json",
        "openai",
        "/v1/responses",
        {"input": ASK, "tools": RESPONSES_TOOLS},
        False,
        lambda a: a["output"][0]["type"] == "function_call",
    ),
    Path("embeddings", "openai", "/v1/embeddings", {"input": ["a", "b"]}, False, lambda a: len(a["data"]) == 2),
    Path(
        "messages-tools",
        "anthropic",
        "/v1/messages",
        {
            "max_tokens": 2048,
            "messages": [{"role": "user", "content": ASK}],
            "tools": MESSAGES_TOOLS,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
        True,
        lambda a: [b["type"] for b in a["content"]] == ["thinking", "tool_use"],
    ),
    Path(
        "messages-tools-json",
        "anthropic",
        "/v1/messages",
        {"max_tokens": 64, "messages": [{"role": "user", "content": ASK}], "tools": MESSAGES_TOOLS},
        False,
        lambda a: a["stop_reason"] == "tool_use" and a["content"][0]["input"]["city"] == "city" + "x" * 16,
    ),
]  # fmt: skip


@dataclass
class Got:
    """What a client got: the status, the events of a stream or the body, and how reading ended."""

    status: int = 0
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    events: list[tuple[str | None, Any]] = field(default_factory=list)  # (event name, data as JSON or text)
    comments: list[int] = field(default_factory=list)  # positions in `events` a comment came before
    body: bytes = b""
    error: BaseException | None = None
    seconds: float = 0.0  # from sending to the first delta of a stream, or to the end of a body

    def deltas(self, api: str) -> int:
        return sum(is_delta(api, data) for _, data in self.events)

    def terminal(self) -> bool:
        return any(
            data in ("[DONE]",) or (isinstance(data, dict) and data.get("type") in END) for _, data in self.events
        )

    def json(self) -> Any:
        return json.loads(self.body)


END = ("message_stop", "response.completed")


def is_delta(api: str, data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    kind = str(data.get("type", ""))
    if api == "anthropic":
        return kind == "content_block_delta" and data["delta"]["type"] != "signature_delta"
    if kind:
        return kind.endswith(".delta")
    choices = data.get("choices") or [{}]
    return any(k != "role" and v not in (None, "") for k, v in (choices[0].get("delta") or {}).items())


def error_event(data: Any) -> bool:
    return isinstance(data, dict) and (data.get("type") == "error" or ("error" in data and "choices" not in data))


async def exchange(url: str, path: Path, model: str, within: float = 5.0) -> Got:
    """One request on a connection of its own; reading gives up (error TimeoutError) after `within` seconds."""
    got, started = Got(), time.monotonic()
    limits = httpx.Limits(max_keepalive_connections=0)
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(timeout=within, limits=limits) as client:
        try:
            async with (
                asyncio.timeout(within),
                client.stream("POST", url + path.route, json=path.body(model), headers=headers) as r,
            ):
                got.status, got.headers = r.status_code, r.headers
                if not r.headers.get("content-type", "").startswith("text/event-stream"):
                    async for part in r.aiter_raw():
                        got.body += part
                    got.seconds = time.monotonic() - started
                    return got
                await read_events(r, got, path.api, started)
        except (TimeoutError, httpx.TransportError) as exc:
            got.error = exc
    return got


async def read_events(r: httpx.Response, got: Got, api: str, started: float) -> None:
    name: str | None = None
    data: list[str] = []
    async for line in r.aiter_lines():
        if line.startswith(":"):
            got.comments.append(len(got.events))
        elif line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif not line and data:
            text = "\n".join(data)
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            got.events.append((name, parsed))
            if is_delta(api, parsed) and got.deltas(api) == 1:
                got.seconds = time.monotonic() - started
            name, data = None, []


@pytest.fixture
async def fake() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(api: str, **behaviour: Any) -> str:
        behaviour = {"cut_after": CUT_AFTER, "first_token_delay": FIRST_TOKEN_DELAY, **behaviour}
        provider = provider_class(api)("f", Behaviour(**behaviour), seed=1)
        runner = web.AppRunner(provider.app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def assert_whole(path: Path, got: Got) -> None:
    """A complete answer: a whole stream up to its terminal event, or the JSON this path asks for."""
    assert got.status == 200 and got.error is None, (got.status, got.error, got.body[:300])
    if path.stream:
        assert got.terminal() and got.deltas(path.api) > CUT_AFTER
        assert not any(error_event(d) for _, d in got.events)
    else:
        assert path.whole(got.json())


def assert_refused(path: Path, got: Got, status: int) -> dict[str, Any]:
    """An error answer in the path's format: its error object."""
    assert got.status == status, (got.status, got.body[:300])
    body = got.json() if got.body else json.loads(next(str(d) for _, d in got.events))
    if path.api == "anthropic":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    else:
        assert set(body) == {"error"} and "message" in body["error"]
    error: dict[str, Any] = body["error"]
    return error


def assert_broken_after_cut_after(path: Path, got: Got) -> None:
    assert got.deltas(path.api) == CUT_AFTER and not got.terminal()


def fault_models(api: str) -> list[str]:
    return list(ANTHROPIC_FAULT_MODELS if api == "anthropic" else FAULT_MODELS)


CASES = [(p, f) for p in PATHS for f in fault_models(p.api)]


@pytest.mark.parametrize(("path", "fault"), CASES, ids=[f"{p.name}-{f}" for p, f in CASES])
async def test_fault_models(fake: Any, path: Path, fault: str) -> None:
    url = await fake(path.api)
    model = f"fault-{fault}-x"
    within = PATIENCE if fault in ("hang", "stall") else 5.0
    got = await exchange(url, path, model, within)
    if fault.startswith(("429", "500", "503", "529")):
        status = int(fault[:3])
        assert_refused(path, got, status)
        if status == 429:
            assert got.headers.get("retry-after") == {"429-long": "60", "429-noheader": None}.get(fault, "1")
        again = await exchange(url, path, model)
        if fault.endswith("-once") or fault in ("429-long", "429-noheader"):
            assert_whole(path, again)
        else:
            assert again.status == status
    elif fault in ("context", "policy"):
        error = assert_refused(path, got, 400)
        if path.api == "openai":
            assert error["code"] == {"context": "context_length_exceeded", "policy": "content_policy_violation"}[fault]
        else:
            assert ("prompt is too long" if fault == "context" else "safety system") in error["message"]
    elif fault.startswith("reset"):
        assert isinstance(got.error, DISCONNECTED) and got.status == 0
        if fault == "reset-once":
            assert_whole(path, await exchange(url, path, model))
    elif fault == "hang":
        assert isinstance(got.error, TimeoutError) and got.status == 0
    elif fault == "slow-first-token":
        assert_whole(path, got)
        assert got.seconds >= FIRST_TOKEN_DELAY - 0.05
        if path.stream:  # heartbeats (comments, or Anthropic's pings) between the opening events and the first delta
            first = next(i for i, (_, d) in enumerate(got.events) if is_delta(path.api, d))
            pings = [d for _, d in got.events[:first] if isinstance(d, dict) and d.get("type") == "ping"]
            assert len(pings) + len([c for c in got.comments if c <= first]) >= 2
    elif fault in ("cut", "stall"):
        expected = DISCONNECTED if fault == "cut" else TimeoutError
        assert got.status == 200 and isinstance(got.error, expected), got.error
        if path.stream:
            assert_broken_after_cut_after(path, got)
        elif fault == "cut":
            assert 0 < len(got.body) < int(got.headers["content-length"])
        else:
            assert got.body == b""
    elif fault in ("malformed", "error-event", "no-done") and path.stream:
        assert got.status == 200 and got.error is None  # a clean end all the same
        assert_broken_after_cut_after(path, got)
        last = got.events[-1][1]
        if fault == "malformed":
            assert isinstance(last, str)
        elif fault == "error-event":
            errors = [d for _, d in got.events if error_event(d)]
            assert len(errors) == 1
            if path.route == "/v1/responses":
                assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
                assert errors[0]["sequence_number"] == last["sequence_number"] - 1
            else:
                assert last is errors[0]
        else:
            assert is_delta(path.api, last)
    else:  # reject-prefill without a prefill, and the stream faults without a stream: a normal answer
        assert fault in ("reject-prefill", "malformed", "error-event", "no-done")
        assert_whole(path, got)


WIDE = [(p, f) for p in PATHS for f in FAULTS]


@pytest.mark.parametrize(("path", "fault"), WIDE, ids=[f"{p.name}-{f}" for p, f in WIDE])
async def test_provider_wide_faults(fake: Any, path: Path, fault: str) -> None:
    url = await fake(path.api, fail_rate=1.0, fault=fault, status=503, retry_after=7, drop_after=2, keepalive_for=0.3)
    within = PATIENCE if fault in ("hang", "silent") else 5.0
    got = await exchange(url, path, "any-model", within)
    if fault == "error":
        assert_refused(path, got, 503)
    elif fault == "rate_limit":
        assert_refused(path, got, 429)
        assert got.headers["retry-after"] == "7"
    elif fault == "hang":
        assert isinstance(got.error, TimeoutError) and got.status == 0
    elif fault == "silent":
        assert isinstance(got.error, TimeoutError) and got.status == 200 and not got.events and not got.body
    elif fault == "close":
        assert isinstance(got.error, DISCONNECTED) and got.status == 0
    elif fault == "drop":
        assert got.status == 200 and isinstance(got.error, DISCONNECTED)
        if path.stream:
            assert got.deltas(path.api) == 2 and not got.terminal()
        else:
            assert 0 < len(got.body) < int(got.headers["content-length"])
    else:
        assert fault == "keepalive"
        assert got.seconds >= 0.25
        if path.stream:
            assert got.comments[0] == 0 and got.terminal()  # comments before any event, then the whole answer
        else:
            assert got.status == 200 and got.body  # a late answer


def text_of(api: str, data: Any) -> str:
    """The answer text a streamed event carries."""
    if not isinstance(data, dict):
        return ""
    if api == "anthropic":
        return str(data["delta"].get("text", "")) if data.get("type") == "content_block_delta" else ""
    if "type" in data:
        return str(data["delta"]) if data["type"] == "response.output_text.delta" else ""
    return str((data.get("choices") or [{}])[0].get("delta", {}).get("content") or "")


def with_prefill(path: Path, text: str) -> Path:
    """The path's request with a trailing assistant message to continue."""
    extra = dict(path.extra)
    if path.route == "/v1/responses":
        extra["input"] = [{"role": "user", "content": extra["input"]}, {"role": "assistant", "content": text}]
    else:
        extra["messages"] = [*extra["messages"], {"role": "assistant", "content": text}]
    return Path(path.name, path.api, path.route, extra, path.stream, path.whole)


CONTINUED = [p for p in PATHS if p.stream]


@pytest.mark.parametrize("path", CONTINUED, ids=[p.name for p in CONTINUED])
@pytest.mark.parametrize("fault", ["cut", "stall", "error-event", "429"])
async def test_a_continuation_skips_the_fault_and_answers_the_rest_as_text(fake: Any, path: Path, fault: str) -> None:
    url = await fake(path.api)
    got = await exchange(url, with_prefill(path, "alpha bravo"), f"fault-{fault}")
    assert got.status == 200 and got.error is None and got.terminal()
    assert "alpha bravo" + "".join(text_of(path.api, d) for _, d in got.events) == CANONICAL  # no tools, no thinking
