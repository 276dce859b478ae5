"""An active probe reads and parses no more than it needs, whatever the node answers.

Before, every probe held up to 8 MiB of the node's `GET /v1/models` answer and json-parsed it on the event
loop: 8 MB of `{}` items became 2.8 million dicts (a real sidecar went from 44 to 270 MB, each probe stalling
the loop ~0.7 s). Now the list is parsed only when it is due (missing, or half as old as the catalog's cache),
never when it holds more values than a real list does, and otherwise the body is read and dropped, at most
DRAIN_BYTES of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import httpx

from sidecar.config.load import parse
from sidecar.nodes import catalog
from sidecar.nodes.checker import DRAIN_BYTES, probe
from sidecar.nodes.mock import MockResponse, MockTransport, Script
from sidecar.nodes.transport import Request, Response
from sidecar.nodes.upstream import Upstream
from sidecar.observe.events import EventHub

from .conftest import Upstream as Handler

MIB = 1 << 20
PIECE = 64 * 1024
# The attack's answer: a list of 8 MB of empty objects (2.8 million of them), just under MAX_LIST_BYTES.
HOSTILE = b'{"object": "list", "data": [' + b"{}," * (catalog.MAX_LIST_BYTES // 3 - 20) + b"{}]}"


def in_pieces(body: bytes) -> list[bytes]:
    return [body[i : i + PIECE] for i in range(0, len(body), PIECE)]


class Counting(MockTransport):
    """The mock transport, keeping each response to count what the probe read of it."""

    def __init__(self, handler: Any) -> None:
        super().__init__(handler)
        self.responses: list[MockResponse] = []

    async def send(self, node: str, request: Request) -> Response:
        response = await super().send(node, request)
        assert isinstance(response, MockResponse)
        self.responses.append(response)
        return response


def setup(body: bytes, models: dict[str, str] | None = None) -> tuple[Upstream, Counting, list[float]]:
    node: dict[str, Any] = {"name": "n", "url": "http://n.invalid"}
    if models is not None:
        node["models"] = models
    config = parse({"upstream": {"checks": {"active": {"timeout": 30}}, "nodes": [node]}}, "<test>", env={})
    transport = Counting(lambda name, request: Script(200, body=in_pieces(body)))
    now = [1000.0]
    return Upstream(config, EventHub(), transport, clock=lambda: now[0]), transport, now


def read_of(transport: Counting, body: bytes) -> int:
    """The bytes the last probe read of `body` (the pieces it did not take are still in the script)."""
    return len(body) - sum(len(step) for step in transport.responses[-1].steps if isinstance(step, bytes))


async def test_a_list_of_8_mb_of_empty_objects_is_never_parsed_and_later_probes_read_a_bounded_part() -> None:
    up, transport, now = setup(HOSTILE)
    node = up.nodes[0]
    tracemalloc.start()
    try:
        await probe(up, node)  # the first: the list is due, so it is read (bounded) and looked at
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The body held (8 MiB; the mock's read copies it twice more) and nothing built from it; before, json.loads
    # made ~200 MB of dicts.
    assert peak < 32 * MIB, f"the probe allocated {peak / MIB:.0f} MiB at its peak"
    assert node.upstream_models == () and node.health.healthy  # a 200 that is no usable list: healthy, no ids
    for _ in range(3):  # probes before the list is due again read a bounded part and keep none of it
        now[0] += 1.0
        await probe(up, node)
        assert read_of(transport, HOSTILE) <= DRAIN_BYTES + PIECE
        assert node.health.healthy and node.last_probe is not None and node.last_probe["status"] == 200
    assert transport.open == set()  # each cut short answer was closed, not left in the pool


async def test_a_node_whose_list_is_never_used_is_probed_by_status_alone() -> None:
    up, transport, _ = setup(HOSTILE, models={"gpt-4o": "gpt-4o"})  # a table without "*": its list is not used
    await probe(up, up.nodes[0])
    assert read_of(transport, HOSTILE) <= DRAIN_BYTES + PIECE and up.nodes[0].upstream_models is None
    assert transport.open == set()


async def test_a_large_real_list_is_still_kept_and_renewed_when_due() -> None:
    model = {
        "description": "Some words, more words, and so on. " * 20,
        "architecture": {"modality": "text+image->text", "input_modalities": ["text", "image"]},
        "pricing": {"prompt": "0.0000003", "completion": "0.0000012", "request": "0", "image": "0"},
        "top_provider": {"context_length": 131072, "max_completion_tokens": 16384, "is_moderated": False},
        "supported_parameters": ["tools", "tool_choice", "max_tokens", "temperature", "top_p", "stop", "seed"],
    }
    listed = [{"id": f"vendor/model-{i}", **model} for i in range(catalog.MAX_IDS)]  # ~2.6 MB, OpenRouter-like
    body = json.dumps({"data": listed}).encode()
    assert catalog.values_at_most(body) <= catalog.MAX_LIST_VALUES
    up, transport, now = setup(body)
    node = up.nodes[0]
    await probe(up, node)
    assert node.upstream_models is not None and len(node.upstream_models) == catalog.MAX_IDS
    kept_at = node.upstream_models_at
    now[0] += catalog.PROBE_KEEPS_AFTER - 1
    await probe(up, node)
    assert node.upstream_models_at == kept_at  # not due: read and dropped (the connection is closed past 1 MiB)
    now[0] += 1
    await probe(up, node)
    assert node.upstream_models_at == now[0] and len(node.upstream_models) == catalog.MAX_IDS  # renewed
    assert transport.open == set()


def test_the_value_bound_counts_what_json_would_build() -> None:
    assert catalog.values_at_most(b'{"data": [{"id": "a"}, {"id": "b"}]}') >= 6  # 2 dicts, a list, the root...
    assert catalog.values_at_most(b"[" * 1000) >= 1000  # nesting builds containers too
    assert catalog.parse_ids(HOSTILE) is None  # refused before anything is built
    assert catalog.parse_ids(b'{"data": [{"id": "a"}]}') == ("a",)


# ---------------------------------------------------------------------------- a real sidecar's peak memory


def vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def models_answer(body: bytes, served: list[int]) -> Handler:
    """Answers GET /v1/models with `body` (keep-alive, as a provider would), counting the requests."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.readline() not in (b"\r\n", b""):  # a request line
                while await reader.readline() not in (b"\r\n", b""):
                    pass
                served[0] += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                )
                writer.write(body)
                await writer.drain()
        writer.close()

    return handle


