"""What the sidecar holds of answers at once is bounded (`upstream.max_held_bytes`), and one answer read whole
holds its bytes once, never its cap twice.

Before, each non-stream answer was read into pieces and joined (twice its size at the peak) and nothing bounded
their sum: six answers past a 64 MiB cap at once took a real sidecar to 779 MB. In-process cases check the
budget's accounting on every path; the real-process case measures the peak RSS (VmHWM) of `llm-sidecar run`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sidecar.config.load import parse
from sidecar.config.problems import ConfigError
from sidecar.nodes.health import Source
from sidecar.nodes.held import Share
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request

from .conftest import Upstream, chat
from .inproc import Harness

JSON = (("content-type", "application/json"),)
OK = b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'
KIB = 1024
CAP = 64 * KIB  # max_response_bytes in the in-process cases
BUDGET = 128 * KIB  # max_held_bytes: two answers at the cap


def cfg(**upstream: Any) -> Any:
    nodes = [
        {"name": "primary", "url": "http://primary.invalid", "priority": 0},
        {"name": "backup", "url": "http://backup.invalid", "priority": -1},
    ]
    data = {
        "upstream": {
            "timeout": {"connect": 0.05, "send": 1, "read": 1},
            "checks": {"passive": {}},
            "max_response_bytes": CAP,
            "max_held_bytes": BUDGET,
            "nodes": nodes,
            **upstream,
        }
    }
    return parse(data, "<test>", env={})


def json_body(size: int) -> bytes:
    return b'{"content": "' + b"x" * (size - 15) + b'"}'


def pieces(body: bytes, size: int = 16 * KIB) -> list[Any]:
    """The body in pieces with a pause between them, so answers read at once interleave."""
    steps: list[Any] = []
    for i in range(0, len(body), size):
        steps += [body[i : i + size], 0.001]
    return steps


@pytest.fixture
def peak(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The most the budget ever counted as held, recorded at every take."""
    seen = [0]
    take = Share.take

    def recording(self: Share, size: int) -> bool:
        taken = take(self, size)
        seen[0] = max(seen[0], self.budget.held)
        return taken

    monkeypatch.setattr(Share, "take", recording)
    yield seen


async def test_answers_read_at_once_never_hold_more_than_the_budget_and_all_arrive_whole(peak: list[int]) -> None:
    body = json_body(48 * KIB)  # under the cap
    h = Harness(lambda node, r: Script(200, JSON, pieces(body)), cfg())
    two = await asyncio.gather(*(h.request(chat()) for _ in range(2)))  # both fit: held whole, as before
    assert all(got.parts == [body] and got.headers["content-length"] == str(len(body)) for got in two)
    six = await asyncio.gather(*(h.request(chat()) for _ in range(6)))  # more than twice the budget
    for got in six:
        assert got.status == 200 and got.complete and got.body == body
        assert got.headers["x-llm-sidecar-node"] == "primary"  # no failover: the node did nothing wrong
    assert 0 < peak[0] <= BUDGET
    # Those that found the budget full were handed on as they came (with no length of the sidecar's own).
    assert any(len(got.parts) > 1 and "content-length" not in got.headers for got in six)
    h.assert_nothing_held()  # every share given back


async def test_answers_past_the_cap_at_once_fail_over_or_stream_and_hold_at_most_the_budget(peak: list[int]) -> None:
    big = json_body(80 * KIB)  # past the cap

    def handler(node: str, request: Request) -> Script:
        return Script(200, JSON, pieces(big)) if node == "primary" else Script(200, JSON, [OK])

    h = Harness(handler, cfg())
    answers = await asyncio.gather(*(h.request(chat()) for _ in range(6)))
    for got in answers:
        # Held until past the cap: the node's failure, the backup answers. Found the budget full first: streamed
        # as it arrives (the cap bounds what is held, and this is not held).
        assert (got.headers["x-llm-sidecar-node"], got.body) in {("backup", OK), ("primary", big)}
        assert got.status == 200 and got.complete
    assert 0 < peak[0] <= BUDGET
    h.assert_nothing_held()


async def test_a_client_that_leaves_while_its_answer_is_read_gives_its_share_back() -> None:
    h = Harness(lambda node, r: Script(200, JSON, [b"{" + b" " * (16 * KIB), 0.5, b"}"]), cfg())
    gone = asyncio.Event()
    h.on_send = lambda node: asyncio.get_running_loop().call_later(0.05, gone.set)
    got = await h.request(chat(), gone=gone)
    assert got.status is None
    h.assert_nothing_held()


