"""The control API's JSON shapes, defined once (documented in docs/control-api.md).

The control server builds them (`control/status.py`); the CLI, the monitor and the tests
read them through these names. Plain types, no imports from the server, so the
monitor can use them without pulling the server in.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

NodeStateName = Literal["healthy", "unhealthy", "ejected", "down"]


class CountersJSON(TypedDict):
    successes: int
    http_failures: int
    tcp_failures: int
    timeouts: int


class ProbeJSON(TypedDict):
    time: float
    status: int | None
    latency_ms: float
    result: str


class ActiveJSON(TypedDict):
    enabled: bool
    healthy: bool
    counters: CountersJSON
    last_probe: ProbeJSON | None


class PassiveJSON(TypedDict):
    enabled: bool
    ejected_until: float | None
    ejections: int
    counters: CountersJSON


class TrafficJSON(TypedDict):
    requests: int  # since the sidecar started, as errors
    errors: int
    # The last `window_s` seconds, the span rps, p50_ms and p95_ms cover too (newer sidecars: a monitor
    # may attach to an older one, so not required).
    window_s: NotRequired[float]
    window_requests: NotRequired[int]
    window_errors: NotRequired[int]
    in_flight: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    tokens_in: int
    tokens_out: int
    tokens_cached: int
    retries: int
    continuations: int
    probes: int  # recovery probes sent to the node (each a tiny real request: it costs tokens)
    probes_failed: int


class ModelStateJSON(TypedDict):
    """A model that is out on a node while the node itself may be fine."""

    model: str
    state: Literal["rate limited", "ejected"]
    reason: str
    until: float | None
    instead: NotRequired[str | None]  # the node requests for this model go to meanwhile (None: none is left)


class NodeJSON(TypedDict):
    name: str
    url: str
    api: Literal["openai", "anthropic"]  # the request format the node speaks
    priority: int
    weight: int
    state: NodeStateName
    manual: Literal["auto", "down"]
    serving: bool
    reason: str
    changed_at: float | None
    blocked_until: float | None
    active: ActiveJSON
    passive: PassiveJSON
    traffic: TrafficJSON
    models: list[ModelStateJSON]
    # The first-token limit in force per model seen ("" for requests naming none), in seconds: learned from
    # the model's own recent first tokens on this node, between timeout.first_token_min and first_token.
    first_token_limits: dict[str, float]
    # While the node is out for budget: which budget, what was spent, when it resets (newer sidecars).
    budget: NotRequired[str | None]


class SidecarJSON(TypedDict):
    version: str
    pid: int
    uptime_s: float
    started_at: float
    listen: str
    config_path: str
    config_loaded_at: float
    control_socket: str


class StatusJSON(TypedDict):
    sidecar: SidecarJSON
    serving: str | None
    nodes: list[NodeJSON]
    spend: NotRequired[SpendJSON]  # newer sidecars


class ListenerJSON(TypedDict):
    """What `llm-sidecar status` found on the proxy's listen address (the control API cannot see it from
    inside): GET /healthz answered in time, with any status (503 is a provider outage, not a dead listener)."""

    address: str  # host:port asked (loopback for a wildcard listen)
    answering: bool
    healthz: int | None  # the status /healthz answered, None without an answer


class StatusReportJSON(StatusJSON):
    """`llm-sidecar status --json`: GET /v1/status, and the listener as the CLI found it."""

    listener: ListenerJSON


class ManualJSON(TypedDict):
    node: str
    manual: Literal["auto", "down"]
    state: NodeStateName
    serving: str | None


class FailoverJSON(TypedDict):
    down: str
    serving: str | None


class ReloadJSON(TypedDict):
    ok: bool
    config_path: str
    nodes: list[str]


class EventJSON(TypedDict, total=False):
    """Every event has `type`, `seq` and `time`; the rest depends on the type (see docs/control-api.md)."""

    type: Literal["request", "health", "manual", "config", "budget", "missed"]
    seq: int
    time: float


class NodeSpendJSON(TypedDict):
    """One node's spend: today and this month (local calendar), its budget, and why it is out if it is."""

    node: str
    today_usd: float
    month_usd: float
    daily_usd: float | None
    monthly_usd: float | None
    over: str | None  # the spent budget in words, while the node is out for it
    until: float | None  # when that budget resets (Unix time)


class ModelSpendJSON(TypedDict):
    node: str
    model: str | None  # as sent to the node
    today_usd: float
    requests: int  # priced requests today


class SpendJSON(TypedDict):
    """What was spent (docs/journal.md): today and this month, by node and by (node, model) today."""

    day: str  # the local date, YYYY-MM-DD
    today_usd: float
    month_usd: float
    daily_usd: float | None  # the whole sidecar's budget ([budget])
    monthly_usd: float | None
    day_ends_at: float
    month_ends_at: float
    over: str | None  # the sidecar's spent budget in words, while new requests get 429
    unpriced_today: int  # answered requests with token counts that no price applied to
    prices_as_of: str  # the date of the shipped price table
    nodes: list[NodeSpendJSON]
    models: list[ModelSpendJSON]


class StepJSON(TypedDict):
    """One attempt of a request, as the journal and GET /v1/requests/{id} show it."""

    node: str
    kind: str  # first | retry (the same node again) | failover (another node) | hedge (won) | continuation
    outcome: str  # failed | moved (its node was judged out while it waited: no verdict) | answered
    reason: str | None  # what the attempt met (failed), what broke the stream (a continuation)
    fault: str | None  # http | tcp | timeout, for a failure that counts against the node
    request_caused: bool  # the request caused that failure (no node blamed: docs/failover.md)
    wait_ms: float | None  # waited after it, before the next attempt
    ms: float | None  # the attempt's own time


class RequestJSON(TypedDict):
    """One finished request in detail: GET /v1/requests/{id} (docs/control-api.md), `llm-sidecar log show`."""

    id: str
    client_id: str | None
    time: float  # when it ended
    method: str
    path: str
    api: str
    api_upstream: str | None
    model: str | None
    model_served: str | None
    node: str | None
    status: int
    stream: bool
    attempts: int
    failovers: int
    ttfb_ms: float | None
    ttft_ms: float | None
    total_ms: float | None
    tokens_in: int | None
    tokens_out: int | None
    tokens_cached: int | None
    tokens_cache_write: int | None
    tokens_reasoning: int | None
    cost_usd: float | None
    error: str | None
    steps: list[StepJSON]
    marks: dict[str, object]  # request_caused, hedged, translated, form, skipped, trace_id, span_id (when set)
    bodies: bool  # the journal holds its bodies (`llm-sidecar log show`, `replay`)
    source: Literal["recent", "journal"]  # the sidecar's memory of its last events, or the journal's file
