"""OpenTelemetry traces end to end: the real sidecar (`llm-sidecar run`) exports to a real OTLP/HTTP receiver on
loopback, whose protobuf is decoded here and checked span by span and attribute by attribute; the upstreams are
loopback servers that keep the `traceparent` each attempt brought."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .conftest import Sidecar, cli, cli_env, eventually, free_port

PROMPT = "the secret prompt words"
ANSWER = "the private completion words"
SERVER, CLIENT, INTERNAL = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@dataclass
class Collector:
    """An OTLP/HTTP receiver: POST /v1/traces, protobuf, each span kept with its resource's attributes."""

    port: int = 0
    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    posts: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest.FromString(await request.read())
        self.posts += 1
        for resource_spans in message.resource_spans:
            self.resources.append(attributes(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "llm-sidecar"
                self.spans.extend(scope_spans.spans)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def trace(self, trace_id: str) -> list[Span]:
        """One trace's spans in the order they began."""
        return sorted((s for s in self.spans if s.trace_id.hex() == trace_id), key=lambda s: s.start_time_unix_nano)


@dataclass
class Upstream:
    """An OpenAI-style node that answers (or fails with 503) and keeps each request's traceparent."""

    name: str
    fail: bool = False
    port: int = 0
    traceparents: list[str | None] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.traceparents.append(request.headers.get("traceparent"))
        body = await request.json()
        if self.fail:
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503)
        model = f"{body['model']}-2024-08-06"
        usage = {"prompt_tokens": 11, "completion_tokens": 7}
        if not body.get("stream"):
            message = {"role": "assistant", "content": ANSWER}
            return web.json_response({"id": f"chatcmpl-{self.name}", "object": "chat.completion", "model": model,
                                      "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                      "usage": usage})  # fmt: skip
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "model": model}
        for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": ANSWER}, None), ({}, "stop")):
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


def attributes(items: Any) -> dict[str, Any]:
    """OTLP key-values as a dict (string, bool, int, double and string arrays, as the sidecar sends them)."""
    out: dict[str, Any] = {}
    for kv in items:
        kind = kv.value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [v.string_value for v in kv.value.array_value.values]
        else:
            out[kv.key] = getattr(kv.value, kind)
    return out


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(thing: Collector | Upstream) -> Any:
        app = web.Application()
        if isinstance(thing, Collector):
            app.router.add_post("/v1/traces", thing.receive)
        else:
            app.router.add_post("/v1/chat/completions", thing.chat)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        thing.port = runner.addresses[0][1]
        return thing

    yield start
    for runner in runners:
        await runner.cleanup()


def config(*nodes: Upstream, **telemetry: Any) -> dict[str, Any]:
    listed = [{"name": n.name, "url": n.url, "priority": -i, "api_key": "${PRIMARY_KEY}"} for i, n in enumerate(nodes)]
    if len(listed) > 1:
        listed[1]["models"] = {"*": "deepseek-chat"}
    data: dict[str, Any] = {
        "upstream": {
            "timeout": {"connect": 1, "send": 5, "read": 5},
            "retry": {"same_node": 1, "backoff": 0.05, "max_backoff": 0.05},
            "checks": {"passive": {}},
            "nodes": listed,
        }
    }
    if telemetry:
        data["telemetry"] = telemetry
    return data


def otel_env(collector: Collector | str | None, **extra: str) -> dict[str, str]:
    env = cli_env(**extra)
    for name in list(env):
        if name.startswith("OTEL_"):
            del env[name]
    if collector is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector if isinstance(collector, str) else collector.endpoint
    env.update(extra)
    return env


async def spans_of(collector: Collector, trace_id: str, count: int) -> list[Span]:
    assert await eventually(lambda: _has(collector, trace_id, count), seconds=10), collector.trace(trace_id)
    return collector.trace(trace_id)


async def _has(collector: Collector, trace_id: str, count: int) -> bool:
    return len(collector.trace(trace_id)) >= count


def by_kind(spans: list[Span], kind: int) -> list[Span]:
    return [s for s in spans if s.kind == kind]


def access_records(car: Sidecar) -> list[dict[str, Any]]:
    return [json.loads(line) for line in car.log().splitlines() if line.startswith("{") and '"request"' in line]


async def test_a_failover_is_one_trace_continuing_the_clients_with_a_span_per_attempt_and_wait(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    collector = await servers(Collector())
    primary = await servers(Upstream("primary", fail=True))
    backup = await servers(Upstream("backup"))
    car = await sidecar(config(primary, backup), "--log-format", "json", env=otel_env(collector))
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    got = await client.post(
        f"{car.url}/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]},
        headers={"traceparent": traceparent, "tracestate": "vendor=abc"},
    )
    assert got.status_code == 200 and got.json()["choices"][0]["message"]["content"] == ANSWER

    spans = await spans_of(collector, CLIENT_TRACE, 5)
    request, first, wait, second, third = spans
    assert [s.kind for s in spans] == [SERVER, CLIENT, INTERNAL, CLIENT, CLIENT]
    # The request's span continues the client's trace; every other span is its child.
    assert request.parent_span_id.hex() == CLIENT_SPAN and request.trace_state == "vendor=abc"
    assert {s.parent_span_id for s in spans[1:]} == {request.span_id}
    assert len({s.span_id for s in spans}) == 5
    # Each node was told the span of its own attempt, in the client's trace.
    told = primary.traceparents + backup.traceparents
    assert told == [f"00-{CLIENT_TRACE}-{s.span_id.hex()}-01" for s in (first, second, third)]

    assert request.name == "chat gpt-4o"
    assert attributes(request.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "deepseek-chat-2024-08-06",
        "gen_ai.response.id": "chatcmpl-backup",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 7,
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "http.response.status_code": 200,
        "llm_sidecar.request_id": got.headers["x-request-id"],
        "llm_sidecar.node": "backup",
        "llm_sidecar.attempts": 3,
    }
    assert request.status.code == request.status.STATUS_CODE_UNSET
    for attempt in (first, second):
        assert attempt.name == "chat gpt-4o"
        assert attributes(attempt.attributes) == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "server.address": "127.0.0.1",
            "server.port": primary.port,
            "llm_sidecar.node": "primary",
            "llm_sidecar.outcome": "failed",
            "error.type": "503",
        }
        assert attempt.status.code == attempt.status.STATUS_CODE_ERROR and attempt.status.message == "http 503"
    assert third.name == "chat deepseek-chat"  # the model the backup was asked for
    assert attributes(third.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "deepseek-chat",
        "gen_ai.response.model": "deepseek-chat-2024-08-06",
        "gen_ai.response.id": "chatcmpl-backup",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 7,
        "server.address": "127.0.0.1",
        "server.port": backup.port,
        "http.response.status_code": 200,
        "llm_sidecar.node": "backup",
        "llm_sidecar.outcome": "answered",
    }
    # The same-node retry's backoff: a span of its own between the two attempts on the primary.
    record = access_records(car)[-1]
    waited = record["failed"][0]["wait_ms"]
    assert wait.name == "wait" and attributes(wait.attributes) == {"llm_sidecar.node": "primary",
                                                                      "llm_sidecar.wait_ms": waited}  # fmt: skip
    assert wait.end_time_unix_nano - wait.start_time_unix_nano == pytest.approx(waited * 1e6, abs=1e6)
    assert (
        first.end_time_unix_nano == wait.start_time_unix_nano <= wait.end_time_unix_nano <= second.start_time_unix_nano
    )
    for span in spans[1:]:
        assert request.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        assert span.end_time_unix_nano <= request.end_time_unix_nano
    duration_ms = (request.end_time_unix_nano - request.start_time_unix_nano) / 1e6
    assert duration_ms == pytest.approx(record["total_ms"], abs=2)
    # The log line names the trace and the request's span: logs and traces join on them.
    assert record["trace_id"] == CLIENT_TRACE and record["span_id"] == request.span_id.hex()
    (resource,) = set(json.dumps(r, sort_keys=True) for r in collector.resources)
    assert json.loads(resource)["service.name"] == "llm-sidecar"
    assert PROMPT not in str(spans) and ANSWER not in str(spans)


async def test_a_stream_without_a_traceparent_starts_a_trace_and_exports_no_content_by_default(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    collector = await servers(Collector())
    node = await servers(Upstream("primary"))
    car = await sidecar(config(node), "--log-format", "json", env=otel_env(collector))
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "system", "content": PROMPT},
                                                             {"role": "user", "content": PROMPT}]}  # fmt: skip
    async with client.stream("POST", f"{car.url}/v1/chat/completions", json=body) as got:
        text = (await got.aread()).decode()
    assert ANSWER in text and text.endswith("data: [DONE]\n\n")
    record = access_records(car)[-1]
    request, attempt = await spans_of(collector, record["trace_id"], 2)
    (told,) = node.traceparents
    assert told == f"00-{record['trace_id']}-{attempt.span_id.hex()}-01"
    assert request.parent_span_id == b"" and attempt.parent_span_id == request.span_id
    seen = attributes(request.attributes)
    assert seen["gen_ai.request.stream"] is True and seen["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert seen["gen_ai.response.time_to_first_chunk"] == pytest.approx(record["ttft_ms"] / 1000)
    assert seen["gen_ai.usage.input_tokens"] == 11 and seen["gen_ai.usage.output_tokens"] == 7
    assert seen.get("gen_ai.response.finish_reasons", ["stop"]) == ["stop"]  # when the first bytes held it
    assert attributes(attempt.attributes)["llm_sidecar.outcome"] == "answered"
    everything = str(collector.spans) + str(collector.resources)
    assert PROMPT not in everything and ANSWER not in everything
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system")) for k in seen)


async def test_prompts_and_completions_are_exported_when_opted_in(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    collector = await servers(Collector())
    node = await servers(Upstream("primary"))
    car = await sidecar(config(node, endpoint=collector.endpoint, content=True), "--log-format", "json",
                        env=otel_env(None))  # fmt: skip
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    for stream in (False, True):
        got = await client.post(f"{car.url}/v1/chat/completions",
                                json={"model": "gpt-4o", "stream": stream, "messages": messages})  # fmt: skip
        assert got.status_code == 200
        record = access_records(car)[-1]
        request, attempt = await spans_of(collector, record["trace_id"], 2)
        seen = attributes(request.attributes)
        assert json.loads(seen["gen_ai.input.messages"]) == [
            {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
            {"role": "user", "parts": [{"type": "text", "content": PROMPT}]},
        ]
        assert json.loads(seen["gen_ai.output.messages"]) == [
            {"role": "assistant", "parts": [{"type": "text", "content": ANSWER}], "finish_reason": "stop"}
        ]
        assert seen["gen_ai.response.finish_reasons"] == ["stop"]
        assert "gen_ai.input.messages" not in attributes(attempt.attributes)  # on the request's span only


async def test_a_collector_that_is_down_never_touches_traffic_and_is_said_once(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    node = await servers(Upstream("primary"))
    dead = f"http://127.0.0.1:{free_port()}"
    car = await sidecar(config(node), env=otel_env(dead, OTEL_BSP_SCHEDULE_DELAY="50", OTEL_EXPORTER_OTLP_TIMEOUT="2"))
    for i in range(20):
        got = await client.post(f"{car.url}/v1/chat/completions",
                                json={"model": "gpt-4o", "stream": i % 2 == 1, "messages": []})  # fmt: skip
        assert got.status_code == 200 and ANSWER in got.text
        await asyncio.sleep(0.05)
    assert await eventually(lambda: _logged(car, "cannot export spans"), seconds=10)
    log = car.log()
    assert log.count("cannot export spans") == 1  # one WARNING for the episode, not one per batch
    assert "Traceback" not in log
    assert sum("export" in line for line in log.splitlines()) == 1  # not the exporter's own line per batch
    assert "Connection refused" in log  # the warning says why
    assert car.stop() == 0


async def _logged(car: Sidecar, text: str) -> bool:
    return text in car.log()


async def test_a_collector_that_never_answers_holds_the_stop_only_a_few_seconds(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    """The exporter would wait a minute for this collector; the sidecar's stop waits 3 s (the fixture kills at 15)."""
    node = await servers(Upstream("primary"))
    posted = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        posted.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_post("/v1/traces", hang)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}"
        car = await sidecar(config(node), env=otel_env(endpoint, OTEL_BSP_SCHEDULE_DELAY="50",
                                                      OTEL_EXPORTER_OTLP_TIMEOUT="60"))  # fmt: skip
        got = await client.post(f"{car.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
        assert got.status_code == 200
        await asyncio.wait_for(posted.wait(), 10)
        got = await client.post(f"{car.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
        assert got.status_code == 200  # an export stuck on its collector is no business of traffic
        assert await asyncio.to_thread(car.stop) == 0
        assert "the last spans were not all sent within 3s of the stop" in car.log()
    finally:
        await runner.cleanup()


async def test_a_collector_that_comes_back_is_said_once_too(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    node = await servers(Upstream("primary"))
    port = free_port()
    car = await sidecar(config(node), env=otel_env(f"http://127.0.0.1:{port}", OTEL_BSP_SCHEDULE_DELAY="50",
                                                  OTEL_EXPORTER_OTLP_TIMEOUT="1"))  # fmt: skip
    body = {"model": "gpt-4o", "messages": []}
    assert (await client.post(f"{car.url}/v1/chat/completions", json=body)).status_code == 200
    assert await eventually(lambda: _logged(car, "cannot export spans"), seconds=15)
    collector = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", collector.receive)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        assert (await client.post(f"{car.url}/v1/chat/completions", json=body)).status_code == 200
        assert await eventually(lambda: _logged(car, "exporting to"), seconds=15)
        assert len(by_kind(collector.spans, SERVER)) >= 1
    finally:
        await runner.cleanup()


async def test_with_traces_off_the_clients_traceparent_goes_upstream_untouched(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    node = await servers(Upstream("primary"))
    car = await sidecar(config(node), "--log-format", "json", env=otel_env(None))
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    got = await client.post(f"{car.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []},
                            headers={"traceparent": traceparent})  # fmt: skip
    assert got.status_code == 200 and node.traceparents == [traceparent]
    assert "trace_id" not in access_records(car)[-1]
    assert "traces:" not in car.log()


async def test_an_unsampled_client_trace_is_passed_on_as_it_came_and_not_exported(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    collector = await servers(Collector())
    node = await servers(Upstream("primary"))
    car = await sidecar(config(node), "--log-format", "json", env=otel_env(collector))
    unsampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
    malformed = "00-XYZ-nothing-01"
    for header in (unsampled, malformed):
        got = await client.post(f"{car.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []},
                                headers={"traceparent": header})  # fmt: skip
        assert got.status_code == 200
    assert node.traceparents[0] == unsampled
    fresh = access_records(car)[-1]["trace_id"]  # a malformed one starts a trace of its own
    assert fresh != CLIENT_TRACE and node.traceparents[1].startswith(f"00-{fresh}-")
    await spans_of(collector, fresh, 2)
    assert not collector.trace(CLIENT_TRACE)


NO_OTEL = "import sys; sys.modules['opentelemetry.sdk'] = None; sys.modules['opentelemetry.exporter'] = None\n"


async def test_without_the_extra_an_endpoint_in_the_file_stops_the_start_and_one_in_the_environment_warns(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The extra is hidden from the subprocess (a sitecustomize that makes its import fail)."""
    (tmp_path / "sitecustomize.py").write_text(NO_OTEL)
    node = await servers(Upstream("primary"))
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    env = otel_env("http://127.0.0.1:4318", PYTHONPATH=path)
    car = await sidecar(config(node), env=env)
    got = await client.post(f"{car.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
    assert got.status_code == 200
    log = car.log()
    assert log.count("OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not installed") == 1
    assert "pip install 'llm-sidecar[otel]'" in log

    file = tmp_path / "traced.toml"
    data = config(node, endpoint="http://127.0.0.1:4318")
    file.write_text(_toml(data))
    done = cli("run", "-c", str(file), env=otel_env(None, PYTHONPATH=path), timeout=30)
    assert done.returncode != 0
    assert "[telemetry] endpoint is set, but OpenTelemetry is not installed" in done.stderr
    checked = cli("check", "-c", str(file), env=otel_env(None, PYTHONPATH=path))
    assert checked.returncode == 0 and "the otel extra is not installed" in checked.stdout


def _toml(data: dict[str, Any]) -> str:
    import tomli_w

    data = {**data, "server": {"listen": f"127.0.0.1:{free_port()}", "control_socket": ""}}
    return tomli_w.dumps(data)


async def test_a_reload_that_changes_telemetry_says_it_takes_a_restart(
    servers: Callable[..., Any], sidecar: Callable[..., Any], client: httpx.AsyncClient
) -> None:
    node = await servers(Upstream("primary"))
    car = await sidecar(config(node), env=otel_env(None))
    text = car.config_path.read_text()
    car.config_path.write_text(text + '\n[telemetry]\nendpoint = "http://127.0.0.1:4318"\n')
    assert await eventually(lambda: _logged(car, "reload: changes to [telemetry] take effect on restart"), seconds=10)
    got = await client.post(f"{car.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
    assert got.status_code == 200 and "traces:" not in car.log()
