"""Hedged first tokens (issue 21, opt-in): a stream with no first token after `after` seconds is also sent
to the next usable node; the first real token wins, the loser is cancelled with no verdict, the client sees
one stream, and at most `budget` of the last minute's requests are hedged. In-process on the mock transport."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.metrics import attach, exposition
from sidecar.nodes.health import Source
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request
from sidecar.proxy.hedge import HedgeBudget

from .inproc import Harness
from .test_stream_failover import ASK, OK, SSE, cfg, chunk, stream, text_of

STREAM = {**ASK, "stream": True}
HEDGE = {"after": 0.05, "budget": 1.0}


def timed(first: dict[str, float], fail: dict[str, int] | None = None) -> Any:
    """Each node's first token after `first[node]` seconds; `fail[node]` a status instead."""

    def handler(node: str, request: Request) -> Script:
        if fail and node in fail:
            return Script(fail[node], body=[b'{"error": {"message": "no"}}'])
        if b'"stream": true' not in request.body:
            return Script(body=[OK])
        return Script(200, SSE, [chunk(role=True), first[node], *stream(f"from {node}")[1:]])

    return handler


def untouched(h: Harness, name: str) -> bool:
    counters = h.node(name).health.counters[Source.PASSIVE].as_dict()
    return counters == {"successes": 0, "http_failures": 0, "tcp_failures": 0, "timeouts": 0}


async def test_the_hedge_wins_when_the_first_node_is_slow_and_the_loser_gets_no_verdict() -> None:
    h = Harness(timed({"primary": 3.0, "backup": 0.0}), cfg(read=10, hedge=HEDGE))
    metrics = attach(h.runtime)
    answer = await h.request(STREAM)
    text = exposition(metrics)[0].decode()
    assert 'llm_sidecar_hedges_total{node="backup",over="primary",result="won"} 1.0' in text
    assert answer.status == 200 and text_of(answer.body) == "from backup"
    assert h.last_event()["hedged"] == [{"node": "backup", "over": "primary", "won": True}]
    assert h.last_event()["failed"] == []
    assert untouched(h, "primary")
    h.assert_nothing_held()  # the loser's response was closed, its in-flight count given back


async def test_the_first_node_wins_when_its_token_comes_first_and_the_hedge_is_cancelled() -> None:
    h = Harness(timed({"primary": 0.15, "backup": 3.0}), cfg(read=10, hedge=HEDGE))
    answer = await h.request(STREAM)
    assert answer.status == 200 and text_of(answer.body) == "from primary"
    assert h.last_event()["hedged"] == [{"node": "backup", "over": "primary", "won": False}]
    assert h.calls("backup") == 1 and untouched(h, "backup")
    h.assert_nothing_held()


async def test_no_hedge_before_after_and_none_without_it() -> None:
    h = Harness(timed({"primary": 0.0, "backup": 0.0}), cfg(read=10, hedge=HEDGE))
    assert text_of((await h.request(STREAM)).body) == "from primary" and h.calls("backup") == 0
    h = Harness(timed({"primary": 0.2, "backup": 0.0}), cfg(read=10))  # no [upstream.hedge]: off
    assert text_of((await h.request(STREAM)).body) == "from primary" and h.calls("backup") == 0


async def test_only_streams_on_generation_paths_are_hedged() -> None:
    h = Harness(timed({"primary": 0.2, "backup": 0.0}), cfg(read=10, hedge=HEDGE))
    assert (await h.request(ASK)).status == 200 and h.calls("backup") == 0  # not a stream
    await h.request(STREAM, path="/v1/embeddings")
    assert h.calls("backup") == 0


async def test_when_the_hedged_attempt_fails_the_hedge_serves_alone() -> None:
    async def handler(node: str, request: Request) -> Script:
        if node == "primary":
            await asyncio.sleep(0.1)  # past `after`, then a 500
            return Script(500, body=[b'{"error": {"message": "boom"}}'])
        return Script(200, SSE, [chunk(role=True), 0.3, *stream("from backup")[1:]])

    h = Harness(handler, cfg(read=10, hedge=HEDGE, retry={"same_node": 0}))
    answer = await h.request(STREAM)
    assert answer.status == 200 and text_of(answer.body) == "from backup"
    event = h.last_event()
    assert [f["node"] for f in event["failed"]] == ["primary"]
    assert event["hedged"] == [{"node": "backup", "over": "primary", "won": True}]
    assert h.node("primary").health.counters[Source.PASSIVE].as_dict()["http_failures"] == 1
    h.assert_nothing_held()


