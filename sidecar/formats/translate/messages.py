"""Anthropic Messages requests: read into the neutral model (an Anthropic client's) and written from it (for
an Anthropic node)."""

from __future__ import annotations

import json
from typing import Any

from . import ids
from .chat import arguments_object
from .ir import (
    Document,
    Image,
    Message,
    Part,
    Refusal,
    Request,
    Text,
    Thinking,
    Tool,
    ToolCall,
    ToolResult,
    Untranslatable,
    append_message,
    arr,
)
from .signed import unsigned_loop

# max_tokens is required by Anthropic's API. When the client sent none: 4096, the largest every Claude model
# takes (claude-3-haiku's limit; newer models allow far more), plus the thinking budget when thinking is asked.
DEFAULT_MAX_TOKENS = 4096
MIN_BUDGET = 1024  # Anthropic's smallest thinking budget
EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768, "max": 32768}
# A JSON answer asked of a node with no JSON mode: one forced tool whose input is the answer (answers.py and
# the stream readers turn its call back into text).
JSON_TOOL = "json_answer"
# Claude Code starts its system prompt with a billing line whose `cch=` checksum changes every request: sent
# to another provider it defeats that provider's prompt cache and means nothing to it.
ATTRIBUTION = "x-anthropic-billing-header:"
# Everything else (service_tier, cache_control, context_management, inference_geo, speed, ...) is dropped and
# named in the answer's x-llm-sidecar-translated header.
KNOWN = {
    "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "tools", "tool_choice",
    "thinking", "output_config", "metadata", "stream",
}  # fmt: skip
NEEDS = {"container": "a code-execution container", "mcp_servers": "MCP servers (server tools)"}
# Tools Anthropic runs itself, offered to the model: dropped for another provider (named in the header) unless
# tool_choice forces one. Anthropic-defined tools the client runs (bash, text_editor, computer, memory) have no
# schema in the request to translate: refused.
SERVER_TOOLS = ("web_search_", "web_fetch_", "code_execution_", "tool_search_tool_")


def _image(block: dict[str, Any], where: str) -> Image:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64" and isinstance(source.get("data"), str):
        return Image(media_type=source.get("media_type"), data=source["data"])
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return Image(url=source["url"])
    raise Untranslatable(f"{where}: an image by file_id is held by the provider that stored it")


def _document(block: dict[str, Any], where: str) -> Document:
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled"):
        raise Untranslatable(f"{where}: citations exist only in Anthropic's API")
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    title = block.get("title") if isinstance(block.get("title"), str) else None
    if kind == "base64" and isinstance(source, dict) and isinstance(source.get("data"), str):
        return Document(media_type=str(source.get("media_type") or "application/pdf"), data=source["data"], title=title)
    if kind == "text" and isinstance(source, dict) and isinstance(source.get("data"), str):
        return Document(media_type="text/plain", text=source["data"], title=title)
    if kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        return Document(url=source["url"], title=title)
    raise Untranslatable(f"{where}: a document of source {str(kind)[:40]!r} cannot be translated")


