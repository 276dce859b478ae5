"""The human-readable plan that `llm-sidecar check` prints (never a key)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from itertools import groupby

from sidecar.formats.translate.ir import FORMS

from .discovery import control_socket_path
from .schema import ActiveCheck, Config, Node, PassiveCheck
from .server import loopback
from .telemetry import describe as telemetry

# What each format's providers answer when they are overloaded or out of capacity: a node whose failover list
# (passive.unhealthy.http_statuses) lacks one hands those answers to the client instead of failing over.
OVERLOADED: dict[str, dict[int, str]] = {
    "openai": {429: "rate limited", 500: "server error", 502: "bad gateway", 503: "overloaded", 504: "timeout"},
    "anthropic": {429: "rate limited", 500: "api error", 529: "overloaded"},
}
FORMAT = {"openai": "OpenAI-format", "anthropic": "Anthropic-format"}


def _active(check: ActiveCheck | None) -> str:
    if check is None:
        return "active checks off"
    return (
        f"active: GET {check.http_path} every {check.interval:g}s (timeout {check.timeout:g}s); "
        f"healthy after {check.healthy_successes} x {sorted(check.healthy_http_statuses)}; "
        f"unhealthy after {check.unhealthy_http_failures} http / {check.unhealthy_tcp_failures} tcp / "
        f"{check.unhealthy_timeouts} timeout failures"
    )


def _passive(check: PassiveCheck | None, recovery: str = "probe") -> str:
    if check is None:
        return "passive checks off: failing requests never take it out"
    back = (
        "back when a recovery probe (a one-token request of the kind that failed) succeeds: 1s after, then every 2..8s"
        if recovery == "probe"
        else f"back after one trial request, {check.base_ejection_time:g}s..{check.max_ejection_time:g}s after"
    )
    return (
        f"passive: ejected after {check.unhealthy_http_failures} x {sorted(check.unhealthy_http_statuses)} / "
        f"{check.unhealthy_tcp_failures} tcp / {check.unhealthy_timeouts} timeout failures in a row; {back}"
    )


def _retry(config: Config) -> str:
    u = config.upstream
    r = u.retry
    budget = f"within {u.retry_timeout:g}s of arrival" if u.retry_timeout else "with no time limit"
    cap = f", at most {u.retries} retries" if u.retries is not None else ""
    return (
        f"Retry-After up to {r.max_wait:g}s waited out on the same node; {r.same_node} same-node "
        f"{'retry' if r.same_node == 1 else 'retries'} "
        f"after a 5xx or reset (backoff {r.backoff:g}s..{r.max_backoff:g}s); at most {r.attempts_per_node} "
        f"attempts per node; rounds {budget}{cap}"
    )


def _size(n: int) -> str:
    """Bytes as written in the file, and readable."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n} ({n / scale:.3g} {unit})"
    return str(n)


def _key(node: Node) -> str:
    return f"key from ${node.api_key_env}" if node.api_key_env else "no key"


def formats(node: Node) -> str:
    """The request formats a node serves: natively, and by translation (docs/translation.md)."""
    native = [f for f in FORMS if node.target(f) == f]
    translated = [f"{f} (as {node.target(f)})" for f in FORMS if node.target(f) not in (None, f)]
    text = "serves " + ", ".join(native)
    if translated:
        text += "; by translation " + ", ".join(translated)
    return text


