"""OpenAI's Chat Completions format: a request read into an Ask, a Plan rendered as a completion or its chunks, and
the errors every OpenAI-format endpoint of the fake gives (chat, Responses, embeddings).

A streamed answer is `chat.completion.chunk`s: reasoning models send `reasoning_content` deltas first (as
DeepSeek does), then `content` deltas, or for tool calls one chunk per call with its index, id, type and name,
then its `arguments` in fragments; a chunk with the finish_reason (`stop` or `tool_calls`), the usage chunk when
`stream_options.include_usage` asks for it, and `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from .base import CONTEXT, FAILURE, POLICY, PREFILL, RATE_LIMIT, SERVER, UNKNOWN_MODEL, FakeBase
from .core import (
    CONTEXT_ERROR,
    POLICY_ERROR,
    PREFILL_ERROR,
    RATE_LIMIT_ERROR,
    linger,
    listed,
    text_of,
    trailing_assistant,
)
from .plan import Ask, Plan, Result, Tool, is_reasoning_model, label, output_text
from .stream import Wire, broken_body, event_stream, send

BROKEN = b'data: {"choices": [{"delta": {"content"\n\n'
STREAM_ERROR = {"message": "internal error", "type": "server_error", "code": None}
COOKIE = "__cf_bm=fake-session; Path=/; HttpOnly"  # like a CDN in front of a provider: a proxy must not replay it


def openai_error(kind: str, status: int, name: str, model: str) -> dict[str, Any]:
    """The `error` object of an OpenAI-format error the fake gives (base.py names the kinds)."""
    fixed: dict[str, dict[str, Any]] = {
        CONTEXT: CONTEXT_ERROR,
        POLICY: POLICY_ERROR,
        PREFILL: PREFILL_ERROR,
        RATE_LIMIT: RATE_LIMIT_ERROR,
    }
    if kind in fixed:
        return fixed[kind]
    if kind == UNKNOWN_MODEL:
        return {"message": f"unknown fault model {model!r}", "type": "invalid_request_error", "code": "model_not_found"}
    what = f"simulated {status}" if kind == SERVER else "simulated failure"
    assert kind in (SERVER, FAILURE), kind
    return {"message": f"{name} {what}", "type": "server_error", "code": None}


def error_response(status: int, error: dict[str, Any], headers: dict[str, str]) -> web.Response:
    return web.json_response({"error": error}, status=status, headers=headers)


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def function_tools(tools: Any, nested: bool) -> tuple[Tool, ...]:
    """The function tools of an OpenAI request: `{"type": "function", "function": {name, parameters}}` in chat,
    `{"type": "function", name, parameters}` (nested False) in Responses; other kinds of tool are not called."""
    found = []
    for tool in listed(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        spec = tool.get("function") if nested else tool
        if isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]:
            found.append(Tool(spec["name"], spec.get("parameters") or {}))
    return tuple(found)


def choice_of(value: Any, named: str | None) -> tuple[str, str]:
    """OpenAI's tool_choice as (choice, named tool): none, auto, required, or tool with the name `named` found."""
    if isinstance(value, dict):
        return ("tool", named) if isinstance(named, str) else ("auto", "")
    return (value, "") if value in ("none", "auto", "required") else ("auto", "")


