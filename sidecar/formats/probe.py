"""The smallest real request of each kind: what a recovery probe sends (nodes/recovery.py).

A node ejected for failing real traffic is checked with the same path and model as the request that
failed, asking for a one-token answer (`max_tokens` where the API takes it; the Responses API's minimum
of 16 output tokens), streamed when a stream's first token was what failed. Paths whose requests cannot
be repeated without a client's data (uploads, files, audio, batches) have no probe: their nodes come
back by a trial request instead.
"""

from __future__ import annotations

import json
from typing import Any

PROMPT = "Reply with one word: ok"
RESPONSES_MIN_OUTPUT = 16  # the Responses API refuses max_output_tokens below 16


def probe_body(path: str, model: str, stream: bool, limit: str = "max_tokens") -> bytes | None:
    """The probe's JSON body for `path`, or None when the path has no probe. `limit`: the name of the chat
    field that bounds the answer, as the failed request named it (OpenAI's reasoning models refuse
    `max_tokens` and take `max_completion_tokens`)."""
    body: dict[str, Any]
    if path in ("/v1/chat/completions", "/v1/messages"):
        field = limit if path == "/v1/chat/completions" else "max_tokens"
        body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], field: 1}
    elif path == "/v1/responses":
        body = {"model": model, "input": PROMPT, "max_output_tokens": RESPONSES_MIN_OUTPUT, "store": False}
    elif path == "/v1/completions":
        body = {"model": model, "prompt": PROMPT, "max_tokens": 1}
    elif path == "/v1/embeddings":
        return json.dumps({"model": model, "input": "ok"}).encode()  # no stream, no output tokens
    else:
        return None
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


PROBED_PATHS = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/completions", "/v1/embeddings"})


def probeable(path: str) -> bool:
    return path in PROBED_PATHS
