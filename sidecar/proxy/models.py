"""`GET /v1/models` and `GET /v1/models/{id}`, answered by the sidecar itself.

Passed through, the list was whatever the serving node's provider has: it changed on every failover
and missed the names other nodes serve through their `models` tables. The sidecar knows what it
routes, so it answers with the union of what its usable nodes serve, each id once:

- the keys (but "*") of every node's `models` table: the names clients may ask for;
- for a node that serves any name (no table, or a "*" key), its provider's own list too
  (nodes/catalog.py); a node whose list cannot be had contributes nothing more.

The pure parts (merging nodes into the answer) take nodes and a time; `answer` is the only I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sidecar.formats.dialect import ANTHROPIC, OPENAI, Api
from sidecar.formats.errors import Send, send_error, send_json
from sidecar.nodes.catalog import LIST_PATH, MAX_ID_CHARS, any_name, refresh, valid_id
from sidecar.nodes.node import NodeState
from sidecar.nodes.runtime import Runtime

ONE_PREFIX = LIST_PATH + "/"


def requested(method: str, path: str) -> str | None:
    """The model id asked for ("" for the whole list) when the sidecar answers this request itself.

    Only GET: DELETE /v1/models/{id} deletes a fine-tuned model at the provider and goes upstream.
    An id may contain "/" (meta-llama/Llama-3-8B), so everything after the prefix is the id.
    """
    if method != "GET":
        return None
    if path == LIST_PATH:
        return ""
    if path.startswith(ONE_PREFIX) and len(path) > len(ONE_PREFIX):
        return path[len(ONE_PREFIX) :]
    return None


def considered(nodes: Sequence[NodeState], now: float) -> list[NodeState]:
    """The nodes whose models are listed, highest priority first (config order within a level).

    The usable ones; when none is, all of them: while everything is down a list of what the sidecar
    is configured to serve is more useful than an empty one (clients would conclude the model is
    gone), and requests will be tried on the nodes anyway (panic mode).
    """
    ordered = sorted(nodes, key=lambda n: -n.config.priority)
    usable = [n for n in ordered if n.health.available(now)]
    return usable or ordered


def owner(model: str, nodes: Sequence[NodeState]) -> str | None:
    """The first of `nodes` that serves `model`: where a request for it goes first."""
    return next((n.name for n in nodes if n.config.serves(model)), None)


def merge(nodes: Sequence[NodeState]) -> dict[str, str]:
    """Every id `nodes` serve by name (table keys, and their providers' lists where they take any
    name), sorted, each once, with the node that would serve it (see `owner`)."""
    ids: set[str] = set()
    for node in nodes:
        ids.update(name for name in node.config.models if name != "*")
        if any_name(node.config) and node.upstream_models:
            ids.update(node.upstream_models)
    found = {model: owner(model, nodes) for model in sorted(ids)}
    return {model: by for model, by in found.items() if by is not None}


def model_object(model: str, owned_by: str, api: Api = OPENAI) -> dict[str, Any]:
    # created 0: the sidecar does not know when the provider created a model, and the SDK needs an int.
    if api == ANTHROPIC:
        return {"type": "model", "id": model, "display_name": model, "created_at": "1970-01-01T00:00:00Z"}
    return {"id": model, "object": "model", "created": 0, "owned_by": owned_by}


def of_api(nodes: Sequence[NodeState], api: Api) -> Sequence[NodeState]:
    """The nodes a client of `api` can send requests to, natively or translated (`translate = true`); all of
    them when none can (a list of what the sidecar serves is then more use than an empty one)."""
    speaking = [n for n in nodes if n.config.api == api or n.config.translate]
    return speaking or nodes


def list_body(owners: dict[str, str], api: Api = OPENAI) -> bytes:
    data = [model_object(model, by, api) for model, by in owners.items()]
    if api == ANTHROPIC:  # one page holding everything
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return json.dumps({"data": data, "has_more": False, "first_id": first, "last_id": last}).encode()
    return json.dumps({"object": "list", "data": data}).encode()


async def answer(
    runtime: Runtime, model: str, send: Send, headers: list[tuple[bytes, bytes]], anthropic: bool = False
) -> None:
    """Answer GET /v1/models (`model` "") or GET /v1/models/{model} (see `requested`), in Anthropic's
    shape and from its nodes for an Anthropic client (one that sent anthropic-version), else OpenAI's."""
    api: Api = ANTHROPIC if anthropic else OPENAI
    upstream = runtime.acquire()  # a reload must not close the transport under a fetch
    try:
        nodes = considered(of_api(upstream.nodes, api), upstream.clock())
        if not model:
            await refresh(upstream, nodes)
            await send_json(send, 200, list_body(merge(nodes), api), headers)
            return
        # A node that takes any name serves ids its provider's list lacks (or has not been fetched):
        # no list is needed to answer for one id.
        by = owner(model, nodes) if valid_id(model) else None
        if by is not None:
            await send_json(send, 200, json.dumps(model_object(model, by, api)).encode(), headers)
            return
        shown = model if len(model) <= MAX_ID_CHARS else model[:MAX_ID_CHARS] + "..."
        await send_error(
            send,
            404,
            f"model '{shown}' is not served by any node",
            "invalid_request_error",
            "model_not_found",
            headers,
            api,
        )
    finally:
        runtime.release(upstream)
