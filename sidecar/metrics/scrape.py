"""Scraping: the counts turned into Prometheus families, plus gauges read from the runtime at that moment (node
state, manual drain, availability, the serving node, attempts in flight, models out, the last probe, spend,
journal drops). prometheus_client is imported here, at the first scrape, never at start-up."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from sidecar.nodes.health import State

from .labels import BUCKETS, PREFIX, PROBE_BUCKETS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from sidecar.nodes.runtime import Runtime

    from .counts import Metrics


def exposition(metrics: Metrics) -> tuple[bytes, str]:
    """The text exposition and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry_of(metrics)), CONTENT_TYPE_LATEST


def registry_of(metrics: Metrics) -> CollectorRegistry:
    """The metrics' own registry (never the global one: several sidecars in one process, tests)."""
    kept: CollectorRegistry | None = metrics.registry
    if kept is None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.process_collector import ProcessCollector

        registry = CollectorRegistry(auto_describe=False)

        class Collector:
            def collect(self) -> Iterator[Metric]:
                return families(metrics)

        registry.register(Collector())
        ProcessCollector(registry=registry)  # process_* (CPU, memory, open fds), as exporters have
        metrics.registry = kept = registry
    return kept


def families(metrics: Metrics) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    def counter(name: str, doc: str, labels: list[str], counts: dict[Any, float]) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
        for key, value in counts.items():
            family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
        return family

    def histogram(
        name: str, doc: str, labels: list[str], rows: dict[Any, list[float]], bounds: tuple[float, ...] = BUCKETS
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(PREFIX + name, doc, labels=labels)
        edges = [repr(float(b)) for b in bounds] + ["+Inf"]
        for key, row in rows.items():
            cumulative, buckets = 0.0, []
            for edge, count in zip(edges, row, strict=False):
                cumulative += count
                buckets.append((edge, cumulative))
            family.add_metric(list(key) if isinstance(key, tuple) else [key], buckets, row[-1])
        return family

    yield counter(
        "requests_total", "Client requests finished, by the node that answered (none: no node did), model, "
        "status class and stream.", ["node", "model", "status", "stream"], metrics.requests,
    )  # fmt: skip
    yield histogram(
        "request_duration_seconds", "Seconds from a request's arrival to its end (stream included).",
        ["node", "model", "stream"], metrics.duration,
    )  # fmt: skip
    yield histogram(
        "time_to_first_byte_seconds", "Seconds from a request's arrival to the first byte of the answer it got.",
        ["node", "model", "stream"], metrics.first_byte,
    )  # fmt: skip
    yield histogram(
        "time_to_first_token_seconds", "Seconds from a stream request's arrival to its first real token.",
        ["node", "model"], metrics.first_token,
    )  # fmt: skip
    yield counter("attempts_total", "Attempts sent to a node (first tries, retries, failovers, continuations).",
                  ["node"], metrics.attempts)  # fmt: skip
    yield counter("attempt_failures_total", "Failed attempts, by node and reason category.",
                  ["node", "reason"], metrics.failures)  # fmt: skip
    yield counter("failovers_total", "A failed attempt followed by an attempt on another node.",
                  ["from", "to", "reason"], metrics.failovers)  # fmt: skip
    yield counter("retries_total", "A failed attempt followed by another attempt on the same node.",
                  ["node", "reason"], metrics.retries)  # fmt: skip
    yield counter("retry_wait_seconds_total", "Seconds requests waited after a failure of this node "
                  "(Retry-After, backoff) before their next attempt.", ["node"], metrics.waits)  # fmt: skip
    yield counter("continuations_total", "Streams broken mid-answer and continued on a node.",
                  ["from", "to", "reason"], metrics.continuations)  # fmt: skip
    yield counter("tokens_total", "Tokens the nodes reported (cached: the part of input served from the "
                  "provider's prompt cache; do not sum over type).", ["node", "model", "type"], metrics.tokens)  # fmt: skip
    yield counter("spend_usd_total", "USD spent, priced from the tokens each node reported (docs/journal.md): "
                  "by the node that answered and the model asked.", ["node", "model"], metrics.spend)  # fmt: skip
    yield counter("health_transitions_total", "Node health state changes, by the state entered.",
                  ["node", "state"], metrics.transitions)  # fmt: skip
    yield counter("model_health_events_total", "A model rate-limited or ejected on one node.",
                  ["node", "model", "state"], metrics.model_events)  # fmt: skip
    yield counter("manual_changes_total", "Manual state set over the control socket (down or auto).",
                  ["node", "manual"], metrics.manual)  # fmt: skip
    yield counter("config_reloads_total", "Config reloads, by result.", ["result"], metrics.reloads)
    yield counter("probes_total", "Active health probes, by result.", ["node", "result"], metrics.probes)
    yield counter("recovery_probes_total", "Recovery probes (one-token requests of the kind that failed) sent to "
                  "an ejected node or model, by result.", ["node", "result"], metrics.recovery_probes)  # fmt: skip
    yield counter("hedges_total", "Hedged first tokens: a second attempt on `node` for a stream slow on `over`, "
                  "by whether it won.", ["node", "over", "result"], metrics.hedges)  # fmt: skip
    yield counter("request_caused_total", "Requests that failed the same way on nodes serving others: answered "
                  "as is, no node blamed.", ["how"], metrics.request_caused)  # fmt: skip
    yield histogram("probe_duration_seconds", "Seconds an active health probe took.", ["node"],
                    metrics.probe_duration, PROBE_BUCKETS)  # fmt: skip
    runtime = metrics.runtime()
    if runtime is not None:
        dropped = runtime.recorder.dropped() if runtime.recorder is not None else {}
        yield counter("journal_dropped_total", "Request records the journal dropped (its queue full while the "
                      "writer was behind or failing), by why.", ["reason"], dict(dropped))  # fmt: skip
        yield from gauges(metrics, runtime)


def gauges(metrics: Metrics, runtime: Runtime) -> Iterable[Metric]:
    from prometheus_client.core import GaugeMetricFamily as Gauge

    upstream = runtime.upstream
    now = upstream.clock()
    serving = {upstream.serving(api) for api in {n.config.api for n in upstream.nodes}}  # one per format
    info = Gauge(PREFIX + "info", "The running sidecar (always 1).", labels=["version"])
    info.add_metric([runtime.version], 1)
    yield info
    yield Gauge(PREFIX + "start_time_seconds", "When the sidecar started (Unix time).", value=runtime.started)
    state = Gauge(PREFIX + "node_state", "A node's health state (1 for the state it is in).", labels=["node", "state"])
    manual = Gauge(PREFIX + "node_manual_down", "1 when the node is drained by hand.", labels=["node"])
    available = Gauge(PREFIX + "node_available", "1 when the node may take normal traffic now "
                      "(healthy, not drained, not inside a Retry-After, not out for budget).", labels=["node"])  # fmt: skip
    serves = Gauge(
        PREFIX + "node_serving", "1 for the node that takes traffic of its format (api) now.", labels=["node"]
    )
    in_flight = Gauge(PREFIX + "in_flight_requests", "Attempts in flight on a node.", labels=["node"])
    models_out = Gauge(PREFIX + "models_out", "Models out on a node (rate-limited or ejected) while the node "
                       "may be fine; other counts every unlisted name.", labels=["node", "model"])  # fmt: skip
    probe_ok = Gauge(PREFIX + "probe_last_success", "1 when the last active probe passed.", labels=["node"])
    probe_seconds = Gauge(PREFIX + "probe_last_duration_seconds", "Seconds the last active probe took.",
                          labels=["node"])  # fmt: skip
    probe_time = Gauge(PREFIX + "probe_last_timestamp_seconds", "When the last active probe ended (Unix time).",
                       labels=["node"])  # fmt: skip
    wall = time.time()
    for node in upstream.nodes:
        name = node.name
        health = node.health
        current = health.state
        for s in State:
            state.add_metric([name, str(s)], 1 if s is current else 0)
        manual.add_metric([name], 1 if health.manual_down else 0)
        usable = health.available(now) and runtime.budgets.node_out(name, wall) is None
        available.add_metric([name], 1 if usable else 0)
        serves.add_metric([name], 1 if node in serving else 0)
        in_flight.add_metric([name], node.stats.in_flight)
        out: dict[str, int] = {}
        for model, _ in node.models.out(now):
            label = metrics.label(model)
            out[label] = out.get(label, 0) + 1
        for label, count in out.items():
            models_out.add_metric([name, label], count)
        probe = node.last_probe
        active = node.config.checks.active
        if probe is not None and active is not None:
            probe_ok.add_metric([name], 1 if probe["status"] in active.healthy_http_statuses else 0)
            probe_seconds.add_metric([name], probe["latency_ms"] / 1000)
            probe_time.add_metric([name], probe["time"])
    yield from (state, manual, available, serves, in_flight, models_out, probe_ok, probe_seconds, probe_time)
