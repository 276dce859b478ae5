"""Counting: each published event added to plain dicts keyed by label tuples, in the publisher, with no lock and
no prometheus_client object on the hot path (histograms are lists of per-bucket counts)."""

from __future__ import annotations

import logging
import weakref
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from sidecar.observe.events import Event

from .labels import (
    BUCKETS,
    CONTINUATION,
    MAX_LABEL_CHARS,
    MAX_SEEN_MODELS,
    NONE,
    OTHER,
    PROBE_BUCKETS,
    STATUS,
    model_label,
    reason_category,
)

if TYPE_CHECKING:
    from sidecar.nodes.runtime import Runtime

log = logging.getLogger("llm_sidecar")


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
        self.registry: Any = None  # its own prometheus_client registry, made at the first scrape (scrape.py)
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
