"""What a request asked and what its answer said, in the GenAI conventions' shape.

`output_of` reads what an answer says of itself (the model and id that answered, why it finished) from the start
of the answer the client got, and, when prompts and completions are exported, the completion from all of it
(`gen_ai.output.messages`). `inputs_of` turns the request body into `gen_ai.system_instructions` and
`gen_ai.input.messages`. Both run on the exporter's thread, never on the event loop; text parts are clipped and
the oldest messages dropped past a bound, so one span stays a size a collector takes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sidecar.formats.sse import Splitter, data_of

MAX_TEXT = 32 * 1024  # characters of one text part
MAX_ATTRIBUTE = 128 * 1024  # characters of one attribute's JSON
Part = dict[str, Any]
Message = dict[str, Any]


@dataclass
class Output:
    model: str | None = None
    id: str | None = None
    finishes: list[str] = field(default_factory=list)
    messages: str | None = None  # gen_ai.output.messages as JSON

    @property
    def response(self) -> tuple[str | None, str | None, list[str]]:
        return self.model, self.id, self.finishes


def clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}... [{len(text) - MAX_TEXT} more characters]"


def text(value: Any) -> Part:
    return {"type": "text", "content": clip(value if isinstance(value, str) else json.dumps(value))}


def arguments(raw: Any) -> Any:
    """A tool call's arguments as an object when they are JSON, else as they came."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return clip(raw)
    return raw


def dump(messages: list[Any]) -> str:
    """JSON of at most MAX_ATTRIBUTE characters: the oldest messages are left out first (the newest matter most)."""
    sizes = [len(json.dumps(m)) for m in messages]
    total = sum(sizes) + len(sizes) + 2
    start = 0
    while total > MAX_ATTRIBUTE and start < len(messages) - 1:
        total -= sizes[start] + 1
        start += 1
    return json.dumps(messages[start:])


# ---------------------------------------------------------------------------- requests