async def test_real_probes_of_an_8_mb_list_of_empty_objects_keep_the_sidecar_small_and_answering(
    raw_server: Callable[[Handler], Any], sidecar: Any
) -> None:
    """Two sidecars side by side, probing every 0.1 s: one node answers the attack's list, the other a
    one-model list. The first may take its share of the 8 MB it reads, not the ~200 MB the parse built."""
    hostile_served, benign_served = [0], [0]
    hostile = await raw_server(models_answer(HOSTILE, hostile_served))
    benign = await raw_server(models_answer(b'{"data": [{"id": "m"}]}', benign_served))
    checks = {"active": {"interval": 0.1, "timeout": 5}, "passive": {}}
    cars = [
        await sidecar({"upstream": {"checks": checks, "nodes": [{"name": "n", "url": url}]}})
        for url in (hostile, benign)
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        deadline = time.monotonic() + 30
        while hostile_served[0] < 10 or benign_served[0] < 10:  # bounded: 10 probes each, or 30 s
            assert time.monotonic() < deadline, f"probes answered: {hostile_served[0]}, {benign_served[0]}"
            for car in cars:  # the sidecar answers while it probes
                health = await client.get(car.url + "/healthz")
                assert health.status_code == 200 and health.json()["status"] == "ok"
            await asyncio.sleep(0.05)
        node = await cars[0].node("n")
        assert node["state"] == "healthy" and node["active"]["last_probe"]["status"] == 200
    rose = vm_hwm(cars[0].proc.pid) - vm_hwm(cars[1].proc.pid)
    assert rose < 64 * MIB, f"the probed sidecar peaked {rose / MIB:.0f} MiB above the other"
