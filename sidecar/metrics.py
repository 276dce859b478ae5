"""Prometheus metrics: counted from the event hub in plain ints, exposed by prometheus_client at scrape time.

Counting. Every finished request is already published on the event hub as one `request` event (and
`health`, `manual`, `config` events as they happen). `attach` wraps the hub's `emit` so that each
event, once published, is also counted here, synchronously: nothing is queued, nothing is dropped
(an event reader of the hub may be dropped when it falls behind; a counter must not be), and no
subscriber slot of `max_event_subscribers` is taken. Counting is plain dict arithmetic keyed by
label tuples, with no lock and no prometheus_client object on the hot path; histograms are lists of
per-bucket counts. prometheus_client turns them into families only when someone scrapes.

Scraping. A collector of our own, in a registry of its own per runtime (never the global one: tests
and several sidecars in one process must not see each other's figures), yields the counters and
histograms above plus gauges read from the runtime at that moment: node state (one-hot), manual
drain, availability, the serving node, attempts in flight, models out per node, the last probe.
prometheus_client is imported at the first scrape, so a sidecar that is never scraped never pays
its import (about 50 ms) at start-up.

Labels are bounded. Node names come from the config. A model label is one of the model names the
config lists (the keys of the nodes' `models` tables, "*" aside), or one of the first MAX_SEEN_MODELS other
names a node answered with success (the common setup has no `models` table: its models are these), then
`other` for any other name, or `none` for a request without a model; a failure reason is one of REASONS. A
name is labelled only once a node accepted it, so a client inventing names fills at most the bound. No key,
header or body ever reaches a metric: the labels are node names, model names and fixed words.

Access. On the proxy listener the metrics answer at `[server] metrics_path` (default /metrics; ""
turns that route off, and only the route: counting goes on, for the control socket's GET /metrics).
When `[server] api_key` is set, the proxy listener's route asks for the same bearer key as /v1/*:
the figures name the configured models, the nodes and the traffic, which is what the key keeps
from other local users and from web pages that reach the port; Prometheus sends it with
`authorization: {credentials: ...}` in its scrape config. The control socket needs no key: only
this user can open it.
"""

from __future__ import annotations

import logging
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from sidecar.formats.errors import Send, send_error
from sidecar.nodes.health import State
from sidecar.observe.events import Event, EventHub

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from sidecar.nodes.runtime import Runtime

log = logging.getLogger("llm_sidecar")

PREFIX = "llm_sidecar_"
# Seconds, for LLM calls: from a cached answer in 10 ms to a long reasoning stream of 10 minutes.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Seconds, for an active probe (a GET /v1/models, its timeout 2 s by default).
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NONE = "none"  # no model in the request, no node that answered, no status
OTHER = "other"  # a model name the config does not list, past the bound of names seen
MAX_SEEN_MODELS = 32  # names labelled as themselves beyond the configured ones, first answered first
MAX_LABEL_CHARS = 100  # a longer name, or an unprintable one, is `other`
CONTINUATION = "continuation: "  # the prefix of a failed continuation's reason (forward.carry_on)
# What a failure reason (a free text, with errno strings and provider text in it) is counted as.
REASONS = frozenset(
    {
        "timeout", "connect", "reset", "http_5xx", "http_4xx", "rate_limited", "auth", "context_window",
        "error_event", "bad_response", "moved", "request_caused", "other",
    }
)  # fmt: skip
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
# Off only in the benchmark that measures what counting costs (bench/metrics_cost.py): read by `attach`.
COUNTING = True


