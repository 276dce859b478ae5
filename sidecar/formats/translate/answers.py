"""Whole (non-stream) answers: a node's, read into the neutral model (chat, Anthropic), and the client's,
written from it (chat, Anthropic, Responses)."""

from __future__ import annotations

import json
import time
from typing import Any

from ..dialect import count_of
from . import ids
from .chat import arguments_object
from .ir import Answer, Finish, Part, Refusal, Request, Text, Thinking, ToolCall, Untranslatable, Usage, arr, obj
from .messages import JSON_TOOL

# Anthropic's stop reasons in chat's words, and back.
FROM_ANTHROPIC: dict[str, Finish] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}  # fmt: skip
TO_ANTHROPIC = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
FROM_CHAT: dict[str, Finish] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
    "content_filter": "content_filter",
}  # fmt: skip


def _details(usage: dict[str, Any], key: str, name: str) -> int | None:
    details = usage.get(key)
    return count_of(details.get(name)) if isinstance(details, dict) else None


def chat_usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    return Usage(
        input=count_of(usage.get("prompt_tokens")),
        output=count_of(usage.get("completion_tokens")),
        cache_read=_details(usage, "prompt_tokens_details", "cached_tokens"),
        reasoning=_details(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def anthropic_usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    read, write = count_of(usage.get("cache_read_input_tokens")), count_of(usage.get("cache_creation_input_tokens"))
    fresh = count_of(usage.get("input_tokens"))
    return Usage(
        input=None if fresh is None else fresh + (read or 0) + (write or 0),
        output=count_of(usage.get("output_tokens")),
        cache_read=read,
        cache_write=write,
        reasoning=_details(usage, "output_tokens_details", "thinking_tokens"),
    )


def reasoning_text(holder: dict[str, Any]) -> str | None:
    """A chat message's or delta's reasoning: `reasoning_content` (DeepSeek, vLLM, ...) or `reasoning`
    (OpenRouter, Ollama)."""
    for key in ("reasoning_content", "reasoning"):
        value = holder.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def read_chat(body: Any, node: str) -> Answer:
    """A chat node's answer; Untranslatable for what is no chat completion."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise Untranslatable("the node's answer has no choices")
    assert isinstance(body, dict)
    choice = choices[0]
    message = obj(choice.get("message"))
    parts: list[Part] = []
    if (thought := reasoning_text(message)) is not None:
        parts.append(Thinking(thought, ids.mark(node)))
    if isinstance(message.get("content"), str) and message["content"]:
        parts.append(Text(message["content"]))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append(Refusal(message["refusal"]))
    for call in arr(message.get("tool_calls")):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            arguments = function.get("arguments")
            parts.append(ToolCall(str(call.get("id") or ids.item_id("call", str(len(parts)))),
                                  str(function.get("name", "")), arguments if isinstance(arguments, str) else "{}"))  # fmt: skip
    finish = FROM_CHAT.get(str(choice.get("finish_reason")), "stop")
    if finish == "stop" and any(isinstance(p, ToolCall) for p in parts):
        finish = "tool_calls"  # some hosts say "stop" after tool calls
    created = body.get("created")
    return Answer(str(body.get("id") or "chatcmpl"), str(body.get("model") or ""), parts, finish,
                  usage=chat_usage(body.get("usage")), created=created if isinstance(created, int) else None)  # fmt: skip


def read_messages(body: Any, node: str, json_mode: bool = False) -> Answer:
    """An Anthropic node's answer; `json_mode`: the request asked for JSON through the JSON_TOOL."""
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise Untranslatable("the node's answer has no content")
    parts: list[Part] = []
    for block in body["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        assert kind is None or isinstance(block, dict)
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(Text(block["text"]))
        elif kind == "thinking":
            parts.append(
                Thinking(str(block.get("thinking", "")), ids.mark(node, "sig", str(block.get("signature", ""))))
            )
        elif kind == "redacted_thinking":
            parts.append(Thinking(redacted=ids.mark(node, "redacted", str(block.get("data", "")))))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            if json_mode and block.get("name") == JSON_TOOL:
                parts.append(Text(arguments))
            else:
                parts.append(ToolCall(str(block.get("id", "")), str(block.get("name", "")), arguments))
    finish = FROM_ANTHROPIC.get(str(body.get("stop_reason")), "stop")
    if finish == "tool_calls" and not any(isinstance(p, ToolCall) for p in parts):
        finish = "stop"  # the JSON tool's call was the answer
    stop = body.get("stop_sequence")
    return Answer(str(body.get("id") or "msg"), str(body.get("model") or ""), parts, finish,
                  stop if isinstance(stop, str) else None, anthropic_usage(body.get("usage")))  # fmt: skip


# ------------------------------------------------------------------ written for the client


def usage_chat(usage: Usage) -> dict[str, Any]:
    prompt, completion = usage.input or 0, usage.output or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if usage.cache_read is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cache_read}
    if usage.reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning}
    return out


def usage_anthropic(usage: Usage) -> dict[str, Any]:
    read, write = usage.cache_read or 0, usage.cache_write or 0
    out: dict[str, Any] = {
        "input_tokens": max(0, (usage.input or 0) - read - write),
        "output_tokens": usage.output or 0,
    }
    if usage.cache_read is not None or usage.cache_write is not None:
        out.update(cache_read_input_tokens=read, cache_creation_input_tokens=write)
    if usage.reasoning is not None:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning}
    return out


