"""The commented starter config written by `llm-sidecar init` (data by tomli-w, comments by us)."""

from __future__ import annotations

from typing import Any

import tomli_w

from .schema import DEFAULT_LISTEN, DEFAULT_RETRY_STATUSES, RetryPolicy, ServerConfig, TelemetryConfig, UpstreamConfig

HEADER = """\
# llm-sidecar configuration. Field names follow Apache APISIX's upstream object.
# Keys are never stored here: api_key = "${VAR}" reads the environment variable VAR.
# Validate with `llm-sidecar check`; a running sidecar re-reads it when it is saved and on `llm-sidecar reload`.
"""

SECTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "# listen: where the agent connects (base_url = http://127.0.0.1:8787/v1).\n"
        '# control_socket: "" = $XDG_RUNTIME_DIR/llm-sidecar.sock, else ~/.llm-sidecar/control.sock\n'
        '# api_key = "${SIDECAR_CLIENT_KEY}" would make clients send that bearer key.\n'
        "# max_body_bytes: larger requests get a 413 JSON error.\n"
        "# max_header_bytes: the request line and headers; larger get a 431 JSON error.\n"
        "# header_timeout: seconds a client has to send the request line and headers.\n"
        "# body_timeout: seconds a client has to send the whole request body.\n"
        "# keepalive_timeout: seconds an idle client connection stays open.\n"
        "# max_connections: client connections at once (also bounded by the open-file limit).\n"
        "# max_event_subscribers: monitors reading the control socket's events at once; 503 past it.\n"
        '# metrics_path: Prometheus metrics on this listener (asks for api_key when set); "" = off here,\n'
        "#   the control socket's GET /metrics stays.\n"
        "# watch: re-read this file when it is saved (a broken edit is refused, the running config stays);\n"
        "#   false = only on `llm-sidecar reload` or SIGHUP.\n"
        "# env_file: a file of NAME=value lines (systemd's EnvironmentFile) the ${VAR} keys are read from first;\n"
        '#   read again on every reload, so a new node\'s key needs no restart. "" = none.\n'
        "# allow_remote_without_key: a listen other machines reach (0.0.0.0) needs api_key unless this is true.\n"
        "# Changes to listen, control_socket, max_header_bytes, the three timeouts and max_connections need a restart.",
        {
            "server": {
                "listen": DEFAULT_LISTEN,
                "control_socket": "",
                "max_body_bytes": ServerConfig.max_body_bytes,
                "max_header_bytes": ServerConfig.max_header_bytes,
                "header_timeout": ServerConfig.header_timeout,
                "body_timeout": ServerConfig.body_timeout,
                "keepalive_timeout": ServerConfig.keepalive_timeout,
                "max_connections": ServerConfig.max_connections,
                "max_event_subscribers": ServerConfig.max_event_subscribers,
                "metrics_path": ServerConfig.metrics_path,
                "watch": ServerConfig.watch,
                "env_file": ServerConfig.env_file,
                "allow_remote_without_key": ServerConfig.allow_remote_without_key,
            }
        },
    ),
    (
        "# type: smooth weighted round-robin inside one priority level.\n"
        "# retry_timeout: seconds after a request arrived in which retries and waits may start (a first try\n"
        "#   on each node always may); 0 = no limit. retries = N would cap the retries of one request.\n"
        "# max_response_bytes: the most of an answer held before sending it; past it, 502 JSON and a node failure.\n"
        "# max_held_bytes: the most of all answers held at once (>= max_response_bytes); past it a success is\n"
        "#   streamed as it arrives (a cut can no longer fail over), an error answer gets 503.\n"
        "# timeout.read: the longest silence between bytes. timeout.first_token: from sending a streamed\n"
        "#   request to its first real token (not keep-alives, not a role-only delta); a silent node costs\n"
        "#   this, not read. Raise both for models that think in silence. A node may override them:\n"
        "#   timeout = { first_token = 300, read = 300 } in its [[upstream.nodes]] table.\n"
        "# affinity_ttl: seconds a conversation stays on the node that served it, among equal nodes of one\n"
        "#   priority level, so the provider's prompt cache is kept; 0 = off. Clients may send x-session-id.",
        {
            "upstream": {
                "type": "roundrobin",
                "retry_timeout": UpstreamConfig.retry_timeout,
                "max_response_bytes": UpstreamConfig.max_response_bytes,
                "max_held_bytes": UpstreamConfig.max_held_bytes,
                "affinity_ttl": UpstreamConfig.affinity_ttl,
                "timeout": {"connect": 5, "send": 30, "read": 120, "first_token": 60},
            }
        },
    ),
    (
        "# The retry policy (the sidecar is the only retry owner: clients get x-should-retry: false).\n"
        "# max_wait: a 429 whose Retry-After is at most this long is waited out on the same node; longer fails over.\n"
        "# same_node: retries on the same node after a 5xx, a reset or a short Retry-After, before failing over.\n"
        "# backoff, max_backoff: the jittered wait before a retry (doubling); attempts_per_node: per request.",
        {
            "upstream": {
                "retry": {
                    "max_wait": RetryPolicy.max_wait,
                    "same_node": RetryPolicy.same_node,
                    "backoff": RetryPolicy.backoff,
                    "max_backoff": RetryPolicy.max_backoff,
                    "attempts_per_node": RetryPolicy.attempts_per_node,
                }
            }
        },
    ),
    (
        "# The primary: the highest priority level with a healthy node takes all traffic.",
        {
            "upstream": {
                "nodes": [
                    {
                        "name": "openai",
                        "url": "https://api.openai.com",
                        "weight": 100,
                        "priority": 0,
                        "api_key": "${OPENAI_API_KEY}",
                    }
                ]
            }
        },
    ),
    (
        "# The backup: takes traffic only while every node above it is unhealthy.\n"
        '# models says what a node serves and what it is called there: { "gpt-4o" = "deepseek-chat" } serves\n'
        '#   gpt-4o only; "*" serves any other name; no table serves anything.\n'
        "# continuation: how this node continues a stream another node broke mid-answer (docs/failover.md lists\n"
        '#   providers): "none", "prefill", "prefix", "partial" or "continue_final_message". DeepSeek takes\n'
        '#   "prefix" on url = "https://api.deepseek.com/beta".\n'
        "# translate = true would let it serve Anthropic clients (Claude Code) too, and Responses clients (Codex)\n"
        "#   with responses = false, as DeepSeek has no Responses API: see docs/translation.md.",
        {
            "upstream": {
                "nodes": [
                    {
                        "name": "deepseek",
                        "url": "https://api.deepseek.com",
                        "weight": 1,
                        "priority": -1,
                        "api_key": "${DEEPSEEK_API_KEY}",
                        "models": {"*": "deepseek-chat"},
                    }
                ]
            }
        },
    ),
    (
        "# Active checks: a periodic GET with the node's key (/v1/models costs no tokens).\n"
        "# Omit this table to disable them.",
        {
            "upstream": {
                "checks": {
                    "active": {
                        "http_path": "/v1/models",
                        "interval": 5,
                        "timeout": 2,
                        "healthy": {"successes": 1, "http_statuses": [200]},
                        "unhealthy": {"http_failures": 3, "tcp_failures": 2, "timeouts": 2},
                    }
                }
            }
        },
    ),
    (
        "# Passive checks: outcomes of real traffic. These statuses fail over to another node;\n"
        "# other 4xx (bad request, unknown model) pass through unchanged; a request too long for a node's\n"
        "# context window goes to the next node, with no health penalty.\n"
        "# Without active checks an ejected node gets one trial request after base_ejection_time\n"
        "# (doubling per ejection up to max_ejection_time). Omit this table to disable them.",
        {
            "upstream": {
                "checks": {
                    "passive": {
                        "healthy": {"successes": 1},
                        "unhealthy": {
                            "http_statuses": list(DEFAULT_RETRY_STATUSES),
                            "http_failures": 3,
                            "tcp_failures": 2,
                            "timeouts": 2,
                        },
                        "base_ejection_time": 10,
                        "max_ejection_time": 300,
                    }
                }
            }
        },
    ),
    (
        "# OpenTelemetry traces, a span per request and attempt (pip install 'llm-sidecar[otel]'; docs/telemetry.md).\n"
        '# endpoint: the collector\'s OTLP/HTTP base URL; "" = $OTEL_EXPORTER_OTLP_ENDPOINT, and without it no traces.\n'
        "# content: true exports prompts and completions too. enabled = false: no traces, whatever the environment.",
        {"telemetry": {"enabled": TelemetryConfig.enabled, "endpoint": "", "content": TelemetryConfig.content}},
    ),
]


SPEND = """\
# The request journal: one SQLite row per request ($XDG_STATE_HOME/llm-sidecar/journal.db, else
#   ~/.local/state/llm-sidecar/journal.db), read with `llm-sidecar log`; kept retention_days.
#   bodies = true also keeps request and response bodies (keys redacted) for `log show` and `replay`.
# Each answer is priced from its tokens (a shipped table of common models, or price = { input = 2.5,
#   output = 10 } on a node, USD per million tokens). Budgets cap the spend per local day or month:
#   [budget] daily_usd = 20 answers 429 once $20 is spent today; a node's budget = { daily_usd = 5 }
#   takes only that node out, and traffic fails over. `llm-sidecar check` shows which price applies.
"""


def render() -> str:
    parts = [HEADER]
    for comment, data in SECTIONS:
        parts.append(comment + "\n" + tomli_w.dumps(data))
    parts.append(SPEND + tomli_w.dumps({"journal": {"enabled": True, "retention_days": 30, "bodies": False}}))
    return "\n".join(parts)
