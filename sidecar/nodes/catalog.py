"""Each node's own model list, as its provider's `GET /v1/models` gives it: fetched, bounded, cached.

The active probe keeps it fresh when the probe is that same GET (checker.py); otherwise it is fetched
when the sidecar answers `GET /v1/models` (proxy/models.py) and cached. A node whose list cannot be
had contributes nothing: a fetch never fails an answer and never changes a node's health.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Iterable

from yarl import URL

from sidecar.config.schema import Node
from sidecar.formats.dialect import ANTHROPIC

from .node import NodeState
from .transport import Request, UpstreamError
from .upstream import Upstream

log = logging.getLogger("llm_sidecar")


LIST_PATH = "/v1/models"
# What is kept of one upstream's list: a hostile or broken provider must not blow memory up, nor
# put control characters into the answer (or a terminal that prints it). OpenRouter's list, one of
# the largest, is a few MB with every model's metadata; ids are far below 200 characters.
MAX_IDS = 2000
MAX_ID_CHARS = 200
MAX_LIST_BYTES = 8 * 1024 * 1024
# The most JSON values a list may hold to be parsed at all. What json.loads builds is 10-25 times the bytes
# it is given when they are many small values: 8 MB of `{},` is 2.8 million dicts, ~200 MB and a quarter of a
# second of the loop. A list with 2,000 models and OpenRouter's metadata is ~3 MB of ~160,000 values.
MAX_LIST_VALUES = 250_000
FETCH_SECONDS = 5.0  # an answer waits at most this long for the lists it lacks
CACHE_SECONDS = 60.0  # lists change when a provider ships a model: rarely
RETRY_SECONDS = 5.0  # an empty list (a failed fetch, most likely) is asked for again sooner
PROBE_KEEPS_AFTER = CACHE_SECONDS / 2  # the probe renews a list this old, well before the catalog would fetch it

# The fetch in progress per node: concurrent answers on a cold cache share one upstream request.
# Weak keys: a reload drops NodeStates, and their entries go with them.
_fetching: weakref.WeakKeyDictionary[NodeState, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def valid_id(model: object) -> bool:
    """A model id worth keeping: a non-empty printable string of at most MAX_ID_CHARS characters."""
    return isinstance(model, str) and 0 < len(model) <= MAX_ID_CHARS and model.isprintable()


def parse_ids(body: bytes) -> tuple[str, ...] | None:
    """The ids of an OpenAI-shaped list (`{"data": [{"id": ...}, ...]}`), None for anything else.

    Invalid ids are skipped (not the whole list), duplicates kept once, and at most MAX_IDS kept.
    A body of more than MAX_LIST_BYTES or MAX_LIST_VALUES is no list: it is not parsed.
    """
    if len(body) > MAX_LIST_BYTES or values_at_most(body) > MAX_LIST_VALUES:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError), or [[[[...
        return None
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, list):
        return None
    ids: dict[str, None] = {}  # ordered and unique
    for item in data:
        model = item.get("id") if isinstance(item, dict) else None
        if valid_id(model):
            assert isinstance(model, str)
            ids[model] = None
            if len(ids) >= MAX_IDS:
                break
    return tuple(ids)


def values_at_most(body: bytes) -> int:
    """A bound on the JSON values in `body`, counted without parsing it (a few ms for 8 MB): each value is
    the document, the first in its array or object, or follows a comma (commas and brackets in strings
    only count too many)."""
    return body.count(b",") + body.count(b"[") + body.count(b"{") + 1


def any_name(node: Node) -> bool:
    """Whether a node serves names beyond its table's keys, so its provider's own list matters."""
    return not node.models or "*" in node.models


def probe_lists(node: Node) -> bool:
    """Whether the node's active probe fetches its list anyway (the probe then keeps it fresh).
    Not on an Anthropic node: its list comes in pages (20 ids by default), fetched here in one."""
    check = node.checks.active
    return check is not None and check.http_path == LIST_PATH and node.api != ANTHROPIC


def probe_keeps(node: NodeState, now: float) -> bool:
    """Whether this active probe's answer is parsed into the node's list: when the probe fetches the list
    anyway (`probe_lists`), the node takes any name, and the list kept is missing or due (PROBE_KEEPS_AFTER,
    RETRY_SECONDS when empty). Not on every probe: a list of megabytes probed every second would be parsed
    every second."""
    if not (probe_lists(node.config) and any_name(node.config)):
        return False
    at = node.upstream_models_at
    return at is None or now - at >= (PROBE_KEEPS_AFTER if node.upstream_models else RETRY_SECONDS)


def stale(node: NodeState, now: float) -> bool:
    """Whether the node's provider list should be asked for before answering."""
    at = node.upstream_models_at
    if at is None:
        return True
    if not node.upstream_models:
        return now - at >= RETRY_SECONDS
    ttl = CACHE_SECONDS
    check = node.config.checks.active
    if check is not None and probe_lists(node.config):
        # The probe refreshes it every interval; fetch only if it stopped doing so (say, it fails).
        ttl = max(ttl, 2 * check.interval + check.timeout)
    return now - at >= ttl


async def fetch(upstream: Upstream, node: NodeState) -> tuple[str, ...] | None:
    """GET the node's own /v1/models with its key; None when it cannot be had (logged, not raised).

    Bounded in time (FETCH_SECONDS) and size (MAX_LIST_BYTES); the response is released when read
    whole and closed otherwise, so no connection is left half-read in the pool.
    """
    headers = node.own_headers()
    query = "?limit=1000" if node.config.api == ANTHROPIC else ""  # Anthropic's most per page
    request = Request("GET", URL(node.config.url + LIST_PATH + query, encoded=True), headers)
    try:
        async with asyncio.timeout(FETCH_SECONDS):
            response = await upstream.transport.send(node.name, request)
            try:
                body = await response.read(MAX_LIST_BYTES + 1)
            except BaseException:
                response.close()
                raise
    except TimeoutError:
        log.info("model list of %s not fetched: timeout", node.name)
        return None
    except UpstreamError as exc:
        log.info("model list of %s not fetched: %s", node.name, exc.reason)
        return None
    if len(body) > MAX_LIST_BYTES:
        response.close()  # the rest was never read
        log.info("model list of %s ignored: larger than %d bytes", node.name, MAX_LIST_BYTES)
        return None
    response.release()
    if response.status != 200:
        log.info("model list of %s not fetched: http %d", node.name, response.status)
        return None
    return parse_ids(body)


async def _fetch_into(upstream: Upstream, node: NodeState) -> None:
    try:
        ids = await fetch(upstream, node)
    except Exception:  # say, a reload closed the transport under it: the answer goes on without this list
        log.warning("model list of %s not fetched", node.name, exc_info=True)
        ids = None
    finally:
        _fetching.pop(node, None)
    node.upstream_models = ids or ()  # a failure leaves the node's list empty (asked again sooner)
    node.upstream_models_at = upstream.clock()


async def refresh(upstream: Upstream, nodes: Iterable[NodeState]) -> None:
    """Fetch the stale provider lists of the nodes that take any name, at once; one fetch per node."""
    now = upstream.clock()
    waits: list[asyncio.Future[None]] = []
    for node in nodes:
        if not any_name(node.config) or not stale(node, now):
            continue
        task = _fetching.get(node)
        if task is None:
            task = _fetching[node] = asyncio.ensure_future(_fetch_into(upstream, node))
        # Shielded: an answer cut short must not cancel a fetch other answers wait for.
        waits.append(asyncio.shield(task))
    if waits:
        await asyncio.gather(*waits, return_exceptions=True)
