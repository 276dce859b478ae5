"""One node as the running sidecar holds it: its config, health, figures and key headers.

A reload keeps the `NodeState` of every node whose config did not change, so its health and figures
live on; attempts (attempt.py), the balancer and the control API all work on these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.config.schema import Node
from sidecar.formats.dialect import ANTHROPIC, ANTHROPIC_VERSION
from sidecar.observe.shapes import ProbeJSON
from sidecar.observe.stats import NodeStats

from .health import Failure, Health, ModelStates
from .recovery import Recovery
from .ttft import FirstTokenHistory
from .waiting import Waiting

MODEL_STATES = 64  # per node: configured models and recent others; model names come from clients


@dataclass(eq=False)
class NodeState:
    config: Node
    health: Health
    stats: NodeStats = field(default_factory=NodeStats)
    auth: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # the key, in the node's API's header
    last_probe: ProbeJSON | None = None
    # The model ids its provider's own GET /v1/models listed (bounded, see catalog.py), and when
    # (upstream clock) that was last asked, by the active probe or the catalog; None: never.
    upstream_models: tuple[str, ...] | None = None
    upstream_models_at: float | None = None

    # Per-model health, where a failure is one model's (see health.ModelHealth).
    models: ModelStates = field(default_factory=lambda: ModelStates(MODEL_STATES))
    # Attempts that have sent nothing to their client yet: moved on when the node is judged out (waiting.py).
    waiting: Waiting = field(default_factory=Waiting)
    # Recent first tokens per model: the learned first-token limit (ttft.py).
    first_tokens: FirstTokenHistory = field(default_factory=FirstTokenHistory)
    # Out for failing real traffic and probed back (recovery.py); None when not.
    recovery: Recovery | None = None
    # When (upstream clock) an attempt last succeeded here: a node serving other requests is not blamed
    # for a failure the request caused (proxy/poison.py).
    last_ok: float = float("-inf")
    last_failed: float = float("-inf")  # when an attempt last failed here (its own fault or not)
    failed_attempts: int = 0  # attempts that failed here, ever: whether others failed while a request waited

    @property
    def name(self) -> str:
        return self.config.name

    def own_headers(self) -> list[tuple[str, str]]:
        """What the sidecar's own requests to the node (probes, model lists) carry: its key, and for an
        Anthropic node the API version that API requires."""
        if self.config.api == ANTHROPIC:
            return [*self.auth, ("anthropic-version", ANTHROPIC_VERSION)]
        return list(self.auth)


def auth_headers(node: Node) -> tuple[tuple[str, str], ...]:
    """The node's key as its API takes it: `x-api-key` for Anthropic's, a bearer token for OpenAI's."""
    if not node.api_key:
        return ()
    if node.api == ANTHROPIC:
        return (("x-api-key", node.api_key),)
    return (("Authorization", f"Bearer {node.api_key}"),)


@dataclass(slots=True)
class Blame:
    """What one failure did to a node's health, so that it can be taken back when the request turns out
    to have caused it (proxy/poison.py): counted against the node, or against `model` on it, and the
    ejection it began, if it began one."""

    node: NodeState
    kind: Failure
    model: str | None = None
    ejected_until: float | None = None
    failed_at: float = float("-inf")  # the node's last_failed this failure set, and the one before it
    failed_before: float = float("-inf")
