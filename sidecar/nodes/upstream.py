"""One config generation of the upstream: its nodes, balancer, transport and health bookkeeping.

A reload builds a new generation. Nodes that did not change keep their health
and figures (the same objects), and requests in flight keep the generation
they started with, whose transport is closed only once the last of them ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence

from sidecar.config.schema import Config, PassiveCheck
from sidecar.formats.dialect import APIS_SPOKEN, Api
from sidecar.formats.translate.ir import FORMS
from sidecar.observe.display import why_changed
from sidecar.observe.events import EventHub

from .affinity import Pins
from .attempt import Attempt, Outcome
from .balancer import Balancer, Choice
from .budget import Budgets
from .health import MIN_RETRY_AFTER, Failure, Health, ModelHealth, Source, State, Transition
from .held import Budget
from .node import Blame, NodeState, auth_headers
from .owners import Owners
from .recovery import ProbeSpec, Recovery
from .transport import Transport, UpstreamError

log = logging.getLogger("llm_sidecar")


MODEL_CACHE = 1024  # model names whose serving nodes are remembered
# A failure of one model counts against the model alone while another model on the node succeeded
# within this many seconds; else the node itself is failing.
OTHERS_FINE_WITHIN = 60.0


class Upstream:
    """Nodes, the balancer and health bookkeeping for one loaded config."""

    def __init__(
        self,
        config: Config,
        events: EventHub,
        transport: Transport,
        previous: Sequence[NodeState] = (),
        clock: Callable[[], float] = time.monotonic,
        pins: Pins | None = None,
        held: Budget | None = None,
        owners: Owners | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.config = config
        self.budgets = budgets if budgets is not None else Budgets()  # nodes out for budget (budget.py)
        # One budget for the answers held by every generation's requests (held.py); a reload sets its limit.
        self.held = held if held is not None else Budget(config.upstream.max_held_bytes)
        self.held.limit = config.upstream.max_held_bytes
        self.owners = owners if owners is not None else Owners()  # stateful ids -> the node that made them
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
                state.models = old.models
                state.stats = old.stats
                state.upstream_models, state.upstream_models_at = old.upstream_models, old.upstream_models_at
                state.last_probe = old.last_probe
                state.waiting = old.waiting  # attempts of the old generation still wait on this node
                state.first_tokens = old.first_tokens
                state.recovery = old.recovery
            state.auth = auth_headers(node)
            self.nodes.append(state)
        self.by_name = {n.name: n for n in self.nodes}
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        # Routing by model: only when some node has a `models` table (else every node serves anything).
        self.routes = any(n.config.models for n in self.nodes)
        self.served = sorted({m for n in self.nodes for m in n.config.models if m != "*"})
        self.serving_cache: dict[str, frozenset[int]] = {}
        # The nodes a request of each format must not go to: those speaking the other one.
        self.other_api: dict[Api, frozenset[int]] = {
            api: frozenset(i for i, n in enumerate(self.nodes) if n.config.api != api) for api in APIS_SPOKEN
        }
        # Per client format: the nodes that cannot take its requests, and those that take them translated.
        targets = {form: [n.config.target(form) for n in self.nodes] for form in FORMS}
        self.unable = {form: frozenset(i for i, t in enumerate(ts) if t is None) for form, ts in targets.items()}
        self.translated = {
            form: frozenset(i for i, t in enumerate(ts) if t not in (None, form)) for form, ts in targets.items()
        }
        # Affinity only matters where one level holds several nodes to spread over.
        ttl = config.upstream.affinity_ttl
        priorities = [n.config.priority for n in self.nodes]
        spread = len(set(priorities)) < len(priorities)
        self.pins = (pins if pins is not None and pins.ttl == ttl else Pins(ttl)) if ttl and spread else None
        self.continuable = any(n.continuation != "none" for n in config.upstream.nodes)
        self.balancer = Balancer(
            [n.config.priority for n in self.nodes],
            [n.config.weight for n in self.nodes],
            [n.health for n in self.nodes],
        )

    async def close(self) -> None:
        await self.transport.aclose()

    def spent(self) -> set[int]:
        """The nodes out for their budget now (budget.py): never chosen (in panic mode neither), never probed,
        never somewhere a waiting request could move on to."""
        return self.budgets.excluded(self.index, time.time()) if self.budgets.nodes else set()

    def choose(self, tried: set[int], prefer: int | None = None) -> Choice | None:
        if self.budgets.nodes:
            tried = tried | self.spent()
        return self.balancer.choose(tried, self.clock(), prefer)

    def not_serving(self, model: str) -> frozenset[int]:
        """The nodes a request for `model` must not go to (their `models` table lacks it)."""
        cached = self.serving_cache.get(model)
        if cached is None:
            if len(self.serving_cache) >= MODEL_CACHE:  # model names come from clients
                self.serving_cache.clear()
            cached = frozenset(i for i, n in enumerate(self.nodes) if not n.config.serves(model))
            self.serving_cache[model] = cached
        return cached

    def again(self, index: int) -> Choice | None:
        """The same node for a retry the plan decided on, unless it is out by now (ejected, unhealthy,
        drained). A Retry-After it gave was already waited out by this request."""
        health = self.nodes[index].health
        if self.budgets.nodes and self.budgets.node_out(self.nodes[index].name, time.time()):
            return None
        return self.balancer.plain[index] if health.healthy and not health.manual_down else None

    def attempt(self, choice: Choice, model: str | None = None, spec: ProbeSpec | None = None) -> Attempt:
        """`spec`: what a recovery probe would repeat, should this attempt's failure eject the node."""
        return Attempt(self, self.nodes[choice.index], choice.trial, model, spec)

    def serving(self, api: Api | None = None) -> NodeState | None:
        """The node new requests go to now: of any format, or of `api`'s (a mixed config serves one of each)."""
        excluded = self.other_api[api] if api is not None else frozenset()
        if self.budgets.nodes:
            excluded = excluded | self.spent()
        index = self.balancer.serving(self.clock(), excluded)
        return None if index is None else self.nodes[index]

    def record(
        self,
        node: NodeState,
        outcome: Outcome,
        failure: UpstreamError | None,
        trial: bool,
        started: float,
        model: str | None = None,
        spec: ProbeSpec | None = None,
    ) -> Blame | None:
        """The one place an attempt's outcome reaches health and figures; what a failure was blamed for,
        so that it can be taken back if the request turns out to have caused it."""
        now = self.clock()
        if outcome is not Outcome.NEUTRAL:  # an abandoned attempt says nothing of the node's speed
            node.stats.finished(now, now - started, outcome is Outcome.SUCCESS)
        if outcome is Outcome.SUCCESS:
            reason = "trial request ok" if trial else "ok"
            self._transition(node, node.health.record_success(Source.PASSIVE, now, reason, trial=trial))
            if node.recovery is not None and node.health.ejected_until is None:
                node.recovery = None  # a real success ended the ejection (panic mode, or a request sent before it)
            if model is not None:
                node.models.ok(model, now)
            node.last_ok = now
            return None
        if outcome is Outcome.NEUTRAL or failure is None or failure.kind is None:
            if trial:
                node.health.end_trial()
            return None
        failed_before, node.last_failed = node.last_failed, now
        node.failed_attempts += 1
        by_model = self._model_failure(node, model, failure, now, spec, failed_before) if model is not None else False
        if by_model is not False:
            if trial:
                node.health.end_trial()
            return by_model if isinstance(by_model, Blame) else None
        if failure.status == 429 and failure.retry_after is not None and failure.retry_after >= MIN_RETRY_AFTER:
            # The provider said when to come back: that wait is the whole verdict. Counting it as a
            # failure too would eject a node for a one-second limit that many requests hit at once.
            # A shorter one holds nothing and is counted below (health.MIN_RETRY_AFTER).
            if trial:
                node.health.end_trial()
            node.health.block(now + failure.retry_after, now)
            return None
        transition = node.health.record_failure(Source.PASSIVE, failure.kind, now, failure.reason, trial)
        ejected = transition is not None and transition.after == State.EJECTED
        if ejected and spec is not None and node.config.recovery == "probe":
            node.recovery = Recovery.start(spec, now, node.health.blocked_until, node.models.lately_ok(spec.model, now))
            node.health.probing = True
        self._transition(node, transition)
        if node.config.checks.passive is None:
            return None  # nothing was counted
        return Blame(node, failure.kind, None, node.health.ejected_until if ejected else None, now, failed_before)

    def take_back(self, blame: Blame, why: str) -> None:
        """Undo what `blame` did: the request caused that failure, not the node (proxy/poison.py)."""
        node = blame.node
        if node.last_failed == blame.failed_at:  # no other request failed there since
            node.last_failed = blame.failed_before
        if blame.model is not None:
            state = node.models.health.get(blame.model)
            if state is not None and state.take_back(blame.ejected_until):
                log.info("node %s, model %s: back (%s)", node.name, blame.model, why)
                self.events.publish(
                    "health", node=node.name, model=blame.model, before="ejected", after="healthy", reason=why
                )
            return
        self._transition(node, node.health.take_back(blame.kind, blame.ejected_until, self.clock(), why))
        if node.recovery is not None and node.health.ejected_until is None:
            node.recovery = None

    def _model_failure(
        self,
        node: NodeState,
        model: str,
        failure: UpstreamError,
        now: float,
        spec: ProbeSpec | None = None,
        failed_before: float = float("-inf"),
    ) -> Blame | bool:
        """Count a failure against (node, model) when it is the model's: a 429 always (providers limit
        per model), a 5xx or a timeout while another model on the node keeps succeeding. Connect and
        auth failures are the node's. False: not the model's; a Blame when it was counted; True when
        it only holds the model out (a rate limit's wait)."""
        passive = node.config.checks.passive
        if failure.status == 429:  # with passive checks off too: a rate limit is never a verdict on the node
            passive = passive or PassiveCheck()
            wait = failure.retry_after
            if wait is not None and wait < MIN_RETRY_AFTER:  # holds nothing: counted, as a 5xx of the model is
                state = node.models.get(model)
                base, cap = passive.base_ejection_time, passive.max_ejection_time
                ejected = state.failed(now, passive.unhealthy_http_failures, base, cap, failure.reason)
                if ejected:
                    self._model_ejected(node, model, state, failure.reason, spec, now)
                until = state.out_until if ejected else None
                return Blame(node, failure.kind or Failure.HTTP, model, until, now, failed_before)
            until = now + (wait if wait is not None else passive.base_ejection_time)
            node.models.get(model).rate_limited(until, now, passive.max_ejection_time)
            self._model_event(node, model, "rate limited", failure.reason)
            return True
        by_model = failure.status >= 500 or failure.kind is Failure.TIMEOUT
        if passive is None or not by_model or not node.models.others_fine(model, now, OTHERS_FINE_WITHIN):
            return False
        threshold = passive.unhealthy_timeouts if failure.kind is Failure.TIMEOUT else passive.unhealthy_http_failures
        state = node.models.get(model)
        ejected = state.failed(now, threshold, passive.base_ejection_time, passive.max_ejection_time, failure.reason)
        if ejected:
            self._model_ejected(node, model, state, failure.reason, spec, now)
        return Blame(
            node, failure.kind or Failure.HTTP, model, state.out_until if ejected else None, now, failed_before
        )

    def _model_ejected(
        self, node: NodeState, model: str, state: ModelHealth, reason: str, spec: ProbeSpec | None, now: float
    ) -> None:
        if spec is not None and spec.model == model and node.config.recovery == "probe":
            state.recovery = Recovery.start(spec, now)
        self._model_event(node, model, "ejected", reason)

    def probe_result(self, node: NodeState, model: str | None, ok: bool, reason: str) -> None:
        """A recovery probe's result (prober.py): success ends the ejection of the node (`model` None) or
        of the model on it at once; a failure schedules the next probe, later."""
        now = self.clock()
        node.stats.probed(ok)
        if model is None:
            recovery = node.recovery
            if recovery is None:
                return
            if ok:
                node.recovery = None
                self._transition(node, node.health.recovered(now, f"recovered ({reason})"))
            else:
                recovery.failed(now, reason, node.health.blocked_until)
            return
        state = node.models.health.get(model)
        if state is None or state.recovery is None:
            return
        if ok:
            state.recovered()
            log.info("node %s, model %s: recovered (%s)", node.name, model, reason)
            self.events.publish(
                "health", node=node.name, model=model, before="ejected", after="healthy", reason=f"recovered ({reason})"
            )
        else:
            state.recovery.failed(now, reason)

    def _model_event(self, node: NodeState, model: str, after: str, reason: str) -> None:
        log.warning("node %s, model %s: %s (%s)", node.name, model, after, reason)
        self.events.publish("health", node=node.name, model=model, before="healthy", after=after, reason=reason)
        if after == "ejected":
            self.move_waiting(node, f"{node.name} {after} for {model} ({reason})", model)

    def move_waiting(self, node: NodeState, why: str, model: str | None = None) -> None:
        """The node (or `model` on it) is out: its waiting attempts go on to the next node now."""
        moved = node.waiting.move(why, model)
        if moved:
            log.info("node %s: %d waiting request(s) moved on to other nodes (%s)", node.name, moved, why)

    def usable_beyond(self, excluded: Collection[int], model: str | None) -> bool:
        """Whether a node not in `excluded` could take the request now (not in panic): a waiting attempt
        moves on only when it has somewhere to go. Reads health only: the balancer's wheel does not turn."""
        now = self.clock()
        out = self.models_out(model, now) if model is not None else None
        spent = self.spent()
        return any(
            i not in excluded
            and (out is None or i not in out)
            and i not in spent
            and (n.health.available(now) or n.health.trial_ready(now))
            for i, n in enumerate(self.nodes)
        )

    def models_out(self, model: str, now: float) -> set[int] | None:
        """Nodes where `model` itself is out (rate-limited or ejected) while the node may be fine; None
        when no node has any per-model state (the common case: nothing to build). The states are shared
        with the generation before a reload, so a verdict recorded by a request on it counts here too."""
        if not any(n.models.health for n in self.nodes):
            return None
        return {i for i, n in enumerate(self.nodes) if n.models.health and not n.models.available(model, now)}

    def probed(self, node: NodeState, kind: Failure | None, reason: str) -> None:
        """An active probe's result (kind None: success)."""
        now = self.clock()
        health = node.health
        if kind is None:
            self._transition(node, health.record_success(Source.ACTIVE, now, reason))
        else:
            self._transition(node, health.record_failure(Source.ACTIVE, kind, now, reason))

    def set_manual(self, node: NodeState, down: bool) -> bool:
        """A change by hand: routine, so logged at INFO in plain words; published as any health change."""
        transition = node.health.set_manual(down, self.clock())
        if not down:
            node.models.clear()  # its per-model holds and probes too: trusted means trusted
            node.recovery = None
        self.events.publish("manual", node=node.name, manual="down" if down else "auto")
        if transition is None:
            return False
        if down:
            log.info("node %s: taken out of rotation by hand (was %s)", node.name, transition.before)
        else:
            was = "manually down" if transition.before == State.DOWN else transition.before
            log.info("node %s: back to automatic health checks (was %s), now %s", node.name, was, transition.after)
        self._publish(node, transition)
        return True

    def _transition(self, node: NodeState, transition: Transition | None) -> None:
        if transition is None:
            return
        # Worse is a WARNING; better (back to healthy, or probes passing while failed requests still hold it
        # out: unhealthy -> ejected) is INFO, in words that cannot be read as the opposite (observe/display.py).
        better = transition.after in (State.HEALTHY, State.DOWN) or transition.before == State.UNHEALTHY
        why = why_changed(str(transition.after), transition.reason, str(transition.before))
        log.log(logging.INFO if better else logging.WARNING, "node %s: %s -> %s (%s)", node.name,
                transition.before, transition.after, why)  # fmt: skip
        self._publish(node, transition)

    def _publish(self, node: NodeState, transition: Transition) -> None:
        self.events.publish(
            "health",
            node=node.name,
            before=str(transition.before),
            after=str(transition.after),
            reason=transition.reason,
        )
        if transition.after != State.HEALTHY:
            self.move_waiting(node, f"{node.name} {transition.after} ({transition.reason})")
