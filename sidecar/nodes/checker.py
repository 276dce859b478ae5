"""Active health checks: a periodic GET per node (by default /v1/models, which costs no tokens).

When that GET is /v1/models, its answer is also the node's model list for the sidecar's own
GET /v1/models (catalog.py): one request serves both. The list is parsed only when it is due
(catalog.probe_keeps); other probes read the answer and drop it, at most DRAIN_BYTES of it, so a
node answering megabytes costs neither memory nor the event loop's time on every probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from yarl import URL

from . import catalog
from .health import Failure
from .node import NodeState
from .runtime import Runtime
from .transport import Request, Response, UpstreamError
from .upstream import Upstream

log = logging.getLogger("llm_sidecar")

# What a probe reads of an answer it does not keep: health answers are small. Past it the connection is
# closed rather than read on (a node answering megabytes costs a new connection per probe, not the bytes).
DRAIN_BYTES = 1 << 20


async def drain(response: Response, limit: int) -> bool:
    """Read the body, keeping none of it; False when it went past `limit` (the rest is never read)."""
    size = 0
    while chunk := await response.chunk():
        size += len(chunk)
        if size > limit:
            return False
    return True


async def probe(upstream: Upstream, node: NodeState) -> None:
    """Probe one node once and feed the result to its health state machine."""
    check = node.config.checks.active
    if check is None:
        return
    headers = node.own_headers()
    request = Request("GET", URL(node.config.url + check.http_path, encoded=True), headers)
    started = time.monotonic()
    status: int | None = None
    kind: Failure | None = None
    body = b""
    keep = catalog.probe_keeps(node, upstream.clock())
    try:
        async with asyncio.timeout(check.timeout):
            response = await upstream.transport.send(node.name, request)
            status = response.status
            try:
                # Only the status decides health: the body is held only when it is kept as the node's list
                # (bounded: a list past the bound is ignored anyway), else read and dropped.
                if keep:
                    body = await response.read(catalog.MAX_LIST_BYTES + 1)
                    read_all = len(body) <= catalog.MAX_LIST_BYTES
                else:
                    read_all = await drain(response, DRAIN_BYTES)
            except BaseException:
                response.close()
                raise
            if read_all:
                response.release()
            else:
                response.close()  # the rest is never read: the connection cannot be reused
    except TimeoutError:
        kind, reason = Failure.TIMEOUT, "probe timeout"
    except UpstreamError as exc:
        kind, reason = exc.kind, f"probe {exc.reason}"
        if kind is None:  # the sidecar's own trouble says nothing about the node
            log.warning("probe of %s not run: %s", node.name, exc.reason)
            return
    else:
        reason = f"probe http {status}"
        if status not in check.healthy_http_statuses:
            kind = Failure.HTTP
    upstream.probed(node, kind, reason)
    if keep and kind is None and status == 200:
        # The probe fetched the node's model list anyway: keep it for GET /v1/models (catalog.py),
        # which then asks the node nothing more. A 200 that is no list leaves the node's list empty.
        node.upstream_models = catalog.parse_ids(body) or ()
        node.upstream_models_at = upstream.clock()
    node.last_probe = {
        "time": time.time(),
        "status": status,
        "latency_ms": round((time.monotonic() - started) * 1000, 2),
        "result": reason,
    }
    upstream.events.note("probe", node=node.name, ok=kind is None, seconds=time.monotonic() - started)


def found(node: NodeState, upstream: Upstream) -> str:
    """What start-up learnt of one node, for the log. An unhealthy node still gets requests while no other
    node of its format is usable (panic mode): said so, rather than promising it no traffic."""
    checks = node.config.checks
    if checks.active is None:
        if checks.passive is None:
            return f"{node.name}: no checks at all: nothing takes it out"
        back = "recovery probes" if node.config.recovery == "probe" else "a trial request"
        return f"{node.name}: no active checks, judged by its traffic (ejected after failures, back by {back})"
    probe = node.last_probe
    if probe is None:
        return f"{node.name}: no probe answer yet"
    now = upstream.clock()
    others = [n for n in upstream.nodes if n is not node and n.config.api == node.config.api]
    if node.health.active_healthy:
        verdict = "ok"
    elif any(n.health.available(now) for n in others):
        verdict = "UNHEALTHY, no traffic until it answers (other nodes of its format serve)"
    else:
        verdict = "UNHEALTHY, but no other node of its format is usable: it gets requests anyway (panic mode)"
    return f"{node.name}: {verdict} ({probe['result']}, {probe['latency_ms']:.0f} ms)"


class ActiveChecker:
    """One probe loop per node of the current upstream; restarted on reload.

    Each loop probes at once, so a node that is wrong from the start (see Health.proven) is out
    within its probe timeout; serving does not wait for it. What the first round found is logged.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tasks: list[asyncio.Task[None]] = []
        self.upstream: Upstream | None = None
        self.first_round: dict[str, asyncio.Event] = {}

    def sync(self) -> None:
        """(Re)start the loops when the runtime's upstream changed."""
        if self.runtime.upstream is self.upstream:
            return
        starting = self.upstream is None
        self.stop()
        self.upstream = self.runtime.upstream
        for node in self.upstream.nodes:
            if node.config.checks.active is not None:
                self.first_round[node.name] = asyncio.Event()
                self.tasks.append(asyncio.ensure_future(self._loop(self.upstream, node)))
        if starting:
            self.tasks.append(asyncio.ensure_future(self._report(self.upstream)))

    async def _report(self, upstream: Upstream) -> None:
        checks = [n.config.checks.active for n in upstream.nodes if n.config.checks.active is not None]
        waits = [event.wait() for event in self.first_round.values()]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(c.timeout for c in checks) + 1.0):
                    await asyncio.gather(*waits)
        log.info("start-up found: %s", "; ".join(found(node, upstream) for node in upstream.nodes))

    async def _loop(self, upstream: Upstream, node: NodeState) -> None:
        check = node.config.checks.active
        assert check is not None
        while True:
            try:
                await probe(upstream, node)
            except Exception:  # a bug in a probe must not end health checking
                log.exception("active probe of %s failed", node.name)
            first = self.first_round.pop(node.name, None)
            if first is not None:
                first.set()
            await asyncio.sleep(check.interval)

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()

    async def close(self) -> None:
        tasks = list(self.tasks)
        self.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
