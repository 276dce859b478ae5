"""The `[upstream]` table and its `[[upstream.nodes]]`: retries, timeouts, checks, and each node.

A node's own `checks` and `timeout` tables start from the upstream's, key by key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sidecar.config.costs import budget, price_of, prices
from sidecar.config.values import bad_char, parse_url, secret
from sidecar.formats.dialect import APIS_SPOKEN

from .schema import (
    BYTES_MAX,
    CONTINUATIONS,
    RECOVERIES,
    ActiveCheck,
    Checks,
    Hedge,
    Node,
    PassiveCheck,
    RetryPolicy,
    Timeouts,
    UpstreamConfig,
)
from .table import Table, describe, key_part, show


def _active(t: Table) -> ActiveCheck:
    d = ActiveCheck()
    path = t.get("http_path", str, d.http_path)
    if not path.startswith("/"):
        t.error("http_path", f'must start with "/", got {show(path)}')
    elif bad := bad_char(path):
        t.error("http_path", f"must be printable ASCII without spaces (percent-encode them), found {bad}")
    healthy = t.table_or_empty("healthy")
    unhealthy = t.table_or_empty("unhealthy")
    check = ActiveCheck(
        http_path=path,
        interval=t.number("interval", d.interval, minimum=0.05),
        timeout=t.number("timeout", d.timeout, minimum=0.01),
        healthy_successes=healthy.integer("successes", d.healthy_successes, minimum=1),
        healthy_http_statuses=healthy.statuses("http_statuses", d.healthy_http_statuses),
        unhealthy_http_failures=unhealthy.integer("http_failures", d.unhealthy_http_failures, minimum=1),
        unhealthy_tcp_failures=unhealthy.integer("tcp_failures", d.unhealthy_tcp_failures, minimum=1),
        unhealthy_timeouts=unhealthy.integer("timeouts", d.unhealthy_timeouts, minimum=1),
    )
    for part in (healthy, unhealthy, t):
        part.done()
    return check


def _passive(t: Table) -> PassiveCheck:
    d = PassiveCheck()
    healthy = t.table_or_empty("healthy")
    unhealthy = t.table_or_empty("unhealthy")
    check = PassiveCheck(
        healthy_successes=healthy.integer("successes", d.healthy_successes, minimum=1),
        unhealthy_http_statuses=unhealthy.statuses("http_statuses", d.unhealthy_http_statuses),
        unhealthy_http_failures=unhealthy.integer("http_failures", d.unhealthy_http_failures, minimum=1),
        unhealthy_tcp_failures=unhealthy.integer("tcp_failures", d.unhealthy_tcp_failures, minimum=1),
        unhealthy_timeouts=unhealthy.integer("timeouts", d.unhealthy_timeouts, minimum=1),
        base_ejection_time=t.number("base_ejection_time", d.base_ejection_time, minimum=0.01),
        max_ejection_time=t.number("max_ejection_time", d.max_ejection_time, minimum=0.01),
    )
    if check.max_ejection_time < check.base_ejection_time and t.ok("max_ejection_time", "base_ejection_time"):
        t.error("max_ejection_time", "must be >= base_ejection_time")
    for part in (healthy, unhealthy, t):
        part.done()
    return check


def _checks(t: Table | None, inherited: Checks) -> Checks:
    """The upstream's checks, with a node's own `active` / `passive` tables in their place; `active = false`
    turns a node's probe off (a provider with no GET /v1/models), `passive = false` its ejection."""
    if t is None:
        return inherited
    active = _check_table(t, "active")
    passive = _check_table(t, "passive")
    t.done()
    return Checks(
        active=inherited.active if active is True else _active(active) if active else None,
        passive=inherited.passive if passive is True else _passive(passive) if passive else None,
    )


