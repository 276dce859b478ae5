"""OpenAI Responses requests, read into the neutral model (a Responses client's). No node is written to in
this format: an OpenAI node that implements it is given the request as it is."""

from __future__ import annotations

from typing import Any

from .chat import data_url, image_of
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

# State the provider keeps: only the node that holds it can serve the request.
NEEDS = {
    "previous_response_id": "previous_response_id (a conversation stored by the provider)",
    "conversation": "a conversation stored by the provider",
    "prompt": "a prompt template stored by the provider",
    "background": "background responses",
    "top_logprobs": "logprobs",
}
# Tools OpenAI runs itself, offered to the model: a node of another format cannot run them, so they are dropped
# (and named in the header); a request that forces one (tool_choice) is refused.
HOSTED = ("web_search", "file_search", "code_interpreter", "image_generation", "mcp")
# Everything else (store, metadata, service_tier, truncation, prompt_cache_key, safety_identifier, ...) is dropped
# and named in the answer's x-llm-sidecar-translated header.
KNOWN = {
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
    "temperature", "top_p", "text", "reasoning", "stream", "include", "user", "stream_options",
}  # fmt: skip


def _text_of(part: dict[str, Any]) -> str | None:
    value = part.get("text")
    return value if isinstance(value, str) else None


def _user_parts(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)]
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: content must be a string or a list of parts")
    parts: list[Part] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        assert kind is None or isinstance(part, dict)
        if kind in ("input_text", "output_text", "text") and (text := _text_of(part)) is not None:
            parts.append(Text(text))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append(image_of(part["image_url"], part.get("detail")))
        elif kind == "input_file" and isinstance(part.get("file_data"), str):
            media, data = data_url(part["file_data"])
            parts.append(Document(media_type=media or "application/pdf", data=data or part["file_data"],
                                  title=part.get("filename")))  # fmt: skip
        elif kind == "input_file" and isinstance(part.get("file_url"), str):
            parts.append(Document(url=part["file_url"], title=part.get("filename")))
        elif kind in ("input_image", "input_file"):
            raise Untranslatable(f"{where}: a file by file_id is held by the provider that stored it")
        else:
            raise Untranslatable(f"{where}: content part {str(kind)[:40]!r} cannot be translated")
    return parts