def _blocks(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: content must be a string or a list of blocks")
    parts: list[Part] = []
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        assert kind is None or isinstance(block, dict)
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(Text(block["text"]))
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "document":
            parts.append(_document(block, at))
        elif kind == "tool_use" and isinstance(block.get("id"), str):
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            parts.append(ToolCall(block["id"], str(block.get("name", "")), arguments))
        elif kind == "tool_result" and isinstance(block.get("tool_use_id"), str):
            inner = _blocks(block.get("content") or [], at)
            if any(not isinstance(p, Text | Image | Document) for p in inner):
                raise Untranslatable(f"{at}: a tool result may hold text, images and documents only")
            results = [p for p in inner if isinstance(p, Text | Image | Document)]
            parts.append(ToolResult(block["tool_use_id"], results, block.get("is_error") is True))
        elif kind == "thinking":
            parts.append(Thinking(str(block.get("thinking", "")), block.get("signature")))
        elif kind == "redacted_thinking":
            parts.append(Thinking(redacted=str(block.get("data", ""))))
        else:
            raise Untranslatable(f"{at}: a {str(kind)[:40]!r} block cannot be translated to another API")
    return parts


def system_text(system: Any) -> tuple[str | None, bool]:
    """The system prompt as one text, and whether Claude Code's billing line was taken out (see ATTRIBUTION)."""
    if system is None:
        return None, False
    if isinstance(system, str):
        blocks = [system]
    elif isinstance(system, list):
        blocks = []
        for block in system:
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise Untranslatable("system: only text blocks can be translated")
            blocks.append(block["text"])
    else:
        raise Untranslatable("system must be a string or a list of text blocks")
    kept = [b for b in blocks if not b.startswith(ATTRIBUTION)]
    return ("\n\n".join(kept) if kept else None), len(kept) < len(blocks)


def read_request(body: dict[str, Any]) -> Request:
    for key, why in NEEDS.items():
        if body.get(key):
            raise Untranslatable(f"{why} cannot be translated to another API")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Untranslatable("messages must be a non-empty list")
    request = Request(model=body.get("model") if isinstance(body.get("model"), str) else None)
    text, billing = system_text(body.get("system"))
    system = [text]
    turns: list[Message] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            system.append(system_text(message.get("content"))[0])
        elif role in ("user", "assistant"):
            append_message(turns, role, _blocks(message.get("content"), f"messages[{i}]"))
        else:
            raise Untranslatable(f"messages[{i}]: role {str(role)[:20]!r} cannot be translated")
    request.system = "\n\n".join(s for s in system if s) or None
    request.messages = turns
    _tools(body, request)
    tokens = body.get("max_tokens")
    request.max_tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            setattr(request, key, float(value))
    request.stop = [s for s in arr(body.get("stop_sequences")) if isinstance(s, str)]
    request.stream = body.get("stream") is True
    _reasoning(body, request)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        request.user = metadata["user_id"]
    request.dropped = sorted(k for k in body if k not in KNOWN and body[k] is not None) + request.dropped
    if _cached(body):
        request.dropped.append("cache_control")
    if billing:
        request.dropped.append("the system prompt's x-anthropic-billing-header line")
    return request


def _cached(body: dict[str, Any]) -> bool:
    """Prompt-cache breakpoints anywhere a client puts them (blocks of system, messages and tools)."""
    blocks: list[Any] = list(arr(body.get("tools")))
    system = body.get("system")
    blocks += system if isinstance(system, list) else []
    for message in arr(body.get("messages")):
        content = message.get("content") if isinstance(message, dict) else None
        blocks += content if isinstance(content, list) else []
    return any(isinstance(b, dict) and b.get("cache_control") for b in blocks)


def _tools(body: dict[str, Any], request: Request) -> None:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise Untranslatable("tools must be a list")
    choice = body.get("tool_choice")
    forced = choice.get("name") if isinstance(choice, dict) and choice.get("type") == "tool" else None
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if (
            isinstance(kind, str)
            and kind.startswith(SERVER_TOOLS)
            and isinstance(tool, dict)
            and tool.get("name") != forced
        ):
            request.dropped.append(f"tool {kind} (runs at Anthropic)")  # offered, not required
            continue
        if not isinstance(tool, dict) or kind not in (None, "custom") or not tool.get("name"):
            raise Untranslatable(f"tool {str(kind)[:40]!r} is a server tool of Anthropic's: it cannot be translated")
        schema = tool.get("input_schema")
        request.tools.append(
            Tool(str(tool["name"]), schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
                 tool.get("description"), tool.get("strict"))
        )  # fmt: skip
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("auto", "none"):
            request.tool_choice = kind
        elif kind == "any":
            request.tool_choice = "required"
        elif kind == "tool" and choice.get("name"):
            request.tool_choice, request.tool_name = "tool", str(choice["name"])
        if choice.get("disable_parallel_tool_use") is True:
            request.parallel = False


def _reasoning(body: dict[str, Any], request: Request) -> None:
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        kind = thinking.get("type")
        request.thinking = kind in ("enabled", "adaptive") if kind in ("enabled", "adaptive", "disabled") else None
        budget = thinking.get("budget_tokens")
        if kind == "enabled" and isinstance(budget, int) and not isinstance(budget, bool):
            request.budget = budget
    config = body.get("output_config")
    if isinstance(config, dict):
        if isinstance(config.get("effort"), str):
            request.effort = config["effort"]
        form = config.get("format")
        if isinstance(form, dict) and form.get("type") == "json_schema" and isinstance(form.get("schema"), dict):
            request.json = {"type": "json_schema", "name": "answer", "schema": form["schema"], "strict": True}


# ------------------------------------------------------------------ written for an Anthropic node


def _block(part: Part, node: str) -> dict[str, Any] | None:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, Refusal):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, Image):
        if part.data is not None:
            source = {"type": "base64", "media_type": part.media_type or "image/png", "data": part.data}
        else:
            source = {"type": "url", "url": part.url or ""}
        return {"type": "image", "source": source}
    if isinstance(part, Document):
        if part.text is not None:
            doc = {"type": "text", "media_type": "text/plain", "data": part.text}
        elif part.data is not None:
            doc = {"type": "base64", "media_type": part.media_type, "data": part.data}
        else:
            doc = {"type": "url", "url": part.url or ""}
        return {"type": "document", "source": doc, **({"title": part.title} if part.title else {})}
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": ids.for_anthropic(part.id), "name": part.name,
                "input": arguments_object(part.arguments)}  # fmt: skip
    if isinstance(part, ToolResult):
        content = [b for b in (_block(p, node) for p in part.content) if b is not None]
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": ids.for_anthropic(part.call_id)}
        if content:
            result["content"] = content
        if part.is_error:
            result["is_error"] = True
        return result
    # Thinking: only back to the node whose provider signed it (ids.py); anywhere else it is dropped.
    signer, kind, data = ids.origin(part.redacted if part.redacted is not None else part.signature)
    if signer != node or not data:
        return None
    if kind == "redacted":
        return {"type": "redacted_thinking", "data": data}
    return {"type": "thinking", "thinking": part.text, "signature": data} if kind == "sig" else None


