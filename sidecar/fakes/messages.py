"""Anthropic's Messages format: a request read into an Ask, a Plan rendered as a message or its event stream.

Written from Anthropic's Messages API and streaming references. A message's content is a `thinking` block (when the
request has `thinking` of type enabled or adaptive) with a `signature`, then a `text` block or the `tool_use`
blocks (their `input` made from each tool's `input_schema`); stop_reason is `tool_use` or `end_turn`. Streamed:
`message_start` (empty content), then per block `content_block_start` (a tool_use with an empty `input`, a thinking
block with empty thinking and signature), its deltas (`thinking_delta`s and one `signature_delta`, `text_delta`s,
`input_json_delta`s of partial JSON), `content_block_stop`; `message_delta` with the stop_reason and the output
tokens, `message_stop`. A `ping` follows the first block's start, and pings fill a slow first token's wait.
Tools: client tools (no `type`, or `custom`) are called; tool_choice auto, any, tool and none, and
`disable_parallel_tool_use`, as plan.py's rule says. A user turn of `tool_result` blocks is answered with a quote
of them (`is_error` ones as failed).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .core import listed
from .plan import Ask, Plan, Result, Tool, label, output_text
from .stream import Wire

BROKEN = b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type"\n\n'
OVERLOADED = {"type": "overloaded_error", "message": "Overloaded"}  # also the mid-stream error event's
_CHOICES = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event in Anthropic's framing: an event line naming the data's type, then the data."""
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


def blocks_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in listed(message.get("content")) if isinstance(b, dict)]


def messages_ask(body: dict[str, Any]) -> Ask:
    tools = tuple(
        Tool(t["name"], t.get("input_schema") or {})
        for t in listed(body.get("tools"))
        if isinstance(t, dict) and isinstance(t.get("name"), str) and t.get("type", "custom") == "custom"
    )
    choice = body.get("tool_choice")
    choice = choice if isinstance(choice, dict) else {}
    named = choice.get("name")
    messages = [m for m in listed(body.get("messages")) if isinstance(m, dict)]
    names = {
        b.get("id"): b.get("name")
        for m in messages
        if m.get("role") == "assistant"
        for b in blocks_of(m)
        if b.get("type") == "tool_use"
    }
    last = messages[-1] if messages and messages[-1].get("role") == "user" else {}
    results = tuple(
        Result(
            label(names.get(b.get("tool_use_id")), b.get("tool_use_id")),
            output_text(b.get("content")),
            bool(b.get("is_error")),
        )
        for b in blocks_of(last)
        if b.get("type") == "tool_result"
    )
    users = [m for m in messages if m.get("role") == "user"]
    thinking = body.get("thinking")
    return Ask(
        tools=tools,
        choice=_CHOICES.get(str(choice.get("type", "auto")), "auto"),
        named=named if isinstance(named, str) else "",
        parallel=choice.get("disable_parallel_tool_use") is not True,
        prompt=text_of_message(users[-1]) if users else "",
        results=results,
        reasoning=isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"),
    )


def text_of_message(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(str(b.get("text", "")) for b in blocks_of(message) if b.get("type") == "text")


def signature(name: str, thinking: str) -> str:
    """A thinking block's signature: opaque, and the same for the same provider and thinking."""
    return base64.b64encode(hashlib.sha256(f"{name}\n{thinking}".encode()).digest()).decode()


@dataclass(frozen=True)
class Shape:
    """What a message needs besides its plan."""

    mid: str
    model: str
    tool_ids: tuple[str, ...]
    signature: str
    usage: dict[str, int]


def content(plan: Plan, shape: Shape) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if plan.reasoning:
        found.append({"type": "thinking", "thinking": "".join(plan.reasoning), "signature": shape.signature})
    if not plan.calls:
        found.append({"type": "text", "text": "".join(plan.text)})
    for tid, call in zip(shape.tool_ids, plan.calls, strict=True):
        found.append({"type": "tool_use", "id": tid, "name": call.name, "input": json.loads(call.arguments)})
    return found


def message(plan: Plan, shape: Shape) -> dict[str, Any]:
    return {
        "id": shape.mid,
        "type": "message",
        "role": "assistant",
        "model": shape.model,
        "content": content(plan, shape),
        "stop_reason": "tool_use" if plan.calls else "end_turn",
        "stop_sequence": None,
        "usage": shape.usage,
    }


def _block_events(plan: Plan, shape: Shape) -> list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per block: its start form, its deltas, and what follows the deltas before it stops."""
    found: list[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]] = []
    if plan.reasoning:
        start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in plan.reasoning]
        found.append((start, deltas, [{"type": "signature_delta", "signature": shape.signature}]))
    if not plan.calls:
        found.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in plan.text], []))
    for tid, call in zip(shape.tool_ids, plan.calls, strict=True):
        start = {"type": "tool_use", "id": tid, "name": call.name, "input": {}}
        found.append((start, [{"type": "input_json_delta", "partial_json": f} for f in call.fragments], []))
    return found


def events_of(plan: Plan, shape: Shape) -> Wire:
    """The event stream of `plan` (see the module)."""
    full = message(plan, shape)
    start = full | {"content": [], "stop_reason": None, "usage": shape.usage | {"output_tokens": 1}}
    opening = [event("message_start", {"type": "message_start", "message": start})]
    frames: list[tuple[bytes, bool]] = []
    for index, (first, deltas, after) in enumerate(_block_events(plan, shape)):
        begin = event("content_block_start", {"type": "content_block_start", "index": index, "content_block": first})
        if index == 0:
            opening += [begin, event("ping", {"type": "ping"})]
        else:
            frames.append((begin, False))
        for delta in deltas:
            frames.append(
                (event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}), True)
            )
        for delta in after:
            frames.append(
                (event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}), False)
            )
        frames.append((event("content_block_stop", {"type": "content_block_stop", "index": index}), False))
    end = {"stop_reason": full["stop_reason"], "stop_sequence": None}
    usage = {"output_tokens": shape.usage["output_tokens"]}
    frames.append((event("message_delta", {"type": "message_delta", "delta": end, "usage": usage}), False))
    frames.append((event("message_stop", {"type": "message_stop"}), False))
    failure = event("error", {"type": "error", "error": OVERLOADED})
    return Wire(opening, frames, heartbeat=event("ping", {"type": "ping"}), broken=BROKEN, failure=lambda sent: failure)
