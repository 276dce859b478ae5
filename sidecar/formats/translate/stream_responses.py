"""Neutral events written as the stream a Responses client reads: response.created, response.in_progress, then
per output item output_item.added, its deltas (output_text, reasoning_summary_text, function_call_arguments)
and .done events, output_item.done, and at the end response.completed (or response.incomplete). Every event
carries its sequence_number. Text, arguments and items are kept only to fill the .done events and the final
response, as the API does; nothing is held back."""

from __future__ import annotations

import json
import time
from typing import Any

from . import ids
from .answers import (
    answer_id,
    call_item,
    incomplete,
    message_item,
    reasoning_item,
    response_envelope,
    usage_responses,
)
from .ir import (
    Counted,
    End,
    Event,
    Finish,
    Finished,
    Redacted,
    Refusal,
    RefusalDelta,
    SignatureDelta,
    Start,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolDelta,
    ToolStart,
    Usage,
    merge_usage,
)


class ResponsesWriter:
    __slots__ = (
        "call",
        "created",
        "encrypted",
        "finish",
        "id",
        "item",
        "key",
        "kind",
        "model",
        "namespaces",
        "output",
        "parts",
        "sequence",
        "signature",
        "usage",
    )  # fmt: skip

    def __init__(self, encrypted: bool = False, namespaces: dict[str, tuple[str, str]] | None = None) -> None:
        self.encrypted = encrypted  # the client asked for reasoning.encrypted_content
        self.namespaces = namespaces or {}  # the request's namespaced tools, flattened (responses.py)
        self.sequence = 0
        self.id = "resp"
        self.model = ""
        self.created = 0
        self.output: list[dict[str, Any]] = []  # finished items, for the final response
        self.kind: str | None = None  # the open item: "message", "reasoning", "function_call"
        self.item = ""  # its id
        self.parts: list[Text | Refusal] = []  # an open message's parts, the last one growing
        self.call: ToolCall | None = None
        self.key = -1  # the open call's key
        self.signature: str | None = None
        self.finish: Finish | None = None
        self.usage = Usage()

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: ".encode() + text.encode() + b"\n\n"

    def _envelope(self, status: str) -> dict[str, Any]:
        return response_envelope(self.id, self.model, self.created, status)

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.item, "output_index": len(self.output)}

    # ------------------------------------------------------------------ items

    def _open(self, kind: str, item: dict[str, Any]) -> bytes:
        out = self._close()
        self.kind, self.item = kind, item["id"]
        return out + self._event("response.output_item.added", {"output_index": len(self.output), "item": item})

    def _close_part(self) -> bytes:
        if not self.parts:
            return b""
        part = self.parts[-1]
        where = {**self._where(), "content_index": len(self.parts) - 1}
        if isinstance(part, Text):
            done = self._event("response.output_text.done", {**where, "text": part.text, "logprobs": []})
            body = {"type": "output_text", "text": part.text, "annotations": []}
        else:
            done = self._event("response.refusal.done", {**where, "refusal": part.text})
            body = {"type": "refusal", "refusal": part.text}
        return done + self._event("response.content_part.done", {**where, "part": body})

    def _close(self) -> bytes:
        if self.kind is None:
            return b""
        out = b""
        if self.kind == "message":
            out += self._close_part()
            item = message_item(self.item, self.parts)
        elif self.kind == "reasoning":
            text = "".join(p.text for p in self.parts)
            where = {**self._where(), "summary_index": 0}
            if text:
                out += self._event("response.reasoning_summary_text.done", {**where, "text": text})
                part = {"type": "summary_text", "text": text}
                out += self._event("response.reasoning_summary_part.done", {**where, "part": part})
            item = reasoning_item(self.item, Thinking(text, self.signature), self.encrypted)
        else:
            assert self.call is not None
            item = call_item(self.call, self.namespaces)
            out += self._event("response.function_call_arguments.done",
                               {**self._where(), "name": item["name"], "arguments": self.call.arguments})  # fmt: skip
        out += self._event("response.output_item.done", {"output_index": len(self.output), "item": item})
        self.output.append(item)
        self.kind, self.parts, self.call, self.signature = None, [], None, None
        return out

    def _text(self, text: str, refusal: bool) -> bytes:
        out = b""
        if self.kind != "message":
            out += self._close()  # first: the new item's id counts the items before it
            item_id = ids.item_id("msg", f"{self.id}:{len(self.output)}")
            out += self._open("message", {"type": "message", "id": item_id, "status": "in_progress",
                                          "role": "assistant", "content": []})  # fmt: skip
        kind = Refusal if refusal else Text
        if not self.parts or not isinstance(self.parts[-1], kind):
            out += self._close_part()
            self.parts.append(kind(""))
            body = (
                {"type": "refusal", "refusal": ""}
                if refusal
                else {"type": "output_text", "text": "", "annotations": []}
            )
            out += self._event("response.content_part.added",
                               {**self._where(), "content_index": len(self.parts) - 1, "part": body})  # fmt: skip
        self.parts[-1].text += text
        where = {**self._where(), "content_index": len(self.parts) - 1}
        if refusal:
            return out + self._event("response.refusal.delta", {**where, "delta": text})
        return out + self._event("response.output_text.delta", {**where, "delta": text, "logprobs": []})

    def _thinking(self, text: str) -> bytes:
        out = b""
        where = {"summary_index": 0}
        if self.kind != "reasoning":
            out += self._close()
            item_id = ids.item_id("rs", f"{self.id}:{len(self.output)}")
            out += self._open("reasoning", {"type": "reasoning", "id": item_id, "summary": []})
        if not self.parts:
            self.parts.append(Text(""))
            part = {"type": "summary_text", "text": ""}
            out += self._event("response.reasoning_summary_part.added", {**self._where(), **where, "part": part})
        self.parts[-1].text += text
        return out + self._event("response.reasoning_summary_text.delta", {**self._where(), **where, "delta": text})

    # ------------------------------------------------------------------ events

    def feed(self, event: Event) -> bytes:
        if isinstance(event, Start):
            self.id, self.model = answer_id("resp_", event.id), event.model
            self.created = event.created or int(time.time())
            if event.usage is not None:
                merge_usage(self.usage, event.usage)
            envelope = self._envelope("in_progress")
            return self._event("response.created", {"response": envelope}) + self._event(
                "response.in_progress", {"response": envelope}
            )
        if isinstance(event, TextDelta | RefusalDelta):
            return self._text(event.text, isinstance(event, RefusalDelta))
        if isinstance(event, ThinkingDelta):
            return self._thinking(event.text)
        if isinstance(event, SignatureDelta):
            if self.kind == "reasoning":
                self.signature = event.signature
            return b""
        if isinstance(event, Redacted):
            out = self._close()
            item_id = ids.item_id("rs", f"{self.id}:{len(self.output)}")
            out += self._open("reasoning", {"type": "reasoning", "id": item_id, "summary": []})
            self.signature = event.data
            return out + self._close()
        if isinstance(event, ToolStart):
            call = ToolCall(event.id, event.name, "")
            out = self._open("function_call", call_item(call, self.namespaces, "in_progress"))
            self.call, self.key = call, event.key
            return out
        if isinstance(event, ToolDelta):
            if self.kind != "function_call" or self.call is None or self.key != event.key:
                raise ValueError("tool call arguments interleaved between calls")
            self.call.arguments += event.arguments
            return self._event("response.function_call_arguments.delta", {**self._where(), "delta": event.arguments})
        if isinstance(event, Finished):
            self.finish = event.finish
            return b""
        if isinstance(event, Counted):
            merge_usage(self.usage, event.usage)
            return b""
        assert isinstance(event, End)
        return self.close()

    def close(self) -> bytes:
        out = self._close()
        details = incomplete(self.finish or "stop")
        response = self._envelope("incomplete" if details else "completed")
        response.update(output=self.output, incomplete_details=details, usage=usage_responses(self.usage))
        kind = "response.incomplete" if details else "response.completed"
        return out + self._event(kind, {"response": response})

    @property
    def finished(self) -> bool:
        return self.finish is not None

    def error(self, message: str, code: str) -> bytes:
        """A stream that cannot complete: Responses' error event, then response.failed."""
        out = self._event("error", {"code": code, "message": message, "param": None})
        response = self._envelope("failed")
        response.update(output=self.output, error={"code": "server_error", "message": message})
        return out + self._event("response.failed", {"response": response})