def _check_table(t: Table, name: str) -> Table | bool:
    """A checks table; False when it is turned off; True when it is not given (inherited)."""
    value = t.get(name, (dict, bool), None)
    if value is None:
        return True
    if value is True:
        t.error(name, "expected a table, or false to turn these checks off")
        return True
    if value is False:
        return False
    return Table(value, t.key(name), t.problems, t.position(name))


def _models(t: Table) -> dict[str, str]:
    raw = t.get("models", dict, {})
    for i, (source, target) in enumerate(raw.items()):
        # Printed by `check` and the logs: no control characters in either name.
        if not isinstance(target, str) or not target or not target.isprintable() or not source.isprintable():
            message = f"expected a model name without control characters, got {describe(target)}"
            t.error("models", message, item=i, key=f"{t.key('models')}.{key_part(source)}")
    return {} if "models" in t.bad else dict(raw)


def _timeouts(t: Table | None, inherited: Timeouts) -> Timeouts:
    if t is None:
        return inherited
    read = t.number("read", inherited.read, minimum=0.001)
    if "first_token" in t.data:
        first_token = t.number("first_token", inherited.first_token, minimum=0.001)
        if first_token > read and t.ok("first_token", "read"):
            t.error("first_token", f"must be <= read ({read:g}): read bounds every silence, the first too")
    else:
        first_token = min(inherited.first_token, read)
    floor = t.number("first_token_min", min(inherited.first_token_min, first_token), minimum=0.001)
    if floor > first_token and t.ok("first_token_min", "first_token"):
        t.error("first_token_min", f"must be <= first_token ({first_token:g}): the learned limit lies between them")
    timeouts = Timeouts(
        connect=t.number("connect", inherited.connect, minimum=0.001),
        send=t.number("send", inherited.send, minimum=0.001),
        read=read,
        first_token=first_token,
        first_token_min=min(floor, first_token),
    )
    t.done(known=("first_token",))
    return timeouts


def _retry(t: Table | None) -> RetryPolicy:
    d = RetryPolicy()
    if t is None:
        return d
    policy = RetryPolicy(
        max_wait=t.number("max_wait", d.max_wait),
        same_node=t.integer("same_node", d.same_node, minimum=0, maximum=10),
        backoff=t.number("backoff", d.backoff, minimum=0.001, maximum=60),
        max_backoff=t.number("max_backoff", d.max_backoff, minimum=0.001, maximum=600),
        attempts_per_node=t.integer("attempts_per_node", d.attempts_per_node, minimum=1, maximum=100),
    )
    if policy.max_backoff < policy.backoff and t.ok("max_backoff", "backoff"):
        t.error("max_backoff", "must be >= backoff")
    t.done()
    return policy


def _node_name(t: Table, names: set[str]) -> str:
    """The node's name, once valid and new: from then on its key paths name it, `upstream.nodes[1] ("backup").weight`."""
    name = t.get("name", str, None)
    if "name" in t.bad:
        return ""
    if not name:
        t.error("name", "is required")
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        t.error("name", f"use letters, digits, '.', '_' or '-' (at most 64), got {show(name)}")
    elif name in names:
        t.error("name", f"duplicate node name {name!r}")
    else:
        names.add(name)
        t.path = f'{t.path} ("{name}")'
        return str(name)
    return ""


def _hedge(t: Table | None) -> Hedge | None:
    """[upstream.hedge]: `after` in seconds, or "p95" (each node and model's own); `budget` a share."""
    if t is None:
        return None
    d = Hedge()
    raw = t.get("after", (int, float, str), d.after)
    learned = raw == "p95"
    if isinstance(raw, str) and not learned:
        t.error("after", f'expected seconds or "p95", got {show(raw)}')
    after = d.after if isinstance(raw, str) else t.number("after", d.after, minimum=0.01)
    hedge = Hedge(after=after, learned=learned, budget=t.number("budget", d.budget, minimum=0.0, maximum=1.0))
    t.done()
    return hedge


