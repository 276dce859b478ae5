"""The failover matrix, in-process on the mock transport: every fault of the primary, stream and not,
the client staying, leaving before the first byte or after it, with and without a reload in the middle,
on a healthy primary or on one taking its trial request, with passive-only or active+passive checks.

Each case checks the client's answer, the attempts each node saw, each node's health afterwards, and
that nothing is held: no trial lease, no in-flight count, no open upstream response, no generation.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from dataclasses import dataclass, replace

import pytest

from sidecar.nodes.health import Failure, Source
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request, UpstreamError

from .inproc import Harness, config

PASSIVE = {"unhealthy": {"http_failures": 1, "tcp_failures": 1, "timeouts": 1}, "base_ejection_time": 10}
SSE = (("content-type", "text/event-stream"),)


def event(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"


def answer(node: str, stream: bool) -> Script:
    """A complete answer; a short pause between events lets a client leave in the middle."""
    if stream:
        return Script(200, SSE, [event(f"Hello from {node}"), 0.005, event(" done"), 0.005, b"data: [DONE]\n\n"])
    body = {"choices": [{"message": {"content": f"Hello from {node}"}}], "usage": {"prompt_tokens": 3}}
    return Script(body=[json.dumps(body).encode()])


@dataclass(frozen=True)
class Fault:
    name: str
    script: Script
    fails_over: bool = True  # False: the answer passes through, and is no failure of the node
    slow: bool = False  # the fault takes the read/connect timeout to show
    kind: Failure | None = Failure.HTTP


def faults(stream: bool) -> list[Fault]:
    cut = [b'{"id": "partial", "choi', UpstreamError(Failure.TCP, "connection closed mid-body")]
    if stream:
        cut = [event("Hello from primary"), 0.005, b'data: {"partial', UpstreamError(Failure.TCP, "closed mid-body")]
    return [
        Fault(
            "connect refused", Script(error=UpstreamError(Failure.TCP, "connect failed (refused)")), kind=Failure.TCP
        ),
        Fault(
            "connect timeout",
            Script(delay=0.03, error=UpstreamError(Failure.TIMEOUT, "connect timeout")),
            slow=True,
            kind=Failure.TIMEOUT,
        ),
        Fault(
            "reset before headers",
            Script(error=UpstreamError(Failure.TCP, "connection closed before a response")),
            kind=Failure.TCP,
        ),
        Fault("hang before headers", Script(delay=math.inf), slow=True, kind=Failure.TIMEOUT),
        Fault("200 then silence", Script(200, SSE if stream else (), [math.inf]), slow=True, kind=Failure.TIMEOUT),
        Fault("http 500", Script(500, body=[b'{"error": {"message": "boom"}}'])),
        Fault("http 503", Script(503, body=[b'{"error": {"message": "busy"}}'])),
        # Past max_wait: failed over at once (a short one is waited out: see test_stream_failover.py).
        Fault("http 429", Script(429, (("retry-after", "30"),), [b'{"error": {"message": "slow down"}}'])),
        Fault("http 401", Script(401, body=[b'{"error": {"message": "bad key"}}'])),
        Fault("http 400", Script(400, body=[b'{"error": {"message": "bad request"}}']), fails_over=False),
        Fault("http 404", Script(404, body=[b'{"error": {"message": "no such model"}}']), fails_over=False),
        # A provider redirecting an API call is misconfigured: the node's failure, never followed.
        Fault("http 302", Script(302, (("location", "http://elsewhere.invalid/"),), [b""])),
        Fault("cut mid-body", Script(200, SSE if stream else (), cut), fails_over=not stream, kind=Failure.TCP),
    ]


STREAM_FAULTS = {f.name: f for f in faults(True)}
PLAIN_FAULTS = {f.name: f for f in faults(False)}
CLIENTS = ("stays", "leaves before the first byte", "leaves after the first byte")
SETUPS = ("passive only", "active+passive", "trial request")
CASES = [
    (fault, stream, client, reload, setup)
    for fault, stream, client, reload, setup in itertools.product(
        STREAM_FAULTS, (True, False), CLIENTS, (False, True), SETUPS
    )
    if stream or client != "leaves after the first byte"  # a non-stream answer is one write
]


@pytest.mark.parametrize(("fault_name", "stream", "client", "reload", "setup"), CASES)
async def test_failover_matrix(fault_name: str, stream: bool, client: str, reload: bool, setup: str) -> None:
    fault = (STREAM_FAULTS if stream else PLAIN_FAULTS)[fault_name]
    leaves_early = client == "leaves before the first byte"
    # A pass-through error answer is one write: leaving "after its first byte" is leaving after the answer.
    leaves_late = client == "leaves after the first byte" and (fault.fails_over or fault_name == "cut mid-body")
    # Who is answering when the client leaves early: the primary, unless its fault has already shown.
    primary_failed_first = fault.fails_over and not fault.slow
    interrupted = None
    if leaves_early:
        interrupted = "backup" if primary_failed_first else "primary"

    def handler(node: str, request: Request) -> Script:
        script = fault.script if node == "primary" else answer(node, stream)
        if leaves_early and node == interrupted:
            script = replace(script, delay=max(script.delay, 0.02))  # still waiting when the client leaves
        return script

    checks = {"passive": PASSIVE}
    if setup == "active+passive":
        checks["active"] = {"interval": 60}
    h = Harness(handler, config(checks))
    primary, backup = h.node("primary").health, h.node("backup").health
    now = h.runtime.clock()
    if setup == "trial request":
        primary.record_failure(Source.PASSIVE, Failure.HTTP, now - 100, "earlier outage")  # due for its trial
        assert primary.trial_ready(now)

    gone = asyncio.Event()

    def sent(node: str) -> None:
        if reload and h.calls(node) == 1 and node == "primary":
            h.runtime.apply(config(checks, read=0.06))  # a reload while the request is in flight
        if leaves_early and node == interrupted:
            gone.set()

    h.on_send = sent
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    got = await h.request(body, gone=gone, leave_after_first_byte=leaves_late)
    await h.settle()

    # The attempts each node saw.
    backup_called = fault.fails_over and not (leaves_early and fault.slow)
    assert (h.calls("primary"), h.calls("backup")) == (1, int(backup_called))

    # The client's answer.
    if leaves_early:
        assert got.status is None and h.last_event()["status"] == 499
    elif leaves_late:
        assert got.status == 200 and not got.complete and h.last_event()["status"] == 499
    elif not fault.fails_over and fault_name == "cut mid-body":  # a stream broken after bytes reached the client
        assert got.status == 200 and got.complete
        assert got.body.startswith(event("Hello from primary")) and b"partial" not in got.body
        assert got.body.endswith(b"\n\n") and b'"stream_interrupted"' in got.body
    elif not fault.fails_over:
        assert got.status == fault.script.status and got.headers["x-llm-sidecar-node"] == "primary"
    else:
        assert got.status == 200 and got.complete and got.headers["x-llm-sidecar-node"] == "backup"
        assert got.headers["x-llm-sidecar-attempts"] == "2" and b"Hello from backup" in got.body
        assert got.headers["x-request-id"] == h.last_event()["id"]
        assert (b"[DONE]" in got.body) == stream

    # Health: a failure counts only when it happened, a client that left is no verdict on anyone.
    primary_neutral = (leaves_early and interrupted == "primary") or (leaves_late and fault_name == "cut mid-body")
    primary_failed = not primary_neutral and (fault.fails_over or fault_name == "cut mid-body")
    if primary_failed and fault_name == "http 429":
        # The provider said when to come back: the model is out that long (providers limit per model),
        # the node itself is not, and that is the whole verdict.
        earlier = 1 if setup == "trial request" else 0  # the outage that set up the trial
        models = h.node("primary").models
        assert not models.available("gpt-4o", now + 25) and models.available("gpt-4o-mini", now)
        assert primary.blocked_until == 0 and primary.counters[Source.PASSIVE].http_failures == earlier
        assert primary.state == ("ejected" if setup == "trial request" else "healthy")
    elif primary_failed:
        assert primary.state == "ejected" and primary.ejected_until > now
        assert primary.counters[Source.PASSIVE].successes == 0
    elif primary_neutral:
        assert primary.state == ("ejected" if setup == "trial request" else "healthy")
        if setup == "trial request":
            assert primary.trial_ready(h.runtime.clock())  # the lease came back: the next request may try
        else:
            assert primary.counters[Source.PASSIVE].as_dict() == {
                "successes": 0, "http_failures": 0, "tcp_failures": 0, "timeouts": 0,
            }  # fmt: skip
    else:  # the primary answered (a pass-through status): a success, which ends a trial
        assert primary.state == "healthy" and primary.counters[Source.PASSIVE].successes == 1
    if backup_called and client == "stays":
        assert backup.state == "healthy" and backup.counters[Source.PASSIVE].successes == 1
    else:
        assert backup.state == "healthy" and backup.counters[Source.PASSIVE].successes == 0
        assert backup.counters[Source.PASSIVE].http_failures == backup.counters[Source.PASSIVE].timeouts == 0

    # Nothing is held, and a reload left the request's generation alone until it ended.
    h.assert_nothing_held()
    assert len(h.transports) == (2 if reload else 1)


def test_the_matrix_covers_what_it_claims() -> None:
    assert len(CASES) == 13 * (3 + 2) * 2 * 3
    assert {f.name for f in faults(True)} == {f.name for f in faults(False)}


async def test_a_non_json_upload_reaches_a_node_with_a_models_map_byte_for_byte() -> None:
    seen: dict[str, bytes] = {}

    def handler(node: str, request: Request) -> Script:
        seen[node] = request.body
        return Script(500) if node == "primary" else Script(body=[b'{"text": "hi"}'])

    h = Harness(handler, config())
    upload = b'--x\r\ncontent-disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--x--\r\n'
    headers = [(b"content-type", b"multipart/form-data; boundary=x")]
    got = await h.request(upload, path="/v1/audio/transcriptions", headers=headers)
    assert got.status == 200 and seen == {"primary": upload, "backup": upload}
    h.assert_nothing_held()


async def test_a_json_body_is_rewritten_for_the_node_with_a_models_map() -> None:
    seen: dict[str, bytes] = {}

    def handler(node: str, request: Request) -> Script:
        seen[node] = request.body
        return Script(500) if node == "primary" else answer(node, False)

    h = Harness(handler, config())
    got = await h.request({"model": "gpt-4o", "messages": []})
    assert got.status == 200
    assert json.loads(seen["primary"])["model"] == "gpt-4o" and json.loads(seen["backup"])["model"] == "backup-model"


async def test_the_sidecars_own_fd_exhaustion_is_a_503_and_no_nodes_fault() -> None:
    def handler(node: str, request: Request) -> Script:
        return Script(error=UpstreamError(None, "sidecar out of resources (Too many open files)", local=True))

    h = Harness(handler, config())
    got = await h.request({"model": "gpt-4o"})
    assert got.status == 503 and got.json()["error"]["code"] == "sidecar_overloaded"
    assert h.calls("primary") == 1 and h.calls("backup") == 0  # another node would fare no better
    assert h.node("primary").health.state == "healthy"
    assert h.node("primary").health.counters[Source.PASSIVE].tcp_failures == 0
    h.assert_nothing_held()


async def test_stop_interrupts_requests_with_a_clear_error() -> None:
    def handler(node: str, request: Request) -> Script:
        return Script(200, SSE, [event("one"), 0.04, event("two"), b"data: [DONE]\n\n"])

    h = Harness(handler, config(read=1))
    non_stream_handler_started = asyncio.Event()
    h.on_send = lambda node: non_stream_handler_started.set()
    stream = asyncio.ensure_future(h.request({"model": "m", "stream": True}))
    await non_stream_handler_started.wait()
    await asyncio.sleep(0.01)
    assert await h.app.stop_requests() == 1
    got = await stream
    assert got.complete and got.body.startswith(event("one"))
    assert b'"sidecar_stopping"' in got.body and b"two" not in got.body
    h.assert_nothing_held()
    assert h.node("primary").health.state == "healthy"  # stopping is no verdict on the node


@pytest.mark.parametrize(
    ("ending", "broken"),
    [(b'data: {"partial', True), (b"data: [DONE]\n", False), (b"data: [DONE]\n\n", False), (b"", True)],
    ids=["inside an event", "complete line without the blank line", "after [DONE]", "before a finish or [DONE]"],
)
async def test_a_stream_that_ends_inside_an_event_is_a_break_not_an_answer(ending: bytes, broken: bool) -> None:
    def handler(node: str, request: Request) -> Script:
        return Script(200, SSE, [event("hi"), 0.001, *([ending] if ending else [])])

    h = Harness(handler, config())
    got = await h.request({"model": "m", "stream": True})
    assert got.complete and got.body.startswith(event("hi"))
    assert (b'"stream_interrupted"' in got.body) == broken
    assert (b"partial" in got.body) is False
    assert h.node("primary").health.counters[Source.PASSIVE].tcp_failures == int(broken)
    h.assert_nothing_held()


async def test_a_node_that_sends_only_keepalive_comments_fails_over_after_the_first_token_timeout() -> None:
    comments = [b": keep-alive\n\n", 0.02] * 20  # each gap is shorter than timeout.read (0.05 s)

    def handler(node: str, request: Request) -> Script:
        return Script(200, SSE, comments) if node == "primary" else answer(node, True)

    h = Harness(handler, config())
    got = await h.request({"model": "m", "stream": True})
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup" and b"[DONE]" in got.body
    assert [(a["node"], a["reason"], a["kind"]) for a in h.last_event()["failed"]] == [
        ("primary", "no first token in 0.05s", "timeout")
    ]
    assert h.node("primary").health.counters[Source.PASSIVE].timeouts == 1
    h.assert_nothing_held()


async def test_an_abandoned_attempt_is_not_counted_in_the_nodes_figures() -> None:
    def handler(node: str, request: Request) -> Script:
        return Script(delay=0.03, body=[b"{}"])

    h = Harness(handler, config(read=1))
    gone = asyncio.Event()
    h.on_send = lambda node: gone.set()
    await h.request({"model": "m"}, gone=gone)
    stats = h.node("primary").stats
    assert stats.requests == 0 and stats.errors == 0 and not stats.window
