"""OpenAI Chat Completions requests: read into the neutral model (a chat client's) and written from it (for a
chat node)."""

from __future__ import annotations

import json
import re
from typing import Any

from . import ids
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

# What a chat request may ask that no other format can give: refused, never half-served.
NEEDS = {
    "n": "several choices (n > 1)",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "audio": "audio output",
    "web_search_options": "web search (a server tool)",
    "functions": "legacy functions (use tools)",
    "function_call": "legacy function_call (use tool_choice)",
}
# Everything else a chat request says (store, seed, metadata, penalties, service_tier, ...) tunes a provider and
# says nothing of the answer's content: it is dropped, and named in the answer's x-llm-sidecar-translated header.
KNOWN = {
    "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "stop", "stream", "stream_options", "response_format", "reasoning_effort", "user",
    "modalities",
}  # fmt: skip
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*;base64,", re.ASCII)
# OpenAI's reasoning models take max_completion_tokens and refuse max_tokens; other hosts know max_tokens.
_COMPLETION_TOKENS_MODELS = re.compile(r"(?:.*/)?(?:o\d|gpt-5|codex)", re.IGNORECASE)


def data_url(url: str) -> tuple[str | None, str | None]:
    """(media type, base64 data) of a `data:...;base64,` URL, (None, None) for any other URL."""
    match = _DATA_URL.match(url)
    if match is None:
        return None, None
    return match.group(1) or "application/octet-stream", url[match.end() :]


def image_of(url: str, detail: str | None = None) -> Image:
    media, data = data_url(url)
    return Image(url=None if data is not None else url, media_type=media, data=data, detail=detail)


def image_url(image: Image) -> str:
    if image.data is not None:
        return f"data:{image.media_type or 'image/png'};base64,{image.data}"
    return image.url or ""


def texts(content: Any, where: str) -> str:
    """A content that may only hold text (a system or tool message): a string or text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: content must be a string or a list of parts")
    out = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise Untranslatable(f"{where}: only text parts can be translated here")
        out.append(part["text"])
    return "".join(out) if len(out) == 1 else "\n".join(out)


def _user_parts(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)]
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: content must be a string or a list of parts")
    parts: list[Part] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(Text(part["text"]))
        elif kind == "image_url" and isinstance(part.get("image_url"), dict) and part["image_url"].get("url"):
            parts.append(image_of(str(part["image_url"]["url"]), part["image_url"].get("detail")))
        elif kind == "file" and isinstance(part.get("file"), dict) and part["file"].get("file_data"):
            media, data = data_url(str(part["file"]["file_data"]))
            if data is None:
                raise Untranslatable(f"{where}: a file part needs base64 file_data")
            parts.append(Document(media_type=media or "application/pdf", data=data, title=part["file"].get("filename")))
        elif kind == "file":
            raise Untranslatable(f"{where}: a file by file_id is held by the provider that stored it")
        else:
            raise Untranslatable(f"{where}: content part {str(kind)[:40]!r} cannot be translated")
    return parts


def _assistant_parts(message: dict[str, Any], where: str) -> list[Part]:
    parts: list[Part] = []
    content = message.get("content")
    if isinstance(content, str):
        if content:
            parts.append(Text(content))
    elif isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(Text(part["text"]))
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                parts.append(Refusal(part["refusal"]))
            else:
                raise Untranslatable(f"{where}: assistant content part {str(kind)[:40]!r} cannot be translated")
    elif content is not None:
        raise Untranslatable(f"{where}: content must be a string, a list of parts or null")
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append(Refusal(message["refusal"]))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise Untranslatable(f"{where}: tool_calls must be a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise Untranslatable(f"{where}: a tool call needs an id and a function (custom tools cannot be translated)")
        arguments = function.get("arguments")
        parts.append(
            ToolCall(call["id"], str(function.get("name", "")), arguments if isinstance(arguments, str) else "{}")
        )
    return parts


def read_request(body: dict[str, Any]) -> Request:
    """A chat client's request in the neutral model; Untranslatable for what no other format can serve."""
    for key, why in NEEDS.items():
        value = body.get(key)
        if value is not None and value is not False and not (key == "n" and value == 1):
            raise Untranslatable(f"{why} cannot be translated to another API")
    if "audio" in arr(body.get("modalities")):
        raise Untranslatable("audio output cannot be translated to another API")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Untranslatable("messages must be a non-empty list")
    request = Request(model=body.get("model") if isinstance(body.get("model"), str) else None)
    system: list[str] = []
    turns: list[Message] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(texts(message.get("content"), where))
        elif role == "user":
            append_message(turns, "user", _user_parts(message.get("content"), where))
        elif role == "assistant":
            append_message(turns, "assistant", _assistant_parts(message, where))
        elif role == "tool":
            content = message.get("content")
            result = ToolResult(str(message.get("tool_call_id", "")), [Text(texts(content, where))])
            append_message(turns, "user", [result])
        else:
            raise Untranslatable(f"{where}: role {str(role)[:20]!r} cannot be translated")
    request.system = "\n\n".join(system) if system else None
    request.messages = turns
    read_tools(body, request)
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    request.max_tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
    request.temperature = _number(body.get("temperature"))
    request.top_p = _number(body.get("top_p"))
    stop = body.get("stop")
    request.stop = [stop] if isinstance(stop, str) else [s for s in arr(stop) if isinstance(s, str)]
    request.stream = body.get("stream") is True
    options = body.get("stream_options")
    request.stream_usage = isinstance(options, dict) and options.get("include_usage") is True
    request.json = response_format(body.get("response_format"))
    effort = body.get("reasoning_effort")
    request.effort = effort if isinstance(effort, str) else None
    request.user = body.get("user") if isinstance(body.get("user"), str) else None
    request.dropped = sorted(k for k in body if k not in KNOWN and k not in NEEDS and body[k] is not None)
    return request


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def read_tools(body: dict[str, Any], request: Request) -> None:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise Untranslatable("tools must be a list")
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function" or not function.get("name"):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise Untranslatable(f"tool of type {str(kind)[:40]!r} cannot be translated (only function tools)")
        schema = function.get("parameters")
        request.tools.append(
            Tool(str(function["name"]), schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
                 function.get("description"), function.get("strict"))
        )  # fmt: skip
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        request.tool_choice = choice
    elif isinstance(choice, dict):
        function = choice.get("function")
        if choice.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
            raise Untranslatable(f"tool_choice of type {str(choice.get('type'))[:40]!r} cannot be translated")
        request.tool_choice, request.tool_name = "tool", str(function["name"])
    parallel = body.get("parallel_tool_calls")
    request.parallel = parallel if isinstance(parallel, bool) else None


