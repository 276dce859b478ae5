"""Conformance suite: every way a provider fails, against the real `llm-sidecar run`, one case per fault.

Each case starts its own sidecar (no node's health may leak from one case into the next) in front of two or
three fake providers on loopback. The request's model picks the primary's fault (`fault-<name>-t1`, see
FAULT_MODELS in sidecar/fakes/openai.py), and every successful answer to such a model is CANONICAL. Each
case checks what the issue asks of every fault:

- the client gets the complete CANONICAL text, in one answer (a content-policy refusal: the provider's own
  error; a continuation no node will take: an SSE error event naming the original break);
- each node was asked as often as the retry policy says (sidecar/proxy/retry.py), and the waits between attempts
  are the ones it says: read from the JSON access log (`wait_ms`) and measured on the fakes;
- the call ends within BOUND, a liveness bound far above the expected time (no speed is asserted);
- the sidecar answers a healthy request afterwards.

Each case writes one line of the scorecard printed at the end of the run (`scorecard` in conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from sidecar.fakes.core import CANONICAL, CANONICAL_PIECES, Behaviour

from .conftest import Card, Fake, Sidecar

CHAT = "/v1/chat/completions"
BOUND = 10.0  # seconds one call may take: the slowest case needs about 2 s (a stall costs timeout.read)
FIRST_TOKEN = 1.5  # [upstream.timeout] first_token: a stream's silent node is abandoned after this
READ = 2.0  # [upstream.timeout] read: a non-stream answer's silence, and a stall mid-stream, end after this
BACKOFF_MS = (50, 100)  # backoff 0.1 s, jittered by 0.5-1.0: the wait before a same-node retry after a 5xx
RETRY_AFTER_MS = 1000  # the fake's Retry-After on its 429s
SLACK = 0.05  # a gap measured on the fakes may look this much shorter: polling resolution, scheduling
POLL = 0.002  # seconds between reads of the fakes' request counters
CUT_AFTER = Behaviour().cut_after  # words a stream fault delivers before it breaks
DELIVERED = "".join(CANONICAL_PIECES[:CUT_AFTER])
# The fake answers CANONICAL only to fault models. "slow-first-token" on a fake with no first-token delay is
# a clean one: it answers at once and continues partial answers. A backup mapped to it therefore answers,
# or finishes, with exactly the text the client asked the primary for.
BACKUP_MODEL = "fault-slow-first-token-on-backup"
WORDS = " ".join(f"word{i}" for i in range(Behaviour().chunks))  # the fake's answer to a plain model
POLICY = {
    "message": "Your request was rejected as a result of our safety system.",
    "type": "invalid_request_error",
    "param": None,
    "code": "content_policy_violation",
}

Fakes = Callable[..., Awaitable[Fake]]
Sidecars = Callable[..., Awaitable[Sidecar]]
Scorecard = Callable[[str], Card]


# ---------------------------------------------------------------------------- the bench: fakes and one sidecar


@dataclass(frozen=True)
class Spec:
    """One node: its fake's Behaviour fields, and its [[upstream.nodes]] fields beyond name, url and priority."""

    name: str
    priority: int
    fake: dict[str, Any] = field(default_factory=dict)
    node: dict[str, Any] = field(default_factory=dict)


def primary(**node: Any) -> Spec:
    # No models map: the primary sees the fault model. A slow first token comes after 20 s, long after
    # first_token gives up on it; continuation "prefill" lets a broken stream go on on the node that broke it.
    return Spec("primary", 0, {"first_token_delay": 20}, {"continuation": "prefill", **node})


def backup(name: str = "backup", priority: int = -1, fake: dict[str, Any] | None = None, **node: Any) -> Spec:
    node = {"models": {"*": BACKUP_MODEL}, "continuation": "prefill", **node}
    return Spec(name, priority, {"first_token_delay": 0, **(fake or {})}, node)


