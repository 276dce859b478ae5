"""OpenAI's embeddings (POST /v1/embeddings) on the OpenAI fake: deterministic vectors, with the fake's faults.

Each input (a string, a list of strings, a list of token ids or a list of such lists) gets a unit vector of
`dimensions` numbers (DIMENSIONS without it) made from the SHA-256 of the model and that input, so the same text
always gets the same vector and different texts different ones. `encoding_format` "float" (the default) sends
the numbers, "base64" their little-endian float32 bytes (what the openai SDK asks for and decodes); both carry the
same float32 values. Usage counts core.estimate_tokens of each input. There is no stream, so of the stream faults
only cut and stall break the answer (its JSON body), and a continuation never applies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from typing import Any

from aiohttp import web

from .base import FakeBase
from .chat import error_response, openai_error
from .core import estimate_tokens, linger
from .plan import Ask, Plan
from .stream import broken_body

DIMENSIONS = 16  # small by default: a test reads them; `dimensions` asks for more
MAX_DIMENSIONS = 4096
MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


def inputs_of(value: Any) -> list[Any] | None:
    """The request's inputs, one per vector, or None if `input` is none of the shapes the API takes."""
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value or len(value) > MAX_INPUTS:
        return None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]  # one input as token ids
    if all((isinstance(v, str) and v) or (isinstance(v, list) and v and _token_ids(v)) for v in value):
        return list(value)
    return None


def _token_ids(value: list[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def problem(body: dict[str, Any]) -> tuple[str, str] | None:
    """(what is wrong, the parameter) for a request the API would refuse with 400, else None."""
    if inputs_of(body.get("input")) is None:
        return "input must be a non-empty string, list of strings, or list of token ids", "input"
    if body.get("encoding_format", "float") not in ("float", "base64"):
        return "encoding_format must be float or base64", "encoding_format"
    dimensions = body.get("dimensions", DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 0 < dimensions <= MAX_DIMENSIONS:
        return f"dimensions must be a whole number from 1 to {MAX_DIMENSIONS}", "dimensions"
    return None


def vector(model: str, value: Any, dimensions: int) -> list[float]:
    """The unit vector of `value` for `model`, in float32 values."""
    seed = hashlib.sha256(json.dumps([model, value]).encode()).digest()
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        raw += [n / 2**31 - 1.0 for n in struct.unpack(">8I", block)]
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(x / norm for x in raw))))


def embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    inputs = inputs_of(body.get("input")) or []
    dimensions: int = body.get("dimensions", DIMENSIONS)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, value in enumerate(inputs):
        numbers = vector(model, value, dimensions)
        encoded: Any = base64.b64encode(struct.pack(f"<{dimensions}f", *numbers)).decode() if as_base64 else numbers
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(estimate_tokens(value) for value in inputs)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class EmbeddingsSpeaker:
    """A request to POST /v1/embeddings (base.Speaker): every answer is its embeddings, whatever the plan."""

    partial = b'{"object": "list", "data": ['
    stream = False

    def __init__(self, fake: FakeBase, request: web.Request, body: dict[str, Any]) -> None:
        self.fake, self.request, self.body = fake, request, body
        self.model = str(body["model"])

    def ask(self) -> Ask:
        return Ask()

    def prefill(self) -> dict[str, Any] | None:
        return None

    def refuse(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
        error = openai_error(kind, status, self.fake.name, self.model)
        return error_response(status, error, {"x-fake-provider": self.fake.name, **(headers or {})})

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
        await linger(self.request, wait + keepalive)
        payload = embeddings(self.body, model or self.model)
        headers = {"x-fake-provider": self.fake.name}
        if ending in ("cut", "stall"):
            return await broken_body(self.request, json.dumps(payload).encode(), headers, ending)
        return web.json_response(payload, headers=headers)
