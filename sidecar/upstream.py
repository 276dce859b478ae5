"""One config generation of the upstream: its nodes, balancer, transport and health bookkeeping.

A reload builds a new generation. Nodes that did not change keep their health
and figures (the same objects), and requests in flight keep the generation
they started with, whose transport is closed only once the last of them ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .attempt import Attempt, Outcome
from .balancer import Balancer, Choice
from .config import Config, Node
from .events import EventHub
from .health import Failure, Health, Source, State, Transition
from .shapes import ProbeJSON
from .stats import NodeStats
from .transport import Transport, UpstreamError

log = logging.getLogger("llm_sidecar")


@dataclass(eq=False)
class NodeState:
    config: Node
    health: Health
    stats: NodeStats = field(default_factory=NodeStats)
    auth: str | None = field(default=None, repr=False)
    last_probe: ProbeJSON | None = None

    @property
    def name(self) -> str:
        return self.config.name


class Upstream:
    """Nodes, the balancer and health bookkeeping for one loaded config."""

    def __init__(
        self,
        config: Config,
        events: EventHub,
        transport: Transport,
        previous: Sequence[NodeState] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.events = events
        self.transport = transport
        self.clock = clock
        self.refs = 0  # requests holding this generation
        self.retired = False
        now = clock()
        kept = {n.name: n for n in previous}
        self.nodes: list[NodeState] = []
        for node in config.upstream.nodes:
            old = kept.get(node.name)
            state = NodeState(node, Health(node.checks.active, node.checks.passive, now))
            if old is not None and old.config.checks == node.checks:
                # A reload keeps what we learnt about a node whose checks did not change.
                state.health = old.health
                state.stats = old.stats
                state.last_probe = old.last_probe
            if node.api_key:
                state.auth = f"Bearer {node.api_key}"
            self.nodes.append(state)
        self.by_name = {n.name: n for n in self.nodes}
        self.continuable = any(n.continuation != "none" for n in config.upstream.nodes)
        self.balancer = Balancer(
            [n.config.priority for n in self.nodes],
            [n.config.weight for n in self.nodes],
            [n.health for n in self.nodes],
        )

    async def close(self) -> None:
        await self.transport.aclose()

    def choose(self, tried: set[int]) -> Choice | None:
        return self.balancer.choose(tried, self.clock())

    def again(self, index: int) -> Choice | None:
        """The same node for a retry the plan decided on, unless it is out by now (ejected, unhealthy,
        drained). A Retry-After it gave was already waited out by this request."""
        health = self.nodes[index].health
        return self.balancer.plain[index] if health.healthy and not health.manual_down else None

    def attempt(self, choice: Choice) -> Attempt:
        return Attempt(self, self.nodes[choice.index], choice.trial)

    def serving(self) -> NodeState | None:
        index = self.balancer.serving(self.clock())
        return None if index is None else self.nodes[index]

    def record(
        self, node: NodeState, outcome: Outcome, failure: UpstreamError | None, trial: bool, started: float
    ) -> None:
        """The one place an attempt's outcome reaches health and figures."""
        now = self.clock()
        if outcome is not Outcome.NEUTRAL:  # an abandoned attempt says nothing of the node's speed
            node.stats.finished(now, now - started, outcome is Outcome.SUCCESS)
        if outcome is Outcome.SUCCESS:
            reason = "trial request ok" if trial else "ok"
            self._transition(node, node.health.record_success(Source.PASSIVE, now, reason, trial=trial))
            return
        if outcome is Outcome.NEUTRAL or failure is None or failure.kind is None:
            if trial:
                node.health.end_trial()
            return
        if failure.status == 429 and failure.retry_after is not None:
            # The provider said when to come back: that wait is the whole verdict. Counting it as a
            # failure too would eject a node for a one-second limit that many requests hit at once.
            if trial:
                node.health.end_trial()
            node.health.block(now + failure.retry_after, now)
            return
        self._transition(node, node.health.record_failure(Source.PASSIVE, failure.kind, now, failure.reason, trial))

    def probed(self, node: NodeState, kind: Failure | None, reason: str) -> None:
        """An active probe's result (kind None: success)."""
        now = self.clock()
        health = node.health
        if kind is None:
            self._transition(node, health.record_success(Source.ACTIVE, now, reason))
        else:
            self._transition(node, health.record_failure(Source.ACTIVE, kind, now, reason))

    def set_manual(self, node: NodeState, down: bool) -> bool:
        transition = node.health.set_manual(down, self.clock())
        self.events.publish("manual", node=node.name, manual="down" if down else "auto")
        self._transition(node, transition)
        return transition is not None

    def _transition(self, node: NodeState, transition: Transition | None) -> None:
        if transition is None:
            return
        level = logging.INFO if transition.after in (State.HEALTHY, State.DOWN) else logging.WARNING
        log.log(level, "node %s: %s -> %s (%s)", node.name, transition.before, transition.after, transition.reason)
        self.events.publish(
            "health",
            node=node.name,
            before=str(transition.before),
            after=str(transition.after),
            reason=transition.reason,
        )