def config(specs: tuple[Spec, ...], fakes: dict[str, Fake], checks: dict[str, Any] | None) -> dict[str, Any]:
    nodes = [
        {
            "name": spec.name,
            "url": fakes[spec.name].url,
            "priority": spec.priority,
            "weight": 1,
            "api_key": "${PRIMARY_KEY}" if spec.priority == 0 else "${BACKUP_KEY}",
            **spec.node,
        }
        for spec in specs
    ]
    # `retries` is left unset on purpose: the retry policy alone bounds the attempts, as in a default config.
    return {
        "upstream": {
            "retry_timeout": 10,
            "timeout": {"connect": 1, "send": 5, "read": READ, "first_token": FIRST_TOKEN},
            "retry": {"backoff": 0.1, "max_backoff": 0.2},
            "checks": checks or {"passive": {"base_ejection_time": 1}},
            "nodes": nodes,
        }
    }


class Arrivals:
    """When each fake received each chat request. The fake keeps counts, not times, and runs in this loop,
    so a task reading its counters every POLL seconds sees each request within about that long."""

    def __init__(self, fakes: dict[str, Fake]) -> None:
        self.fakes = fakes
        self.counted = dict.fromkeys(fakes, 0)
        self.times: list[tuple[float, str]] = []
        self.task = asyncio.create_task(self.watch())

    async def watch(self) -> None:
        while True:
            now = time.monotonic()
            for name, fake in self.fakes.items():
                while self.counted[name] < fake.stats.chat:
                    self.counted[name] += 1
                    self.times.append((now, name))
            await asyncio.sleep(POLL)

    def gaps(self) -> list[float]:
        """Seconds between one request to any fake and the next."""
        times = [t for t, _ in self.times]
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@dataclass
class Bench:
    car: Sidecar
    fakes: dict[str, Fake]
    arrivals: Arrivals

    def asked(self, name: str, model: str) -> int:
        """Chat requests `name`'s fake got for `model` (the fault model, or the model it is mapped to)."""
        return int(self.fakes[name].stats.fault_requests.get(model, 0))


@pytest.fixture
async def bench(fakes: Fakes, sidecar: Sidecars) -> AsyncIterator[Callable[..., Awaitable[Bench]]]:
    """`await bench(primary(), backup(), checks=...)`: the fakes, and the real sidecar in front of them."""
    watchers: list[Arrivals] = []

    async def start(*specs: Spec, checks: dict[str, Any] | None = None) -> Bench:
        started = {spec.name: await fakes(spec.name, **spec.fake) for spec in specs}
        car = await sidecar(config(specs, started, checks), "--log-format", "json")
        arrivals = Arrivals(started)
        watchers.append(arrivals)
        return Bench(car, started, arrivals)

    yield start
    for arrivals in watchers:
        await arrivals.stop()


# ---------------------------------------------------------------------------- asking, and reading the answer


@dataclass
class Answer:
    """What the client got: a JSON body, or a stream's data lines as they came."""

    status: int
    headers: httpx.Headers
    seconds: float
    body: Any = None
    lines: list[str] = field(default_factory=list)

    @property
    def rid(self) -> str:
        return self.headers["x-request-id"]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line[6:]) for line in self.lines if line != "data: [DONE]"]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [event["error"] for event in self.events if "error" in event]

    @property
    def text(self) -> str:
        """The answer as a client assembles it: every delta's content in order, or the message's."""
        if not self.lines:
            return str(self.body["choices"][0]["message"]["content"])
        return "".join(e["choices"][0]["delta"].get("content") or "" for e in self.events if e.get("choices"))


async def ask(client: httpx.AsyncClient, car: Sidecar, model: str, stream: bool, **extra: Any) -> Answer:
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}
    started = time.monotonic()
    try:
        async with asyncio.timeout(BOUND), client.stream("POST", car.url + CHAT, json=payload) as r:
            if r.headers.get("content-type", "").startswith("text/event-stream"):
                lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
                return Answer(r.status_code, r.headers, time.monotonic() - started, lines=lines)
            body = json.loads(await r.aread())
    except TimeoutError:
        pytest.fail(f"{model}: no complete answer within {BOUND:g} s")
    return Answer(r.status_code, r.headers, time.monotonic() - started, body=body)


