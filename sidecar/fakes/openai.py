"""The OpenAI-format fake provider (`FakeProvider`): Chat Completions, the Responses API and embeddings, streamed or
not, with every fault.

Its routes: POST /v1/chat/completions (also behind a path prefix), POST /v1/responses and GET /v1/responses/{id}
(while Behaviour.responses is on; off, they answer 404 like any path the fake does not know, as a chat-only server
such as vLLM or Ollama does), POST /v1/embeddings and GET /v1/models. What they share is base.py's; chat.py,
responses.py and embeddings.py speak each endpoint's format. anthropic.py subclasses it for Anthropic's API.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from . import responses
from .base import FakeBase
from .chat import ChatSpeaker
from .core import Behaviour
from .embeddings import EmbeddingsSpeaker, problem


def bad_request(message: str, param: str | None = None) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return web.json_response({"error": error}, status=400)


async def json_body(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object if it has a model, else None."""
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) and "model" in body else None


class FakeProvider(FakeBase):
    def __init__(self, name: str = "fake", behaviour: Behaviour | None = None, seed: int | None = None) -> None:
        self.response_store = responses.Store()
        super().__init__(name, behaviour, seed)

    def add_api_routes(self) -> None:
        router = self.app.router
        router.add_post("/v1/chat/completions", self.chat)
        router.add_post("/{prefix:.+}/v1/chat/completions", self.chat)  # behind a path prefix
        router.add_post("/v1/responses", self.responses)
        router.add_get("/v1/responses/{response_id}", self.response)
        router.add_post("/v1/embeddings", self.embeddings)
        router.add_get("/v1/models", self.models)
        router.add_route("*", "/v1/{tail:.*}", self.other)

    async def models(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        self.stats.models += 1
        if self._failing(is_probe=True):
            return await self.fail_probe(request)
        await asyncio.sleep(self.behaviour.latency)
        data = [{"id": m, "object": "model", "owned_by": self.name} for m in ("gpt-4o-mini", "deepseek-chat")]
        return web.json_response({"object": "list", "data": data})

    async def fail_probe(self, request: web.Request) -> web.StreamResponse:
        """A /v1/models probe that Behaviour.fail_rate picked to fail: as a chat request without a body would."""
        return await self.fail(ChatSpeaker(self, request, {"model": "probe"}))

    async def other(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        return web.json_response(
            {"error": {"message": f"unknown path {request.path}", "type": "invalid_request_error", "code": None}},
            status=404,
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        self.stats.chat += 1
        body = await json_body(request)
        if body is None:
            return bad_request("body must be JSON with a model")
        return await self.serve(ChatSpeaker(self, request, body))

    async def responses(self, request: web.Request) -> web.StreamResponse:
        if not self.behaviour.responses:
            return await self.other(request)
        self._count(request)
        return await responses.create(self, self.response_store, request)

    async def response(self, request: web.Request) -> web.StreamResponse:
        if not self.behaviour.responses:
            return await self.other(request)
        self._count(request)
        return await responses.retrieve(self.response_store, request)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        self.stats.embeddings += 1
        body = await json_body(request)
        if body is None:
            return bad_request("body must be JSON with a model")
        if (wrong := problem(body)) is not None:
            return bad_request(*wrong)
        return await self.serve(EmbeddingsSpeaker(self, request, body))
