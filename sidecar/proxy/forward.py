"""The policy loop of one request: which node next, when to wait, and how a broken stream goes on.

Each attempt is owned by an `Attempt` scope (nodes/attempt.py); the bytes are copied by
the relay (relay.py); when to retry is the retry plan's decision (retry.py).
Nothing reaches the client before an attempt has produced real bytes, so until
then every failure is still retryable. After that, a chat stream that breaks is
continued on a node that can (continuation.py), else ended with an SSE error event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from yarl import URL

from sidecar.formats.dialect import ANTHROPIC, ANTHROPIC_VERSION, NAMES, VERSION_HEADER
from sidecar.formats.errors import Send, send_error
from sidecar.nodes.affinity import SESSION_HEADER, conversation_key
from sidecar.nodes.attempt import Attempt
from sidecar.nodes.balancer import Choice
from sidecar.nodes.health import Failure
from sidecar.nodes.node import NodeState
from sidecar.nodes.transport import Request, UpstreamError
from sidecar.nodes.upstream import Upstream

from .answer import Body, Ready, first_bytes, is_json_api
from .continuation import MAX_CONTINUATIONS, Restamp, Transcript, continuation_body, request_fits
from .exchange import BadBody, BodyRewriter, Exchange, dump
from .redact import redact, redact_headers, redact_text
from .relay import end_stream, give_up, pump, relay
from .retry import RetryPlan, fault_of
from .sticky import remember
from .transcode import relay_translated
from .translation import Prepared, prepare, refuse

log = logging.getLogger("llm_sidecar")

CHAT_PATH = "/v1/chat/completions"
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

    def request(self, node: NodeState, body: bytes) -> Request:
        headers = [*self.headers, *node.auth] if node.auth else self.headers
        return Request(self.ex.method, self.url(node.config.url, self.suffix), headers, body, self.task)

    async def first(self, attempt: Attempt, request: Request) -> Ready:
        """Send, and wait for what may go to the client: a stream's first token within `first_token`.

        A node's error answer may quote the key it was sent ("invalid x-api-key sk-..."): it is taken out
        before a failure can reach the client, the log or the monitor (the relay redacts the answers it sends)."""
        node = attempt.node
        config = self.upstream.config.upstream
        statuses = node.config.checks.retry_statuses
        limit = config.max_response_bytes
        json_api = is_json_api(self.ex.path)
        timeouts = node.config.timeout
        key = node.config.api_key
        try:
            if not self.ex.stream:
                # A GET may ask for a stream in its query (/v1/responses/{id}?stream=true); a POST asks in its body.
                may_stream = self.ex.method != "POST"
                response = await attempt.send(request)
                ready = await first_bytes(response, statuses, limit, attempt.held, json_api, timeouts.read, may_stream)
            else:
                try:
                    async with asyncio.timeout(timeouts.first_token):
                        ready = await first_bytes(await attempt.send(request), statuses, limit, attempt.held, json_api)
                except TimeoutError:
                    raise UpstreamError(Failure.TIMEOUT, f"no first token in {timeouts.first_token:g}s") from None
        except UpstreamError as exc:
            exc.body, exc.reason = redact(exc.body, key), redact_text(exc.reason, key)
            exc.headers = redact_headers(exc.headers, key)
            raise
        return ready


async def forward(
    upstream: Upstream,
    scope: dict[str, Any],
    send: Send,
    body: bytes,
    ex: Exchange,
    headers: list[tuple[str, str]],
    url: Callable[[str, str], URL],
    task: asyncio.Task[Any] | None = None,
) -> None:
    """Try nodes until one answers, the retry plan gives up, or the client leaves."""
    config = upstream.config.upstream
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope["query_string"]
    suffix = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    if ex.api == ANTHROPIC and not any(name == VERSION_HEADER and value.strip() for name, value in scope["headers"]):
        # The API requires one (an empty one is none).
        headers = [*(h for h in headers if h[0] != "anthropic-version"), ("anthropic-version", ANTHROPIC_VERSION)]
    trip = Trip(upstream, send, ex, BodyRewriter(body, scope["headers"]), suffix, headers, url, task)
    plan = RetryPlan(
        config.retry,
        upstream.clock(),
        nodes=len(upstream.nodes),
        retry_timeout=config.retry_timeout,
        retries=config.retries,
    )
    trip.translate = prepare(upstream, trip.rewriter, ex)
    trip.route = route = route_of(upstream, scope, trip.rewriter, ex, trip.translate)
    if route.skip and len(route.skip) == len(upstream.nodes):
        if trip.translate is not None and trip.translate.covers(len(upstream.nodes)):
            await refuse(send, ex, trip.translate)
        elif len(upstream.other_api[ex.api]) == len(upstream.nodes):
            await no_node_speaks(send, ex)
        else:
            await not_served(send, ex, route.model, upstream.served)
        return
    continuable = ex.stream and upstream.continuable and ex.path == CHAT_PATH
    last: UpstreamError | None = None
    refusal: UpstreamError | None = None  # a context-window refusal: the answer if no node fits
    same: int | None = None
    while not plan.exhausted:
        choice = upstream.again(same) if same is not None else None
        same = None
        if choice is None:
            now = upstream.clock()
            excluded = plan.excluded(now) | route.skip
            out = upstream.models_out(route.model, now) if route.model is not None else None
            choice = upstream.choose(excluded | out if out else excluded, route.prefer)
            if choice is None and out:  # the model is out on every node left: try anyway, as in panic
                choice = upstream.choose(excluded, route.prefer)
        if choice is None:
            wait = plan.round_wait(upstream.clock())
            if wait is None:
                break
            if ex.attempts:  # added up: a round may wait twice after one failure
                ex.attempts[-1]["wait_ms"] = ex.attempts[-1].get("wait_ms", 0) + round(wait * 1000)
            await asyncio.sleep(wait)
            continue
        node = upstream.nodes[choice.index]
        adapter = trip.translate.adapter(choice.index, node, upstream.owners) if trip.translate is not None else None
        try:
            if adapter is not None:
                request, transcript = adapter.outbound(trip.headers, trip.url, trip.task), None
            else:
                request = trip.request(node, trip.rewriter.for_node(node))
                transcript = Transcript() if continuable and request_fits(trip.rewriter.parse()) else None
        except BadBody as exc:
            await bad_body(send, ex, exc)
            return
        plan.start(choice.index, upstream.clock())
        try:
            with upstream.attempt(choice, route.model) as attempt:
                ready = await trip.first(attempt, request)
                if adapter is None:
                    remember(upstream, ex, node.name, ready)  # the ids it made stick to it (sticky.py)
                broken = None
                if adapter is not None:
                    await relay_translated(send, attempt, ready, ex, plan.attempts, adapter)
                else:
                    broken = await relay(send, attempt, ready, ex, plan.attempts, transcript)
            if broken is not None and transcript is not None:
                await carry_on(trip, choice.index, broken, transcript)
            node.stats.tokens_in += ex.tokens_in or 0
            node.stats.tokens_out += ex.tokens_out or 0
            node.stats.tokens_cached += ex.tokens_cached or 0
            if route.key is not None and upstream.pins is not None and ex.status < 500:
                upstream.pins.pin(route.key, ex.node or node.name, upstream.clock())
            return
        except UpstreamError as exc:
            if exc.local:  # the sidecar's own trouble: another node would fare no better
                ex.status, ex.error = 503, exc.reason
                log.error("request %s: %s", ex.rid, exc.reason)
                await send_error(
                    send, 503, f"llm-sidecar cannot reach upstreams: {exc.reason}", "server_error",
                    "sidecar_overloaded", [(b"x-request-id", ex.rid.encode())], ex.api,
                )  # fmt: skip
                return
            ex.attempts.append({"node": node.name, "reason": exc.reason})
            if adapter is not None:
                adapter.failed(exc)
            if exc.kind is None and exc.status and refusal is None:
                refusal = exc
            last = exc
            decision = plan.failed(choice.index, fault_of(exc), exc.retry_after, upstream.clock())
            if decision.same and upstream.again(choice.index) is not None:  # not ejected by this failure
                ex.attempts[-1]["wait_ms"] = round(decision.wait * 1000)
                await asyncio.sleep(decision.wait)
                node.stats.retries += 1
                same = choice.index
    answer = refusal or last
    timed_out = answer is not None and answer.kind is Failure.TIMEOUT
    await give_up(send, ex, answer, plan.attempts, timed_out)


async def bad_body(send: Send, ex: Exchange, exc: BadBody) -> None:
    ex.status, ex.error = 400, str(exc)
    await send_error(
        send, 400, str(exc), "invalid_request_error", "invalid_json", [(b"x-request-id", ex.rid.encode())], ex.api
    )


async def not_served(send: Send, ex: Exchange, model: str | None, served: list[str]) -> None:
    """No node's `models` table has the model: a clear 404, and no node is asked."""
    names = ", ".join(served[:50]) + (", ..." if len(served) > 50 else "")
    ex.status = 404
    shown = model if model is None or len(model) <= MAX_MODEL_NAME else model[:MAX_MODEL_NAME] + "..."
    ex.error = f"model {shown!r} is not served by any node"  # bounded: the name is the client's
    await send_error(
        send, 404, f"{ex.error} (served: {names})", "invalid_request_error", "model_not_found",
        [(b"x-request-id", ex.rid.encode())], ex.api,
    )  # fmt: skip