def chat_ask(body: dict[str, Any], model: str) -> Ask:
    choice = body.get("tool_choice")
    function = choice.get("function") if isinstance(choice, dict) else None
    kind, named = choice_of(choice, function.get("name") if isinstance(function, dict) else None)
    messages = [m for m in listed(body.get("messages")) if isinstance(m, dict)]
    names = {
        call.get("id"): (call.get("function") or {}).get("name")
        for m in messages
        if m.get("role") == "assistant"
        for call in listed(m.get("tool_calls"))
        if isinstance(call, dict)
    }
    results: list[Result] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        call = message.get("tool_call_id")
        results.insert(0, Result(label(names.get(call), call), output_text(message.get("content"))))
    prompt = next((text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
    effort = body.get("reasoning_effort")
    return Ask(
        tools=function_tools(body.get("tools"), nested=True),
        choice=kind,
        named=named,
        parallel=body.get("parallel_tool_calls") is not False,
        prompt=prompt,
        results=tuple(results),
        reasoning=is_reasoning_model(model) or effort not in (None, "none"),
    )


def chat_usage(prompt: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """A usage object from the prompt part (FakeBase.prompt_cache) and the plan, in OpenAI's key order."""
    details = {k: v for k, v in prompt.items() if k != "prompt_tokens"}
    tokens: int = prompt["prompt_tokens"]
    completion = plan.output_tokens
    usage = {"prompt_tokens": tokens, "completion_tokens": completion, "total_tokens": tokens + completion, **details}
    if plan.reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": plan.reasoning_tokens}
    return usage


def chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    payload = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def completion(cid: str, model: str, plan: Plan, ids: list[str], usage: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None if plan.calls else "".join(plan.text)}
    if plan.reasoning:
        message["reasoning_content"] = "".join(plan.reasoning)
    if plan.calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for i, c in zip(ids, plan.calls, strict=True)
        ]
    finish = "tool_calls" if plan.calls else "stop"
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


def chunks(cid: str, model: str, plan: Plan, ids: list[str], usage: dict[str, Any] | None, lead: bool) -> Wire:
    """The stream of `plan`. `lead`: a role chunk of its own first; else the role rides on the first delta (a plain
    model's answer, whose first chunk has been `{"role": "assistant", "content": "Hello from <name>:"}`)."""
    deltas: list[dict[str, Any]] = [{"reasoning_content": p} for p in plan.reasoning]
    deltas += [{"content": p} for p in plan.text]
    for index, (call_id, call) in enumerate(zip(ids, plan.calls, strict=True)):
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        deltas += [{"tool_calls": [{"index": index, "function": {"arguments": f}}]} for f in call.fragments]
    opening = []
    if lead or not deltas:
        opening.append(chunk(cid, model, {"role": "assistant", "content": None if plan.calls else ""}, None))
    else:
        deltas[0] = {"role": "assistant", **deltas[0]}
    frames = [(chunk(cid, model, delta, None), True) for delta in deltas]
    frames.append((chunk(cid, model, {}, "tool_calls" if plan.calls else "stop"), False))
    if usage is not None:
        last = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        last |= {"choices": [], "usage": usage}
        frames.append((b"data: " + json.dumps(last).encode() + b"\n\n", False))
    frames.append((b"data: [DONE]\n\n", False))
    failure = b"data: " + json.dumps({"error": STREAM_ERROR}).encode() + b"\n\n"
    return Wire(opening, frames, broken=BROKEN, failure=lambda sent: failure)


class ChatSpeaker:
    """A request to POST /v1/chat/completions (base.Speaker)."""

    partial = b'{"id": "partial", "choices": ['

    def __init__(self, fake: FakeBase, request: web.Request, body: dict[str, Any]) -> None:
        self.fake, self.request, self.body = fake, request, body
        self.model = str(body["model"])
        self.stream = bool(body.get("stream"))

    def ask(self) -> Ask:
        return chat_ask(self.body, self.model)

    def prefill(self) -> dict[str, Any] | None:
        return trailing_assistant(self.body)

    def refuse(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
        error = openai_error(kind, status, self.fake.name, self.model)
        return error_response(status, error, {"x-fake-provider": self.fake.name, **(headers or {})})

    async def answer(
        self,
        plan: Plan,
        *,
        ending: str = "stop",
        wait: float = 0.0,
        keepalive: float = 0.0,
        drop_after: int | None = None,
        plain: bool = False,
        model: str | None = None,
    ) -> web.StreamResponse:
        fake = self.fake
        model = model or self.model
        cid = f"chatcmpl-{fake.name}-{fake.stats.chat}"
        ids = [f"call_{fake.name}_{fake.stats.chat}_{i}" for i in range(len(plan.calls))]
        usage = chat_usage(fake.prompt_usage(self.body), plan)
        headers = {"x-fake-provider": fake.name}
        if not self.stream:
            await linger(self.request, wait + keepalive)
            payload = completion(cid, model, plan, ids, usage)
            if ending in ("cut", "stall"):
                return await broken_body(self.request, json.dumps(payload).encode(), headers, ending)
            return web.json_response(payload, headers=headers | ({"Set-Cookie": COOKIE} if plain else {}))
        wire = chunks(cid, model, plan, ids, usage if wants_usage(self.body) else None, lead=not plain)
        response = await event_stream(self.request, headers)
        await send(self.request, response, wire, fake.behaviour, ending, wait, keepalive, drop_after)
        return response
