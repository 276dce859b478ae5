"""No request waits on a dead node (issue 21): attempts that have delivered nothing yet move on at once
when their node is judged out, by whatever judges it; the first-token limit learns from each (node,
model)'s own first tokens; `node auto` trusts a node now. In-process on the mock transport.

The waits scripted here are far longer than the harness lets a request take (5 s): a request that was not
moved on would fail its test by timing out, so no test needs to measure time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.nodes.health import Failure, Source
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request

from .inproc import Answer, Harness
from .test_stream_failover import ASK, OK, SSE, cfg, chunk, failed, stream, text_of

HANG = 30.0  # seconds a silent primary would keep a request: past the harness's bound


def silent_primary(node: str, request: Request) -> Script:
    """The primary accepts and then says nothing (a stream's headers and a role delta; a JSON answer's
    headers never come); the backup answers at once."""
    streamed = b'"stream": true' in request.body
    if node == "primary":
        return Script(200, SSE, [chunk(role=True), HANG]) if streamed else Script(delay=HANG)
    return Script(200, SSE, stream("from backup")) if streamed else Script(body=[OK])


async def waiting(h: Harness, name: str, count: int) -> None:
    """Until `count` attempts wait on node `name` (bounded)."""
    for _ in range(2000):
        if len(h.node(name).waiting) >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{len(h.node(name).waiting)} attempts wait on {name}, expected {count}")


def ask(stream_: bool) -> dict[str, Any]:
    return {**ASK, "stream": True} if stream_ else ASK


JUDGES: dict[str, Callable[[Harness], None]] = {
    "node down": lambda h: h.runtime.upstream.set_manual(h.node("primary"), True) and None,
    "a failed probe": lambda h: h.runtime.upstream.probed(h.node("primary"), Failure.TCP, "probe connect refused"),
}


@pytest.mark.parametrize("judge", sorted(JUDGES))
@pytest.mark.parametrize("stream_", [True, False], ids=["stream", "json"])
async def test_attempts_waiting_on_a_node_judged_out_move_on_at_once(judge: str, stream_: bool) -> None:
    checks = {"active": {"interval": 3600}, "passive": {}}
    h = Harness(silent_primary, cfg(read=HANG + 5, first_token=HANG + 5, checks=checks))
    tasks = [asyncio.create_task(h.request(ask(stream_))) for _ in range(4)]
    await waiting(h, "primary", 4)
    JUDGES[judge](h)
    answers: list[Answer] = await asyncio.gather(*tasks)
    for answer in answers:
        assert answer.status == 200 and answer.complete
        assert (text_of(answer.body) == "from backup") if stream_ else (answer.json() == json.loads(OK))
    reasons = [e["failed"] for e in h.runtime.events.recent if e["type"] == "request"]
    assert len(reasons) == 4
    for failures in reasons:
        assert len(failures) == 1 and failures[0]["node"] == "primary"
        assert failures[0]["reason"].startswith("moved on: primary ")
    assert len(h.node("primary").waiting) == 0
    # No verdict from the attempts that moved: the node's passive counts are untouched by them.
    assert h.node("primary").health.counters[Source.PASSIVE].as_dict()["timeouts"] == 0
    h.assert_nothing_held()


async def test_another_requests_failures_move_the_waiting_ones_on() -> None:
    """Three requests fail on the primary (503) and eject it: those waiting there move on at once."""
    answers_503 = 0

    def handler(node: str, request: Request) -> Script:
        nonlocal answers_503
        if node == "primary" and b"fail-me" in request.body:
            answers_503 += 1
            return Script(503, body=[b'{"error": {"message": "busy"}}'])
        return silent_primary(node, request)

    h = Harness(handler, cfg(read=HANG + 5, first_token=HANG + 5, retry={"same_node": 0}))
    waiters = [asyncio.create_task(h.request(ask(True))) for _ in range(3)]
    await waiting(h, "primary", 3)
    for _ in range(3):
        failing = await h.request({**ASK, "messages": [{"role": "user", "content": "fail-me"}]})
        assert failing.status == 200  # answered by the backup
    assert h.node("primary").health.state == "ejected" and answers_503 == 3
    for answer in await asyncio.gather(*waiters):
        assert answer.status == 200 and text_of(answer.body) == "from backup"
    h.assert_nothing_held()


async def test_a_request_with_nowhere_else_to_go_keeps_waiting() -> None:
    """Moving would only fail it sooner: with the backup down by hand too, the waiting attempt stays."""
    release = asyncio.Event()

    async def handler(node: str, request: Request) -> Script:
        if node == "primary":
            await release.wait()
            return Script(body=[OK])
        return Script(body=[OK])

    h = Harness(handler, cfg(read=HANG + 5))
    h.runtime.upstream.set_manual(h.node("backup"), True)
    task = asyncio.create_task(h.request(ASK))
    await waiting(h, "primary", 1)
    h.runtime.upstream.probed(h.node("primary"), Failure.TCP, "probe connect refused")  # no active check: no-op
    h.runtime.upstream.set_manual(h.node("primary"), True)  # drained: but the request has nowhere else to go
    await asyncio.sleep(0.01)
    assert len(h.node("primary").waiting) == 1
    release.set()
    answer = await task
    assert answer.status == 200 and failed(h) == []
    h.assert_nothing_held()


@pytest.mark.parametrize("stream_", [True, False], ids=["stream", "json"])
async def test_a_client_that_leaves_while_waiting_is_no_mover_and_holds_nothing(stream_: bool) -> None:
    h = Harness(silent_primary, cfg(read=HANG + 5, first_token=HANG + 5))
    gone = asyncio.Event()
    leaving = asyncio.create_task(h.request(ask(stream_), gone=gone))
    staying = asyncio.create_task(h.request(ask(stream_)))
    await waiting(h, "primary", 2)
    gone.set()
    await leaving
    await waiting(h, "primary", 1)  # the one that left no longer waits; the other still does
    assert len(h.node("primary").waiting) == 1
    h.runtime.upstream.set_manual(h.node("primary"), True)
    answer = await staying
    assert answer.status == 200 and answer.complete
    h.assert_nothing_held()


async def test_a_reload_while_waiting_still_moves_the_waiting_attempts() -> None:
    """The attempts of the old generation wait on the node the new generation judges."""
    h = Harness(silent_primary, cfg(read=HANG + 5, first_token=HANG + 5))
    tasks = [asyncio.create_task(h.request(ask(True))) for _ in range(2)]
    await waiting(h, "primary", 2)
    h.runtime.apply(cfg(read=HANG + 5, first_token=HANG + 5))
    assert h.runtime.upstream.by_name["primary"].waiting is h.node("primary").waiting
    h.runtime.upstream.set_manual(h.node("primary"), True)
    for answer in await asyncio.gather(*tasks):
        assert answer.status == 200 and text_of(answer.body) == "from backup"
    await h.settle()
    h.assert_nothing_held()


async def test_a_model_ejected_on_a_node_moves_only_the_attempts_for_that_model() -> None:
    h = Harness(silent_primary, cfg(read=HANG + 5, first_token=HANG + 5))
    other = asyncio.create_task(h.request({**ASK, "model": "other-model", "stream": True}))
    mine = asyncio.create_task(h.request(ask(True)))
    await waiting(h, "primary", 2)
    h.runtime.upstream._model_event(h.node("primary"), "gpt-4o", "ejected", "http 503")
    answer = await mine
    assert answer.status == 200 and text_of(answer.body) == "from backup"
    assert len(h.node("primary").waiting) == 1  # the other model's attempt still waits
    h.runtime.upstream.set_manual(h.node("primary"), True)
    assert (await other).status == 200
    h.assert_nothing_held()


@pytest.mark.parametrize("body", [ASK, {"messages": ASK["messages"]}], ids=["a model", "no model"])
async def test_node_auto_puts_back_a_node_held_out_by_an_endless_retry_after(body: dict[str, Any]) -> None:
    """`Retry-After: inf` is clamped to max_ejection_time (300 s), held for the model or, without one, the
    node; `node auto` is the operator's way to say it is back."""
    limited = {"on": True}

    def handler(node: str, request: Request) -> Script:
        if node == "primary" and limited["on"]:
            return Script(429, (("retry-after", "inf"),), [b'{"error": {"message": "slow down"}}'])
        return Script(body=[OK])

    h = Harness(handler, cfg())
    assert (await h.request(body)).status == 200
    assert h.calls("primary") == 1
    limited["on"] = False
    assert (await h.request(body)).status == 200
    assert h.calls("primary") == 1  # held out: the backup answered
    h.runtime.upstream.set_manual(h.node("primary"), False)
    assert (await h.request(body)).status == 200
    assert h.calls("primary") == 2  # trusted now
    h.assert_nothing_held()


async def test_a_request_moved_off_a_node_may_go_back_to_it_in_a_later_round() -> None:
    """Moving on is no verdict: when every other node then fails, the next round may try the node again."""
    state = {"silent": True}

    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            if state["silent"]:
                return Script(200, SSE, [chunk(role=True), HANG])
            return Script(200, SSE, stream("from primary"))
        return Script(503, body=[b'{"error": {"message": "busy"}}'])

    checks = {"active": {"interval": 3600}, "passive": {}}
    h = Harness(handler, cfg(read=HANG + 5, first_token=HANG + 5, checks=checks))
    task = asyncio.create_task(h.request(ask(True)))
    await waiting(h, "primary", 1)
    state["silent"] = False
    h.runtime.upstream.probed(h.node("primary"), Failure.TCP, "probe connect refused")  # judged out: it moves on
    answer = await task
    assert answer.status == 200 and text_of(answer.body) == "from primary"
    reasons = [f["reason"] for f in failed(h)]
    assert reasons[0].startswith("moved on: primary") and "http 503" in reasons[1:]
    h.assert_nothing_held()