def assert_complete(answer: Answer, text: str = CANONICAL) -> None:
    """A 200 whose assembled text is `text`; streamed, as one answer: one id, one finish, [DONE] once, last."""
    assert answer.status == 200, answer.body
    assert answer.text == text
    if answer.lines:
        assert not answer.errors, answer.errors
        assert answer.lines[-1] == "data: [DONE]" and answer.lines.count("data: [DONE]") == 1
        assert len({event["id"] for event in answer.events}) == 1, "the continuation must read as the same answer"
        finishes = [c["finish_reason"] for e in answer.events for c in e.get("choices", []) if c.get("finish_reason")]
        assert finishes == ["stop"]


async def access_records(car: Sidecar, *rids: str) -> list[dict[str, Any]]:
    """The requests' JSON access-log records, in the order asked (the log is flushed every 100 ms: polled)."""
    deadline = time.monotonic() + 3
    while True:
        found: dict[str, dict[str, Any]] = {}
        for line in car.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == "request" and record.get("id") in rids:
                    found[record["id"]] = record
        if len(found) == len(rids):
            return [found[rid] for rid in rids]
        assert time.monotonic() < deadline, f"no access-log record for {set(rids) - set(found)}"
        await asyncio.sleep(0.05)


async def answers_a_healthy_request(client: httpx.AsyncClient, car: Sidecar) -> str:
    """A plain request after the fault gets a 200 answer (from whichever node serves now); that node.
    The sidecar is still the process we started, and nothing it did along the way ended in a traceback."""
    answer = await ask(client, car, "gpt-4o", stream=False)
    assert answer.status == 200, answer.body
    node = answer.headers["x-llm-sidecar-node"]
    assert answer.text in (f"Hello from {node}: {WORDS}", CANONICAL)
    assert car.proc.poll() is None
    log = car.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log
    return node


def describe(asked: dict[str, int], record: dict[str, Any], answer: Answer, outcome: str) -> str:
    """The scorecard's detail: who was asked how often, the waits after each node's failures, the outcome."""
    steps = []
    for name, count in asked.items():
        waits = [f"{a['wait_ms']} ms" for a in record["failed"] if a["node"] == name and "wait_ms" in a]
        if count:
            steps.append(f"{name}×{count}" + (f" (waited {', '.join(waits)})" if waits else ""))
    moves = "".join(f" [{c['from']}→{c['to']} after {c['reason']}]" for c in record["continued"])
    return f"{' → '.join(steps)}{moves} → {answer.status} {outcome} from {record['node']} in {answer.seconds:.2f} s"


def trail(failed: list[dict[str, Any]]) -> str:
    """The x-llm-sidecar-trail header the access log's failed attempts make."""
    return "; ".join(
        f"{a['node']}: {a['reason']}" + (f", waited {a['wait_ms']} ms" if "wait_ms" in a else "") for a in failed
    )


def no_failures(node: dict[str, Any]) -> bool:
    counters = node["passive"]["counters"]
    return node["state"] == "healthy" and counters["http_failures"] == counters["tcp_failures"] == 0


# ---------------------------------------------------------------------------- 1. faults before the first byte


@dataclass(frozen=True)
class Before:
    """A fault before any byte reached the client, and what the retry policy makes of it."""

    label: str
    fault: str  # its FAULT_MODELS name
    primary: int  # requests the primary gets
    backup: int  # requests the backup gets (0: the primary serves in the end)
    waits: tuple[int, int] | None  # the one wait (ms) after the primary's first failure, least and most; None: none
    silent: bool = False  # a timeout: the next node is asked after first_token (stream) or read (JSON)
    modes: tuple[bool, ...] = (True, False)  # stream, JSON