async def test_when_the_hedge_fails_first_the_hedged_attempt_goes_on() -> None:
    h = Harness(timed({"primary": 0.3, "backup": 0.0}, fail={"backup": 503}), cfg(read=10, hedge=HEDGE))
    answer = await h.request(STREAM)
    assert answer.status == 200 and text_of(answer.body) == "from primary"
    event = h.last_event()
    assert [f["node"] for f in event["failed"]] == ["backup"]
    assert event["hedged"] == [{"node": "backup", "over": "primary", "won": False}]
    h.assert_nothing_held()


async def test_a_client_that_leaves_mid_race_leaves_nothing_held() -> None:
    h = Harness(timed({"primary": 3.0, "backup": 3.0}), cfg(read=10, hedge=HEDGE))
    gone = asyncio.Event()
    task = asyncio.create_task(h.request(STREAM, gone=gone))
    for _ in range(1000):
        if h.calls("backup"):
            break
        await asyncio.sleep(0.005)
    assert h.calls("backup") == 1
    gone.set()
    await task
    assert untouched(h, "primary") and untouched(h, "backup")
    h.assert_nothing_held()


def test_the_budget_bounds_the_share_of_hedged_requests() -> None:
    budget = HedgeBudget()
    for i in range(19):
        budget.counted(float(i))
    assert not budget.allows(0.05, 19.0)  # 1 of 19 would be over 5%
    budget.counted(19.0)
    assert budget.allows(0.05, 19.0)
    budget.spent(19.0)
    assert not budget.allows(0.05, 19.0) and budget.share(19.0) == 0.05
    assert budget.allows(0.05, 19.0 + 61.0) is False  # the window emptied: no requests, no hedge
    for i in range(20):
        budget.counted(100.0 + i)
    assert budget.allows(0.05, 119.0)


async def test_past_the_budget_a_slow_stream_just_waits() -> None:
    h = Harness(timed({"primary": 0.1, "backup": 0.0}), cfg(read=10, hedge={"after": 0.05, "budget": 0.5}))
    answers = [text_of((await h.request(STREAM)).body) for _ in range(4)]
    assert answers.count("from backup") == 2  # every other request: half of them at most
    h.assert_nothing_held()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    primary=st.sampled_from([0.0, 0.08, 0.2, "500", "hang"]),
    backup=st.sampled_from([0.0, 0.08, 0.2, "503", "hang"]),
    leave=st.booleans(),
)
def test_hedged_requests_record_one_outcome_per_attempt_and_hold_nothing(
    primary: float | str, backup: float | str, leave: bool
) -> None:
    async def case() -> None:
        def handler(node: str, request: Request) -> Script:
            how = primary if node == "primary" else backup
            if how == "hang":
                return Script(200, SSE, [chunk(role=True), 5.0])
            if isinstance(how, str):
                return Script(int(how), body=[b'{"error": {"message": "x"}}'])
            return Script(200, SSE, [chunk(role=True), how, *stream(node)[1:]])

        h = Harness(handler, cfg(read=0.4, first_token=0.4, hedge=HEDGE, retry={"same_node": 0}))
        upstream = h.runtime.upstream
        recorded: list[str] = []
        original = upstream.record

        def record(node: Any, *args: Any, **kwargs: Any) -> Any:
            recorded.append(node.name)
            return original(node, *args, **kwargs)

        upstream.record = record  # type: ignore[method-assign]
        gone = asyncio.Event()
        task = asyncio.create_task(h.request(STREAM, gone=gone))
        if leave:
            await asyncio.sleep(0.06)
            gone.set()
        await task
        await asyncio.sleep(0)
        sent = h.calls("primary") + h.calls("backup")
        assert len(recorded) == sent, (recorded, sent)  # every attempt recorded exactly once
        h.assert_nothing_held()

    asyncio.run(case())