async def no_node_speaks(send: Send, ex: Exchange) -> None:
    """No node speaks the request's format: the sidecar translates nothing, so it is a clear 404."""
    ex.status = 404
    ex.error = f"no node speaks {NAMES[ex.api]}"
    await send_error(
        send, 404, f'{ex.error}: add a node with api = "{ex.api}" to llm-sidecar.toml', "invalid_request_error",
        "no_node_for_api", [(b"x-request-id", ex.rid.encode())], ex.api,
    )  # fmt: skip


async def carry_on(trip: Trip, index: int, broken: UpstreamError, transcript: Transcript) -> None:
    """A stream broke after text reached the client: continue it on a node that can, or end it cleanly.

    The same node goes first when its break was not a stall; then the others in failover order.
    A node that refuses the continuation (a 400) leaves the original break as the error the client sees.
    """
    upstream, ex = trip.upstream, trip.ex
    broken_node = upstream.nodes[index].name
    unable = {i for i, n in enumerate(upstream.nodes) if n.config.continuation == "none"} | trip.route.skip
    if ex.form is not None:  # a node that would need the stream translated cannot continue it
        unable |= upstream.translated[ex.form]
    tried: set[int] = set()
    for _ in range(MAX_CONTINUATIONS):
        why_not = transcript.continuable()
        if why_not is not None:
            log.info("request %s: stream from %s not continued: %s", ex.rid, broken_node, why_not)
            break
        choice: Choice | None = None
        if broken.kind is not Failure.TIMEOUT and index not in unable | tried:
            choice = upstream.again(index)
        if choice is None:
            choice = upstream.choose(unable | tried | {index})
        if choice is None:
            break
        tried.add(choice.index)
        node = upstream.nodes[choice.index]
        parsed = trip.rewriter.parse()
        assert parsed is not None  # request_fits() parsed it
        asked = continuation_body(parsed, transcript.text, node.config.continuation)
        if isinstance(parsed.get("model"), str):
            asked["model"] = node.config.rewrite_model(parsed["model"])
        try:
            body = dump(asked)
        except BadBody:  # cannot happen for a body that was sent once; never worth a crash mid-stream
            break
        try:
            with upstream.attempt(choice, trip.route.model) as attempt:
                ready = await trip.first(attempt, trip.request(node, body))
                if ready.kind is not Body.EVENTS:
                    # The node will not continue (no prefill in its API): no fault of its health.
                    raise UpstreamError(None, f"continuation refused ({ready.response.status})")
                ex.continued.append({"from": broken_node, "to": node.name, "reason": broken.reason})
                node.stats.continuations += 1
                ex.node = node.name
                delivered = len(transcript.parts)
                again = await pump(
                    trip.send, attempt, ready.response, ready.body, ex, transcript, Restamp(transcript.id)
                )
        except UpstreamError as exc:
            if exc.local:
                break
            ex.attempts.append({"node": node.name, "reason": f"continuation: {exc.reason}"})
            continue
        if again is None:
            ex.error = None
            return
        if len(transcript.parts) == delivered:  # it added nothing: the original break still stands
            ex.attempts.append({"node": node.name, "reason": f"continuation: {again.reason}"})
            continue
        broken, index, broken_node = again, choice.index, node.name
    await end_stream(trip.send, ex, broken_node, broken)