BEFORE = [
    # Retry-After 1 <= max_wait: waited out on the same node; a second 429 fails over.
    Before("429 Retry-After once", "429-once", 2, 0, (RETRY_AFTER_MS, RETRY_AFTER_MS)),
    Before("429 persistent", "429", 2, 1, (RETRY_AFTER_MS, RETRY_AFTER_MS)),
    # Past max_wait, or with no Retry-After at all, a 429 is not waited out: failover at once.
    Before("429 Retry-After past max_wait", "429-long", 1, 1, None),
    Before("429 without Retry-After", "429-noheader", 1, 1, None),
    # A 5xx or a reset before the headers: one same-node retry after a jittered backoff, then failover.
    Before("500 once then healthy", "500-once", 2, 0, BACKOFF_MS),
    Before("503 persistent", "503", 2, 1, BACKOFF_MS),
    Before("reset before headers once", "reset-once", 2, 0, BACKOFF_MS),
    Before("reset before headers", "reset", 2, 1, BACKOFF_MS),
    # Silence: failover at once, and the silent node is not asked again in this request.
    Before("no response", "hang", 1, 1, None, silent=True),
    Before("first token after a long delay", "slow-first-token", 1, 1, None, silent=True),
    # A JSON answer is read whole before any of it is sent, so its cut or stall is still a fault before the first
    # byte: a cut is retried like a reset, a stall after the headers is silence.
    Before("JSON body cut mid-way", "cut", 2, 1, BACKOFF_MS, modes=(False,)),
    Before("JSON answer stalls after its headers", "stall", 1, 1, None, silent=True, modes=(False,)),
    # Too long for this node's window: the next node, no wait, no health penalty.
    Before("400 context_length_exceeded", "context", 1, 1, None),
]


@pytest.mark.parametrize(
    ("case", "stream"),
    [pytest.param(c, s, id=f"{c.fault}-{'stream' if s else 'json'}") for c in BEFORE for s in c.modes],
)
async def test_a_fault_before_the_first_byte_is_retried_as_the_policy_says_and_the_answer_is_complete(
    bench: Callable[..., Awaitable[Bench]], client: httpx.AsyncClient, scorecard: Scorecard, case: Before, stream: bool
) -> None:
    card = scorecard(f"{case.label} [{'stream' if stream else 'json'}]")
    b = await bench(primary(), backup())
    model = f"fault-{case.fault}-t1"
    answer = await ask(client, b.car, model, stream)
    [record] = await access_records(b.car, answer.rid)
    asked = {"primary": b.asked("primary", model), "backup": b.asked("backup", BACKUP_MODEL)}
    card.detail = describe(asked, record, answer, "complete" if answer.text == CANONICAL else "INCOMPLETE")

    assert_complete(answer)
    assert asked == {"primary": case.primary, "backup": case.backup}
    served = "backup" if case.backup else "primary"
    assert answer.headers["x-llm-sidecar-node"] == record["node"] == served
    assert answer.headers["x-llm-sidecar-attempts"] == str(case.primary + case.backup) == str(record["attempts"])
    assert [a["node"] for a in record["failed"]] == ["primary"] * (case.primary + case.backup - 1)
    assert answer.headers["x-llm-sidecar-trail"] == trail(record["failed"])
    waits = [a["wait_ms"] for a in record["failed"] if "wait_ms" in a]
    gaps = b.arrivals.gaps()
    if case.waits is None:
        assert waits == []
        expected = (FIRST_TOKEN if stream else READ) if case.silent else 0.0
    else:
        least, most = case.waits
        assert "wait_ms" in record["failed"][0] and len(waits) == 1 and least <= waits[0] <= most, record["failed"]
        expected = waits[0] / 1000
    # The first gap is the policy's wait (or the timeout); every later step goes on without waiting.
    assert expected - SLACK <= gaps[0] < expected + 1.0, gaps
    assert all(gap < 1.0 for gap in gaps[1:]), gaps
    if case.fault == "context":
        assert no_failures(await b.car.node("primary")), "a request too long for a node is no fault of the node"
    card.detail += f"; then 200 from {await answers_a_healthy_request(client, b.car)}"


async def test_a_content_policy_refusal_is_passed_through_unchanged_and_no_other_node_is_asked(
    bench: Callable[..., Awaitable[Bench]], client: httpx.AsyncClient, scorecard: Scorecard
) -> None:
    card = scorecard("400 content-policy")
    b = await bench(primary(), backup())
    outcomes = []
    for tag, stream in (("t1", True), ("t2", False)):
        model = f"fault-policy-{tag}"
        answer = await ask(client, b.car, model, stream)
        outcomes.append(f"{'stream' if stream else 'json'} {answer.status} in {answer.seconds:.2f} s")
        card.detail = f"primary×{b.asked('primary', model)}, backup×{b.fakes['backup'].stats.chat}: " + ", ".join(
            outcomes
        )
        assert answer.status == 400 and answer.body == {"error": POLICY}, "the provider's own refusal, unchanged"
        assert answer.headers["x-llm-sidecar-node"] == "primary" and answer.headers["x-llm-sidecar-attempts"] == "1"
        assert b.asked("primary", model) == 1
        assert b.fakes["backup"].stats.chat == 0, "another node must not be asked what this one refused"
    card.detail += f"; then 200 from {await answers_a_healthy_request(client, b.car)}"


