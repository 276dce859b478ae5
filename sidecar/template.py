"""The commented starter config written by `llm-sidecar init` (data by tomli-w, comments by us)."""

from __future__ import annotations

from typing import Any

import tomli_w

from .config import DEFAULT_LISTEN, DEFAULT_RETRY_STATUSES, ServerConfig, UpstreamConfig

HEADER = """\
# llm-sidecar configuration. Field names follow Apache APISIX's upstream object.
# Keys are never stored here: api_key = "${VAR}" reads the environment variable VAR.
# Validate with `llm-sidecar check`; a running sidecar re-reads it on `llm-sidecar reload`.
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
            }
        },
    ),
    (
        "# type: smooth weighted round-robin inside one priority level.\n"
        "# retries: extra attempts, each on a node not tried yet for this request.\n"
        "# retry_timeout: seconds for all attempts together; 0 = no limit.\n"
        "# timeout.read: the longest silence between bytes, the first byte included.\n"
        "# max_response_bytes: the most of an answer held before sending it; past it, 502 JSON and a node failure.",
        {
            "upstream": {
                "type": "roundrobin",
                "retries": 1,
                "retry_timeout": 0,
                "max_response_bytes": UpstreamConfig.max_response_bytes,
                "timeout": {"connect": 5, "send": 30, "read": 120},
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
        '# models rewrites the body\'s "model": exact name, else "*", else unchanged.',
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
        "# other 4xx (bad request, unknown model, context too long) pass through unchanged.\n"
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
]


def render() -> str:
    parts = [HEADER]
    for comment, data in SECTIONS:
        parts.append(comment + "\n" + tomli_w.dumps(data))
    return "\n".join(parts)