def response_format(value: Any) -> dict[str, Any] | None:
    """Chat's response_format as the neutral JSON mode (None for plain text)."""
    if not isinstance(value, dict) or value.get("type") in (None, "text"):
        return None
    if value.get("type") == "json_object":
        return {"type": "json_object"}
    schema = value.get("json_schema")
    if value.get("type") == "json_schema" and isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
        return {"type": "json_schema", "name": schema.get("name") or "answer", "schema": schema["schema"],
                "strict": schema.get("strict")}  # fmt: skip
    raise Untranslatable(f"response_format of type {str(value.get('type'))[:40]!r} cannot be translated")


# ------------------------------------------------------------------ written for a chat node


def _content(parts: list[Part]) -> str | list[dict[str, Any]]:
    """A user turn's parts as chat content: a string when it is all text in one part."""
    if len(parts) == 1 and isinstance(parts[0], Text):
        return parts[0].text
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            image: dict[str, Any] = {"url": image_url(part)}
            if part.detail:
                image["detail"] = part.detail
            out.append({"type": "image_url", "image_url": image})
        elif isinstance(part, Document):
            if part.text is not None:
                out.append({"type": "text", "text": part.text})
            elif part.data is not None:
                file = {
                    "file_data": f"data:{part.media_type};base64,{part.data}",
                    "filename": part.title or "document.pdf",
                }
                out.append({"type": "file", "file": file})
            else:
                raise Untranslatable("a document by URL cannot be sent to a chat node")
    return out


def _tool_messages(result: ToolResult) -> list[dict[str, Any]]:
    """A tool result as chat's tool message; what a tool message cannot hold (images, PDFs) follows in a user
    message that names the call, so the model still sees it."""
    text = "".join(p.text for p in result.content if isinstance(p, Text))
    if result.is_error:
        text = f"[tool error] {text}"
    out: list[dict[str, Any]] = [{"role": "tool", "tool_call_id": ids.for_chat(result.call_id), "content": text}]
    rest: list[Part] = [p for p in result.content if not isinstance(p, Text)]
    if rest:
        note = Text(f"(the result of tool call {ids.for_chat(result.call_id)} continues here)")
        out.append({"role": "user", "content": _content([note, *rest])})
    return out


def write_messages(request: Request) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for message in request.messages:
        if message.role == "assistant":
            text = "".join(p.text for p in message.parts if isinstance(p, Text))
            calls = [
                {"id": ids.for_chat(p.id), "type": "function", "function": {"name": p.name, "arguments": p.arguments}}
                for p in message.parts
                if isinstance(p, ToolCall)
            ]
            turn: dict[str, Any] = {"role": "assistant", "content": text or None}
            refusal = "".join(p.text for p in message.parts if isinstance(p, Refusal))
            if refusal:
                turn["refusal"] = refusal
            if calls:
                turn["tool_calls"] = calls
            if text or calls or refusal:  # reasoning alone is provider-bound state: nothing to send
                out.append(turn)
            continue
        rest: list[Part] = []
        for part in message.parts:
            if isinstance(part, ToolResult):
                out.extend(_tool_messages(part))
            elif not isinstance(part, Thinking | ToolCall | Refusal):
                rest.append(part)
        if rest:
            out.append({"role": "user", "content": _content(rest)})
    return out


def effort_of(request: Request) -> str | None:
    """The reasoning effort to ask a chat node for: the client's, or one near its thinking budget."""
    if request.thinking is False:
        return None
    if request.effort is not None:
        return request.effort
    if request.budget is not None:
        return "low" if request.budget < 4096 else "medium" if request.budget < 16384 else "high"
    return None


def write_request(request: Request, model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": write_messages(request)}
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "parameters": t.schema,
             **({"description": t.description} if t.description else {}),
             **({"strict": t.strict} if t.strict is not None else {})}}
            for t in request.tools
        ]  # fmt: skip
        if request.parallel is not None:
            body["parallel_tool_calls"] = request.parallel
    if request.tool_choice == "tool":
        body["tool_choice"] = {"type": "function", "function": {"name": request.tool_name}}
    elif request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.max_tokens is not None:
        key = "max_completion_tokens" if model and _COMPLETION_TOKENS_MODELS.match(model) else "max_tokens"
        body[key] = request.max_tokens
    for key in ("temperature", "top_p", "user"):
        if getattr(request, key) is not None:
            body[key] = getattr(request, key)
    if request.stop:
        body["stop"] = request.stop
    if request.json is not None:
        if request.json["type"] == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            schema = {k: v for k, v in request.json.items() if k != "type" and v is not None}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
    effort = effort_of(request)
    if effort is not None:
        body["reasoning_effort"] = effort
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # usage is what every other format's stream ends with
    return body


def arguments_object(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as the object Anthropic's `input` must be; what is no object is kept whole
    under "arguments" rather than lost."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}