def write_messages(request: Request, node: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in request.messages:
        blocks = [b for b in (_block(p, node) for p in message.parts) if b is not None]
        if message.role == "user":  # tool results go first in a user turn, as Anthropic requires
            blocks.sort(key=lambda b: b["type"] != "tool_result")
        if not blocks:
            continue
        if out and out[-1]["role"] == message.role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": message.role, "content": blocks})
    return out


def write_request(request: Request, model: str | None, node: str) -> dict[str, Any]:
    """The request for an Anthropic node (`node` names it: only its own signed reasoning goes back to it)."""
    messages = write_messages(request, node)
    body: dict[str, Any] = {"model": model, "messages": messages}
    if request.system:
        body["system"] = request.system
    tools = [
        {"name": t.name, "input_schema": t.schema, **({"description": t.description} if t.description else {})}
        for t in request.tools
    ]
    choice: dict[str, Any] | None = None
    if request.json is not None:
        if tools:
            raise Untranslatable("a JSON answer format together with tools cannot be translated to Anthropic's API")
        schema = request.json.get("schema") or {"type": "object"}
        tools = [{"name": JSON_TOOL, "description": "Give the answer as this tool's input.", "input_schema": schema}]
        choice = {"type": "tool", "name": JSON_TOOL}
    elif request.tool_choice == "required":
        choice = {"type": "any"}
    elif request.tool_choice == "tool":
        choice = {"type": "tool", "name": request.tool_name}
    elif request.tool_choice in ("auto", "none"):
        choice = {"type": request.tool_choice}
    if tools:
        body["tools"] = tools
        if request.parallel is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            body["tool_choice"] = choice
    budget = _budget(request)
    if budget is not None and choice is not None and choice["type"] in ("any", "tool"):
        request.dropped.append("reasoning (Anthropic refuses thinking with a forced tool)")
        budget = None
    if budget is not None and unsigned_loop(messages):
        request.dropped.append("reasoning (the last assistant turn's thinking came from another provider)")
        budget = None
    max_tokens = request.max_tokens
    if budget is not None:
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS + budget
        elif max_tokens <= MIN_BUDGET:
            request.dropped.append("reasoning (max_tokens leaves no room for a thinking budget)")
            budget = None
        else:
            budget = min(budget, max_tokens - 1)
    body["max_tokens"] = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": max(budget, MIN_BUDGET)}
    temperature = request.temperature
    if temperature is not None and budget is not None and temperature != 1:
        request.dropped.append("temperature (Anthropic takes none with thinking)")
        temperature = None
    if temperature is not None:
        if temperature > 1:
            request.dropped.append(f"temperature {temperature:g} (Anthropic's range is 0-1: sent as 1)")
        body["temperature"] = min(temperature, 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.stream:
        body["stream"] = True
    return body


def _budget(request: Request) -> int | None:
    if request.thinking is False or request.effort == "none" or (request.effort is None and not request.thinking):
        return None
    if request.budget is not None:
        return request.budget
    return EFFORT_BUDGET.get(request.effort or "medium", EFFORT_BUDGET["medium"])