def reason_category(reason: str) -> str:
    """The bounded category of a failure reason (see proxy/answer.py, nodes/transport.py, proxy/relay.py, proxy/forward.py)."""
    if reason.startswith(CONTINUATION):
        reason = reason[len(CONTINUATION) :]
    if reason.startswith("moved on:"):  # the node was judged out while the attempt waited: no failure
        return "moved"
    if reason.startswith("rate limited"):
        return "rate_limited"
    if reason.startswith("auth ("):
        return "auth"
    if reason.startswith("http "):
        return "http_5xx" if reason[5:6] == "5" else "http_4xx"
    if reason.startswith("overloaded ("):  # Anthropic's 529
        return "http_5xx"
    if reason == "context window exceeded":
        return "context_window"
    if reason.startswith("connect "):  # "connect failed (...)", "connect timeout": the node is unreachable
        return "connect"
    if "timeout" in reason or reason.startswith(("no first token", "no token before")):
        return "timeout"
    if reason.startswith(("connection ", "stream ended")):
        return "reset"
    if reason.startswith("error event"):
        return "error_event"
    if reason.startswith(
        ("bad content-type", "malformed event", "event larger", "response too large", "no data before",
         "redirect (", "continuation ended", "error in a ")
    ):  # fmt: skip
        return "bad_response"
    return "other"