async def test_with_the_budget_full_a_success_is_streamed_and_an_error_answer_refused_without_blame() -> None:
    refusal = b'{"error": {"message": "bad request", "type": "invalid_request_error"}}'

    def handler(node: str, request: Request) -> Script:
        return Script(400, JSON, [refusal]) if request.url.path == "/v1/embeddings" else Script(200, JSON, [OK])

    h = Harness(handler, cfg())
    full = h.runtime.upstream.held.share()
    assert full.take(BUDGET)
    try:
        got = await h.request(chat())
        assert got.status == 200 and got.body == OK and got.headers["x-llm-sidecar-node"] == "primary"
        refused = await h.request(chat(), path="/v1/embeddings")
        # An error answer is held whole so the node's key can be taken out of it: with no room, a clear 503.
        assert refused.status == 503 and refused.json()["error"]["code"] == "sidecar_overloaded"
        assert "max_held_bytes" in refused.json()["error"]["message"]
        health = h.node("primary").health  # no verdict on the node, no other node asked
        assert health.state == "healthy" and health.counters[Source.PASSIVE].http_failures == 0
        assert h.calls("backup") == 0
    finally:
        full.give_back()
    passed = await h.request(chat(), path="/v1/embeddings")
    assert passed.status == 400 and passed.body == refusal
    h.assert_nothing_held()


async def test_a_reload_keeps_one_budget_and_sets_its_new_limit() -> None:
    h = Harness(lambda node, r: Script(200, JSON, [OK]), cfg())
    budget = h.runtime.upstream.held
    h.runtime.apply(cfg(max_held_bytes=4 * BUDGET))
    assert h.runtime.upstream.held is budget and budget.limit == 4 * BUDGET


def test_the_budget_must_hold_one_whole_answer_and_follows_a_larger_cap_by_default() -> None:
    with pytest.raises(ConfigError, match=r"max_held_bytes.*must be >= max_response_bytes"):
        cfg(max_held_bytes=CAP - 1)
    nodes = [{"name": "a", "url": "http://a.invalid"}]
    assert parse({"upstream": {"nodes": nodes}}, "<t>", env={}).upstream.max_held_bytes == 128 << 20
    raised = parse({"upstream": {"nodes": nodes, "max_response_bytes": 512 << 20}}, "<t>", env={})
    assert raised.upstream.max_held_bytes == 512 << 20  # an old file that raised the cap still loads


# ---------------------------------------------------------------------------- a real sidecar's peak memory

MIB = 1 << 20


def vm_hwm(pid: int) -> int:
    """The process's peak resident set size, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def chunked_json(size: int) -> Upstream:
    """Answers every request with a JSON body of `size` bytes, chunked (no Content-Length: its size is only
    found out while reading it), in 64 KiB pieces."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            body = json_body(size)
            for i in range(0, size, 64 * KIB):
                piece = body[i : i + 64 * KIB]
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    return handle


@pytest.mark.parametrize(
    ("answers", "size", "cap", "budget", "bound"),
    [
        # One answer under the cap is held once and sent as it is: it was held twice (the pieces, then their
        # join) and copied a third time to put the response head before it.
        (1, 30 * MIB, 32 * MIB, 32 * MIB, 48 * MIB),
        # One answer past the cap holds the cap once, and not after it failed over (it held it twice).
        (1, 36 * MIB, 32 * MIB, 32 * MIB, 48 * MIB),
        # Six past the cap at once hold the budget at most (each held twice the cap: 6 x 32 MiB).
        (6, 20 * MIB, 16 * MIB, 32 * MIB, 64 * MIB),
    ],
    ids=["one answer", "one past the cap", "six past the cap at once"],
)
async def test_real_a_sidecars_peak_memory_stays_within_what_it_may_hold(
    raw_server: Callable[[Upstream], Any], sidecar: Any, answers: int, size: int, cap: int, budget: int, bound: int
) -> None:
    primary = await raw_server(chunked_json(size))
    backup = await raw_server(chunked_json(100))
    nodes = [{"name": "primary", "url": primary, "priority": 0}, {"name": "backup", "url": backup, "priority": -1}]
    car = await sidecar(
        {
            "upstream": {
                "timeout": {"connect": 2, "send": 10, "read": 20},
                "checks": {"passive": {}},
                "max_response_bytes": cap,
                "max_held_bytes": budget,
                "nodes": nodes,
            }
        }
    )
    async with httpx.AsyncClient(base_url=car.url, timeout=60) as client:
        assert (await client.get("/healthz")).status_code == 200
        before = vm_hwm(car.proc.pid)
        got = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat()) for _ in range(answers)))
    after = vm_hwm(car.proc.pid)
    for answer in got:
        # Held until past the cap and failed over, or (budget full) streamed whole from the primary.
        assert answer.status_code == 200
        assert (answer.headers["x-llm-sidecar-node"], len(answer.content)) in {("backup", 100), ("primary", size)}
    assert after - before < bound, f"peak RSS rose by {(after - before) / MIB:.0f} MiB (bound {bound / MIB:.0f})"
