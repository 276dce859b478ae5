"""The neutral model a request, an answer and a stream of any format are read into and written from.

It holds what at least two of the formats can say. What a format cannot carry into another is either
refused before the request is sent (limits.py, `Untranslatable`) or listed in `Request.dropped`, which the
client sees in the `x-llm-sidecar-translated` header: nothing is lost silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Form = Literal["chat", "responses", "messages"]
CHAT: Form = "chat"
RESPONSES: Form = "responses"
MESSAGES: Form = "messages"
FORMS: tuple[Form, ...] = (CHAT, RESPONSES, MESSAGES)
PATHS: dict[Form, str] = {CHAT: "/v1/chat/completions", RESPONSES: "/v1/responses", MESSAGES: "/v1/messages"}
_FORMS = {(path, form != MESSAGES): form for form, path in PATHS.items()}


def form_of(method: str, path: str, openai: bool) -> Form | None:
    """The format of a request that may be translated: a POST that creates an answer, from a client of that
    API (`openai`: not an Anthropic client); None for every other request (files, embeddings, ...)."""
    return _FORMS.get((path, openai)) if method == "POST" else None


# How an answer ended, in chat's words (the common denominator): "stop", "length", "tool_calls",
# "content_filter"; `Answer.stop_sequence` says which stop sequence ended it, when the node said so.
Finish = Literal["stop", "length", "tool_calls", "content_filter"]


class Untranslatable(ValueError):
    """A request that needs what the target format cannot do (the message says what and why)."""


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    """An image by URL, or inline: `data` is base64 of `media_type`."""

    url: str | None = None
    media_type: str | None = None
    data: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class Document:
    """A document: a PDF (base64 `data`, or `url`) or plain text (`text`)."""

    media_type: str = "application/pdf"
    data: str | None = None
    url: str | None = None
    text: str | None = None
    title: str | None = None


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as chat and Responses carry it


@dataclass(slots=True)
class ToolResult:
    call_id: str
    content: list[Text | Image | Document]
    is_error: bool = False


@dataclass(slots=True)
class Thinking:
    """Reasoning the model showed. `signature` is its provider's proof of it (Anthropic's signature, or the
    sidecar's mark naming the node it came from: ids.py); `redacted` is an encrypted block's data."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None


@dataclass(slots=True)
class Refusal:
    text: str


Part = Text | Image | Document | ToolCall | ToolResult | Thinking | Refusal


@dataclass(slots=True)
class Message:
    role: Literal["user", "assistant"]
    parts: list[Part] = field(default_factory=list)


@dataclass(slots=True)
class Tool:
    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class Request:
    model: str | None = None
    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: str | None = None  # "auto", "none", "required", or "tool" (named: `tool_name`)
    tool_name: str | None = None
    parallel: bool | None = None  # parallel tool calls allowed
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    # {"type": "json_object"} or {"type": "json_schema", "name", "schema", "strict"}
    json: dict[str, Any] | None = None
    effort: str | None = None  # reasoning effort: "minimal", "low", "medium", "high", ...
    budget: int | None = None  # a thinking budget in tokens (Anthropic)
    thinking: bool | None = None  # reasoning asked for (True) or turned off (False); None: the model's default
    user: str | None = None
    stream_usage: bool = False  # a chat client asked for usage in its stream
    encrypted: bool = False  # a Responses client asked for reasoning.encrypted_content
    # A Responses client's namespaced tools, flattened: the flat name -> (namespace, name).
    namespaces: dict[str, tuple[str, str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # what the source said that the target has no words for


@dataclass(slots=True)
class Usage:
    """Token counts: `input` is the whole prompt, cached parts included (chat's and Responses' way)."""

    input: int | None = None
    output: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None


@dataclass(slots=True)
class Answer:
    id: str
    model: str
    parts: list[Part] = field(default_factory=list)
    finish: Finish = "stop"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)
    created: int | None = None


# Stream events: what every format's stream is read into, one at a time.


@dataclass(slots=True)
class Start:
    id: str
    model: str
    usage: Usage | None = None
    created: int | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class SignatureDelta:
    signature: str


@dataclass(slots=True)
class Redacted:
    data: str


@dataclass(slots=True)
class RefusalDelta:
    text: str


@dataclass(slots=True)
class ToolStart:
    """A tool call begins; `key` tells calls apart (chat's index, Anthropic's block index)."""

    key: int
    id: str
    name: str


@dataclass(slots=True)
class ToolDelta:
    key: int
    arguments: str


@dataclass(slots=True)
class Finished:
    finish: Finish
    stop_sequence: str | None = None


@dataclass(slots=True)
class Counted:
    usage: Usage


@dataclass(slots=True)
class End:
    """The node's stream is over (chat's [DONE], Anthropic's message_stop)."""


Event = (
    Start | TextDelta | ThinkingDelta | SignatureDelta | Redacted | RefusalDelta | ToolStart | ToolDelta | Finished
    | Counted | End
)  # fmt: skip


def arr(value: Any) -> list[Any]:
    """A JSON value that should be an array, as one ([] for anything else)."""
    return value if isinstance(value, list) else []


def obj(value: Any) -> dict[str, Any]:
    """A JSON value that should be an object, as one ({} for anything else): what nodes send is untrusted."""
    return value if isinstance(value, dict) else {}


def merge_usage(into: Usage, more: Usage) -> Usage:
    """Counts reported in pieces (Anthropic's message_start then message_delta): a later count wins."""
    for name in ("input", "output", "cache_read", "cache_write", "reasoning"):
        value = getattr(more, name)
        if value is not None:
            setattr(into, name, value)
    return into


def append_message(messages: list[Message], role: Literal["user", "assistant"], parts: list[Part]) -> None:
    """Add a turn; consecutive turns of one role are one turn (as Anthropic's API combines them)."""
    if not parts:
        return
    if messages and messages[-1].role == role:
        messages[-1].parts.extend(parts)
    else:
        messages.append(Message(role, list(parts)))
