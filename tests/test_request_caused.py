"""Failures the request caused never eject a node (issue 21): a body that fails the same way on two nodes
that keep serving other requests is answered with its original error, tried nowhere else, and the health
counts it added are taken back. In-process on the mock transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.metrics import attach, exposition
from sidecar.nodes.health import Source
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request

from .inproc import Harness
from .test_stream_failover import ASK, OK, SSE, cfg, chunk, stream, text_of

POISON = "this history breaks every provider"
BROKEN = b'{"error": {"message": "Internal server error", "type": "server_error"}}'


def providers(node: str, request: Request) -> Script:
    """Every node answers 500 to the poison body (and times out on its stream), and serves the rest."""
    poisoned = POISON.encode() in request.body
    streamed = b'"stream": true' in request.body
    if poisoned and streamed:
        return Script(200, SSE, [chunk(role=True), 30.0])
    if poisoned:
        return Script(500, body=[BROKEN])
    return Script(200, SSE, stream("fine")) if streamed else Script(body=[OK])


def poison(stream_: bool = False) -> dict[str, Any]:
    return {**ASK, "messages": [{"role": "user", "content": POISON}], "stream": stream_}


async def warm(h: Harness) -> None:
    """Both nodes serve other requests: the primary by default, the backup while the primary is drained."""
    assert (await h.request(ASK)).status == 200
    upstream = h.runtime.upstream
    upstream.set_manual(h.node("primary"), True)
    assert (await h.request(ASK)).headers["x-llm-sidecar-node"] == "backup"
    upstream.set_manual(h.node("primary"), False)


def counts(h: Harness, name: str) -> dict[str, int]:
    return dict(h.node(name).health.counters[Source.PASSIVE].as_dict())


async def test_a_body_that_fails_on_every_node_is_answered_as_is_and_blames_no_node() -> None:
    h = Harness(providers, cfg())
    await warm(h)
    answer = await h.request(poison())
    assert answer.status == 500 and answer.body == BROKEN  # the original error, in the client's format
    assert "request-caused" in answer.headers["x-llm-sidecar-trail"]
    event = h.last_event()
    assert event["request_caused"] == "500"
    assert [f["node"] for f in event["failed"]] == [
        "primary",
        "primary",
        "backup",
    ]  # a same-node retry, then one more node
    assert all(f["request_caused"] for f in event["failed"])
    for name in ("primary", "backup"):
        assert counts(h, name)["http_failures"] == 0 and h.node(name).health.state == "healthy"
    h.assert_nothing_held()


async def test_sent_again_it_costs_one_attempt_per_node_and_never_ejects_anything() -> None:
    """Remembered, it is spared the same-node retry; it is still judged on two nodes (a node down meanwhile
    must not be taken for the request's fault), and its failures leave no node looking like a failing one."""
    h = Harness(providers, cfg())
    await warm(h)
    await h.request(poison())
    calls = h.calls("primary") + h.calls("backup")
    for _ in range(5):  # an agent retrying the same conversation
        answer = await h.request(poison())
        assert answer.status == 500 and h.last_event()["request_caused"] == "500"
        assert [f["node"] for f in h.last_event()["failed"]] == ["primary", "backup"]
    assert h.calls("primary") + h.calls("backup") == calls + 10
    assert h.node("primary").health.state == "healthy" and h.node("backup").health.state == "healthy"
    assert (await h.request(ASK)).headers["x-llm-sidecar-node"] == "primary"
    h.assert_nothing_held()


async def test_a_stream_that_times_out_on_every_node_is_a_504_and_blames_no_node() -> None:
    h = Harness(providers, cfg(read=5, first_token=0.05))
    await warm(h)
    answer = await h.request(poison(stream_=True))
    assert answer.status == 504 and h.last_event()["request_caused"] == "timeout"
    assert counts(h, "primary")["timeouts"] == 0 and counts(h, "backup")["timeouts"] == 0
    h.assert_nothing_held()


async def test_different_bodies_failing_on_one_node_still_eject_it() -> None:
    """Only the primary fails them (the backup answers): the node's fault, counted as ever."""

    def handler(node: str, request: Request) -> Script:
        return Script(500, body=[BROKEN]) if node == "primary" else Script(body=[OK])

    h = Harness(handler, cfg(retry={"same_node": 0}))
    for i in range(3):
        body = {**ASK, "messages": [{"role": "user", "content": f"question {i}"}]}
        assert (await h.request(body)).status == 200
    assert h.node("primary").health.state == "ejected"
    assert h.last_event()["request_caused"] is None


async def test_a_dead_node_is_still_ejected() -> None:
    """Both nodes fail the body, but the primary serves nothing else: it is dead, not acquitted."""

    def handler(node: str, request: Request) -> Script:
        if node == "primary" or POISON.encode() in request.body:
            return Script(500, body=[BROKEN])
        return Script(body=[OK])

    h = Harness(handler, cfg(retry={"same_node": 0}))
    h.runtime.upstream.set_manual(h.node("primary"), True)
    assert (await h.request(ASK)).status == 200  # the backup serves others
    h.runtime.upstream.set_manual(h.node("primary"), False)
    for _ in range(3):
        assert (await h.request(poison())).status == 500
        assert h.last_event()["request_caused"] is None
    assert h.node("primary").health.state == "ejected"


@pytest.mark.parametrize("stream_", [False, True])
async def test_the_metrics_count_request_caused_failures_apart(stream_: bool) -> None:
    h = Harness(providers, cfg(read=5, first_token=0.05))
    metrics = attach(h.runtime)
    await warm(h)
    await h.request(poison(stream_))
    text = exposition(metrics)[0].decode()
    assert 'reason="request_caused"' in text


async def test_a_request_that_succeeds_elsewhere_is_no_culprit() -> None:
    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return Script(500, body=[BROKEN])
        return providers(node, request) if POISON.encode() not in request.body else Script(body=[OK])

    h = Harness(handler, cfg(retry={"same_node": 0}))
    await warm(h)
    answer = await h.request(poison())
    assert answer.status == 200 and text_of(answer.body) == "" and h.last_event()["request_caused"] is None
    assert counts(h, "primary")["http_failures"] == 1


async def test_a_remembered_culprit_is_not_blamed_for_a_node_that_went_down() -> None:
    """Both nodes fail it once (a shared blip): remembered. Later the primary is down and the backup fine:
    the same body is answered by the backup, not with the primary's error."""
    state = {"blip": True, "primary_down": False}

    def handler(node: str, request: Request) -> Script:
        if state["blip"] or (node == "primary" and state["primary_down"]):
            return Script(500, body=[BROKEN])
        return Script(body=[OK])

    h = Harness(handler, cfg())
    await warm_with(h, state)
    assert (await h.request(poison())).status == 500 and h.last_event()["request_caused"] == "500"
    state.update(blip=False, primary_down=True)
    answer = await h.request(poison())
    assert answer.status == 200 and answer.headers["x-llm-sidecar-node"] == "backup"
    assert h.last_event()["request_caused"] is None


async def warm_with(h: Harness, state: dict[str, bool]) -> None:
    blip, state["blip"] = state["blip"], False
    await warm(h)
    state["blip"] = blip


async def test_two_nodes_that_start_hanging_together_are_no_culprit_and_the_next_node_answers() -> None:
    """Both nodes a request timed out on served others when it reached them, but they failed other requests
    in flight meanwhile too: an outage of both, not the request's fault. It goes on to the third node."""
    from sidecar.config.load import parse

    hanging = {"primary", "second"}
    state = {"hang": False}

    def handler(node: str, request: Request) -> Script:
        if state["hang"] and node in hanging:
            return Script(200, SSE, [chunk(role=True), 30.0])
        return Script(200, SSE, stream(f"from {node}"))

    nodes = [
        {"name": "primary", "url": "http://primary.invalid", "priority": 0},
        {"name": "second", "url": "http://second.invalid", "priority": -1},
        {"name": "steady", "url": "http://steady.invalid", "priority": -2},
    ]
    timeout = {"connect": 0.05, "send": 1, "read": 5, "first_token": 0.2}
    upstream = {"timeout": timeout, "checks": {"passive": {}}, "retry": {"same_node": 0}, "nodes": nodes}
    h = Harness(handler, parse({"upstream": upstream}, "<test>", env={}))
    for name in ("primary", "second"):  # both serve others
        for other in hanging - {name}:
            h.runtime.upstream.set_manual(h.node(other), True)
        assert (await h.request({**ASK, "stream": True})).headers["x-llm-sidecar-node"] == name
        for other in hanging - {name}:
            h.runtime.upstream.set_manual(h.node(other), False)
    state["hang"] = True
    first, later = {**ASK, "stream": True}, {**ASK, "stream": True, "messages": [{"role": "user", "content": "b"}]}
    answers = await asyncio.gather(h.request(first), h.request(later))
    for answer in answers:  # each timed out on the primary and the second node, then the steady one answered
        assert answer.status == 200 and answer.headers["x-llm-sidecar-node"] == "steady", answer.headers
        assert "from steady" in text_of(answer.body)
    events = [e for e in h.runtime.events.recent if e["type"] == "request"][-2:]
    assert all(e["request_caused"] is None for e in events), events
    assert counts(h, "primary")["timeouts"] >= 1  # counted against the node, as an outage should be
    h.assert_nothing_held()