def render(config: Config, env: Mapping[str, str] | None = None) -> str:
    s, u = config.server, config.upstream
    t = u.timeout
    lines = [
        f"config   {config.path}",
        f"listen   http://{s.listen}/v1"
        + (f"  (clients must send the key from ${s.api_key_env})" if s.api_key_env else ""),
        f"control  {control_socket_path(config)}",
        *(
            [f"keys     ${{VAR}} from {s.env_file} (read again on every reload), else the environment"]
            if s.env_file
            else []
        ),
        f"limits   max_body_bytes {_size(s.max_body_bytes)}, max_header_bytes {_size(s.max_header_bytes)}, "
        f"max_connections {s.max_connections}, max_event_subscribers {s.max_event_subscribers}",
        f"         header_timeout {s.header_timeout:g}s, body_timeout {s.body_timeout:g}s, "
        f"keepalive_timeout {s.keepalive_timeout:g}s",
        f"metrics  http://{s.listen}{s.metrics_path} and on the control socket"
        if s.metrics_path
        else "metrics  on the control socket only (metrics_path is empty)",
        "reload   when this file is saved, on SIGHUP and on `llm-sidecar reload`"
        if s.watch
        else "reload   on SIGHUP and on `llm-sidecar reload` (watch = false)",
        f"upstream {u.type}, timeouts connect {t.connect:g}s send {t.send:g}s read {t.read:g}s "
        f"first_token {t.first_token:g}s (learned down to {t.first_token_min:g}s), "
        f"max_response_bytes {_size(u.max_response_bytes)}, max_held_bytes {_size(u.max_held_bytes)}",
        f"retry    {_retry(config)}",
        f"affinity conversations stay on their node for {u.affinity_ttl:g}s where a level has several nodes"
        if u.affinity_ttl
        else "affinity off",
        f"hedge    a stream with no first token after {'its p95' if u.hedge.learned else f'{u.hedge.after:g}s'} also "
        f"goes to the next node; at most {u.hedge.budget:.0%} of requests"
        if u.hedge is not None
        else "hedge    off",
        f"traces   {telemetry(config.telemetry, os.environ if env is None else env)}",
    ]
    nodes = sorted(u.nodes, key=lambda n: -n.priority)
    for priority, level in groupby(nodes, key=lambda n: n.priority):
        lines.append(f"priority {priority}:")
        for node in level:
            models = ", ".join(f"{k} -> {v}" for k, v in node.models.items()) or "any, unchanged"
            api = "  api anthropic (/v1/messages)" if node.api == "anthropic" else ""
            lines.append(f"  {node.name:<12} {node.url}{api}  weight {node.weight}  {_key(node)}  models: {models}")
            if node.url_had_v1:
                lines.append(
                    " " * 15 + "(the /v1 at the end of its url is dropped: each request's path brings its own)"
                )
            extra = [formats(node)] if any(n.translate or not n.responses for n in u.nodes) else []
            if node.timeout != t:
                nt = node.timeout
                extra.append(f"timeouts connect {nt.connect:g}s read {nt.read:g}s first_token {nt.first_token:g}s")
            if node.continuation != "none":
                extra.append(f"continues broken streams ({node.continuation})")
            if extra:
                lines.append(" " * 15 + "; ".join(extra))
    distinct = {(n.checks.active, n.checks.passive, n.recovery) for n in u.nodes}
    for node in u.nodes if len(distinct) > 1 else u.nodes[:1]:
        prefix = f"checks ({node.name})" if len(distinct) > 1 else "checks"
        lines.append(f"{prefix}: {_active(node.checks.active)}")
        lines.append(" " * len(prefix) + f"  {_passive(node.checks.passive, node.recovery)}")
    return "\n".join(lines)


def warnings(config: Config) -> list[str]:
    """What the config allows but a user would want told: printed by `check`, logged by `run`."""
    found = []
    s = config.server
    if not loopback(s.host) and s.api_key is None:  # allowed by allow_remote_without_key, else refused
        found.append(
            f"listen {s.listen} is reachable from other machines and no api_key is set "
            "(allow_remote_without_key = true): anyone who reaches the port spends your providers' keys"
        )
    for node in config.upstream.nodes:
        statuses = node.checks.retry_statuses
        missing = {code: what for code, what in OVERLOADED[node.api].items() if code not in statuses}
        if missing:
            named = ", ".join(f"{code} ({what})" for code, what in missing.items())
            found.append(
                f"node {node.name}: passive.unhealthy.http_statuses lacks {named}, which {FORMAT[node.api]} "
                "providers answer when overloaded: those answers go to the client with no failover (add them, "
                "or remove the list to get the default)"
            )
    return found