# ---------------------------------------------------------------------------- 2. breaks after text reached the client


@dataclass(frozen=True)
class Break:
    """A stream that breaks after CUT_AFTER words reached the client, and the node that finishes it."""

    label: str
    fault: str
    finisher: str  # the node that continues the answer
    gap: float = 0.0  # least seconds from the broken request to the continuation
    primary_continuation: str = "prefill"


BREAKS = [
    Break(f"stream cut after {CUT_AFTER} of {len(CANONICAL_PIECES)} tokens", "cut", "primary"),
    Break("stream cut, primary cannot continue", "cut", "backup", primary_continuation="none"),
    # A stall is a timeout: the silent node is not asked to continue, the next one is, after `read`.
    Break("stream stall", "stall", "backup", gap=READ),
    Break("malformed SSE event mid-stream", "malformed", "primary"),
    Break("error event mid-stream", "error-event", "primary"),
    Break("stream ends without [DONE]", "no-done", "primary"),
]


@pytest.mark.parametrize("case", BREAKS, ids=[f"{case.fault}-{case.finisher}" for case in BREAKS])
async def test_a_stream_that_breaks_after_text_reached_the_client_is_continued_into_one_complete_answer(
    bench: Callable[..., Awaitable[Bench]], client: httpx.AsyncClient, scorecard: Scorecard, case: Break
) -> None:
    card = scorecard(case.label)
    b = await bench(primary(continuation=case.primary_continuation), backup())
    model = f"fault-{case.fault}-t1"
    answer = await ask(client, b.car, model, stream=True)
    [record] = await access_records(b.car, answer.rid)
    asked = {"primary": b.asked("primary", model), "backup": b.asked("backup", BACKUP_MODEL)}
    card.detail = describe(asked, record, answer, "complete" if answer.text == CANONICAL else "INCOMPLETE")

    assert_complete(answer)
    assert asked == ({"primary": 2, "backup": 0} if case.finisher == "primary" else {"primary": 1, "backup": 1})
    finisher = b.fakes[case.finisher].stats
    assert finisher.continuations == 1 and finisher.last_prefill == DELIVERED, "continued from what was delivered"
    assert answer.headers["x-llm-sidecar-node"] == "primary" and record["node"] == case.finisher
    assert [(c["from"], c["to"]) for c in record["continued"]] == [("primary", case.finisher)]
    assert record["status"] == 200 and record["error"] is None and record["failed"] == []
    [gap] = b.arrivals.gaps()
    assert case.gap - SLACK <= gap < case.gap + 1.0
    card.detail += f"; then 200 from {await answers_a_healthy_request(client, b.car)}"


async def test_the_openai_sdk_reads_one_complete_answer_across_a_cut_stream_finished_by_a_prefill_backup(
    bench: Callable[..., Awaitable[Bench]], client: httpx.AsyncClient, scorecard: Scorecard
) -> None:
    card = scorecard("stream cut, prefill backup [openai SDK]")
    b = await bench(primary(continuation="none"), backup())
    model = "fault-cut-t1"
    sdk = openai.AsyncOpenAI(base_url=b.car.url + "/v1", api_key="x", max_retries=0)
    parts: list[str] = []
    ids: set[str] = set()
    started = time.monotonic()
    try:
        async with asyncio.timeout(BOUND):
            stream = await sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            async for chunk in stream:
                ids.add(chunk.id)
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
    except TimeoutError:
        pytest.fail(f"the SDK got no complete answer within {BOUND:g} s")
    finally:
        await sdk.close()
    seconds = time.monotonic() - started
    text = "".join(parts)
    [record] = await access_records(b.car, stream.response.headers["x-request-id"])
    card.detail = (
        f"primary×{b.asked('primary', model)} → backup×{b.asked('backup', BACKUP_MODEL)}: the SDK assembled "
        f"{'CANONICAL' if text == CANONICAL else repr(text[:40])} from {len(parts)} chunks in {seconds:.2f} s"
    )
    assert text == CANONICAL
    assert len(ids) == 1, "one answer, one id"
    assert b.asked("primary", model) == 1 and b.asked("backup", BACKUP_MODEL) == 1
    assert b.fakes["backup"].stats.continuations == 1 and b.fakes["backup"].stats.last_prefill == DELIVERED
    assert [(c["from"], c["to"]) for c in record["continued"]] == [("primary", "backup")]
    card.detail += f"; then 200 from {await answers_a_healthy_request(client, b.car)}"