def _assistant_parts(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: content must be a string or a list of parts")
    parts: list[Part] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        assert kind is None or isinstance(part, dict)
        if kind in ("output_text", "input_text", "text") and (text := _text_of(part)) is not None:
            parts.append(Text(text))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append(Refusal(part["refusal"]))
        else:
            raise Untranslatable(f"{where}: assistant content part {str(kind)[:40]!r} cannot be translated")
    return parts


def _output(value: Any, where: str) -> list[Text | Image | Document]:
    parts = _user_parts(value if value is not None else "", where)
    return [p for p in parts if isinstance(p, Text | Image | Document)]


def _reasoning(item: dict[str, Any]) -> Thinking:
    summary = item.get("summary")
    texts = [p["text"] for p in arr(summary) if isinstance(p, dict) and isinstance(p.get("text"), str)]
    content = item.get("content")
    if not texts and isinstance(content, list):
        texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    encrypted = item.get("encrypted_content")
    return Thinking("\n\n".join(texts), encrypted if isinstance(encrypted, str) else None)


def read_input(value: Any, system: list[str]) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", [Text(value)])]
    if not isinstance(value, list) or not value:
        raise Untranslatable("input must be a string or a non-empty list of items")
    turns: list[Message] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise Untranslatable(f"{where}: an item must be an object")
        kind = item.get("type", "message")
        role = item.get("role")
        if kind == "message" and role in ("system", "developer"):
            content = item.get("content")
            system.append(content if isinstance(content, str) else "".join(t.text for t in _output(content, where)
                                                                             if isinstance(t, Text)))  # fmt: skip
        elif kind == "message" and role == "user":
            append_message(turns, "user", _user_parts(item.get("content"), where))
        elif kind == "message" and role == "assistant":
            append_message(turns, "assistant", _assistant_parts(item.get("content"), where))
        elif kind == "function_call" and isinstance(item.get("call_id"), str):
            arguments = item.get("arguments")
            name = str(item.get("name", ""))
            if item.get("namespace"):
                name = flat_name(str(item["namespace"]), name)
            call = ToolCall(item["call_id"], name, arguments if isinstance(arguments, str) else "{}")
            append_message(turns, "assistant", [call])
        elif kind == "function_call_output" and isinstance(item.get("call_id"), str):
            append_message(turns, "user", [ToolResult(item["call_id"], _output(item.get("output"), where))])
        elif kind == "reasoning":
            append_message(turns, "assistant", [_reasoning(item)])
        elif kind == "item_reference":
            raise Untranslatable(f"{where}: an item_reference points into state stored by the provider")
        else:
            raise Untranslatable(f"{where}: an item of type {str(kind)[:40]!r} cannot be translated")
    return turns


def _function(tool: Any, request: Request, namespace: dict[str, Any] | None = None) -> None:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function" or not isinstance(tool, dict) or not tool.get("name"):
        raise Untranslatable(f"tool of type {str(kind)[:40]!r} cannot be translated (only function tools)")
    schema = tool.get("parameters")
    name, description = str(tool["name"]), tool.get("description")
    if namespace is not None:
        space = str(namespace.get("name", ""))
        name = flat_name(space, name)
        request.namespaces[name] = (space, str(tool["name"]))
        description = " ".join(str(d) for d in (namespace.get("description"), description) if d) or None
    request.tools.append(
        Tool(name, schema if isinstance(schema, dict) else {"type": "object", "properties": {}}, description,
             tool.get("strict"))
    )  # fmt: skip


def flat_name(namespace: str, name: str) -> str:
    """A namespaced tool's name where tools have no namespaces (chat, Anthropic): `<namespace>__<name>`."""
    flat = f"{namespace}__{name}"
    if len(flat) > 64:
        raise Untranslatable(f"tool {flat[:70]!r}: a namespaced name longer than 64 characters cannot be translated")
    return flat


def _tools(body: dict[str, Any], request: Request) -> None:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise Untranslatable("tools must be a list")
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind.startswith(HOSTED):
            request.dropped.append(f"tool {kind} (runs at OpenAI)")  # offered, not required: the model does without
        elif kind == "namespace" and isinstance(tool, dict) and isinstance(tool.get("tools"), list):
            for inner in tool["tools"]:
                _function(inner, request, tool)
        else:
            _function(tool, request)
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        request.tool_choice = choice
    elif isinstance(choice, dict):
        if choice.get("type") != "function" or not choice.get("name"):
            raise Untranslatable(f"tool_choice of type {str(choice.get('type'))[:40]!r} cannot be translated")
        name = str(choice["name"])
        space = choice.get("namespace")
        request.tool_choice, request.tool_name = "tool", flat_name(str(space), name) if space else name
    parallel = body.get("parallel_tool_calls")
    request.parallel = parallel if isinstance(parallel, bool) else None


def _format(text: Any) -> dict[str, Any] | None:
    form = text.get("format") if isinstance(text, dict) else None
    if not isinstance(form, dict) or form.get("type") in (None, "text"):
        return None
    if form.get("type") == "json_object":
        return {"type": "json_object"}
    if form.get("type") == "json_schema" and isinstance(form.get("schema"), dict):
        return {"type": "json_schema", "name": form.get("name") or "answer", "schema": form["schema"],
                "strict": form.get("strict")}  # fmt: skip
    raise Untranslatable(f"text.format of type {str(form.get('type'))[:40]!r} cannot be translated")


def read_request(body: dict[str, Any]) -> Request:
    for key, why in NEEDS.items():
        if body.get(key) not in (None, False):
            raise Untranslatable(f"{why} cannot be served by a node that does not implement the Responses API")
    request = Request(model=body.get("model") if isinstance(body.get("model"), str) else None)
    system: list[str] = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        system.append(body["instructions"])
    request.messages = read_input(body.get("input"), system)
    request.system = "\n\n".join(s for s in system if s) or None
    _tools(body, request)
    tokens = body.get("max_output_tokens")
    request.max_tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            setattr(request, key, float(value))
    request.stream = body.get("stream") is True
    request.json = _format(body.get("text"))
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        request.effort = reasoning["effort"]
    request.user = body.get("user") if isinstance(body.get("user"), str) else None
    request.encrypted = "reasoning.encrypted_content" in arr(body.get("include"))
    request.dropped = sorted(k for k in body if k not in KNOWN and body[k] is not None) + request.dropped
    return request
