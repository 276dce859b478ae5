"""The control API's answers, built from the running sidecar (shapes in `observe/shapes.py`).

Nothing here may carry a key or anything derived from one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sidecar.nodes.health import Source
from sidecar.observe.shapes import ManualJSON, NodeJSON, StatusJSON

if TYPE_CHECKING:
    from sidecar.nodes.node import NodeState
    from sidecar.nodes.runtime import Runtime
    from sidecar.nodes.upstream import Upstream


def _wall(monotonic_at: float | None) -> float | None:
    """A monotonic reading as a Unix timestamp, for humans and other processes."""
    if monotonic_at is None:
        return None
    return round(time.time() - (time.monotonic() - monotonic_at), 3)


def instead(upstream: Upstream, node: NodeState, model: str, now: float) -> str | None:
    """The node requests for `model` go to while it is out on `node` (the serving node may still be `node`
    for every other model); None when it is out everywhere it is served (then it is tried anyway)."""
    skip = (
        upstream.other_api[node.config.api]
        | upstream.not_serving(model)
        | (upstream.models_out(model, now) or set())
        | upstream.spent()
    )
    index = upstream.balancer.serving(now, frozenset(skip))
    return None if index is None else upstream.nodes[index].name


def node_status(
    node: NodeState, serving: bool, now: float, uptime: float, upstream: Upstream, budget: str | None = None
) -> NodeJSON:
    health = node.health
    cfg = node.config
    return {
        "name": cfg.name,
        "url": cfg.url,
        "api": cfg.api,
        "priority": cfg.priority,
        "weight": cfg.weight,
        "state": health.state.value,
        "manual": "down" if health.manual_down else "auto",
        "serving": serving,
        "reason": health.reason,
        "changed_at": _wall(health.changed_at),
        "blocked_until": _wall(health.blocked_until) if health.blocked_until > now else None,
        "active": {
            "enabled": cfg.checks.active is not None,
            "healthy": health.active_healthy,
            "counters": health.counters[Source.ACTIVE].as_dict(),
            "last_probe": node.last_probe,
        },
        "passive": {
            "enabled": cfg.checks.passive is not None,
            "ejected_until": _wall(health.ejected_until),
            "ejections": health.ejections,
            "counters": health.counters[Source.PASSIVE].as_dict(),
        },
        "traffic": node.stats.snapshot(now, uptime),
        "models": [
            {
                "model": model,
                "state": "rate limited" if state.reason == "rate limited" else "ejected",
                "reason": state.reason,
                "until": None if state.recovery is not None else _wall(state.out_until),
                "instead": instead(upstream, node, model, now),
            }
            for model, state in node.models.out(now)
        ],
        "first_token_limits": node.first_tokens.limits(now, cfg.timeout.first_token, cfg.timeout.first_token_min),
        "budget": budget,
    }


def status(runtime: Runtime) -> StatusJSON:
    upstream = runtime.upstream
    serving = upstream.serving()
    now = upstream.clock()
    config = runtime.config
    wall = time.time()

    def budget(name: str) -> str | None:
        out = runtime.budgets.node_out(name, wall)
        return None if out is None else out.message(wall)

    answer: StatusJSON = {
        "sidecar": {
            "version": runtime.version,
            "pid": runtime.pid,
            "uptime_s": round(runtime.uptime, 3),
            "started_at": round(runtime.started, 3),
            "listen": f"http://{config.server.listen}/v1",
            "config_path": config.path,
            "config_loaded_at": round(runtime.config_loaded_at, 3),
            "control_socket": runtime.control_socket,
        },
        "serving": serving.name if serving else None,
        "nodes": [
            node_status(n, n is upstream.serving(n.config.api), now, runtime.uptime, upstream, budget(n.name))
            for n in upstream.nodes
        ],
    }
    if runtime.recorder is not None:
        answer["spend"] = runtime.recorder.spend()
    return answer


def manual_answer(runtime: Runtime, node: NodeState) -> ManualJSON:
    serving = runtime.upstream.serving(node.config.api)  # what now serves the node's format
    return {
        "node": node.name,
        "manual": "down" if node.health.manual_down else "auto",
        "state": node.health.state.value,
        "serving": serving.name if serving else None,
    }
