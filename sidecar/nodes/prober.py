"""Recovery probes on the wire: sent when due (recovery.py says when), judged, and reported to the upstream.

A probe is a real request with the node's key (formats/probe.py builds the smallest one). Its answer
says the node is back when it is what a real request would have been glad of: a 2xx (for a stream, its
first real token), or an error that is no failover status (a 400: the node is answering requests again,
it only disliked the probe). A failover status, a timeout or a broken connection keeps it out. The
sidecar's own trouble (no file descriptors) judges nothing: the probe is simply tried again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterator

from yarl import URL

from sidecar.formats.probe import probe_body
from sidecar.formats.sse import Signal, Splitter, classify, data_of

from .node import NodeState
from .recovery import ProbeSpec, Recovery
from .runtime import Runtime
from .transport import Request, Response, UpstreamError
from .upstream import Upstream

log = logging.getLogger("llm_sidecar")

TICK = 0.25  # seconds between looks at what is due
MAX_PROBE_BYTES = 64 * 1024  # of a probe's answer read before judging it
ERROR_OBJECT = re.compile(rb'\s*\{\s*(?:"type"\s*:\s*"error"|"error"\s*:\s*\{)')


async def judge(response: Response, stream: bool, failover: frozenset[int]) -> tuple[bool, str]:
    """(back or not, what was found) from a probe's answer."""
    status = response.status
    if status in failover:
        return False, f"http {status}"
    if not 200 <= status < 300:
        return True, f"answered {status}"
    media = (response.header("content-type") or "").partition(";")[0].strip().lower()
    # Judged as a real request's answer is (proxy/answer.py): a 2xx that is neither JSON nor SSE is a page
    # (a captive portal), and a stream answering a request that asked for none is the node's failure.
    if media and media not in ("text/event-stream", "application/json") and not media.endswith("+json"):
        return False, f"bad content-type ({media[:40]})"
    if not stream and media == "text/event-stream":
        return False, "stream answer to a non-stream request"
    if stream and media == "text/event-stream":
        held = bytearray()
        splitter = Splitter()
        while len(held) <= MAX_PROBE_BYTES:
            chunk = await response.chunk()
            if not chunk:
                return False, "stream ended before a token"
            held += chunk
            for start, end in splitter.events(held):
                data = data_of(bytes(held[start:end]))
                if data is None:
                    continue
                signal = classify(data)
                if signal is Signal.TOKEN:
                    return True, "ok"
                if signal is not Signal.WAIT:
                    return False, f"{signal.value} event"
        return False, "no token in the first 64 KiB"
    body = await response.read(MAX_PROBE_BYTES)
    if ERROR_OBJECT.match(body):
        return False, f"error in a {status} answer"
    return True, "ok"


async def send_probe(
    upstream: Upstream, node: NodeState, spec: ProbeSpec, failures: int = 0
) -> tuple[bool | None, str, float | None]:
    """Send one probe: (back, not, or None when the sidecar could not tell; what it found; seconds to a
    stream's first token when it came)."""
    body = probe_body(spec.path, node.config.rewrite_model(spec.model), spec.stream, spec.limit)
    assert body is not None  # ProbeSpec.of admits only paths with a probe
    headers = [*node.own_headers(), ("content-type", "application/json")]
    request = Request("POST", URL(node.config.url + spec.path, encoded=True), headers, body)
    timeouts = node.config.timeout
    # One token is all it asks for: the whole answer is due within the node and model's learned first-token
    # limit (a silent node costs a probe seconds, not the configured minute), doubled per failed probe
    # before it (a node back but slower still gets through), never past the configured limit.
    learned = node.first_tokens.get(spec.model).limit(
        upstream.clock(), timeouts.first_token, timeouts.first_token_min, stretched=False
    )
    limit = min(timeouts.first_token, learned * 2 ** min(failures, 10))
    what = f"probe {spec.model}"
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            response = await upstream.transport.send(node.name, request)
            try:
                ok, found = await judge(response, spec.stream, node.config.checks.retry_statuses)
            finally:
                response.close()  # a probe's connection is not worth keeping half-read
    except TimeoutError:
        return False, f"{what}: no answer in {limit:g}s", None
    except UpstreamError as exc:
        if exc.kind is None:
            return None, f"{what}: not sent ({exc.reason})", None
        return False, f"{what}: {exc.reason}", None
    first = time.monotonic() - started if ok and spec.stream else None
    return ok, f"{what} {found}" if ok else f"{what}: {found}", first


def targets(node: NodeState) -> Iterator[tuple[str | None, Recovery]]:
    """What is out on the node and probed back: the node itself (None), models on it."""
    if node.health.manual_down:
        return  # drained by hand: it comes back by hand
    if node.recovery is not None:
        yield None, node.recovery
    yield from node.models.probing()


class RecoveryProber:
    """One loop for the whole sidecar: each TICK, every recovery probe that is due is started."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.loop_task: asyncio.Task[None] | None = None
        self.probes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.loop_task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bug here must not end recovery for good
                log.exception("recovery probes: a round failed")
            await asyncio.sleep(TICK)

    def tick(self) -> list[asyncio.Task[None]]:
        """Start the probes that are due; the tasks started (for tests)."""
        upstream = self.runtime.upstream
        now = upstream.clock()
        started = []
        spent = upstream.spent()  # a node out for its budget is not asked anything, probes included
        for index, node in enumerate(upstream.nodes):
            if index in spent:
                continue  # its probes wait, due, until the budget resets
            for model, recovery in list(targets(node)):
                if recovery.due(now):
                    recovery.in_flight += 1
                    recovery.next_at = now + recovery.interval  # a probe that hangs does not hold the next
                    task = asyncio.ensure_future(self._probe(node, model, recovery))
                    self.probes.add(task)
                    task.add_done_callback(self.probes.discard)
                    started.append(task)
        return started

    async def _probe(self, node: NodeState, model: str | None, recovery: Recovery) -> None:
        upstream = self.runtime.acquire()  # a reload must not close the transport under a probe
        started = time.monotonic()
        try:
            spec = recovery.next_spec()
            ok, found, first = await send_probe(upstream, node, spec, recovery.failures)
        except Exception:
            log.exception("recovery probe of %s failed inside the sidecar", node.name)
            ok, found, first = None, "probe not sent (internal error)", None
        finally:
            recovery.in_flight -= 1
            self.runtime.release(upstream)
        now = upstream.clock()
        if ok is None:
            recovery.next_at = now + recovery.interval  # no verdict: the same wait again
            recovery.last = found
            return
        log.log(logging.INFO if ok else logging.DEBUG, "node %s: recovery %s", node.name, found)
        if first is not None:
            node.first_tokens.get(spec.model).observe(now, first)
        current = self.runtime.upstream
        current.probe_result(node, model, ok, found)
        current.events.note("recovery_probe", node=node.name, ok=ok, seconds=time.monotonic() - started)

    async def close(self) -> None:
        tasks = [t for t in (self.loop_task, *self.probes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