def _openai_parts(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [text(content)]
    parts: list[Part] = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
            parts.append(text(part.get("text", "")))
        elif isinstance(part, dict):
            parts.append({"type": str(part.get("type", "unknown"))})  # images, audio, files: named, not copied
    return parts


def _openai_message(m: dict[str, Any]) -> Message:
    role = str(m.get("role", "user"))
    if role == "tool":
        return {"role": "tool", "parts": [{"type": "tool_call_response", "id": m.get("tool_call_id"),
                                           "response": clip(str(m.get("content", "")))}]}  # fmt: skip
    parts = _openai_parts(m.get("content"))
    for call in m.get("tool_calls") or ():
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            fn = call["function"]
            parts.append({"type": "tool_call", "id": call.get("id"), "name": fn.get("name"),
                          "arguments": arguments(fn.get("arguments"))})  # fmt: skip
    return {"role": role, "parts": parts}


def _anthropic_parts(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [text(content)]
    parts: list[Part] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append(text(block.get("text", "")))
        elif kind == "tool_use":
            parts.append({"type": "tool_call", "id": block.get("id"), "name": block.get("name"),
                          "arguments": block.get("input")})  # fmt: skip
        elif kind == "tool_result":
            inner = block.get("content")
            response = inner if isinstance(inner, str) else " ".join(p["content"] for p in _anthropic_parts(inner)
                                                                   if p["type"] == "text")  # fmt: skip
            parts.append({"type": "tool_call_response", "id": block.get("tool_use_id"), "response": clip(response)})
        elif kind == "thinking":
            parts.append({"type": "reasoning", "content": clip(str(block.get("thinking", "")))})
        else:
            parts.append({"type": str(kind)})
    return parts


def _responses_input(items: Any) -> list[Message]:
    if isinstance(items, str):
        return [{"role": "user", "parts": [text(items)]}]
    messages: list[Message] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message" or "role" in item:
            messages.append({"role": str(item.get("role", "user")), "parts": _openai_parts(item.get("content"))})
        elif kind == "function_call":
            messages.append({"role": "assistant", "parts": [{"type": "tool_call", "id": item.get("call_id"),
                             "name": item.get("name"), "arguments": arguments(item.get("arguments"))}]})  # fmt: skip
        elif kind == "function_call_output":
            messages.append({"role": "tool", "parts": [{"type": "tool_call_response", "id": item.get("call_id"),
                             "response": clip(str(item.get("output", "")))}]})  # fmt: skip
    return messages


def inputs_of(api: Any, path: str, body: bytes) -> tuple[str | None, str | None]:
    """(gen_ai.system_instructions, gen_ai.input.messages) as JSON; None for what the request does not have."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    system: list[Part] | None = None
    messages: list[Message] | None = None
    listed = [m for m in data.get("messages") or () if isinstance(m, dict)]
    if path == "/v1/messages" or api == "anthropic":
        if data.get("system"):
            system = _anthropic_parts(data["system"])
        messages = [{"role": str(m.get("role", "user")), "parts": _anthropic_parts(m.get("content"))} for m in listed]
    elif path == "/v1/chat/completions":
        messages = [_openai_message(m) for m in listed]
    elif path == "/v1/responses":
        if isinstance(data.get("instructions"), str):
            system = [text(data["instructions"])]
        messages = _responses_input(data.get("input"))
    elif path == "/v1/completions" and "prompt" in data:
        prompts = data["prompt"] if isinstance(data["prompt"], list) else [data["prompt"]]
        messages = [{"role": "user", "parts": [text(p)]} for p in prompts]
    return (None if system is None else dump(system)), (None if messages is None else dump(messages))


# ---------------------------------------------------------------------------- answers


def _events(data: bytes) -> list[dict[str, Any]]:
    """The JSON objects of an SSE answer's complete events."""
    found = []
    for start, end in Splitter().events(data):
        payload = data_of(data[start:end].strip())
        if payload is None or payload.strip() == b"[DONE]":
            continue
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


class Choices:
    """Choices (OpenAI) or content blocks (Anthropic) as they accumulate."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[int, Part]] = {}  # choice -> part index -> part
        self.finishes: dict[int, str] = {}

    def add_text(self, choice: int, index: int, kind: str, value: Any) -> None:
        key = "content"
        part = self.parts.setdefault(choice, {}).setdefault(index, {"type": kind, key: ""})
        if isinstance(value, str):
            part[key] = part.get(key, "") + value

    def part(self, choice: int, index: int, part: Part) -> Part:
        return self.parts.setdefault(choice, {}).setdefault(index, part)

    def messages(self) -> str:
        out = []
        for choice in sorted(self.parts.keys() | self.finishes.keys()):
            parts = [self.parts.get(choice, {})[i] for i in sorted(self.parts.get(choice, {}))]
            for p in parts:
                if p.get("type") in ("text", "reasoning"):
                    p["content"] = clip(p.get("content", ""))
                elif p.get("type") == "tool_call":
                    p["arguments"] = arguments(p.pop("raw", p.get("arguments")))
            out.append({"role": "assistant", "parts": parts, "finish_reason": self.finishes.get(choice, "error")})
        return dump(out)


def _openai(out: Output, choices: Choices, event: dict[str, Any]) -> None:
    for c in event.get("choices") or ():
        if not isinstance(c, dict):
            continue
        n = c.get("index", 0) if isinstance(c.get("index"), int) else 0
        if isinstance(c.get("finish_reason"), str):
            choices.finishes[n] = c["finish_reason"]
        message = c.get("message") or c.get("delta") or {}
        if isinstance(c.get("text"), str):  # /v1/completions
            choices.add_text(n, 0, "text", c["text"])
        if not isinstance(message, dict):
            continue
        if message.get("content"):
            choices.add_text(n, 0, "text", message["content"])
        if message.get("reasoning_content"):  # DeepSeek's reasoning
            choices.add_text(n, -1, "reasoning", message["reasoning_content"])
        for i, call in enumerate(message.get("tool_calls") or ()):
            if not isinstance(call, dict):
                continue
            part = choices.part(n, 1 + (call.get("index", i) if isinstance(call.get("index"), int) else i),
                                {"type": "tool_call", "id": None, "name": None, "raw": ""})  # fmt: skip
            fn: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
            part["id"] = call.get("id") or part["id"]
            part["name"] = fn.get("name") or part["name"]
            if isinstance(raw := fn.get("arguments"), str):
                part["raw"] = (part.get("raw") or "") + raw


def _anthropic(out: Output, choices: Choices, event: dict[str, Any]) -> None:
    kind = event.get("type")
    message = event.get("message") if kind == "message_start" else event if kind == "message" else None
    if isinstance(message, dict):
        out.model = out.model or message.get("model")
        out.id = out.id or message.get("id")
        for i, block in enumerate(message.get("content") or ()):
            _block(choices, i, block)
        if isinstance(message.get("stop_reason"), str):
            choices.finishes[0] = message["stop_reason"]
    elif kind == "content_block_start" and isinstance(event.get("index"), int):
        _block(choices, event["index"], event.get("content_block"))
    elif kind == "content_block_delta" and isinstance(event.get("delta"), dict) and isinstance(event.get("index"), int):
        delta, index = event["delta"], event["index"]
        if delta.get("type") == "text_delta":
            choices.add_text(0, index, "text", delta.get("text"))
        elif delta.get("type") == "thinking_delta":
            choices.add_text(0, index, "reasoning", delta.get("thinking"))
        elif delta.get("type") == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            part = choices.part(0, index, {"type": "tool_call", "id": None, "name": None, "raw": ""})
            part["raw"] = (part.get("raw") or "") + delta["partial_json"]
    elif kind == "message_delta" and isinstance(event.get("delta"), dict) and event["delta"].get("stop_reason"):
        choices.finishes[0] = str(event["delta"]["stop_reason"])


def _block(choices: Choices, index: int, block: Any) -> None:
    if not isinstance(block, dict):
        return
    kind = block.get("type")
    if kind == "text":
        choices.add_text(0, index, "text", block.get("text", ""))
    elif kind == "thinking":
        choices.add_text(0, index, "reasoning", block.get("thinking", ""))
    elif kind == "tool_use":
        given = block.get("input")
        choices.part(0, index, {"type": "tool_call", "id": block.get("id"), "name": block.get("name"),
                                "raw": "" if given in (None, {}) else given})  # fmt: skip


def _responses(out: Output, choices: Choices, event: dict[str, Any]) -> None:
    response: dict[str, Any] = event["response"] if isinstance(event.get("response"), dict) else event
    if response.get("object") != "response":
        return
    out.model = out.model or response.get("model")
    out.id = out.id or response.get("id")
    status = response.get("status")
    if status in ("completed", "incomplete", "failed"):
        choices.finishes[0] = "stop" if status == "completed" else str(status)
    for i, item in enumerate(response.get("output") or ()):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for j, part in enumerate(_openai_parts(item.get("content"))):
                choices.part(0, i * 64 + j, part)
        elif item.get("type") == "function_call":
            choices.part(0, i * 64, {"type": "tool_call", "id": item.get("call_id"), "name": item.get("name"),
                                     "raw": item.get("arguments")})  # fmt: skip


def output_of(api: Any, path: str, answer: bytes, messages: bool = True) -> Output:
    """What the answer (or its start) says; `messages` also assembles the completion."""
    out = Output()
    stripped = answer.lstrip()
    if stripped.startswith(b"{"):
        try:
            whole = json.loads(stripped)
        except (ValueError, RecursionError):
            whole = None  # the start of a large answer: its model and id are still read below
            head = stripped[:4096].decode("utf-8", "replace")
            out.model, out.id = _peek(head, "model"), _peek(head, "id")
        events = [whole] if isinstance(whole, dict) else []
    else:
        events = _events(answer)
    choices = Choices()
    for event in events:
        if path == "/v1/responses" or str(event.get("type", "")).startswith("response."):
            _responses(out, choices, event)
        elif api == "anthropic" or path == "/v1/messages" or event.get("type") in ("message", "message_start"):
            _anthropic(out, choices, event)
        else:
            out.model = out.model or (event.get("model") if isinstance(event.get("model"), str) else None)
            out.id = out.id or (event.get("id") if isinstance(event.get("id"), str) else None)
            _openai(out, choices, event)
    out.model = out.model if isinstance(out.model, str) else None
    out.id = out.id if isinstance(out.id, str) else None
    out.finishes = [choices.finishes[k] for k in sorted(choices.finishes)]
    if messages and (choices.parts or choices.finishes):
        out.messages = choices.messages()
    return out


def _peek(head: str, key: str) -> str | None:
    marker = f'"{key}":'
    at = head.find(marker)
    if at < 0:
        return None
    rest = head[at + len(marker) :].lstrip()
    if not rest.startswith('"'):
        return None
    end = rest.find('"', 1)
    return rest[1:end] if 0 < end <= 201 and "\\" not in rest[1:end] else None
