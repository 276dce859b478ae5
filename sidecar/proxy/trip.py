"""What every attempt of one request shares (a `Trip`): where it may go (`Route`: the model, the nodes that do
not serve it, the node its conversation is pinned to), how it is sent to a node, and how one attempt waits for
what may go to the client. The policy loop (forward.py) decides which attempt comes next."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from yarl import URL

from sidecar.formats.errors import Send
from sidecar.nodes.affinity import SESSION_HEADER, conversation_key
from sidecar.nodes.attempt import Attempt
from sidecar.nodes.health import Failure
from sidecar.nodes.node import NodeState
from sidecar.nodes.transport import Request, UpstreamError
from sidecar.nodes.upstream import Upstream

from .answer import Ready, first_bytes, is_json_api
from .exchange import BadBody, BodyRewriter, Exchange
from .poison import fingerprint
from .redact import redact, redact_headers, redact_quote
from .translation import Prepared

MAX_MODEL_NAME = 200  # of a client's model name in errors and the log


class Route(NamedTuple):
    """Where a request may go: the model it asks for, the nodes that do not serve it, and the node its
    conversation is pinned to (prompt-cache affinity). A tuple: one is built per request."""

    model: str | None = None
    skip: frozenset[int] = frozenset()
    key: str | None = None
    prefer: int | None = None


def route_of(
    upstream: Upstream, scope: dict[str, Any], rewriter: BodyRewriter, ex: Exchange, prepared: Prepared | None = None
) -> Route:
    """The body is parsed only when a `models` table routes or a pin may apply. A body that does not parse
    still goes, byte for byte, to nodes that need no rewrite (one that does answers 400 then)."""
    format_skip = upstream.other_api[ex.api] if prepared is None else prepared.skip
    if not upstream.routes and upstream.pins is None:
        return Route(ex.model, format_skip)
    model = ex.model
    try:
        parsed = rewriter.parse()
    except BadBody:
        parsed = None
    if parsed is not None:
        model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
        ex.model = model if model is None else model[:MAX_MODEL_NAME]  # the log names what was routed
    skip = upstream.not_serving(model) | format_skip if upstream.routes and model is not None else format_skip
    if upstream.pins is None:
        return Route(model, skip)
    session = next((v for k, v in scope["headers"] if k == SESSION_HEADER), None)
    key = conversation_key(session, parsed)
    pinned = upstream.pins.get(key, upstream.clock()) if key is not None else None
    return Route(model, skip, key, upstream.index.get(pinned) if pinned is not None else None)


NO_ROUTE = Route()


def never() -> bool:
    return False


@dataclass(slots=True)
class Trip:
    """What every attempt of one request shares."""

    upstream: Upstream
    send: Send
    ex: Exchange
    rewriter: BodyRewriter
    suffix: str
    headers: list[tuple[str, str]]
    url: Callable[[str, str], URL]
    task: asyncio.Task[Any] | None
    route: Route = NO_ROUTE
    translate: Prepared | None = None  # what translated attempts need (translation.py); None: no node translates

    def fingerprint(self) -> str:
        try:
            parsed = self.rewriter.parse()
        except BadBody:
            parsed = None
        return fingerprint(self.ex.path, self.rewriter.body, parsed)

    def request(self, node: NodeState, body: bytes) -> Request:
        headers = [*self.headers, *node.auth] if node.auth else self.headers
        if self.ex.trace is not None:  # the node is told the attempt's span (sidecar/telemetry/context.py)
            headers = self.ex.trace.attempt(node.config, headers, self.ex)
        return Request(self.ex.method, self.url(node.config.url, self.suffix), headers, body, self.task)

    async def first(self, attempt: Attempt, request: Request, can_move: Callable[[], bool] = never) -> Ready:
        """Send, and wait for what may go to the client: a stream's first token within its (node, model)'s
        first-token limit (learned: nodes/ttft.py), a non-stream answer whole.

        Until then the attempt waits on the node (nodes/waiting.py): if the node is judged out meanwhile
        and `can_move` says the request has somewhere else to go, the wait ends at once with a `moved`
        error (no verdict on the node). A node's error answer may quote the key it was sent ("invalid
        x-api-key sk-..."): it is taken out before a failure can reach the client, the log or the monitor
        (the relay redacts the answers it sends)."""
        node = attempt.node
        config = self.upstream.config.upstream
        statuses = node.config.checks.retry_statuses
        limit = config.max_response_bytes
        json_api = is_json_api(self.ex.path)
        timeouts = node.config.timeout
        key = node.config.api_key
        stream = self.ex.stream
        history = node.first_tokens.get(self.route.model) if stream else None
        within = (
            history.limit(self.upstream.clock(), timeouts.first_token, timeouts.first_token_min) if history else None
        )
        sent = time.monotonic()
        try:
            try:
                async with asyncio.timeout(within) as scope:
                    with node.waiting.waiter(scope, self.route.model, can_move) as waiter:
                        response = await attempt.send(request)
                        if stream:
                            ready = await first_bytes(response, statuses, limit, attempt.held, json_api)
                        else:
                            # A GET may ask for a stream in its query (/v1/responses/{id}?stream=true); a POST in its body.
                            may_stream = self.ex.method != "POST"
                            ready = await first_bytes(
                                response, statuses, limit, attempt.held, json_api, timeouts.read, may_stream
                            )
            except TimeoutError:
                if waiter.reason is not None:
                    raise UpstreamError(None, f"moved on: {waiter.reason}", moved=True) from None
                assert history is not None and within is not None  # only a stream's wait has a limit
                history.timed_out(within, timeouts.first_token)
                learned = " (learned)" if within < timeouts.first_token else ""
                raise UpstreamError(Failure.TIMEOUT, f"no first token in {within:g}s{learned}") from None
        except UpstreamError as exc:
            exc.body, exc.reason = redact(exc.body, key), redact_quote(exc.reason, exc.quoted, key)
            exc.headers = redact_headers(exc.headers, key)
            raise
        if history is not None and ready.first_token is not None:
            history.observe(self.upstream.clock(), ready.first_token - sent)
        return ready
