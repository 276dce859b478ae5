"""A client's format paired with a node's: the request read once, written for each node, and the node's answer
(whole or streamed) written back in the client's format."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..sse import loads
from . import answers, chat, messages, responses
from .ir import (
    CHAT,
    MESSAGES,
    RESPONSES,
    Answer,
    Counted,
    End,
    Event,
    Finished,
    Form,
    Redacted,
    Refusal,
    RefusalDelta,
    Request,
    SignatureDelta,
    Start,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolDelta,
    ToolStart,
    Untranslatable,
    Usage,
    merge_usage,
)
from .stream_chat import ChatReader, ChatWriter
from .stream_messages import MessagesReader, MessagesWriter
from .stream_responses import ResponsesWriter

READERS = {CHAT: chat.read_request, MESSAGES: messages.read_request, RESPONSES: responses.read_request}
Writer = ChatWriter | MessagesWriter | ResponsesWriter


def read(client: Form, body: dict[str, Any]) -> Request:
    """The client's request in the neutral model; Untranslatable for what no other format can serve."""
    if not isinstance(body, dict):
        raise Untranslatable("the body must be a JSON object")
    return READERS[client](body)


def write(request: Request, target: Form, model: str | None, node: str) -> tuple[dict[str, Any], list[str]]:
    """The request for a node of format `target` (`node` names it), and what it could not carry."""
    copy = dataclasses.replace(request, dropped=list(request.dropped))
    if target == MESSAGES:
        return messages.write_request(copy, model, node), copy.dropped
    if target == CHAT:
        return chat.write_request(copy, model), copy.dropped
    raise Untranslatable("no node is written to in the Responses format")


def read_answer(target: Form, body: bytes, node: str, request: Request) -> Answer:
    """A node's whole answer (in its format `target`); ValueError for what is no answer of that format."""
    try:
        parsed = loads(body)
    except RecursionError:
        raise ValueError("the node's answer is nested too deeply") from None
    if target == MESSAGES:
        return answers.read_messages(parsed, node, request.json is not None and not request.tools)
    return answers.read_chat(parsed, node)


def write_answer(client: Form, answer: Answer, request: Request) -> bytes:
    if client == MESSAGES:
        body = answers.write_messages(answer)
    elif client == RESPONSES:
        body = answers.write_responses(answer, request)
    else:
        body = answers.write_chat(answer)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def writer(client: Form, request: Request, node: str) -> Writer:
    if client == MESSAGES:
        return MessagesWriter(node)
    if client == RESPONSES:
        return ResponsesWriter(request.encrypted, request.namespaces)
    return ChatWriter(request.stream_usage)


class Transcoder:
    """A node's stream, event by event (parsed JSON, or sse.DONE), as the client's stream."""

    __slots__ = ("done", "reader", "usage", "writer")

    def __init__(self, target: Form, client: Form, request: Request, node: str) -> None:
        self.reader = (
            MessagesReader(node, request.json is not None and not request.tools) if target == MESSAGES else ChatReader()
        )
        self.writer = writer(client, request, node)
        self.usage = Usage()  # the counts, as they come
        self.done = False  # the node's stream said it is over

    def feed(self, payload: Any) -> bytes:
        """The client's bytes for one of the node's events; ValueError for an event that breaks the stream."""
        out = []
        for event in self.reader.feed(payload):
            if isinstance(event, Counted | Start) and event.usage is not None:
                merge_usage(self.usage, event.usage)
            elif isinstance(event, End):
                self.done = True
            out.append(self.writer.feed(event))
        return b"".join(out)

    def end(self) -> bytes | None:
        """The node closed its stream: the client's last events if the answer had finished, else None (cut)."""
        return self.writer.close() if self.writer.finished else None

    def error(self, message: str, code: str) -> bytes:
        return self.writer.error(message, code)


def events_of(answer: Answer) -> list[Event]:
    """A whole answer as the events of a stream (a node that answered a stream request with one JSON body)."""
    out: list[Event] = [Start(answer.id, answer.model, Usage(input=answer.usage.input), answer.created)]
    for key, part in enumerate(answer.parts):
        if isinstance(part, Text):
            out.append(TextDelta(part.text))
        elif isinstance(part, Refusal):
            out.append(RefusalDelta(part.text))
        elif isinstance(part, Thinking) and part.redacted is not None:
            out.append(Redacted(part.redacted))
        elif isinstance(part, Thinking):
            out.append(ThinkingDelta(part.text))
            if part.signature:
                out.append(SignatureDelta(part.signature))
        elif isinstance(part, ToolCall):
            out.append(ToolStart(key, part.id, part.name))
            if part.arguments:
                out.append(ToolDelta(key, part.arguments))
    out += [Finished(answer.finish, answer.stop_sequence), Counted(answer.usage), End()]
    return out
