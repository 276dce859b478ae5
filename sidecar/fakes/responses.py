"""OpenAI's Responses API on the OpenAI fake: POST /v1/responses and GET /v1/responses/{id}.

A request's `input` (a string, or a list of items: messages, function_call and function_call_output items) follows
the conversation of its `previous_response_id`, if it has one: the fake keeps the last STORE_SIZE responses it
completed (not those with `store: false`), each with its conversation, and an unknown id gets OpenAI's 404
`previous_response_not_found`. `instructions` count as a system message for the prompt cache but, as in the API,
are not carried over to the next turn. Function tools and tool_choice follow plan.py's rule; a reasoning request
is one whose model name marks it (plan.is_reasoning_model) or whose `reasoning.effort` is set (not "none").
Every fault applies (responses_wire.py says how a stream ends under each). An input that ends with an assistant
message asks to continue it, as in chat (Behaviour.continuation; the fake's own simulation, which a proxy's
mid-stream continuation can be tried with: OpenAI documents no prefill for this API).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from .base import FakeBase
from .chat import choice_of, error_response, function_tools, openai_error
from .core import linger, listed
from .plan import Ask, Plan, Result, is_reasoning_model, label, output_text
from .responses_wire import Ids, events_of, output_items, response_object, usage_of
from .stream import broken_body, event_stream, send

STORE_SIZE = 1000  # completed responses kept for previous_response_id and GET, oldest out first


class Store:
    """The responses a fake completed, by id: the response and its conversation (input and output items)."""

    def __init__(self, capacity: int = STORE_SIZE) -> None:
        self.capacity = capacity
        self.kept: OrderedDict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = OrderedDict()

    def get(self, rid: Any) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        return self.kept.get(rid) if isinstance(rid, str) else None

    def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        self.kept[response["id"]] = (response, conversation)
        while len(self.kept) > self.capacity:
            self.kept.popitem(last=False)


def new_items(value: Any) -> list[dict[str, Any]] | None:
    """A request's `input` as items, or None if it is neither a string nor a list."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return None


def message_text(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in listed(content) if isinstance(p, dict))


def responses_ask(body: dict[str, Any], conversation: list[dict[str, Any]], model: str) -> Ask:
    choice = body.get("tool_choice")
    function = isinstance(choice, dict) and choice.get("type") == "function"
    kind, named = choice_of(choice, choice.get("name") if function and isinstance(choice, dict) else None)
    names = {i.get("call_id"): i.get("name") for i in conversation if i.get("type") == "function_call"}
    results: list[Result] = []
    for item in reversed(conversation):
        if item.get("type") != "function_call_output":
            break
        call = item.get("call_id")
        results.insert(0, Result(label(names.get(call), call), output_text(item.get("output"))))
    users = [i for i in conversation if i.get("role") == "user" and i.get("type", "message") == "message"]
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    return Ask(
        tools=function_tools(body.get("tools"), nested=False),
        choice=kind,
        named=named,
        parallel=body.get("parallel_tool_calls") is not False,
        prompt=message_text(users[-1]) if users else "",
        results=tuple(results),
        reasoning=is_reasoning_model(model) or effort not in (None, "none"),
    )


class ResponsesSpeaker:
    """A request to POST /v1/responses (base.Speaker): its input items `given` after the conversation of its
    previous response, `earlier`."""

    partial = b'{"id": "resp_partial", "object": "response", "output": ['

    def __init__(
        self,
        fake: FakeBase,
        request: web.Request,
        body: dict[str, Any],
        given: list[dict[str, Any]],
        earlier: list[dict[str, Any]],
        store: Store,
    ) -> None:
        self.fake, self.request, self.body = fake, request, body
        self.given, self.conversation, self.store = given, [*earlier, *given], store
        self.model = str(body["model"])
        self.stream = bool(body.get("stream"))

    def ask(self) -> Ask:
        return responses_ask(self.body, self.conversation, self.model)

    def prefill(self) -> dict[str, Any] | None:
        """A trailing assistant message item, continued as in chat (the fake's own simulation: OpenAI documents
        no prefill for the Responses API), with its `prefix` mark for Behaviour.continuation "prefix"."""
        last = self.given[-1] if self.given else {}  # of this request's input: a stored answer is no prefill
        if last.get("role") != "assistant" or last.get("type", "message") != "message":
            return None
        mark = {"prefix": last["prefix"]} if "prefix" in last else {}
        return {"role": "assistant", "content": message_text(last), **mark}

    def refuse(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
        error = openai_error(kind, status, self.fake.name, self.model)
        return error_response(status, error, {"x-fake-provider": self.fake.name, **(headers or {})})

    def prompt(self) -> list[dict[str, Any]]:
        instructions = self.body.get("instructions")
        system = [{"role": "system", "content": instructions}] if isinstance(instructions, str) else []
        return system + self.conversation

    async def answer(
        self,
        plan: Plan,
        *,
        ending: str = "stop",
        wait: float = 0.0,
        keepalive: float = 0.0,
        drop_after: int | None = None,
        plain: bool = False,
        model: str | None = None,
    ) -> web.StreamResponse:
        fake, body = self.fake, self.body
        model = model or self.model
        n = f"{fake.name}_{fake.stats.responses}"
        calls = tuple((f"fc_{n}_{i}", f"call_{n}_{i}") for i in range(len(plan.calls)))
        ids = Ids(f"resp_{n}", f"msg_{n}", f"rs_{n}", calls)
        usage = usage_of(fake.prompt_cache(model, self.prompt()), plan)
        created = int(time.time())
        final = response_object(body, ids.response, model, created, "completed", output_items(plan, ids), usage)
        if ending == "stop" and body.get("store") is not False:
            self.store.put(final, [*self.conversation, *final["output"]])
        headers = {"x-fake-provider": fake.name}
        if not self.stream:
            await linger(self.request, wait + keepalive)
            if ending in ("cut", "stall"):
                return await broken_body(self.request, json.dumps(final).encode(), headers, ending)
            return web.json_response(final, headers=headers)
        wire = events_of(body, model, plan, ids, created, usage)
        response = await event_stream(self.request, headers)
        await send(self.request, response, wire, fake.behaviour, ending, wait, keepalive, drop_after)
        return response


def invalid(status: int, message: str, param: str | None, code: str | None = None) -> web.Response:
    return error_response(
        status, {"message": message, "type": "invalid_request_error", "param": param, "code": code}, {}
    )


async def create(fake: FakeBase, store: Store, request: web.Request) -> web.StreamResponse:
    """POST /v1/responses, counted (FakeBase._count) by the caller."""
    fake.stats.responses += 1
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict) or "model" not in body:
        return invalid(400, "body must be JSON with a model", "model")
    given = new_items(body.get("input"))
    if given is None:
        return invalid(400, "input must be a string or a list of input items", "input")
    earlier: list[dict[str, Any]] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        found = store.get(previous)
        if found is None:
            message = f"Previous response with id '{previous}' not found."
            return invalid(404, message, "previous_response_id", "previous_response_not_found")
        earlier = found[1]
    return await fake.serve(ResponsesSpeaker(fake, request, body, given, earlier, store))


async def retrieve(store: Store, request: web.Request) -> web.Response:
    """GET /v1/responses/{response_id}: a response this fake completed and kept."""
    rid = request.match_info["response_id"]
    found = store.get(rid)
    if found is None:
        return invalid(404, f"Response with id '{rid}' not found.", None)
    return web.json_response(found[0])