async def test_a_continuation_refused_by_one_backup_goes_on_to_the_next_and_the_answer_is_complete(
    bench: Callable[..., Awaitable[Bench]], client: httpx.AsyncClient, scorecard: Scorecard
) -> None:
    card = scorecard("continuation target rejects prefill")
    # The refuser says it continues ("prefill" in the config), but its provider refuses every continuation.
    b = await bench(
        primary(continuation="none"), backup("refuser", -1, fake={"continuation": "none"}), backup("taker", -2)
    )
    model = "fault-cut-t1"
    answer = await ask(client, b.car, model, stream=True)
    [record] = await access_records(b.car, answer.rid)
    asked = {name: b.asked(name, BACKUP_MODEL if name != "primary" else model) for name in b.fakes}
    card.detail = describe(asked, record, answer, "complete" if answer.text == CANONICAL else "INCOMPLETE")

    assert_complete(answer)
    assert asked == {"primary": 1, "refuser": 1, "taker": 1}
    assert b.fakes["refuser"].stats.continuations == 0 and b.fakes["taker"].stats.continuations == 1
    assert record["failed"] == [{"node": "refuser", "reason": "continuation: continuation refused (400)"}]
    assert [(c["from"], c["to"]) for c in record["continued"]] == [("primary", "taker")]
    assert no_failures(await b.car.node("refuser")), "refusing a continuation is no fault of the node"
    card.detail += f"; then 200 from {await answers_a_healthy_request(client, b.car)}"


async def test_a_continuation_refused_by_the_only_backup_ends_the_stream_with_an_error_naming_the_original_break(
    bench: Callable[..., Awaitable[Bench]], client: httpx.AsyncClient, scorecard: Scorecard
) -> None:
    card = scorecard("only continuation target rejects prefill")
    # This refuser is the fake's `reject-prefill` fault: normal answers, a 400 to every continuation.
    b = await bench(primary(continuation="none"), backup("refuser", models={"*": "fault-reject-prefill-t1"}))
    model = "fault-cut-t1"
    answer = await ask(client, b.car, model, stream=True)
    [record] = await access_records(b.car, answer.rid)
    errors = answer.errors
    card.detail = (
        f"primary×{b.asked('primary', model)} → refuser×{b.asked('refuser', 'fault-reject-prefill-t1')}: "
        f"{len(answer.text.split())} words, then {errors[0]['message'] if errors else 'no error event'!r}"
    )
    assert answer.status == 200 and answer.text == DELIVERED, "what was delivered stays delivered"
    assert len(errors) == 1 and answer.lines[-1].startswith('data: {"error"'), "the stream ends with the error"
    assert "data: [DONE]" not in answer.lines
    reason = record["error"].removeprefix("stream interrupted: ")
    assert record["error"] == f"stream interrupted: {reason}" and reason, record["error"]
    assert errors[0]["code"] == "stream_interrupted"
    assert errors[0]["message"] == f"upstream primary failed mid-stream: {reason}", "the original break"
    assert "400" not in errors[0]["message"] and "refused" not in errors[0]["message"]
    assert record["failed"] == [{"node": "refuser", "reason": "continuation: continuation refused (400)"}]
    assert b.asked("primary", model) == 1 and b.asked("refuser", "fault-reject-prefill-t1") == 1
    assert no_failures(await b.car.node("refuser")), "refusing a continuation is no fault of the node"
    card.detail += f"; then 200 from {await answers_a_healthy_request(client, b.car)}"


