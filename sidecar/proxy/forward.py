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
from functools import partial
from typing import Any

from yarl import URL

from sidecar.config.schema import Hedge as HedgeConfig
from sidecar.formats.dialect import ANTHROPIC, ANTHROPIC_VERSION, VERSION_HEADER
from sidecar.formats.errors import Send, send_error
from sidecar.formats.translate.ir import PATHS
from sidecar.nodes.attempt import Attempt
from sidecar.nodes.balancer import Choice
from sidecar.nodes.health import Failure
from sidecar.nodes.node import NodeState
from sidecar.nodes.recovery import ProbeSpec
from sidecar.nodes.transport import UpstreamError
from sidecar.nodes.upstream import Upstream

from .answer import Body, Ready
from .continuation import MAX_CONTINUATIONS, Restamp, Transcript, continuation_body, request_fits
from .exchange import BadBody, BodyRewriter, Exchange, dump
from .hedge import HEDGED_PATHS, Hedge, HedgeBudget, race
from .poison import Culprit, Suspects
from .refusals import bad_body, no_node_speaks, not_served
from .relay import end_stream, give_up, pump, relay
from .retry import RetryPlan, fault_of
from .sticky import remember
from .transcode import relay_translated
from .translation import Adapter, prepare, refuse
from .trip import Trip, route_of

log = logging.getLogger("llm_sidecar")

CHAT_PATH = "/v1/chat/completions"


