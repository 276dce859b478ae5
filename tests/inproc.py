"""Driving the proxy in-process: the ASGI app, a scripted client and the mock transport.

No sockets and no subprocess: a case takes milliseconds, so the failover matrix
can cover every combination of fault, client behaviour and reload.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.nodes.mock import Handler, MockTransport
from sidecar.nodes.runtime import Runtime, TransportFactory
from sidecar.nodes.watchdog import SendWatch
from sidecar.proxy.app import ProxyApp


def config(checks: dict[str, Any] | None = None, read: float = 0.05, **upstream: Any) -> Config:
    nodes = [
        {"name": "primary", "url": "http://primary.invalid", "priority": 0},
        {"name": "backup", "url": "http://backup.invalid", "priority": -1, "models": {"*": "backup-model"}},
    ]
    data = {
        "upstream": {
            "timeout": {"connect": 0.05, "send": 1, "read": read},
            "checks": checks if checks is not None else {"passive": {}},
            "nodes": nodes,
            **upstream,
        }
    }
    return parse(data, "<test>", env={})


@dataclass
class Answer:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False
    parts: list[bytes] = field(default_factory=list)  # the body as the client received it, message by message
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class Harness:
    """A runtime on mock transports (one per config generation) and the proxy app in front."""

    def __init__(
        self,
        handler: Handler,
        cfg: Config,
        transport: TransportFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`transport`: another transport than the mock (the real one, against loopback upstreams);
        `clock`: the health clock (a test's own, to move time on)."""
        self.handler = handler
        self.transports: list[MockTransport] = []
        self.on_send: Callable[[str], None] | None = None
        self.runtime = Runtime(cfg, transport=transport or self._transport, clock=clock)
        self.app = ProxyApp(self.runtime)

    def _transport(self, cfg: Config, watch: SendWatch) -> MockTransport:
        transport = MockTransport(self.handler, cfg.upstream.timeout.read, on_send=self._sent)
        self.transports.append(transport)
        return transport

    def _sent(self, node: str) -> None:
        if self.on_send is not None:
            self.on_send(node)

    def calls(self, node: str) -> int:
        return sum(t.count(node) for t in self.transports)

    def node(self, name: str) -> Any:
        return self.runtime.upstream.by_name[name]

    def last_event(self) -> dict[str, Any]:
        return next(e for e in reversed(self.runtime.events.recent) if e["type"] == "request")

    async def request(
        self,
        body: dict[str, Any] | bytes,
        *,
        path: str = "/v1/chat/completions",
        headers: list[tuple[bytes, bytes]] | None = None,
        gone: asyncio.Event | None = None,
        leave_after_first_byte: bool = False,
        method: str = "POST",
        raw_path: bytes | None = None,
    ) -> Answer:
        """One request as the HTTP server would run it; the client leaves when `gone` is set.

        `raw_path`: the path as it came on the wire, when it differs from `path` (percent-encoded).
        """
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        gone = gone or asyncio.Event()
        answer = Answer()
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if gone.is_set():
                return  # like uvicorn: writes to a client that left go nowhere
            if message["type"] == "http.response.start":
                answer.status = message["status"]
                answer.raw_headers = list(message["headers"])
                answer.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
                return
            answer.parts.append(message.get("body", b""))
            answer.body += message.get("body", b"")
            if not message.get("more_body", False):
                answer.complete = True
            elif leave_after_first_byte and answer.body:
                gone.set()

        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode() if raw_path is None else raw_path,
            "query_string": b"",
            "headers": headers if headers is not None else [(b"content-type", b"application/json")],
        }
        await asyncio.wait_for(self.app(scope, receive, send), timeout=5)
        return answer

    async def settle(self) -> None:
        """Let retired generations finish closing."""
        if self.runtime.closing:
            await asyncio.wait(list(self.runtime.closing), timeout=1)

    def assert_nothing_held(self) -> None:
        for node in self.runtime.upstream.nodes:
            assert not node.health.trial_in_flight, f"{node.name}: trial lease held"
            assert node.stats.in_flight == 0, f"{node.name}: in_flight {node.stats.in_flight}"
        for transport in self.transports:
            assert not transport.open, f"responses left open: {transport.open}"
        assert self.runtime.upstream.refs == 0
        assert self.runtime.upstream.held.held == 0, "bytes of an answer still counted as held"
        for transport in self.transports[:-1]:
            assert transport.closed, "a retired generation was not closed once its requests ended"
