"""The config's schema: frozen dataclasses, one per table of `llm-sidecar.toml`, and their defaults.

Field names follow Apache APISIX's upstream object. Reading a file into them, with every error named
by file and key, is load.py's job.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.formats.dialect import Api
from sidecar.formats.translate.ir import CHAT, MESSAGES, RESPONSES, Form

CONFIG_ENV = "LLM_SIDECAR_CONFIG"
CONFIG_NAME = "llm-sidecar.toml"
DEFAULT_LISTEN = "127.0.0.1:8787"
# 529: Anthropic's overloaded_error.
DEFAULT_RETRY_STATUSES = (401, 402, 403, 429, 500, 502, 503, 504, 529)
# How a node continues a partial answer (docs/failover.md lists providers): "prefill", a trailing assistant
# message; "prefix" / "partial", the same marked `"prefix": true` / `"partial": true`;
# "continue_final_message", the same with vLLM's `continue_final_message` request fields.
CONTINUATIONS = ("none", "prefill", "prefix", "partial", "continue_final_message")
# How a node out for a failure of real traffic comes back: "probe", the smallest real request of the kind
# that failed, sent by the sidecar every few seconds (a one-token answer: it costs tokens); "trial", the
# next user request after the ejection time (costs no tokens, but that request pays if the node still fails).
RECOVERIES = ("probe", "trial")
# Bounds keep every value printable (Python refuses str() of ints past 4300 digits) and the
# arithmetic on them sane; they are far past any useful setting.
SECONDS_MAX = 1_000_000.0
COUNT_MAX = 1_000_000
BYTES_MAX = 1 << 32
# sun_path is 108 bytes on Linux (104 on the BSDs and macOS), the terminating NUL included.
UNIX_PATH_MAX = 103 if sys.platform == "darwin" or "bsd" in sys.platform else 107


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    send: float = 30.0
    read: float = 120.0  # the longest silence between bytes
    # From sending a streamed request to its first real token (comments and role-only deltas do
    # not count): a silent node costs this, not `read`. 60 s covers a long prompt's prefill and
    # models that stream their reasoning; raise it (and read) for models that think in silence.
    first_token: float = 60.0
    # The first-token limit learns from each (node, model)'s own recent first tokens (nodes/ttft.py) and
    # never goes below this; set it to first_token to pin the limit.
    first_token_min: float = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    """How the sidecar retries (see docs/failover.md, "Retries after each kind of failure"): it is the only retry owner for a request."""

    max_wait: float = 5.0  # the longest Retry-After waited out on the same node; longer → fail over
    same_node: int = 1  # same-node retries after a 5xx or a connection reset, before failing over
    backoff: float = 0.5  # the first backoff (s); doubles per retry, jittered
    max_backoff: float = 4.0
    attempts_per_node: int = 3  # attempts on one node for one request


@dataclass(frozen=True)
class ActiveCheck:
    http_path: str = "/v1/models"
    interval: float = 5.0
    timeout: float = 2.0
    healthy_successes: int = 1
    healthy_http_statuses: frozenset[int] = frozenset({200})
    unhealthy_http_failures: int = 3
    unhealthy_tcp_failures: int = 2
    unhealthy_timeouts: int = 2


@dataclass(frozen=True)
class PassiveCheck:
    healthy_successes: int = 1
    unhealthy_http_statuses: frozenset[int] = frozenset(DEFAULT_RETRY_STATUSES)
    unhealthy_http_failures: int = 3
    unhealthy_tcp_failures: int = 2
    unhealthy_timeouts: int = 2
    # Not in APISIX: without active checks an ejected node would never see traffic
    # again, so it gets a trial request after this cool-down (doubling, capped).
    base_ejection_time: float = 10.0
    max_ejection_time: float = 300.0


@dataclass(frozen=True)
class Hedge:
    """[upstream.hedge]: a stream with no first token after `after` seconds (or, `learned`, after its
    (node, model)'s own p95) is also sent to the next usable node; the first real token wins. At most
    `budget` of the requests of the last minute are hedged."""

    after: float = 1.0
    learned: bool = False  # after = "p95"
    budget: float = 0.05


@dataclass(frozen=True)
class Checks:
    active: ActiveCheck | None = None
    passive: PassiveCheck | None = None

    @property
    def retry_statuses(self) -> frozenset[int]:
        """Statuses that make an attempt fail over, even with passive checks off."""
        return (self.passive or PassiveCheck()).unhealthy_http_statuses


@dataclass(frozen=True)
class Price:
    """What a model costs, in USD per million tokens (docs/journal.md). Prompt tokens read from the provider's
    cache cost `cached_input`, those written to it (Anthropic's cache creation) `cache_write`; unset, `input`."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class Budget:
    """Spend caps in USD per local calendar day and month; unset: no cap."""

    daily_usd: float | None = None
    monthly_usd: float | None = None


@dataclass(frozen=True)
class JournalConfig:
    """The request journal (docs/journal.md): one SQLite row per request, written off the data path."""

    enabled: bool = True
    path: str = ""  # "" = $XDG_STATE_HOME/llm-sidecar/journal.db, else ~/.local/state/llm-sidecar/journal.db
    retention_days: float = 30.0  # rows older than this are pruned
    max_bytes: int = 256 * 1024 * 1024  # the oldest rows are pruned past this size
    bodies: bool = False  # keep request and response bodies (compressed, keys redacted), for `log show` and `replay`
    max_body_bytes: int = 1024 * 1024  # of each body kept; a longer one is cut (and cannot be replayed)


@dataclass(frozen=True)
class Node:
    name: str
    url: str
    weight: int = 1
    priority: int = 0
    api_key: str | None = field(default=None, repr=False, compare=False)
    api_key_env: str | None = None
    url_had_v1: bool = field(default=False, compare=False)  # the file's url ended in /v1 (dropped: see parse_url)
    models: Mapping[str, str] = field(default_factory=dict)
    checks: Checks = field(default_factory=Checks)
    timeout: Timeouts = field(default_factory=Timeouts)  # the upstream's, with this node's overrides
    continuation: str = "none"  # how this node continues a broken stream: CONTINUATIONS
    api: Api = "openai"  # the request format it speaks (formats/dialect.py)
    recovery: str = "probe"  # RECOVERIES: how it comes back after real traffic ejected it
    translate: bool = False  # it also serves requests of the other formats, translated (docs/translation.md)
    responses: bool = True  # an "openai" node implements the Responses API itself (false: translated to chat)
    price: Price | None = None  # what everything it serves costs, unless `prices` names the model
    prices: Mapping[str, Price] = field(default_factory=dict)  # per model (as asked or as sent to the node)
    budget: Budget | None = None  # past it the node is out (reason: budget) until the cap resets

    def serves(self, model: str) -> bool:
        """Whether requests for `model` may come here: no `models` table serves anything; a table serves
        its keys, and anything else only with a "*" entry."""
        return not self.models or model in self.models or "*" in self.models

    def target(self, form: Form) -> Form | None:
        """The format a request of `form` goes to this node in: `form` itself when the node speaks it, the
        format it is translated to, or None when the node cannot take it."""
        if self.api == "anthropic":
            return MESSAGES if form == MESSAGES or self.translate else None
        if form == CHAT or (form == RESPONSES and self.responses):
            return form
        return CHAT if self.translate else None

    def rewrite_model(self, model: str) -> str:
        """Exact match, else the "*" entry, else the model unchanged."""
        return self.models.get(model) or self.models.get("*") or model


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    control_socket: str = ""
    api_key: str | None = field(default=None, repr=False, compare=False)
    api_key_env: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    # The server layer's limits against slow or hostile clients (see docs/security.md).
    max_header_bytes: int = 64 * 1024  # request line and headers; larger gets 431
    header_timeout: float = 10.0  # seconds to receive a request's line and headers
    body_timeout: float = 60.0  # seconds to receive a request's whole body
    keepalive_timeout: float = 30.0  # seconds an idle client connection stays open
    max_connections: int = 4096  # open client connections (also bounded by the open-file limit)
    max_event_subscribers: int = 64  # control API /v1/events readers at once; 503 past it
    metrics_path: str = "/metrics"  # Prometheus metrics on the proxy listener; "" = off (the control socket has them)
    watch: bool = True  # re-read the config file when it is saved
    # A file of NAME=value lines (systemd's EnvironmentFile) whose values `${VAR}` keys are read from before the
    # environment's; read again on every reload, so a new key needs no restart. "" = none. Resolved: relative
    # paths are the config file's directory's.
    env_file: str = ""
    # Listening beyond loopback without api_key is refused unless this is true (a firewall closes the port).
    allow_remote_without_key: bool = False

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class UpstreamConfig:
    nodes: tuple[Node, ...]
    type: str = "roundrobin"
    retries: int | None = None  # a cap on retries per request; None: the retry policy's bounds only
    retry_timeout: float = 30.0  # seconds in which retries and waits may start; first tries always may
    timeout: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Seconds a conversation stays on the node that last served it (prompt-cache affinity), among the
    # equal nodes of one priority level; 0 = off. Providers keep a prompt cache about 5-10 minutes.
    affinity_ttl: float = 300.0
    # What the sidecar holds of an answer before sending it (a non-stream body is read whole so a
    # cut can still fail over); past it, 502 JSON and a failure of the node.
    max_response_bytes: int = 64 * 1024 * 1024
    # What it holds of all answers at once; past it a success is streamed as it arrives (a cut can no longer
    # fail over), an error answer refused with a 503. Two answers at the cap; with the ~45 MB the sidecar
    # needs itself it stays inside the README's Kubernetes limit (256Mi). In a file, at least
    # max_response_bytes (its default follows a larger one).
    max_held_bytes: int = 128 * 1024 * 1024
    recovery: str = "probe"  # RECOVERIES: the nodes' default
    hedge: Hedge | None = None  # off unless [upstream.hedge] is given


@dataclass(frozen=True)
class TelemetryConfig:
    """OpenTelemetry traces (docs/telemetry.md): on when an OTLP endpoint is named here or in the standard
    OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variables, unless `enabled` is false."""

    enabled: bool = True
    endpoint: str = ""  # the OTLP/HTTP base URL (the sidecar appends /v1/traces); "" = from the environment
    content: bool = False  # export prompts and completions (gen_ai.input.messages, gen_ai.output.messages)


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    upstream: UpstreamConfig
    path: str = "<memory>"
    journal: JournalConfig = field(default_factory=JournalConfig)
    budget: Budget = field(default_factory=Budget)  # the whole sidecar's: past it, 429 until it resets
    prices: Mapping[str, Price] = field(default_factory=dict)  # by model, over the shipped table, for every node
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
