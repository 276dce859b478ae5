"""Recovery probes (issue 21): a node, or a model on it, that real traffic ejected comes back through the
sidecar's own smallest real request of the kind that failed, never through a user request. The schedule
and the verdicts, in-process on the mock transport with the test's own clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from yarl import URL

from sidecar.formats.probe import RESPONSES_MIN_OUTPUT, probe_body
from sidecar.metrics import attach, exposition
from sidecar.nodes.mock import MockTransport, Script
from sidecar.nodes.prober import RecoveryProber
from sidecar.nodes.recovery import FIRST, MAX_INTERVAL, ProbeSpec, Recovery
from sidecar.nodes.transport import Request

from .inproc import Harness
from .test_stream_failover import ASK, OK, SSE, cfg, chunk, stream

ERROR = [b'{"error": {"message": "busy"}}']
REQUEST = Request("POST", URL("http://n.invalid/v1/chat/completions"), [])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_schedule_starts_soon_backs_off_and_is_bounded() -> None:
    r = Recovery.start(ProbeSpec("/v1/chat/completions", "m", False), now=0.0)
    assert r.next_at == FIRST and not r.due(0.5) and r.due(FIRST)
    waits = []
    now = FIRST
    for _ in range(6):
        r.failed(now, "http 503")
        waits.append(r.next_at - now)
        now = r.next_at
    assert waits == [2.0, 4.0, MAX_INTERVAL, MAX_INTERVAL, MAX_INTERVAL, MAX_INTERVAL]


def test_no_probe_before_a_retry_after_hold() -> None:
    r = Recovery.start(ProbeSpec("/v1/messages", "m", True), now=0.0, not_before=30.0)
    assert r.next_at == 30.0
    r.failed(30.0, "http 529", not_before=45.0)
    assert r.next_at == 45.0


@pytest.mark.parametrize(
    ("path", "stream", "wanted"),
    [
        ("/v1/chat/completions", False, {"max_tokens": 1}),
        ("/v1/chat/completions", True, {"max_tokens": 1, "stream": True}),
        ("/v1/messages", True, {"max_tokens": 1, "stream": True}),
        ("/v1/responses", False, {"max_output_tokens": RESPONSES_MIN_OUTPUT, "store": False}),
        ("/v1/completions", False, {"max_tokens": 1}),
    ],
)
def test_a_probe_is_the_smallest_real_request_of_its_kind(path: str, stream: bool, wanted: dict[str, Any]) -> None:
    body = probe_body(path, "served-model", stream)
    assert body is not None
    parsed = json.loads(body)
    assert parsed["model"] == "served-model" and wanted.items() <= parsed.items()


def test_paths_that_need_the_clients_data_have_no_probe() -> None:
    assert probe_body("/v1/audio/transcriptions", "m", False) is None
    assert ProbeSpec.of("/v1/files", "m", False) is None
    assert ProbeSpec.of("/v1/chat/completions", None, False) is None  # no model to ask for


def failing_primary(state: dict[str, Any]) -> Any:
    def handler(node: str, request: Request) -> Script:
        streamed = b'"stream": true' in request.body
        if node == "primary":
            state["bodies"].append(json.loads(request.body))
            if state["down"]:
                return Script(503, body=ERROR)
        return Script(200, SSE, stream("ok")) if streamed else Script(body=[OK])

    return handler


async def eject(h: Harness, body: dict[str, Any]) -> None:
    for _ in range(3):  # the passive default: three failures in a row
        assert (await h.request(body)).status == 200
    assert h.node("primary").health.state == "ejected"


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
async def test_an_ejected_node_is_probed_not_tried_and_the_first_success_restores_it(streamed: bool) -> None:
    clock = Clock()
    state: dict[str, Any] = {"down": True, "bodies": []}
    h = Harness(failing_primary(state), cfg(retry={"same_node": 0}), clock=clock)
    metrics = attach(h.runtime)
    body = {**ASK, "stream": True} if streamed else ASK
    await eject(h, body)
    primary = h.node("primary")
    assert primary.recovery is not None and primary.recovery.spec == ProbeSpec(
        "/v1/chat/completions", "gpt-4o", streamed
    )
    clock.now += 3600  # long past any ejection time: still no user request is a trial
    sent = len(state["bodies"])
    assert (await h.request(body)).status == 200 and len(state["bodies"]) == sent
    prober = RecoveryProber(h.runtime)
    for _ in range(2):  # two failed probes, each when due
        (task,) = prober.tick()
        await task
        assert prober.tick() == []  # not due again at once: backing off
        clock.now = primary.recovery.next_at
    assert primary.health.state == "ejected" and primary.stats.probes_failed == 2
    state["down"] = False
    (task,) = prober.tick()
    await task
    assert primary.health.state == "healthy" and primary.health.reason == "recovered (probe gpt-4o ok)"
    assert primary.recovery is None and primary.stats.probes == 3
    text = exposition(metrics)[0].decode()
    assert 'llm_sidecar_recovery_probes_total{node="primary",result="fail"} 2.0' in text
    assert 'llm_sidecar_recovery_probes_total{node="primary",result="ok"} 1.0' in text
    probe = state["bodies"][-1]
    assert probe["max_tokens"] == 1 and probe["model"] == "gpt-4o" and probe.get("stream", False) is streamed
    assert probe["messages"] != ASK["messages"]  # the probe's own words, never the user's
    assert (await h.request(body)).status == 200 and len(state["bodies"]) == sent + 4  # back on the primary
    h.assert_nothing_held()


async def test_a_4xx_to_the_probe_means_the_node_answers_again() -> None:
    clock = Clock()
    state: dict[str, Any] = {"down": True, "bodies": []}

    def handler(node: str, request: Request) -> Script:
        if node == "primary" and state["bodies"] and not state["down"]:
            return Script(400, body=[b'{"error": {"message": "max_tokens too small"}}'])
        return failing_primary(state)(node, request)

    h = Harness(handler, cfg(retry={"same_node": 0}), clock=clock)
    await eject(h, ASK)
    state["down"] = False
    clock.now += FIRST
    (task,) = RecoveryProber(h.runtime).tick()
    await task
    assert h.node("primary").health.state == "healthy"
    assert h.node("primary").health.reason == "recovered (probe gpt-4o answered 400)"


async def test_a_silent_stream_is_no_recovery() -> None:
    clock = Clock()
    state: dict[str, Any] = {"down": True, "bodies": []}

    def handler(node: str, request: Request) -> Script:
        if node == "primary" and not state["down"]:
            return Script(200, SSE, [chunk(role=True), 0.5])  # headers and a role delta, then silence
        return failing_primary(state)(node, request)

    config = cfg(read=2, first_token=0.2, retry={"same_node": 0})
    h = Harness(handler, config, clock=clock)
    await eject(h, {**ASK, "stream": True})
    state["down"] = False
    clock.now += FIRST
    (task,) = RecoveryProber(h.runtime).tick()
    await task
    primary = h.node("primary")
    assert primary.health.state == "ejected" and primary.recovery is not None
    assert primary.recovery.last == "probe gpt-4o: no answer in 0.2s"


async def test_trial_recovery_keeps_todays_behaviour() -> None:
    clock = Clock()
    state: dict[str, Any] = {"down": True, "bodies": []}
    h = Harness(failing_primary(state), cfg(retry={"same_node": 0}, recovery="trial"), clock=clock)
    await eject(h, ASK)
    assert h.node("primary").recovery is None
    assert RecoveryProber(h.runtime).tick() == []
    state["down"] = False
    clock.now += 3600
    sent = len(state["bodies"])
    assert (await h.request(ASK)).status == 200 and len(state["bodies"]) == sent + 1  # the trial
    assert h.node("primary").health.state == "healthy"


async def test_node_auto_ends_the_probing_and_a_drained_node_is_not_probed() -> None:
    clock = Clock()
    state: dict[str, Any] = {"down": True, "bodies": []}
    h = Harness(failing_primary(state), cfg(retry={"same_node": 0}), clock=clock)
    await eject(h, ASK)
    upstream = h.runtime.upstream
    upstream.set_manual(h.node("primary"), True)
    clock.now += 60
    assert RecoveryProber(h.runtime).tick() == []
    upstream.set_manual(h.node("primary"), False)
    assert h.node("primary").recovery is None and h.node("primary").health.state == "healthy"


async def test_one_bad_model_cannot_keep_a_whole_node_out() -> None:
    """The node was ejected by requests for a model it no longer serves; every other probe asks for a model
    it served lately, and that one brings the node back (the bad model then fails on its own)."""
    clock = Clock()
    asked: list[str] = []

    def handler(node: str, request: Request) -> Script:
        model = json.loads(request.body)["model"]
        if node == "primary":
            asked.append(model)
            if model == "bad":
                return Script(503, body=ERROR)
        return Script(body=[OK])

    h = Harness(handler, cfg(retry={"same_node": 0}), clock=clock)
    assert (await h.request({**ASK, "model": "good"})).status == 200
    clock.now += 120  # the good model's success is old enough that the bad model's failures are the node's
    for _ in range(3):
        await h.request({**ASK, "model": "bad"})
    primary = h.node("primary")
    assert primary.health.state == "ejected" and primary.recovery is not None
    assert primary.recovery.alternate == "good"
    prober = RecoveryProber(h.runtime)
    for _ in range(2):
        clock.now = primary.recovery.next_at if primary.recovery else clock.now
        for task in prober.tick():
            await task
    assert primary.health.state == "healthy", primary.health.reason
    assert asked[-2:] == ["bad", "good"] and primary.health.reason == "recovered (probe good ok)"


@pytest.mark.parametrize(
    ("headers", "body", "streamed", "back"),
    [
        ((("content-type", "text/html"),), b"<html>portal</html>", False, False),
        ((("content-type", "text/event-stream"),), b'data: {"choices": []}\n\n', False, False),
        ((("content-type", "application/json"),), OK, False, True),
        ((("content-type", "application/json"),), OK, True, True),  # a JSON answer to a stream: as for real requests
    ],
    ids=["a page", "a stream to a non-stream probe", "json", "json to a stream probe"],
)
async def test_a_probe_answer_is_judged_as_a_real_answer_would_be(
    headers: tuple[tuple[str, str], ...], body: bytes, streamed: bool, back: bool
) -> None:
    from sidecar.nodes.prober import judge

    response = await MockTransport(lambda n, r: Script(200, headers, [body])).send("n", REQUEST)
    assert (await judge(response, streamed, frozenset({503})))[0] is back


def test_the_probe_bounds_its_answer_the_way_the_failed_request_did() -> None:
    body = probe_body("/v1/chat/completions", "o3", False, "max_completion_tokens")
    assert body is not None and json.loads(body)["max_completion_tokens"] == 1 and b"max_tokens" not in body
