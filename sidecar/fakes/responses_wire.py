"""OpenAI's Responses format on the wire: a Plan as a response object, its output items, and its event stream.

Written from OpenAI's API reference for the Responses API and its streaming events. A streamed response is
`response.created` and `response.in_progress` (status in_progress, no output), then each output item in order:
`response.output_item.added`, its parts and deltas, `response.output_item.done`; `response.completed` carries the
whole response with its usage. A reasoning item streams its summary (`response.reasoning_summary_part.added`,
`response.reasoning_summary_text.delta`…`.done`, `response.reasoning_summary_part.done`), a message its text
(`response.content_part.added`, `response.output_text.delta`…`.done`, `response.content_part.done`), a function
call its arguments (`response.function_call_arguments.delta`…`.done`). Every event names its type in an `event:`
line and in its data, with a `sequence_number` counting from 0. The error-event fault sends `error` and then
`response.failed` (the response with status failed and its error).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .plan import Plan
from .stream import Wire

STREAM_ERROR = {"code": "server_error", "message": "internal error"}


@dataclass(frozen=True)
class Ids:
    """The ids of one response and its items."""

    response: str
    message: str
    reasoning: str
    calls: tuple[tuple[str, str], ...]  # (item id, call id) per function call


def usage_of(prompt: dict[str, Any], plan: Plan) -> dict[str, Any]:
    tokens: int = prompt["prompt_tokens"]
    cached = prompt.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    output = plan.output_tokens
    return {
        "input_tokens": tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": tokens + output,
    }


def output_items(plan: Plan, ids: Ids) -> list[dict[str, Any]]:
    """The output of a completed response: a reasoning item, then a message or the function calls."""
    found: list[dict[str, Any]] = []
    if plan.reasoning:
        summary = [{"type": "summary_text", "text": "".join(plan.reasoning)}]
        found.append({"id": ids.reasoning, "type": "reasoning", "summary": summary})
    if not plan.calls:
        text = {"type": "output_text", "text": "".join(plan.text), "annotations": [], "logprobs": []}
        found.append(
            {"id": ids.message, "type": "message", "status": "completed", "role": "assistant"} | {"content": [text]}
        )
    for (item, call), c in zip(ids.calls, plan.calls, strict=True):
        found.append(
            {"id": item, "type": "function_call", "status": "completed", "call_id": call, "name": c.name}
            | {"arguments": c.arguments}
        )
    return found


def response_object(
    body: dict[str, Any],
    rid: str,
    model: str,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """A response as the API returns it, echoing the request's settings."""
    reasoning = body.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") if isinstance(body.get("tools"), list) else [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
    }


def _event(payload: dict[str, Any], sequence: int) -> bytes:
    data = json.dumps({**payload, "sequence_number": sequence})
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


def _item_events(plan: Plan, ids: Ids, final: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bool]]:
    """Every output item's events, in order; True marks a delta."""
    events: list[tuple[dict[str, Any], bool]] = []

    def add(kind: str, fields: dict[str, Any], is_delta: bool = False) -> None:
        events.append(({"type": kind, **fields}, is_delta))

    index = 0
    if plan.reasoning:
        item, summary = final[index], final[index]["summary"][0]
        at: dict[str, Any] = {"item_id": ids.reasoning, "output_index": index, "summary_index": 0}
        add("response.output_item.added", {"output_index": index, "item": item | {"summary": []}})
        add("response.reasoning_summary_part.added", at | {"part": {"type": "summary_text", "text": ""}})
        for piece in plan.reasoning:
            add("response.reasoning_summary_text.delta", at | {"delta": piece}, True)
        add("response.reasoning_summary_text.done", at | {"text": summary["text"]})
        add("response.reasoning_summary_part.done", at | {"part": summary})
        add("response.output_item.done", {"output_index": index, "item": item})
        index += 1
    if not plan.calls:
        item, part = final[index], final[index]["content"][0]
        at = {"item_id": ids.message, "output_index": index, "content_index": 0}
        add(
            "response.output_item.added",
            {"output_index": index, "item": item | {"status": "in_progress", "content": []}},
        )
        add("response.content_part.added", at | {"part": part | {"text": ""}})
        for piece in plan.text:
            add("response.output_text.delta", at | {"delta": piece, "logprobs": []}, True)
        add("response.output_text.done", at | {"text": part["text"], "logprobs": []})
        add("response.content_part.done", at | {"part": part})
        add("response.output_item.done", {"output_index": index, "item": item})
        index += 1
    for (item_id, _), call in zip(ids.calls, plan.calls, strict=True):
        item, at = final[index], {"item_id": item_id, "output_index": index}
        add(
            "response.output_item.added",
            {"output_index": index, "item": item | {"status": "in_progress", "arguments": ""}},
        )
        for fragment in call.fragments:
            add("response.function_call_arguments.delta", at | {"delta": fragment}, True)
        add("response.function_call_arguments.done", at | {"name": call.name, "arguments": call.arguments})
        add("response.output_item.done", {"output_index": index, "item": item})
        index += 1
    return events


def events_of(body: dict[str, Any], model: str, plan: Plan, ids: Ids, created: int, usage: dict[str, Any]) -> Wire:
    """The event stream of `plan` (the module's sequence)."""
    final = output_items(plan, ids)
    start = response_object(body, ids.response, model, created, "in_progress", [], None)
    opening = [
        _event({"type": "response.created", "response": start}, 0),
        _event({"type": "response.in_progress", "response": start}, 1),
    ]
    done = response_object(body, ids.response, model, created, "completed", final, usage)
    events = [*_item_events(plan, ids, final), ({"type": "response.completed", "response": done}, False)]
    frames = [(_event(payload, len(opening) + i), delta) for i, (payload, delta) in enumerate(events)]
    failed = start | {"status": "failed", "error": STREAM_ERROR}

    def failure(sent: int) -> bytes:
        error = _event({"type": "error", **STREAM_ERROR, "param": None}, sent)
        return error + _event({"type": "response.failed", "response": failed}, sent + 1)

    broken = b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta"\n\n'
    return Wire(opening, frames, broken=broken, failure=failure)
