"""Property: whatever the interleaving of attempts, outcomes, clients leaving, reloads, probes, manual
actions and time, no lease is ever left held, each attempt records exactly one outcome, and an ejected
passive-only node always gets its trial request once its ejection time has passed."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.nodes.attempt import Attempt, Outcome
from sidecar.nodes.health import Failure
from sidecar.nodes.mock import MockTransport, Script
from sidecar.nodes.runtime import Runtime
from sidecar.nodes.transport import UpstreamError
from sidecar.nodes.upstream import Upstream

from .inproc import config

KINDS = st.sampled_from([Failure.HTTP, Failure.HTTP, Failure.TCP, Failure.TIMEOUT, None])
OPEN = st.tuples(st.just("open"), st.sets(st.integers(0, 2), max_size=2))
CLOSE = st.tuples(
    st.just("close"),
    st.integers(0, 9),
    st.sampled_from(["success", "raise", "raise", "fail", "client gone", "crash"]),
    KINDS,
    st.sampled_from([None, None, None, 0.5, 1e9, float("inf")]),
)
# Weighted towards what makes trials happen: attempts, failures and time passing.
OPS = st.lists(
    st.one_of(
        OPEN,
        OPEN,
        CLOSE,
        CLOSE,
        st.tuples(st.just("advance"), st.floats(0, 50)),
        st.tuples(st.just("advance"), st.floats(0, 50)),
        st.tuples(st.just("reload")),
        st.tuples(st.just("probe"), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("manual"), st.integers(0, 2), st.booleans()),
    ),
    min_size=20,
    max_size=60,
)


def three_nodes(active: bool) -> Any:
    checks: dict[str, Any] = {
        "passive": {"unhealthy": {"http_failures": 1, "tcp_failures": 2}, "base_ejection_time": 5}
    }
    if active:
        checks["active"] = {"interval": 60, "unhealthy": {"http_failures": 1}}
    cfg = config(checks)
    nodes = [*cfg.upstream.nodes]
    from dataclasses import replace

    third = replace(nodes[1], name="third", priority=-1)
    return replace(cfg, upstream=replace(cfg.upstream, nodes=(*nodes, third)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def run(ops: list[tuple[Any, ...]], active: bool) -> None:
    clock = Clock()
    transports: list[MockTransport] = []

    def transport(cfg: Any, watch: Any) -> MockTransport:
        transports.append(MockTransport(lambda node, request: Script()))
        return transports[-1]

    cfg = three_nodes(active)
    runtime = Runtime(cfg, transport=transport, clock=clock)
    recorded: list[tuple[int, Outcome]] = []
    entered = 0
    open_: list[tuple[Upstream, Attempt]] = []

    def instrument(upstream: Upstream) -> None:
        original = upstream.record

        def record(node: Any, outcome: Outcome, *args: Any) -> None:
            recorded.append((id(node), outcome))
            original(node, outcome, *args)

        upstream.record = record  # type: ignore[method-assign]

    instrument(runtime.upstream)

    def check_leases() -> None:
        for node in runtime.upstream.nodes:
            trials = [a for _, a in open_ if a.node.health is node.health and a.trial]
            assert len(trials) <= 1, "two trial requests on one node at once"
            assert node.health.trial_in_flight == bool(trials), f"{node.name}: lease state disagrees"
            held = sum(1 for _, a in open_ if a.node.stats is node.stats)
            assert node.stats.in_flight == held

    async def close(index: int, how: str, kind: Failure | None, retry_after: float | None) -> None:
        upstream, attempt = open_.pop(index % len(open_))
        error = UpstreamError(kind, "boom", retry_after=retry_after)
        try:
            if how == "success":
                attempt.__exit__(None, None, None)
            elif how == "raise":
                attempt.__exit__(UpstreamError, error, None)
            elif how == "fail":
                attempt.fail(error)
                attempt.__exit__(None, None, None)
            elif how == "client gone":
                attempt.__exit__(asyncio.CancelledError, asyncio.CancelledError(), None)
            else:
                attempt.__exit__(RuntimeError, RuntimeError("bug"), None)
        finally:
            runtime.release(upstream)

    for op in ops:
        if op[0] == "open":
            upstream = runtime.acquire()
            choice = upstream.choose(set(op[1]))
            if choice is None:
                runtime.release(upstream)
            else:
                attempt = upstream.attempt(choice)
                attempt.__enter__()
                entered += 1
                open_.append((upstream, attempt))
        elif op[0] == "close" and open_:
            await close(*op[1:])
        elif op[0] == "reload":
            runtime.apply(cfg)
            instrument(runtime.upstream)
        elif op[0] == "probe":
            runtime.upstream.probed(runtime.upstream.nodes[op[1]], None if op[2] else Failure.HTTP, "probe")
        elif op[0] == "advance":
            clock.now += op[1]
        elif op[0] == "manual":
            runtime.upstream.set_manual(runtime.upstream.nodes[op[1]], op[2])
        check_leases()
    while open_:
        await close(0, "client gone", None, None)
    check_leases()
    assert len(recorded) == entered, "an attempt recorded no outcome or two"
    await asyncio.sleep(0)
    if runtime.closing:
        await asyncio.wait(list(runtime.closing))
    assert all(t.closed for t in transports[:-1]), "a retired generation was left open"
    assert not any(t.closed for t in transports[-1:])

    if not active:
        # Every ejected node gets its trial once the ejection time has passed (and selection reaches it).
        upstream = runtime.upstream
        for i, node in enumerate(upstream.nodes):
            health = node.health
            if health.ejected_until is None or health.manual_down:
                continue
            limit = clock.now + health.passive.max_ejection_time
            assert health.ejected_until <= limit and health.blocked_until <= limit, "out for longer than the cap"
            clock.now = max(clock.now, health.ejected_until, health.blocked_until) + 0.001
            higher = {j for j, n in enumerate(upstream.nodes) if n.config.priority > node.config.priority}
            same = {j for j, n in enumerate(upstream.nodes) if n.config.priority == node.config.priority and j != i}
            choice = upstream.choose(higher | same)
            assert choice is not None and choice.index == i and choice.trial, (node.name, choice)


@settings(max_examples=500, deadline=None)
@given(ops=OPS, active=st.booleans())
def test_no_lease_is_ever_held_and_every_attempt_records_one_outcome(ops: list[tuple[Any, ...]], active: bool) -> None:
    asyncio.run(run(ops, active))