def status_class(status: int) -> str:
    """2xx, 4xx, 5xx...; 499 (the client left) on its own; `none` when no status was set."""
    if status == 499:
        return "499"
    return STATUS_CLASSES.get(status // 100, NONE) if status > 0 else NONE


STATUS = {status: status_class(status) for status in range(100, 600)}  # looked up once per request


def model_label(model: str | None, known: frozenset[str]) -> str:
    """A configured model name as it is, `other` for any other, `none` for no model."""
    if model is None:
        return NONE
    return model if model in known else OTHER


def _add(counts: dict[Any, float], key: Any, value: float = 1) -> None:
    counts[key] = counts.get(key, 0) + value


def _observe(hist: dict[Any, list[float]], key: Any, value: float, bounds: tuple[float, ...] = BUCKETS) -> None:
    """One observation: its bucket's count (not cumulative: summed at scrape), then the sum at the end."""
    row = hist.get(key)
    if row is None:
        row = hist[key] = [0.0] * (len(bounds) + 2)  # the buckets, +Inf, the sum
    row[bisect_left(bounds, value)] += 1
    row[-1] += value


class Metrics:
    """The figures of one runtime: counters and histograms by label tuple, gauges read at scrape."""

    def __init__(self, runtime: Runtime) -> None:
        # Weak: the hub holds this (through its wrapped emit), and the runtime holds the hub.
        self.runtime = weakref.ref(runtime)
        self.upstream: object = None  # the generation `known` was taken from
        self.known: frozenset[str] = frozenset()
        self.seen: set[str] = set()  # names a node answered with success, labelled as themselves (bounded)
        # (node, model, status class, stream)
        self.requests: dict[tuple[str, str, str, str], float] = {}
        # (node, model, stream) -> bucket counts and sum, in seconds
        self.duration: dict[tuple[str, str, str], list[float]] = {}
        self.first_byte: dict[tuple[str, str, str], list[float]] = {}
        self.first_token: dict[tuple[str, str], list[float]] = {}
        self.attempts: dict[str, float] = {}  # node
        self.failures: dict[tuple[str, str], float] = {}  # node, reason
        self.failovers: dict[tuple[str, str, str], float] = {}  # from, to, reason
        self.retries: dict[tuple[str, str], float] = {}  # node, reason
        self.waits: dict[str, float] = {}  # node -> seconds
        self.continuations: dict[tuple[str, str, str], float] = {}  # from, to, reason
        self.tokens: dict[tuple[str, str, str], float] = {}  # node, model, type
        self.spend: dict[tuple[str, str], float] = {}  # node, model -> USD (spend/recorder.py prices the event)
        self.transitions: dict[tuple[str, str], float] = {}  # node, state
        self.model_events: dict[tuple[str, str, str], float] = {}  # node, model, what
        self.manual: dict[tuple[str, str], float] = {}  # node, down|auto
        self.reloads: dict[str, float] = {}  # ok|error
        self.probes: dict[tuple[str, str], float] = {}  # node, ok|fail
        self.probe_duration: dict[str, list[float]] = {}  # node
        self.recovery_probes: dict[tuple[str, str], float] = {}  # node, ok|fail: one-token requests (they cost)
        self.hedges: dict[tuple[str, str, str], float] = {}  # hedge node, node hedged, won|lost
        self.request_caused: dict[str, float] = {}  # how: 500, timeout, ...
        self.registry: CollectorRegistry | None = None
        self.errors = 0  # events that could not be counted (a bug): logged once

    # ------------------------------------------------------------------------------------------ counting

    def observe(self, event: Event) -> None:
        """Count one published event. Never raises: a bug here must not fail the request that published."""
        try:
            kind = event["type"]
            if kind == "request":
                self.request(event)
            elif kind == "health":
                self.health(event)
            elif kind == "manual":
                _add(self.manual, (event["node"], event["manual"]))
            elif kind == "probe":
                self.probe(event["node"], event["ok"], event["seconds"])
            elif kind == "recovery_probe":
                _add(self.recovery_probes, (event["node"], "ok" if event["ok"] else "fail"))
            elif kind == "config":
                _add(self.reloads, "ok" if event.get("ok") else "error")
        except Exception:
            self.errors += 1
            if self.errors == 1:
                log.exception("metrics: an event could not be counted (later ones are counted silently)")

    def models_known(self) -> frozenset[str]:
        runtime = self.runtime()
        if runtime is not None and runtime.upstream is not self.upstream:
            self.upstream = runtime.upstream
            self.known = frozenset(runtime.upstream.served)
        return self.known

    def request(self, e: Event) -> None:
        # Inlined dict arithmetic (no helper calls): this runs once per request.
        node: str | None = e["node"]
        label = node or NONE
        model = e["model"]
        if model is not None:
            runtime = self.runtime()
            if runtime is not None and runtime.upstream is not self.upstream:
                self.models_known()
            if model not in self.known and model not in self.seen:
                model = self.first_seen(model) if node is not None and e["status"] < 400 else OTHER
        else:
            model = NONE
        stream = "true" if e["stream"] else "false"
        counts = self.requests
        key4 = (label, model, STATUS.get(e["status"], NONE), stream)
        counts[key4] = counts.get(key4, 0) + 1
        key = (label, model, stream)
        total = e["total_ms"]
        if total is not None:
            total /= 1000
            row = self.duration.get(key) or self.row(self.duration, key)
            row[bisect_left(BUCKETS, total)] += 1
            row[-1] += total
        ttfb = e["ttfb_ms"]
        if ttfb is not None:
            ttfb /= 1000
            row = self.first_byte.get(key) or self.row(self.first_byte, key)
            row[bisect_left(BUCKETS, ttfb)] += 1
            row[-1] += ttfb
        ttft = e["ttft_ms"]
        if ttft is not None:
            _observe(self.first_token, (label, model), ttft / 1000)
        continued: list[dict[str, str]] = e["continued"]
        # The node that answered first (a continuation moves `node` on to the node that finished).
        served: str | None = continued[0]["from"] if continued else node
        failed: list[dict[str, Any]] = e["failed"]
        if failed:
            self.failed(failed, served)
        if hedged := e.get("hedged"):
            for hedge in hedged:
                _add(self.hedges, (hedge["node"], hedge["over"], "won" if hedge["won"] else "lost"))
        if (caused := e.get("request_caused")) is not None:
            _add(self.request_caused, caused)
        attempts = self.attempts
        if served is not None:
            attempts[served] = attempts.get(served, 0) + 1
        for c in continued:
            _add(attempts, c["to"])
            _add(self.continuations, (c["from"], c["to"], reason_category(c["reason"])))
        if node is not None:
            tokens = self.tokens
            if count := e["tokens_in"]:
                key = (label, model, "input")
                tokens[key] = tokens.get(key, 0) + count
            if count := e["tokens_out"]:
                key = (label, model, "output")
                tokens[key] = tokens.get(key, 0) + count
            if count := e["tokens_cached"]:
                key = (label, model, "cached")
                tokens[key] = tokens.get(key, 0) + count
            if usd := e.get("cost_usd"):
                spend = self.spend
                spend[(label, model)] = spend.get((label, model), 0.0) + usd

    def first_seen(self, model: str) -> str:
        """A name a node just answered: labelled as itself while the bound has room, else `other`."""
        if len(self.seen) >= MAX_SEEN_MODELS or len(model) > MAX_LABEL_CHARS or not model.isprintable():
            return OTHER
        self.seen.add(model)
        return model

    def label(self, model: str | None) -> str:
        """The label of a model the counters already know (configured, or seen), else `other`."""
        return model_label(model, self.models_known() | self.seen)

    @staticmethod
    def row(hist: dict[Any, list[float]], key: Any) -> list[float]:
        row = hist[key] = [0.0] * (len(BUCKETS) + 2)  # the buckets, +Inf, the sum
        return row

    def failed(self, failed: list[dict[str, Any]], served: str | None) -> None:
        """Failed attempts, in order: each is followed by the next attempt of the request (the same node:
        a retry; another: a failover) or by the node that answered. Failed continuations count as
        attempts and failures, never as failovers (those are counted as continuations)."""
        previous: tuple[str, str] | None = None
        for attempt in failed:
            node: str = attempt["node"]
            reason: str = attempt["reason"]
            category = "request_caused" if attempt.get("request_caused") else reason_category(reason)
            _add(self.attempts, node)
            _add(self.failures, (node, category))
            wait = attempt.get("wait_ms")
            if wait:
                _add(self.waits, node, wait / 1000)
            if reason.startswith(CONTINUATION):
                continue
            if previous is not None:
                self.step(previous, node)
            previous = (node, category)
        if previous is not None and served is not None:
            self.step(previous, served)

    def step(self, failed: tuple[str, str], to: str) -> None:
        node, category = failed
        if node == to:
            _add(self.retries, (node, category))
        else:
            _add(self.failovers, (node, to, category))

    def health(self, e: Event) -> None:
        model = e.get("model")
        if model is None:
            _add(self.transitions, (e["node"], e["after"]))
        else:  # a model rate-limited or ejected on one node
            _add(self.model_events, (e["node"], self.label(model), e["after"]))

    def probe(self, node: str, ok: bool, seconds: float) -> None:
        """An active probe's result (the checker notes each on the hub)."""
        _add(self.probes, (node, "ok" if ok else "fail"))
        _observe(self.probe_duration, node, seconds, PROBE_BUCKETS)

    # ------------------------------------------------------------------------------------------ scraping

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.collector_registry()), CONTENT_TYPE_LATEST

    def collector_registry(self) -> CollectorRegistry:
        if self.registry is None:
            from prometheus_client import CollectorRegistry
            from prometheus_client.process_collector import ProcessCollector

            registry = CollectorRegistry(auto_describe=False)
            metrics = self

            class Collector:
                def collect(self) -> Iterator[Metric]:
                    return metrics.families()

            registry.register(Collector())
            ProcessCollector(registry=registry)  # process_* (CPU, memory, open fds), as exporters have
            self.registry = registry
        return self.registry

    def families(self) -> Iterator[Metric]:
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
            "status class and stream.", ["node", "model", "status", "stream"], self.requests,
        )  # fmt: skip
        yield histogram(
            "request_duration_seconds", "Seconds from a request's arrival to its end (stream included).",
            ["node", "model", "stream"], self.duration,
        )  # fmt: skip
        yield histogram(
            "time_to_first_byte_seconds", "Seconds from a request's arrival to the first byte of the answer it got.",
            ["node", "model", "stream"], self.first_byte,
        )  # fmt: skip
        yield histogram(
            "time_to_first_token_seconds", "Seconds from a stream request's arrival to its first real token.",
            ["node", "model"], self.first_token,
        )  # fmt: skip
        yield counter("attempts_total", "Attempts sent to a node (first tries, retries, failovers, continuations).",
                      ["node"], self.attempts)  # fmt: skip
        yield counter("attempt_failures_total", "Failed attempts, by node and reason category.",
                      ["node", "reason"], self.failures)  # fmt: skip
        yield counter("failovers_total", "A failed attempt followed by an attempt on another node.",
                      ["from", "to", "reason"], self.failovers)  # fmt: skip
        yield counter("retries_total", "A failed attempt followed by another attempt on the same node.",
                      ["node", "reason"], self.retries)  # fmt: skip
        yield counter("retry_wait_seconds_total", "Seconds requests waited after a failure of this node "
                      "(Retry-After, backoff) before their next attempt.", ["node"], self.waits)  # fmt: skip
        yield counter("continuations_total", "Streams broken mid-answer and continued on a node.",
                      ["from", "to", "reason"], self.continuations)  # fmt: skip
        yield counter("tokens_total", "Tokens the nodes reported (cached: the part of input served from the "
                      "provider's prompt cache; do not sum over type).", ["node", "model", "type"], self.tokens)  # fmt: skip
        yield counter("spend_usd_total", "USD spent, priced from the tokens each node reported (docs/journal.md): "
                      "by the node that answered and the model asked.", ["node", "model"], self.spend)  # fmt: skip
        yield counter("health_transitions_total", "Node health state changes, by the state entered.",
                      ["node", "state"], self.transitions)  # fmt: skip
        yield counter("model_health_events_total", "A model rate-limited or ejected on one node.",
                      ["node", "model", "state"], self.model_events)  # fmt: skip
        yield counter("manual_changes_total", "Manual state set over the control socket (down or auto).",
                      ["node", "manual"], self.manual)  # fmt: skip
        yield counter("config_reloads_total", "Config reloads, by result.", ["result"], self.reloads)
        yield counter("probes_total", "Active health probes, by result.", ["node", "result"], self.probes)
        yield counter("recovery_probes_total", "Recovery probes (one-token requests of the kind that failed) sent to "
                      "an ejected node or model, by result.", ["node", "result"], self.recovery_probes)  # fmt: skip
        yield counter("hedges_total", "Hedged first tokens: a second attempt on `node` for a stream slow on `over`, "
                      "by whether it won.", ["node", "over", "result"], self.hedges)  # fmt: skip
        yield counter("request_caused_total", "Requests that failed the same way on nodes serving others: answered "
                      "as is, no node blamed.", ["how"], self.request_caused)  # fmt: skip
        yield histogram("probe_duration_seconds", "Seconds an active health probe took.", ["node"],
                        self.probe_duration, PROBE_BUCKETS)  # fmt: skip
        runtime = self.runtime()
        if runtime is not None:
            dropped = runtime.recorder.dropped() if runtime.recorder is not None else {}
            yield counter("journal_dropped_total", "Request records the journal dropped (its queue full while the "
                          "writer was behind or failing), by why.", ["reason"], dict(dropped))  # fmt: skip
            yield from self.gauges(runtime)

    def gauges(self, runtime: Runtime) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily as Gauge

        upstream = runtime.upstream
        now = upstream.clock()
        serving = {upstream.serving(api) for api in {n.config.api for n in upstream.nodes}}  # one per format
        info = Gauge(PREFIX + "info", "The running sidecar (always 1).", labels=["version"])
        info.add_metric([runtime.version], 1)
        yield info
        yield Gauge(PREFIX + "start_time_seconds", "When the sidecar started (Unix time).", value=runtime.started)
        state = Gauge(
            PREFIX + "node_state", "A node's health state (1 for the state it is in).", labels=["node", "state"]
        )
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
                label = self.label(model)
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


_ATTACHED: weakref.WeakKeyDictionary[EventHub, Metrics] = weakref.WeakKeyDictionary()


def attach(runtime: Runtime) -> Metrics:
    """The runtime's metrics, counting from now on every event its hub publishes (once per hub)."""
    hub = runtime.events
    metrics = _ATTACHED.get(hub)
    if metrics is not None:
        return metrics
    metrics = _ATTACHED[hub] = Metrics(runtime)
    if COUNTING:
        hub.observers.append(metrics.observe)
    return metrics


async def answer(runtime: Runtime, scope: dict[str, Any], send: Send, authorized: bool) -> None:
    """GET `metrics_path` on the proxy listener; `authorized`: the request carried the sidecar's own key
    (checked by the proxy as for /v1/*), or none is set."""
    if scope["method"] != "GET":
        await send_error(send, 405, "the metrics answer GET only", "invalid_request_error", "method_not_allowed",
                         [(b"allow", b"GET")])  # fmt: skip
        return
    if not authorized:
        await send_error(send, 401, "invalid or missing sidecar API key", "invalid_request_error", "invalid_api_key")
        return
    body, content_type = attach(runtime).exposition()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