# ---------------------------------------------------------------------------- 3. an outage, and failover accounting

OUTAGE = 2.0  # seconds the primary fails every request and probe
SPACING = 0.2  # seconds between the 20 requests' starts
PROBE_INTERVAL = 0.5
EJECTION = 0.6  # the outage case's base_ejection_time


async def test_a_primary_down_for_a_while_is_bridged_by_the_backup_and_serves_again_soon_after_it_recovers(
    bench: Callable[..., Awaitable[Bench]], client: httpx.AsyncClient, scorecard: Scorecard
) -> None:
    card = scorecard(f"primary down {OUTAGE:g} s, then recovers (20 requests)")
    since = time.monotonic()  # before the fakes start: every probe the primary gets comes after it
    # Ejections of 0.6 s, then 1.2 s: the primary's trial after its first ejection (at ~1 s) fails and doubles
    # it, so the next trial comes after the recovery. With 1 s the doubled ejection ends at ~3.4 s, one request
    # slot before the last; a trial just before the recovery would then eject it past the end of the run.
    checks = {"active": {"interval": PROBE_INTERVAL, "timeout": 1}, "passive": {"base_ejection_time": EJECTION}}
    b = await bench(primary(), backup(models={"*": "gpt-4o-mini"}), checks=checks)
    behaviour = b.fakes["primary"].provider.behaviour
    behaviour.fail_rate = 1.0  # every chat request and probe gets a 500
    start = time.monotonic()
    recovered: float | None = None
    served: list[tuple[float, str]] = []  # when each request was sent (since start), and who served it
    answers: list[Answer] = []
    for i in range(20):
        await asyncio.sleep(max(0.0, start + i * SPACING - time.monotonic()))
        if recovered is None and time.monotonic() - start >= OUTAGE:
            behaviour.fail_rate = 0.0
            recovered = time.monotonic() - start
        sent = time.monotonic() - start
        answer = await ask(client, b.car, "gpt-4o", stream=i % 2 == 1)
        answers.append(answer)
        node = answer.headers.get("x-llm-sidecar-node", "-")
        served.append((sent, node))
        card.detail = " ".join(n[0] for _, n in served)  # p/b per request, so far
        assert_complete(answer, f"Hello from {node}: {WORDS}")
    probes = b.fakes["primary"].stats.models
    elapsed = time.monotonic() - since
    records = await access_records(b.car, *(a.rid for a in answers))
    primary_failures = sum(a["node"] == "primary" for r in records for a in r["failed"])
    assert recovered is not None
    back = next((sent for sent, node in served if sent >= recovered and node == "primary"), None)
    expected_probes = elapsed / PROBE_INTERVAL + 1
    card.detail = (
        f"served {' '.join(n[0] for _, n in served)} (p=primary, b=backup), all 200 complete; back on the primary "
        f"{'never' if back is None else f'{back - recovered:.1f} s after recovery'}; primary chat failures "
        f"{primary_failures}, probes {probes} in {elapsed:.1f} s (≈{expected_probes:.0f} expected)"
    )
    assert all(node == "backup" for sent, node in served if sent < recovered), "the outage is bridged"
    assert back is not None and served[-1][1] == "primary", "back on the primary after it recovered"
    # Back within one doubled ejection and a probe interval of the recovery (plus a slot), and it stays back.
    assert back - recovered <= 2 * EJECTION + PROBE_INTERVAL + SPACING
    assert all(node == "primary" for sent, node in served if sent >= back)
    # Disciplined: the down primary is not hammered (one same-node retry, then trials only), and probes keep
    # to their interval whatever they answer.
    assert primary_failures <= 6, records
    assert 1 <= probes <= 2 * expected_probes
    card.detail += f"; then 200 from {await answers_a_healthy_request(client, b.car)}"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_a_failover_answer_names_the_serving_nodes_model_and_carries_its_usage(
    bench: Callable[..., Awaitable[Bench]], client: httpx.AsyncClient, scorecard: Scorecard, stream: bool
) -> None:
    card = scorecard(f"failover accounting [{'stream' if stream else 'json'}]")
    b = await bench(primary(), backup(models={"*": "gpt-4o-mini"}))
    model = "fault-503-t1"
    extra = {"stream_options": {"include_usage": True}} if stream else {}
    answer = await ask(client, b.car, model, stream, **extra)
    [record] = await access_records(b.car, answer.rid)
    if stream:
        models = {event["model"] for event in answer.events}
        usages = [event["usage"] for event in answer.events if event.get("usage")]
    else:
        models = {answer.body["model"]}
        usages = [answer.body["usage"]] if answer.body.get("usage") else []
    card.detail = (
        f"primary×{b.asked('primary', model)} → backup×{b.fakes['backup'].stats.chat}: model {sorted(models)}, "
        f"usage {usages}, logged tokens {record['tokens_in']}/{record['tokens_out']}"
    )
    assert_complete(answer, f"Hello from backup: {WORDS}")
    assert models == {"gpt-4o-mini"}, "the serving node's model, not the one asked for"
    # The fake counts one completion token per word it streams.
    assert len(usages) == 1 and usages[0]["completion_tokens"] == Behaviour().chunks
    assert record["node"] == "backup"
    assert (record["tokens_in"], record["tokens_out"]) == (7, Behaviour().chunks)
    assert b.asked("primary", model) == 2 and b.fakes["backup"].stats.chat == 1
    card.detail += f"; then 200 from {await answers_a_healthy_request(client, b.car)}"