def usage_responses(usage: Usage) -> dict[str, Any]:
    prompt, completion = usage.input or 0, usage.output or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": usage.cache_read or 0, "cache_write_tokens": usage.cache_write or 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning or 0},
        "total_tokens": prompt + completion,
    }


def answer_id(prefix: str, node_id: str) -> str:
    """The client's id for an answer: the node's when it has the format's prefix already."""
    return node_id if node_id.startswith(prefix) else f"{prefix}{ids.item_id('', node_id)[1:]}"


def write_chat(answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None}
    text = "".join(p.text for p in answer.parts if isinstance(p, Text))
    if text:
        message["content"] = text
    refusal = "".join(p.text for p in answer.parts if isinstance(p, Refusal))
    message["refusal"] = refusal or None
    thought = "".join(p.text for p in answer.parts if isinstance(p, Thinking))
    if thought:
        message["reasoning_content"] = thought
    calls = [
        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.arguments}}
        for p in answer.parts
        if isinstance(p, ToolCall)
    ]
    if calls:
        message["tool_calls"] = calls
    return {
        "id": answer_id("chatcmpl-", answer.id),
        "object": "chat.completion",
        "created": answer.created or int(time.time()),
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish, "logprobs": None}],
        "usage": usage_chat(answer.usage),
    }


def anthropic_block(part: Part) -> dict[str, Any] | None:
    """An answer part as an Anthropic content block (reasoning keeps its provenance mark as signature)."""
    if isinstance(part, Text | Refusal):
        return {"type": "text", "text": part.text, "citations": None} if part.text else None
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": ids.for_anthropic(part.id), "name": part.name,
                "input": arguments_object(part.arguments)}  # fmt: skip
    if isinstance(part, Thinking):
        if part.redacted is not None:
            return {"type": "redacted_thinking", "data": part.redacted}
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    return None


def stop_reason(finish: Finish, stop_sequence: str | None) -> str:
    return "stop_sequence" if stop_sequence else TO_ANTHROPIC[finish]


def write_messages(answer: Answer) -> dict[str, Any]:
    content = [b for b in (anthropic_block(p) for p in answer.parts) if b is not None]
    return {
        "id": answer_id("msg_", answer.id),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": stop_reason(answer.finish, answer.stop_sequence),
        "stop_sequence": answer.stop_sequence,
        "usage": usage_anthropic(answer.usage),
    }


def reasoning_item(item_id: str, part: Thinking, encrypted: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "reasoning", "id": item_id, "summary": []}
    if part.text:
        item["summary"] = [{"type": "summary_text", "text": part.text}]
    node, kind, _ = ids.origin(part.redacted or part.signature)
    if encrypted and node is not None and kind:
        item["encrypted_content"] = part.redacted or part.signature
    return item


def message_item(item_id: str, parts: list[Text | Refusal], status: str = "completed") -> dict[str, Any]:
    content = [
        {"type": "output_text", "text": p.text, "annotations": []} if isinstance(p, Text)
        else {"type": "refusal", "refusal": p.text}
        for p in parts
    ]  # fmt: skip
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def call_item(call: ToolCall, namespaces: dict[str, tuple[str, str]], status: str = "completed") -> dict[str, Any]:
    """A call as a Responses function_call item; a namespaced tool's flat name is split back (responses.py)."""
    item = {"type": "function_call", "id": ids.item_id("fc", call.id), "call_id": call.id, "name": call.name,
            "arguments": call.arguments, "status": status}  # fmt: skip
    if call.name in namespaces:
        item["namespace"], item["name"] = namespaces[call.name]
    return item


def response_envelope(rid: str, model: str, created: int, status: str) -> dict[str, Any]:
    """A Response object's fields besides output and usage, as the sidecar knows them."""
    return {
        "id": rid, "object": "response", "created_at": created, "status": status, "model": model, "output": [],
        "error": None, "incomplete_details": None, "instructions": None, "metadata": {}, "parallel_tool_calls": True,
        "temperature": None, "top_p": None, "tool_choice": "auto", "tools": [], "usage": None,
    }  # fmt: skip


def incomplete(finish: Finish) -> dict[str, str] | None:
    if finish == "length":
        return {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return {"reason": "content_filter"}
    return None


def write_responses(answer: Answer, request: Request) -> dict[str, Any]:
    rid = answer_id("resp_", answer.id)
    details = incomplete(answer.finish)
    out = response_envelope(
        rid, answer.model, answer.created or int(time.time()), "incomplete" if details else "completed"
    )
    items: list[dict[str, Any]] = []
    texts: list[Text | Refusal] = []
    for part in answer.parts:
        if isinstance(part, Text | Refusal):
            texts.append(part)
            continue
        if texts:
            items.append(message_item(ids.item_id("msg", f"{rid}:{len(items)}"), texts))
            texts = []
        if isinstance(part, Thinking):
            items.append(reasoning_item(ids.item_id("rs", f"{rid}:{len(items)}"), part, request.encrypted))
        elif isinstance(part, ToolCall):
            items.append(call_item(part, request.namespaces))
    if texts:
        items.append(message_item(ids.item_id("msg", f"{rid}:{len(items)}"), texts))
    out.update(output=items, incomplete_details=details, usage=usage_responses(answer.usage))
    return out
