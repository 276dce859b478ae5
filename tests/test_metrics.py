"""Prometheus metrics: the pure parts (reason categories, label bounds, how a request event is counted),
then real traffic through `llm-sidecar run` in front of fake providers, scraped over HTTP and parsed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from sidecar import metrics
from sidecar.config.load import parse
from sidecar.metrics import BUCKETS, MAX_SEEN_MODELS, REASONS, Metrics, model_label, reason_category, status_class
from sidecar.nodes.runtime import Runtime
from sidecar.observe.events import EventHub

from .conftest import NODE_KEYS, chat, cli_env

CHAT = "/v1/chat/completions"
CLIENT_KEY = "sk-sidecar-client-key-metrics-4242"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def get(found: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


def series(found: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls), _ in found.items() if n == name]


# ---------------------------------------------------------------------------------------------- unit


def test_failure_reasons_fall_in_a_small_fixed_set() -> None:
    cases = {
        "http 500": "http_5xx",
        "http 503": "http_5xx",
        "overloaded (529)": "http_5xx",
        "error in a 200 answer (Overloaded)": "bad_response",
        "http 404": "http_4xx",
        "auth (401)": "auth",
        "auth (403)": "auth",
        "rate limited (429)": "rate_limited",
        "connection closed before a response": "reset",
        "connection closed mid-body": "reset",
        "connection error (ServerDisconnectedError)": "reset",
        "stream ended before its end": "reset",
        "stream ended inside an event": "reset",
        "read timeout": "timeout",
        "send timeout": "timeout",
        "no first token in 60s": "timeout",
        "no token before read timeout": "timeout",
        "connect failed (Connection refused)": "connect",
        "connect timeout": "connect",
        "context window exceeded": "context_window",
        "error event before any token (overloaded)": "error_event",
        "error event mid-stream (server_error: boom)": "error_event",
        "bad content-type (text/html)": "bad_response",
        "malformed event mid-stream": "bad_response",
        "response too large": "bad_response",
        "redirect (302)": "bad_response",
        "continuation: read timeout": "timeout",
        "continuation: continuation ended without finishing": "bad_response",
        "continuation refused (400)": "other",
        "something new sk-live-abc123": "other",
    }
    for reason, category in cases.items():
        assert reason_category(reason) == category, reason
    assert {reason_category(r) for r in cases} <= REASONS


def test_status_classes_and_model_labels_are_bounded() -> None:
    assert [status_class(s) for s in (200, 201, 302, 400, 404, 429, 499, 500, 503, 0, 999)] == [
        "2xx", "2xx", "3xx", "4xx", "4xx", "4xx", "499", "5xx", "5xx", "none", "none",
    ]  # fmt: skip
    known = frozenset({"gpt-4o"})
    assert (model_label("gpt-4o", known), model_label("gpt-4o-2024", known), model_label(None, known)) == (
        "gpt-4o",
        "other",
        "none",
    )


def runtime(models: dict[str, str] | None = None) -> Runtime:
    nodes: list[dict[str, Any]] = [
        {"name": "a", "url": "http://a.invalid", "priority": 0},
        {"name": "b", "url": "http://b.invalid", "priority": -1, "models": models or {"gpt-4o": "x", "*": "y"}},
    ]
    return Runtime(parse({"upstream": {"nodes": nodes}}, "<test>", env={}), events=EventHub())


def request_event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "node": "a", "model": "gpt-4o", "status": 200, "stream": False, "failed": [], "continued": [],
        "ttfb_ms": 12.0, "ttft_ms": None, "total_ms": 20.0, "tokens_in": 7, "tokens_out": 5, "tokens_cached": None,
    }  # fmt: skip
    event.update(fields)
    return event


def scraped(m: Metrics) -> Samples:
    body, content_type = metrics.exposition(m)
    assert content_type == CONTENT_TYPE_LATEST
    return samples(body.decode())


def test_a_thousand_client_model_names_make_a_bounded_set_of_model_labels() -> None:
    """The names nodes answered are labelled as themselves up to MAX_SEEN_MODELS (first answered first),
    the configured ones always, and the rest are `other`: inventing names fills the bound, nothing more."""
    rt = runtime()
    m = metrics.attach(rt)
    for i in range(1000):
        rt.events.publish("request", **request_event(model=f"client-model-{i}"))
    rt.events.publish("request", **request_event(model="gpt-4o"))
    rt.events.publish("request", **request_event(model=None))
    found = scraped(m)
    labels = {s["model"] for s in series(found, "llm_sidecar_requests_total")}
    seen = {f"client-model-{i}" for i in range(MAX_SEEN_MODELS)}
    assert labels == {"gpt-4o", "other", "none", *seen}
    assert get(found, "llm_sidecar_requests_total", model="other") == 1000 - MAX_SEEN_MODELS
    assert get(found, "llm_sidecar_tokens_total", model="other", type="input") == 7 * (1000 - MAX_SEEN_MODELS)
    assert f"client-model-{MAX_SEEN_MODELS}" not in metrics.exposition(m)[0].decode()


async def test_the_models_of_a_setup_without_models_tables_are_labelled_as_seen() -> None:
    """The common setup (no node has a `models` table) labelled every request `model="other"`."""
    nodes = [{"name": "a", "url": "http://a.invalid"}, {"name": "b", "url": "http://b.invalid", "priority": -1}]
    rt = Runtime(parse({"upstream": {"nodes": nodes}}, "<test>", env={}), events=EventHub())
    m = metrics.attach(rt)
    rt.events.publish("request", **request_event(model="gpt-4o-mini"))
    rt.events.publish("request", **request_event(model="gpt-4o-mini", stream=True))
    rt.events.publish("request", **request_event(model="no-such-model", status=404))  # refused: not labelled
    rt.events.publish("request", **request_event(model="no-such-model", node=None, status=502))
    rt.events.publish("request", **request_event(model="x" * 101))  # too long for a label
    rt.events.publish("request", **request_event(model="bad\nname"))
    rt.apply(parse({"upstream": {"nodes": nodes[:1]}}, "<test>", env={}))  # a reload forgets nothing seen
    rt.events.publish("request", **request_event(model="gpt-4o-mini"))
    now = rt.upstream.clock()
    rt.upstream.by_name["a"].models.get("gpt-4o-mini").rate_limited(now + 30, now, 300)
    rt.events.publish("health", node="a", model="gpt-4o-mini", before="healthy", after="rate limited", reason="x")
    found = scraped(m)
    assert get(found, "llm_sidecar_requests_total", model="gpt-4o-mini") == 3
    assert get(found, "llm_sidecar_requests_total", model="other") == 4
    assert get(found, "llm_sidecar_models_out", node="a", model="gpt-4o-mini") == 1
    assert get(found, "llm_sidecar_model_health_events_total", node="a", model="gpt-4o-mini") == 1
    assert {s["model"] for s in series(found, "llm_sidecar_requests_total")} == {"gpt-4o-mini", "other"}
    await rt.close()


def test_failed_attempts_become_retries_failovers_waits_and_continuations() -> None:
    rt = runtime()
    m = metrics.attach(rt)
    failed = [
        {"node": "a", "reason": "http 503", "wait_ms": 250},  # then a again: a retry
        {"node": "a", "reason": "read timeout"},  # then b: a failover
        {"node": "b", "reason": "continuation: read timeout"},  # a failed continuation: no failover
    ]
    continued = [{"from": "b", "to": "a", "reason": "stream ended before its end"}]
    rt.events.publish("request", **request_event(node="a", stream=True, failed=failed, continued=continued))
    found = scraped(m)
    assert get(found, "llm_sidecar_retries_total", node="a", reason="http_5xx") == 1
    assert get(found, "llm_sidecar_retries_total") == 1
    assert get(found, "llm_sidecar_failovers_total", **{"from": "a", "to": "b", "reason": "timeout"}) == 1
    assert get(found, "llm_sidecar_failovers_total") == 1
    assert get(found, "llm_sidecar_continuations_total", **{"from": "b", "to": "a", "reason": "reset"}) == 1
    assert get(found, "llm_sidecar_retry_wait_seconds_total", node="a") == 0.25
    # a twice (failed), b once (failed continuation) + once (answered first), a once (the continuation)
    assert (get(found, "llm_sidecar_attempts_total", node="a"), get(found, "llm_sidecar_attempts_total", node="b")) == (
        3,
        2,
    )
    assert get(found, "llm_sidecar_attempt_failures_total", node="b", reason="timeout") == 1


def test_histograms_use_llm_buckets_inclusive_upper_bounds_and_plus_inf() -> None:
    rt = runtime()
    m = metrics.attach(rt)
    for total in (10.0, 10.5, 600_000.0, 700_000.0):  # ms: 0.01 s sits in le=0.01; 700 s only in +Inf
        rt.events.publish("request", **request_event(total_ms=total, ttfb_ms=None))
    found = scraped(m)
    name = "llm_sidecar_request_duration_seconds"
    edges = {s["le"] for s in series(found, name + "_bucket")}
    assert edges == {repr(float(b)) for b in BUCKETS} | {"+Inf"}
    assert get(found, name + "_bucket", le="0.01") == 1
    assert get(found, name + "_bucket", le="0.025") == 2
    assert get(found, name + "_bucket", le="600.0") == 3
    assert get(found, name + "_bucket", le="+Inf") == get(found, name + "_count") == 4
    assert abs(get(found, name + "_sum") - 1300.0205) < 1e-9
    assert get(found, "llm_sidecar_time_to_first_byte_seconds_count") == 0


def test_each_runtime_has_its_own_registry_and_probes_count_by_hub() -> None:
    one, two = runtime(), runtime()
    m1, m2 = metrics.attach(one), metrics.attach(two)
    assert metrics.attach(one) is m1 and metrics.registry_of(m1) is not metrics.registry_of(m2)
    one.events.publish("request", **request_event())
    two.events.note("probe", node="a", ok=True, seconds=0.02)  # how the checker counts a probe
    two.events.note("probe", node="a", ok=False, seconds=2.0)
    f1, f2 = scraped(m1), scraped(m2)
    assert (get(f1, "llm_sidecar_requests_total"), get(f2, "llm_sidecar_requests_total")) == (1, 0)
    assert (get(f2, "llm_sidecar_probes_total", result="ok"), get(f2, "llm_sidecar_probes_total", result="fail")) == (
        1,
        1,
    )
    assert get(f2, "llm_sidecar_probe_duration_seconds_count", node="a") == 2
    assert get(f1, "llm_sidecar_probes_total") == 0


def test_gauges_are_read_from_the_runtime_at_scrape_time() -> None:
    rt = runtime()
    m = metrics.attach(rt)
    a = rt.upstream.by_name["a"]
    rt.upstream.set_manual(a, True)
    a.stats.in_flight = 3
    found = scraped(m)
    assert get(found, "llm_sidecar_node_state", node="a", state="down") == 1
    assert get(found, "llm_sidecar_node_state", node="a") == 1  # one-hot
    assert get(found, "llm_sidecar_node_state", node="b", state="healthy") == 1
    assert get(found, "llm_sidecar_node_manual_down", node="a") == 1
    assert (
        get(found, "llm_sidecar_node_serving", node="b") == 1 and get(found, "llm_sidecar_node_serving", node="a") == 0
    )
    assert get(found, "llm_sidecar_in_flight_requests", node="a") == 3
    assert get(found, "llm_sidecar_manual_changes_total", node="a", manual="down") == 1
    assert get(found, "llm_sidecar_health_transitions_total", node="a", state="down") == 1
    now = rt.upstream.clock()
    a.models.get("gpt-4o").rate_limited(now + 30, now, 300)
    a.models.get("secret-model-1").rate_limited(now + 30, now, 300)
    a.models.get("secret-model-2").rate_limited(now + 30, now, 300)
    found = scraped(m)
    assert get(found, "llm_sidecar_models_out", node="a", model="gpt-4o") == 1
    assert get(found, "llm_sidecar_models_out", node="a", model="other") == 2


def test_a_malformed_event_is_not_counted_and_does_not_raise() -> None:
    rt = runtime()
    m = metrics.attach(rt)
    rt.events.publish("request", node="a")  # no other field: a bug elsewhere must not fail the publisher
    assert m.errors == 1
    rt.events.publish("request", **request_event())
    assert get(scraped(m), "llm_sidecar_requests_total") == 1


# ------------------------------------------------------------------------------------ integration


def config(primary: Any, backup: Any, server: dict[str, Any] | None = None, **upstream: Any) -> dict[str, Any]:
    """primary serves anything as it is; backup lists gpt-4o (so gpt-4o is a model label) and continues streams."""
    checks = upstream.pop("checks", {"passive": {}})
    return {
        "server": server or {},
        "upstream": {
            "timeout": {"connect": 1, "send": 5, "read": 5},
            **upstream,
            "checks": checks,
            "nodes": [
                {"name": "primary", "url": primary.url, "priority": 0, "api_key": "${PRIMARY_KEY}"},
                {
                    "name": "backup",
                    "url": backup.url,
                    "priority": -1,
                    "api_key": "${BACKUP_KEY}",
                    "models": {"gpt-4o": "deepseek-chat", "*": "deepseek-chat"},
                    "continuation": "prefill",
                },
            ],
        },
    }


async def scrape(client: httpx.AsyncClient, url: str, **kw: Any) -> Samples:
    r = await client.get(url, timeout=10, **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    return samples(r.text)


async def control_scrape(car: Any) -> tuple[str, Samples]:
    async with car.control() as ctl:
        r = await ctl.get("/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPE_LATEST
    return r.text, samples(r.text)


def usage_of_stream(text: str) -> dict[str, int]:
    usage: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("data: {"):
            usage = json.loads(line[6:]).get("usage") or usage
    return usage


async def test_real_traffic_is_counted_exactly_by_node_model_status_and_stream(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(config(primary, backup))
    prompt = completion = 0
    for model in ("gpt-4o", "gpt-4o", "gpt-4o", "my-private-model-xyz", "my-private-model-xyz"):
        r = await client.post(car.url + CHAT, json=chat(model=model), timeout=10)
        assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "primary"
        prompt += r.json()["usage"]["prompt_tokens"]
        completion += r.json()["usage"]["completion_tokens"]
    no_model = {"messages": [{"role": "user", "content": "hi"}]}
    r = await client.post(car.url + CHAT, json=no_model, timeout=10)
    assert r.headers["x-llm-sidecar-node"] == "primary"  # the fake refuses it: a 4xx passed through
    no_model_status = f"{r.status_code // 100}xx"
    usage = r.json().get("usage") or {}
    prompt += usage.get("prompt_tokens", 0)
    completion += usage.get("completion_tokens", 0)
    for _ in range(2):
        body = chat(stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", car.url + CHAT, json=body, timeout=10) as s:
            text = (await s.aread()).decode()
        assert s.status_code == 200 and text.rstrip().endswith("data: [DONE]")
        usage = usage_of_stream(text)
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    assert prompt > 0 and completion > 0
    found = await scrape(client, car.url + "/metrics")
    requests = "llm_sidecar_requests_total"
    assert get(found, requests, node="primary", model="gpt-4o", status="2xx", stream="false") == 3
    # a name outside the models table, answered by a node: labelled as seen (bounded: MAX_SEEN_MODELS)
    assert get(found, requests, node="primary", model="my-private-model-xyz", status="2xx", stream="false") == 2
    assert get(found, requests, node="primary", model="none", status=no_model_status, stream="false") == 1
    assert get(found, requests, node="primary", model="gpt-4o", status="2xx", stream="true") == 2
    assert get(found, requests) == 8
    assert get(found, "llm_sidecar_request_duration_seconds_count") == 8
    assert get(found, "llm_sidecar_request_duration_seconds_count", model="gpt-4o", stream="false") == 3
    assert get(found, "llm_sidecar_time_to_first_byte_seconds_count") == 8
    assert get(found, "llm_sidecar_time_to_first_token_seconds_count", node="primary", model="gpt-4o") == 2
    assert get(found, "llm_sidecar_request_duration_seconds_sum") > 0
    assert get(found, "llm_sidecar_tokens_total", node="primary", type="input") == prompt
    assert get(found, "llm_sidecar_tokens_total", node="primary", type="output") == completion
    assert get(found, "llm_sidecar_attempts_total", node="primary") == 8
    assert get(found, "llm_sidecar_attempts_total", node="backup") == 0
    assert get(found, "llm_sidecar_failovers_total") == get(found, "llm_sidecar_retries_total") == 0
    assert get(found, "llm_sidecar_node_state", node="primary", state="healthy") == 1
    assert get(found, "llm_sidecar_node_serving", node="primary") == 1
    assert get(found, "llm_sidecar_in_flight_requests", node="primary") == 0
    assert get(found, "llm_sidecar_info") == 1
    text = (await client.get(car.url + "/metrics", timeout=10)).text
    assert 'model="my-private-model-xyz"' in text  # answered by a node: its own series (issue 24)
    # The control socket's /metrics has the same figures (the scrape above added nothing to them).
    _, over_control = await control_scrape(car)
    for name in (requests, "llm_sidecar_tokens_total", "llm_sidecar_request_duration_seconds_count"):
        assert series(over_control, name) == series(found, name)
        for labels in series(found, name):
            assert get(over_control, name, **labels) == get(found, name, **labels), (name, labels)


async def test_a_failover_a_same_node_retry_and_a_continuation_are_counted(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    primary, backup = await fakes("primary", fail_rate=1.0, fault="error", status=500), await fakes("backup")
    car = await sidecar(config(primary, backup, retries=1))
    r = await client.post(car.url + CHAT, json=chat(), timeout=10)
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "backup"
    assert r.headers["x-llm-sidecar-attempts"] == "2"
    found = await scrape(client, car.url + "/metrics")
    assert get(found, "llm_sidecar_failovers_total", **{"from": "primary", "to": "backup", "reason": "http_5xx"}) == 1
    assert get(found, "llm_sidecar_failovers_total") == 1
    assert get(found, "llm_sidecar_attempt_failures_total", node="primary", reason="http_5xx") == 1
    assert get(found, "llm_sidecar_requests_total", node="backup", model="gpt-4o", status="2xx", stream="false") == 1
    assert get(found, "llm_sidecar_attempts_total", node="primary") == get(found, "llm_sidecar_attempts_total") - 1 == 1

    # A 500 once on a healthy primary: retried on the same node (retry.same_node = 1), not failed over.
    primary.set(fail_rate=0.0)
    car2 = await sidecar(config(primary, backup, checks={}))
    r = await client.post(car2.url + CHAT, json=chat(model="fault-500-once-m1"), timeout=10)
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "primary"
    assert r.headers["x-llm-sidecar-attempts"] == "2"
    found = await scrape(client, car2.url + "/metrics")
    assert get(found, "llm_sidecar_retries_total", node="primary", reason="http_5xx") == 1
    assert get(found, "llm_sidecar_failovers_total") == 0
    assert get(found, "llm_sidecar_retry_wait_seconds_total", node="primary") > 0
    assert get(found, "llm_sidecar_attempts_total", node="primary") == 2

    # A stream cut mid-answer on the primary, finished by the backup.
    async with client.stream("POST", car2.url + CHAT, json=chat(stream=True, model="fault-cut-m2"), timeout=15) as s:
        text = (await s.aread()).decode()
    assert s.status_code == 200 and text.rstrip().endswith("data: [DONE]"), text[-300:]
    found = await scrape(client, car2.url + "/metrics")
    continued = series(found, "llm_sidecar_continuations_total")
    assert len(continued) == 1 and continued[0]["from"] == "primary" and continued[0]["to"] == "backup", continued
    assert continued[0]["reason"] in REASONS - {"other"}
    assert get(found, "llm_sidecar_continuations_total") == 1
    assert get(found, "llm_sidecar_requests_total", node="backup", stream="true") == 1
    assert get(found, "llm_sidecar_time_to_first_token_seconds_count", node="backup") == 1


async def test_metrics_path_off_custom_and_wrong_method(fakes: Any, sidecar: Any, client: httpx.AsyncClient) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    off = await sidecar(config(primary, backup, server={"metrics_path": ""}))
    await client.post(off.url + CHAT, json=chat(), timeout=10)
    r = await client.get(off.url + "/metrics", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    _, found = await control_scrape(off)  # counted all the same, for the control socket
    assert get(found, "llm_sidecar_requests_total", node="primary") == 1
    custom = await sidecar(config(primary, backup, server={"metrics_path": "/prom"}))
    assert (await client.get(custom.url + "/metrics", timeout=10)).status_code == 404
    assert get(await scrape(client, custom.url + "/prom"), "llm_sidecar_requests_total") == 0
    r = await client.post(custom.url + "/prom", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "GET"


async def test_with_a_client_key_metrics_ask_for_it_and_no_key_is_ever_exported(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    primary, backup = await fakes("primary", fail_rate=1.0, fault="error", status=401), await fakes("backup")
    server = {"api_key": "${SIDECAR_CLIENT_KEY}"}
    car = await sidecar(config(primary, backup, server=server), env=cli_env(SIDECAR_CLIENT_KEY=CLIENT_KEY))
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    r = await client.post(car.url + CHAT, json=chat(), headers=auth, timeout=10)
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "backup"
    assert (await client.get(car.url + "/metrics", timeout=10)).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.get(car.url + "/metrics", headers=wrong, timeout=10)).status_code == 401
    found = await scrape(client, car.url + "/metrics", headers=auth)
    assert get(found, "llm_sidecar_failovers_total", **{"from": "primary", "to": "backup", "reason": "auth"}) == 1
    assert get(await scrape(client, car.url + "/metrics", headers={"x-api-key": CLIENT_KEY}), "llm_sidecar_info") == 1
    text = (await client.get(car.url + "/metrics", headers=auth, timeout=10)).text
    control_text, _ = await control_scrape(car)  # the control socket needs no key
    secrets = [CLIENT_KEY, *NODE_KEYS.values()]
    for exposition in (text, control_text):
        for secret in secrets:
            assert secret not in exposition
            assert secret[-8:] not in exposition


async def test_health_and_manual_state_and_the_last_probe_are_gauges(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(config(primary, backup, checks={"active": {"interval": 0.2}, "passive": {}}))
    async with car.control() as ctl:
        assert (await ctl.post("/v1/nodes/primary/down", timeout=10)).status_code == 200
    for _ in range(50):  # the first probe of each node, at most a few hundred ms away
        found = await scrape(client, car.url + "/metrics")
        if get(found, "llm_sidecar_probe_last_timestamp_seconds", node="backup") > 0:
            break
        await asyncio.sleep(0.1)
    assert get(found, "llm_sidecar_node_state", node="primary", state="down") == 1
    assert get(found, "llm_sidecar_node_state", node="primary") == 1
    assert get(found, "llm_sidecar_node_manual_down", node="primary") == 1
    assert get(found, "llm_sidecar_node_available", node="primary") == 0
    assert get(found, "llm_sidecar_node_serving", node="backup") == 1
    assert get(found, "llm_sidecar_manual_changes_total", node="primary", manual="down") == 1
    assert get(found, "llm_sidecar_health_transitions_total", node="primary", state="down") == 1
    assert get(found, "llm_sidecar_probe_last_success", node="backup") == 1
    assert 0 < get(found, "llm_sidecar_probe_last_duration_seconds", node="backup") < 2
    probes = get(found, "llm_sidecar_probes_total", node="backup", result="ok")
    assert probes >= 1 and get(found, "llm_sidecar_probe_duration_seconds_count", node="backup") == probes
    r = await client.post(car.url + CHAT, json=chat(), timeout=10)
    assert r.headers["x-llm-sidecar-node"] == "backup"
    found = await scrape(client, car.url + "/metrics")
    assert get(found, "llm_sidecar_requests_total", node="backup", status="2xx") == 1
    assert get(found, "llm_sidecar_requests_total", node="primary") == 0
