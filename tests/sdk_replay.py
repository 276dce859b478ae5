"""The real SDKs reading bytes the sidecar produced: their stream helpers and their response types, over an
httpx mock transport (no socket), so a translated answer is judged by the code clients run."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import httpx2
import openai
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

SSE = {"content-type": "text/event-stream"}


def _transport(body: bytes, headers: dict[str, str]) -> httpx.Client:
    return httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, headers=headers, content=body))
    )


def openai_client(body: bytes, headers: dict[str, str] = SSE) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url="http://sidecar.invalid/v1", http_client=_transport(body, headers))


def anthropic_client(body: bytes, headers: dict[str, str] = SSE) -> anthropic.Anthropic:
    """The anthropic SDK runs on httpx2 (httpx's successor), so its mock transport is httpx2's."""
    http = httpx2.Client(
        transport=httpx2.MockTransport(lambda request: httpx2.Response(200, headers=headers, content=body))
    )
    return anthropic.Anthropic(api_key="unused", base_url="http://sidecar.invalid", http_client=http)


def chat_stream(body: bytes) -> ChatCompletion:
    """openai's `chat.completions.stream` helper over `body`: the completion it assembles (for an answer cut by
    its length or a content filter, which the helper raises on, the snapshot it had assembled)."""
    with openai_client(body).chat.completions.stream(model="m", messages=[{"role": "user", "content": "x"}]) as stream:
        try:
            for _ in stream:
                pass
            return stream.get_final_completion()
        except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError):
            return ChatCompletion.model_validate(stream.current_completion_snapshot.model_dump())


def responses_stream(body: bytes) -> Response:
    """The response the helper assembles; an incomplete one (its final event is response.incomplete, for which
    the helper keeps no final response) as that event carries it, with the helper's output items."""
    last: Response | None = None
    with openai_client(body).responses.stream(model="m", input="x") as stream:
        for event in stream:
            if event.type in ("response.completed", "response.incomplete"):
                last = event.response
        assert last is not None, "the stream has no terminal response event"
        return last


def messages_stream(body: bytes) -> Message:
    with anthropic_client(body).messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        for _ in stream:
            pass
        return stream.get_final_message()


def assembled(client: str, body: bytes) -> dict[str, Any]:
    """A translated stream as the client's SDK assembles it, as JSON."""
    model = {"chat": chat_stream, "responses": responses_stream, "messages": messages_stream}[client](body)
    return model.model_dump(mode="json", exclude_none=True)


TYPES: dict[str, Any] = {"chat": ChatCompletion, "responses": Response, "messages": Message}
EVENTS: dict[str, TypeAdapter[Any]] = {
    "chat": TypeAdapter(ChatCompletionChunk),
    "responses": TypeAdapter(ResponseStreamEvent),
    "messages": TypeAdapter(RawMessageStreamEvent),
}


def validate_answer(client: str, answer: dict[str, Any]) -> None:
    """The SDK's own type of a whole answer takes it, every field checked (a missing or mistyped one raises)."""
    TYPES[client].model_validate(answer, strict=False)


def validate_event(client: str, event: Any) -> None:
    if event == "[DONE]":
        assert client == "chat"
        return
    EVENTS[client].validate_python(event)


def events(data: bytes) -> list[Any]:
    """SSE bytes as the list of their data (parsed JSON, or "[DONE]"); asserts the `event:` line, where there
    is one, names the data's type (Anthropic's and Responses' streams carry both)."""
    out: list[Any] = []
    for block in data.decode().split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        lines = block.split("\n")
        text = "\n".join(line[6:] for line in lines if line.startswith("data: "))
        value = "[DONE]" if text == "[DONE]" else json.loads(text)
        name = next((line[7:] for line in lines if line.startswith("event: ")), None)
        assert name is None or (isinstance(value, dict) and value.get("type") == name), block
        out.append(value)
    return out


def openai_error(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """What the openai SDK raises for this error answer: its status's exception class, with the body's error."""
    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(status, json=body)))
    client = openai.OpenAI(api_key="unused", base_url="http://sidecar.invalid/v1", http_client=http, max_retries=0)
    try:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    except openai.APIStatusError as exc:
        assert exc.status_code == status
        assert isinstance(exc.body, dict)
        return exc.body
    raise AssertionError("no error raised")


def anthropic_error(status: int, body: dict[str, Any]) -> None:
    """The anthropic SDK raises its status's exception class for this body, with the body's message."""
    http = httpx2.Client(transport=httpx2.MockTransport(lambda request: httpx2.Response(status, json=body)))
    client = anthropic.Anthropic(api_key="unused", base_url="http://sidecar.invalid", http_client=http, max_retries=0)
    try:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    except anthropic.APIStatusError as exc:
        assert exc.status_code == status and body["error"]["message"] in str(exc)
        return
    raise AssertionError("no error raised")