def _node(t: Table, checks: Checks, timeouts: Timeouts, env: Mapping[str, str], names: set[str], recovery: str) -> Node:
    name = _node_name(t, names)
    url = t.get("url", str, None)
    if url is None and "url" not in t.bad:
        t.error("url", "is required")
    api_key, api_key_env = secret(t, "api_key", env)
    node = Node(
        name=name,
        url=parse_url(t, url) if url is not None else "",
        url_had_v1=url is not None and url.rstrip("/").endswith("/v1"),
        weight=t.integer("weight", 1, minimum=1),
        priority=t.integer("priority", 0),
        api_key=api_key,
        api_key_env=api_key_env,
        models=_models(t),
        checks=_checks(t.table("checks"), checks),
        timeout=_timeouts(t.table("timeout"), timeouts),
        continuation=_choice(t, "continuation", CONTINUATIONS),
        api="anthropic" if _choice(t, "api", APIS_SPOKEN) == "anthropic" else "openai",
        recovery=_choice(t, "recovery", RECOVERIES, recovery),
        translate=t.get("translate", bool, False),
        responses=t.get("responses", bool, True),
        price=price_of(t, "price"),
        prices=prices(t, "prices"),
        budget=budget(t.table("budget")) if "budget" in t.data else None,
    )
    t.done()
    return node


def _choice(t: Table, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
    fallback = choices[0] if default is None else default
    value: str = t.get(name, str, fallback)
    if value not in choices:
        t.error(name, f"expected one of {', '.join(map(repr, choices))}, got {show(value)}")
        return fallback
    return value


NO_NODES = "no nodes configured: add at least one [[upstream.nodes]]"


def upstream_config(up: Table, env: Mapping[str, str]) -> UpstreamConfig:
    kind = up.get("type", str, "roundrobin")
    if kind != "roundrobin":
        up.error("type", f'only "roundrobin" (smooth weighted round-robin) is supported, got {show(kind)}')
    timeouts = _timeouts(up.table_or_empty("timeout"), Timeouts())
    # Passive checks are on unless turned off (`passive = false`): with none, nothing would judge a node
    # that fails every request, and each request would pay a same-node retry on it forever.
    checks = _checks(up.table("checks"), Checks(passive=PassiveCheck()))
    recovery = _choice(up, "recovery", RECOVERIES)

    raw_nodes = up.get("nodes", list, [])
    if not raw_nodes and up.ok("nodes"):
        up.missing("nodes", NO_NODES)
    nodes: list[Node] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_nodes):
        key = f"{up.key('nodes')}[{i}]"
        if not isinstance(raw, dict):
            up.error("nodes", f"expected a table, got {describe(raw)}", item=i, key=key)
            continue
        table = Table(raw, key, up.problems, (*up.position("nodes"), i))
        nodes.append(_node(table, checks, timeouts, env, names, recovery))

    max_response = up.integer("max_response_bytes", UpstreamConfig.max_response_bytes, minimum=1024, maximum=BYTES_MAX)
    # An old file that raised max_response_bytes past the default budget still loads: the budget follows it.
    held_default = max(UpstreamConfig.max_held_bytes, max_response)
    upstream = UpstreamConfig(
        nodes=tuple(nodes),
        type=kind,
        retries=up.integer("retries", -1, minimum=0) if "retries" in up.data else None,
        retry_timeout=up.number("retry_timeout", UpstreamConfig.retry_timeout),
        retry=_retry(up.table("retry")),
        affinity_ttl=up.number("affinity_ttl", UpstreamConfig.affinity_ttl),
        max_response_bytes=max_response,
        max_held_bytes=up.integer("max_held_bytes", held_default, minimum=1024, maximum=BYTES_MAX),
        timeout=timeouts,
        recovery=recovery,
        hedge=_hedge(up.table("hedge")),
    )
    if upstream.max_held_bytes < max_response and up.ok("max_held_bytes", "max_response_bytes"):
        up.error("max_held_bytes", "must be >= max_response_bytes: what all answers hold at once must fit one whole")
    up.done(known=("retries",))
    return upstream