USAGE = {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}
SPLIT_AT = b'"completion_tokens"'  # where the split provider pauses, inside its usage event
SPLIT_PAUSE = 0.2  # long enough for the sidecar to have read the first part on its own


def one_write_provider(split: bool) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A provider whose whole streamed answer, usage included, leaves in one write (so it is read at once), or
    with a pause inside its usage event (so that event is read in two parts)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)  # the whole request read: closing with unread bytes would reset
        deltas = [({"role": "assistant", "content": ""}, None), ({"content": "hi"}, None), ({}, "stop")]
        events: list[dict[str, Any]] = [
            {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": d, "finish_reason": f}]} for d, f in deltas
        ]
        events.append({"id": "c1", "model": "m", "choices": [], "usage": USAGE})
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        data = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + body
        cut = data.index(SPLIT_AT) if split else len(data)
        writer.write(data[:cut])
        await writer.drain()
        if split:
            await asyncio.sleep(SPLIT_PAUSE)
            writer.write(data[cut:])
            await writer.drain()
        writer.close()

    return answer


@pytest.mark.parametrize("continuation", ["none", "prefill"])  # relay_events, or the event-by-event pump
@pytest.mark.parametrize("split", [False, True], ids=["one-read", "split"])
async def test_the_usage_of_a_streamed_answer_is_logged_and_counted_however_its_bytes_arrive(
    raw_server: Callable[..., Awaitable[str]],
    sidecar: Sidecars,
    client: httpx.AsyncClient,
    scorecard: Scorecard,
    split: bool,
    continuation: str,
) -> None:
    card = scorecard(f"usage {'split across reads' if split else 'in the first read'} [continuation {continuation}]")
    url = await raw_server(one_write_provider(split))
    # One node: whether any node can continue decides how the sidecar relays a chat stream (pump or relay_events).
    node = {"name": "primary", "url": url, "priority": 0, "api_key": "${PRIMARY_KEY}", "continuation": continuation}
    car = await sidecar({"upstream": {"checks": {"passive": {}}, "nodes": [node]}}, "--log-format", "json")
    answer = await ask(client, car, "m", stream=True, stream_options={"include_usage": True})
    [record] = await access_records(car, answer.rid)
    traffic = (await car.node("primary"))["traffic"]
    card.detail = (
        f"client got usage {[e['usage'] for e in answer.events if e.get('usage')]}; logged tokens "
        f"{record['tokens_in']}/{record['tokens_out']}, node traffic {traffic['tokens_in']}/{traffic['tokens_out']}"
    )
    assert_complete(answer, "hi")
    assert [e["usage"] for e in answer.events if e.get("usage")] == [USAGE]
    assert (record["tokens_in"], record["tokens_out"]) == (7, 1)
    assert (traffic["tokens_in"], traffic["tokens_out"]) == (7, 1)
