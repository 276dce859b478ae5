"""The recorder: every finished request priced, counted against the budgets, and handed to the journal.

It is the event hub's first observer, so it runs in the event loop, once per `request` event, before the
metrics and the monitors see the event: it adds `model_served` (the model as sent to the node) and `cost_usd`
to the event, adds the cost to the ledger, and when a budget is reached takes the node out (or makes the
proxy answer 429: nodes/budget.py). Then it appends the event to the journal's queue; the writer thread does
the rest (journal/writer.py). Dict lookups and a little arithmetic: nothing here waits or writes.

The budget check runs as each cost is added, so a budget is overshot by at most the cost of the requests
that were already in flight when it was reached: each was admitted before, and each adds its own cost when
it ends. A node out for budget is never chosen again, not even for a retry of a request already under way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sidecar.config.schema import Budget, Config
from sidecar.journal.bodies import keys_of
from sidecar.journal.paths import journal_path
from sidecar.journal.writer import Journal
from sidecar.nodes.budget import resets
from sidecar.nodes.owners import Owner, Owners
from sidecar.nodes.runtime import Runtime
from sidecar.observe.shapes import SpendJSON

from .ledger import Ledger, day_bounds, month_bounds
from .prices import PriceBook, cost
from .table import AS_OF

log = logging.getLogger("llm_sidecar")


def node_budgets(config: Config) -> dict[str, Budget]:
    return {n.name: n.budget for n in config.upstream.nodes if n.budget is not None and n.budget != Budget()}


class SpendRecorder:
    def __init__(self, runtime: Runtime, journal: Journal | None, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.journal = journal
        self.clock = clock
        self.config = runtime.config
        self.book = PriceBook(self.config)
        self.ledger = Ledger(self.config.budget, node_budgets(self.config), clock())
        self.budgeted = self._budgeted(self.config)
        self.errors = 0

    @staticmethod
    def _budgeted(config: Config) -> bool:
        return config.budget != Budget() or bool(node_budgets(config))

    def attach(self) -> None:
        """Observe the runtime's events ahead of everyone else; show spend and drops to the control plane."""
        self.runtime.recorder = self
        self.runtime.events.observers.insert(0, self.observe)
        self.keep_bodies(self.config)

    def keep_bodies(self, config: Config) -> None:
        journal = config.journal
        self.runtime.desk.limit = journal.max_body_bytes if self.journal is not None and journal.bodies else 0

    def restore(self) -> None:
        """This month's spend, read back from the journal (before the first request)."""
        journal = self.journal
        if journal is None:
            return
        if journal.store.db is None:
            log.warning("journal %s: spend not read back (it cannot be opened); budgets count from zero", journal.path)
            return
        now = self.clock()
        try:
            rows = journal.store.spend_since(month_bounds(now)[0], day_bounds(now)[0], journal.sidecar)
        except Exception as exc:  # the journal's trouble is not the traffic's
            log.warning("journal %s: spend not read back (%s); budgets count from zero", journal.path, exc)
            return
        for node, model, usd, today, requests in rows:
            self.ledger.restore(node, model, usd, today, requests)
        if rows:
            log.info(
                "spend read back from the journal: %s today, %s this month",
                f"${self.ledger.total_today:.4f}", f"${self.ledger.total_month:.4f}",
            )  # fmt: skip
        self.check(now)

    # ------------------------------------------------------------------ per request

    def observe(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind != "request":
            if kind == "config" and event.get("ok") and self.runtime.config is not self.config:
                self.reconfigure(self.runtime.config)  # a reload: raised budgets take nodes back at once
            return
        try:
            self.record(event)
        except Exception:
            self.errors += 1
            if self.errors == 1:
                log.exception("spend: a request could not be recorded (later ones are dropped silently)")

    def record(self, event: dict[str, Any]) -> None:
        config = self.runtime.config
        if config is not self.config:
            self.reconfigure(config)
        node = event["node"]
        asked = event["model"]
        usd = None
        if node is None:
            event["model_served"] = None
        else:
            sent, applied = self.book.lookup(node, asked)
            event["model_served"] = sent
            prompt, output = event["tokens_in"], event["tokens_out"]
            if prompt is not None or output is not None:
                if applied is None:
                    self.ledger.unpriced_request(event["time"])
                else:
                    usd = cost(applied.price, prompt, output, event["tokens_cached"], event.get("tokens_cache_write"))
                    self.ledger.add(node, sent, usd, event["time"])
                    if self.budgeted:
                        self.check(event["time"])
        event["cost_usd"] = usd
        journal = self.journal
        if journal is not None:
            desk = self.runtime.desk
            journal.put(event, desk.take(event) if desk.event is not None else None)

    # ------------------------------------------------------------------ budgets

    def check(self, now: float) -> None:
        """Bring the runtime's budget gate in line with the ledger; say so when a verdict changes."""
        self.ledger.roll(now)
        gate = self.runtime.budgets
        over = self.ledger.sidecar_over()
        if over is not None and gate.sidecar_out(now) is None:
            gate.sidecar = over.out()
            log.warning("budget: %s; new requests get 429 until it %s", over.words, resets(over.until, now))
            self.runtime.events.publish("budget", scope="sidecar", over=True, reason=over.words, until=over.until)
        elif over is None and gate.sidecar is not None:
            gate.sidecar = None
            log.warning("budget: the sidecar's budget is no longer spent (raised or reset): requests go on")
            self.runtime.events.publish("budget", scope="sidecar", over=False, reason="budget raised or reset")
        nodes = self.ledger.nodes_over()
        for name, verdict in nodes.items():
            if gate.node_out(name, now) is None:
                gate.nodes[name] = verdict.out()
                self._node_event(name, True, verdict.words, verdict.until)
        for name in [n for n in gate.nodes if n not in nodes]:
            del gate.nodes[name]
            self._node_event(name, False, "budget raised or reset", None)

    def _node_event(self, name: str, out: bool, reason: str, until: float | None) -> None:
        node = self.runtime.upstream.by_name.get(name)
        state = str(node.health.state) if node is not None else "healthy"
        if out:
            log.warning("node %s: %s -> budget (%s); traffic fails over", name, state, reason)
        else:
            log.info("node %s: budget -> %s (%s)", name, state, reason)
        before, after = (state, "budget") if out else ("budget", state)
        self.runtime.events.publish("health", node=name, before=before, after=after, reason=reason)

    def reconfigure(self, config: Config) -> None:
        """A reload: new prices and budgets; what was spent stays."""
        self.config = config
        self.book = PriceBook(config)
        self.ledger.configure(config.budget, node_budgets(config))
        self.budgeted = self._budgeted(config)
        if self.journal is not None:  # its file stays (enabled and path are read at start); the rest follows
            self.journal.keys = keys_of(config)
            self.journal.config = config.journal
        self.keep_bodies(config)
        self.check(self.clock())

    # ------------------------------------------------------------------ what the control plane reads

    def spend(self) -> SpendJSON:
        return self.ledger.report(self.clock(), AS_OF)

    def dropped(self) -> dict[str, int]:
        return self.journal.dropped() if self.journal is not None else {}

    def close(self) -> None:
        """Write what the journal still holds (called once the last request has ended)."""
        if self.journal is not None:
            self.journal.close()


def start(runtime: Runtime) -> SpendRecorder:
    """Open the journal (when on), read this month's spend and the stateful ids' owners back from it, and
    record from now on."""
    config = runtime.config
    journal = None
    if config.journal.enabled:
        path = journal_path(config.journal)
        journal = Journal(path, config.journal, config.server.listen, keys_of(config), runtime.desk)
        journal.open()
    recorder = SpendRecorder(runtime, journal)
    recorder.restore()
    recorder.attach()
    if journal is not None:
        keep_owners(journal, runtime.upstream.owners)
    if journal is not None:
        journal.start()
        log.info("journal %s%s", journal.path, " (with bodies)" if config.journal.bodies else "")
    return recorder


def keep_owners(journal: Journal, owners: Owners) -> None:
    """Stateful ids live at the providers, past a restart: read back the ones nodes made, and keep new ones."""
    journal.keep_owners = owners.capacity
    if journal.store.db is not None:
        try:
            kept = journal.store.owners(journal.sidecar, owners.capacity)
        except Exception as exc:  # the journal's trouble is not the traffic's
            log.warning("journal %s: stateful ids not read back (%s)", journal.path, exc)
        else:
            owners.restore((made, Owner(node, translated)) for made, node, translated in kept)
            if kept:
                log.info("journal %s: %d stateful ids read back (a request naming one goes to its node)",
                         journal.path, len(kept))  # fmt: skip
    owners.sink = lambda made, owner: journal.own(made, owner.node, owner.translated)
