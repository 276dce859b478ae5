"""Prometheus metrics: counted from the event hub in plain ints, exposed by prometheus_client at scrape time.

Counting. Every finished request is already published on the event hub as one `request` event (and
`health`, `manual`, `config` events as they happen). `attach` wraps the hub's `emit` so that each
event, once published, is also counted here (counts.py), synchronously: nothing is queued, nothing is dropped
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

Owns: counting (counts.py), the label values and their bounds (labels.py), the exposition at scrape time
(scrape.py), and the /metrics route. Imports nodes, config, formats and observe; never the proxy or the
control plane, which import it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from sidecar.formats.errors import Send, send_error
from sidecar.observe.events import EventHub

from .counts import Metrics
from .labels import BUCKETS, MAX_SEEN_MODELS, REASONS, model_label, reason_category, status_class
from .scrape import exposition, registry_of

if TYPE_CHECKING:
    from sidecar.nodes.runtime import Runtime

__all__ = [
    "BUCKETS", "MAX_SEEN_MODELS", "REASONS", "Metrics", "answer", "attach", "exposition", "model_label",
    "reason_category", "registry_of", "status_class",
]  # fmt: skip

# Off only in the benchmark that measures what counting costs (bench/metrics_cost.py): read by `attach`.
COUNTING = True

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
    body, content_type = exposition(attach(runtime))
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