async def forward(
    upstream: Upstream,
    scope: dict[str, Any],
    send: Send,
    body: bytes,
    ex: Exchange,
    headers: list[tuple[str, str]],
    url: Callable[[str, str], URL],
    task: asyncio.Task[Any] | None = None,
    suspects: Suspects | None = None,
    hedges: HedgeBudget | None = None,
) -> None:
    """Try nodes until one answers, the retry plan gives up, the request turns out to cause its own
    failures (`suspects`: fingerprints found so lately, see poison.py), or the client leaves."""
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
    # What a recovery probe would repeat: the same path and model, the answer bounded the way this one was.
    limit = "max_completion_tokens" if b'"max_completion_tokens"' in body else "max_tokens"
    spec = ProbeSpec.of(ex.path, route.model, ex.stream, limit)
    culprit = Culprit(suspects if suspects is not None else Suspects())
    last: UpstreamError | None = None
    refusal: UpstreamError | None = None  # a context-window refusal: the answer if no node fits
    same: int | None = None  # the node a same-node retry goes to next, after `same_wait` seconds
    same_wait = 0.0
    racing: list[Hedge] = []  # a hedge still racing after the attempt it hedged failed
    hedging = hedges is not None and config.hedge is not None and ex.stream and ex.path in HEDGED_PATHS
    if hedging:
        assert hedges is not None
        hedges.counted(upstream.clock())

    def failed(exc: UpstreamError, index: int, attempt: Attempt) -> str | None:
        """Account one failed attempt (normal, hedge or moved on); the way the request caused it, when it
        did (then stop)."""
        nonlocal last, refusal, same, same_wait
        ms = round((attempt.ended - attempt.started) * 1000, 1)  # the attempt's own time, for the journal
        ex.attempts.append({"node": upstream.nodes[index].name, "reason": exc.reason, "kind": exc.kind, "ms": ms})
        blame = attempt.blame
        if exc.kind is None and exc.status and refusal is None:
            refusal = exc
        last = exc
        now = upstream.clock()
        caused = culprit.failed(index, exc, blame, ex.attempts[-1], trip.fingerprint, now)
        if caused is None:
            decision = plan.failed(index, fault_of(exc), exc.retry_after, now)
            again = decision.same and not racing and not culprit.known(exc)  # a known culprit: try elsewhere
            if again and upstream.again(index) is not None:  # not ejected by this failure
                ex.attempts[-1]["wait_ms"] = round(decision.wait * 1000)
                same, same_wait = index, decision.wait
        return caused

    def elsewhere(tried: int) -> Callable[[], bool]:
        """Whether the request could go on to another node now (so its wait on `tried` may be ended)."""
        return lambda: upstream.usable_beyond(plan.excluded(upstream.clock()) | route.skip | {tried}, route.model)

    def hedge_for(index: int) -> Hedge | None:
        """A second attempt on the next usable node serving the model, within the budget; None if none."""
        assert hedges is not None and config.hedge is not None
        now = upstream.clock()
        excluded = plan.excluded(now) | route.skip | {index}
        out = upstream.models_out(route.model, now) if route.model is not None else None
        choice = upstream.choose(excluded | out if out else excluded)
        if choice is None or choice.panic or not hedges.allows(config.hedge.budget, now):
            return None
        node = upstream.nodes[choice.index]
        if trip.translate is not None and trip.translate.adapter(choice.index, node, upstream.owners) is not None:
            return None  # a hedge goes only where the request needs no translation (nothing spent, nothing counted)
        hedges.spent(now)
        plan.start(choice.index, now)
        culprit.reached(choice.index, node, now)
        request = trip.request(node, trip.rewriter.for_node(node))
        first = elsewhere(choice.index)
        ex.hedged.append({"node": node.name, "over": upstream.nodes[index].name, "won": False})
        return Hedge(
            choice,
            lambda attempt: trip.first(attempt, request, first),
            upstream.attempt(choice, route.model, spec),
            ex.hedged[-1],
        )

    async def serve(
        attempt: Attempt, ready: Ready, index: int, transcript: Transcript | None, adapter: Adapter | None = None
    ) -> None:
        """Relay the winner's answer (translated for the client, with an adapter), continue it if it breaks,
        and note what it served."""
        node = attempt.node
        broken = None
        try:
            if adapter is not None:
                ex.translated = adapter.header().decode("ascii")  # for the journal, as the client was told
                ex.api_upstream = node.config.api if node.config.api != ex.api else None
                await relay_translated(send, attempt, ready, ex, plan.attempts, adapter)
            else:
                remember(upstream, ex, node.name, ready)  # the ids it made stick to it (sticky.py)
                broken = await relay(send, attempt, ready, ex, plan.attempts, transcript)
        finally:  # the answering attempt's own time, for the journal (a hedge began after the request did)
            ex.answer_ms = round((upstream.clock() - attempt.started) * 1000, 1)
        if broken is not None and transcript is not None:
            await carry_on(trip, index, broken, transcript)
        node.stats.tokens_in += ex.tokens_in or 0
        node.stats.tokens_out += ex.tokens_out or 0
        node.stats.tokens_cached += ex.tokens_cached or 0
        if route.key is not None and upstream.pins is not None and ex.status < 500:
            upstream.pins.pin(route.key, ex.node or node.name, upstream.clock())

    try:
        while not plan.exhausted or racing:
            if racing:  # the attempt a hedge raced failed: the hedge goes on alone
                alone = racing.pop()
                await alone.settled.wait()
                if alone.ready is not None:
                    alone.entry["won"] = True
                    transcript = Transcript() if continuable and request_fits(trip.rewriter.parse()) else None
                    try:
                        await serve(alone.attempt, alone.ready, alone.choice.index, transcript)
                    finally:
                        alone.finish(None)
                        await alone.close()
                    return
                await alone.close()
                assert alone.error is not None
                if (caused := failed(alone.error, alone.choice.index, alone.attempt)) is not None:
                    await request_caused(trip, culprit, caused, plan.attempts)
                    return
                continue
            choice = None
            if same is not None:  # a same-node retry the plan decided on, unless the node is out by now
                await asyncio.sleep(same_wait)
                upstream.nodes[same].stats.retries += 1
                choice = upstream.again(same)
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
            adapter = trip.translate.adapter(choice.index, node, upstream.owners) if trip.translate else None
            # What a recovery probe would repeat: the request as the node got it (its format's path).
            probe = spec if adapter is None else ProbeSpec.of(PATHS[adapter.target], route.model, ex.stream)
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
            culprit.reached(choice.index, node, upstream.clock())
            hedge: Hedge | None = None
            try:
                with upstream.attempt(choice, route.model, probe) as attempt:
                    if not hedging or choice.panic or adapter is not None:
                        ready = await trip.first(attempt, request, elsewhere(choice.index))
                    else:
                        assert config.hedge is not None
                        after = hedge_after(config.hedge, node, route.model, upstream.clock())
                        main = asyncio.ensure_future(trip.first(attempt, request, elsewhere(choice.index)))
                        ready, hedge, beaten = await race(main, after, partial(hedge_for, choice.index), racing)
                        if hedge is not None:
                            attempt.lose()  # the hedge's first token came first: no verdict on this node
                            hedge.entry["won"] = True
                        if beaten is not None and beaten.error is not None:
                            failed(beaten.error, beaten.choice.index, beaten.attempt)
                    if hedge is None:
                        await serve(attempt, ready, choice.index, transcript, adapter)
                if hedge is not None:
                    try:
                        await serve(hedge.attempt, ready, hedge.choice.index, transcript)
                    finally:
                        hedge.finish(None)
                        await hedge.close()
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
                if adapter is not None:
                    adapter.failed(exc)
                if (caused := failed(exc, choice.index, attempt)) is not None:
                    await request_caused(trip, culprit, caused, plan.attempts)
                    return
    finally:
        for left in racing:
            await left.close()
    answer = refusal or last
    timed_out = answer is not None and answer.kind is Failure.TIMEOUT
    await give_up(send, ex, answer, plan.attempts, timed_out)


def hedge_after(hedge: HedgeConfig, node: NodeState, model: str | None, now: float) -> float | None:
    """Seconds without a first token before a hedge: the configured `after`, or the (node, model)'s own
    p95 (None, no hedge, until enough first tokens are known)."""
    if not hedge.learned:
        return hedge.after
    return node.first_tokens.get(model).percentile(now, 0.95)


async def request_caused(trip: Trip, culprit: Culprit, how: str, attempts: int) -> None:
    """The request failed the same way on nodes that serve others: its own doing. No node is blamed (the
    counts its failures added are taken back), no other node is tried, and the client gets the original
    error, marked (log, trail header, metrics, the monitor)."""
    ex, upstream = trip.ex, trip.upstream
    why = f"request-caused ({'timeout' if how == 'timeout' else 'http ' + how})"
    answer, blames = culprit.acquit(how)
    for blame in reversed(blames):  # latest first: each puts back what the node was before it
        upstream.take_back(blame, f"{why}: taken back")
    ex.request_caused = how
    log.warning("request %s: %s on %d node(s) that serve other requests: answered as is, no node blamed",
                ex.rid, why, len({f["node"] for f in ex.attempts if f.get("request_caused")}))  # fmt: skip
    await give_up(trip.send, ex, answer, attempts, how == "timeout")


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
