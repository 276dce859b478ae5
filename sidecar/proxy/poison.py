"""Failures the request caused never eject a node.

A body that makes every provider answer 5xx (a malformed tool schema some backends choke on, a history
one of them cannot parse) or time out would otherwise count against each node it is sent to, and three
such requests eject them all. So each failure is tagged by the request's fingerprint (its path and body,
the model left out: each node gets its own) and the way it failed (timeout, or the status). When one
request fails the same way on two nodes that both kept serving other requests — their last outcome a
success (within the last minute) when it reached them, and no other request failed there while it was
there — the request caused it: the client gets the original error, no further node is tried, and the
health counts it added are taken back. Two providers that break at once (a shared outage, or two nodes
that start hanging together) fail the other requests in flight too, so they are not taken for the
request's fault and the request goes on to the next node. A fingerprint found so
is remembered for a while, only to spare it same-node retries when sent again: it still needs two nodes
to be judged so, since a node that went down meanwhile must not be taken for the request's fault. A node
that fails other requests too is not cleared this way: a dead node is ejected as ever.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sidecar.nodes.health import Failure
from sidecar.nodes.node import Blame, NodeState
from sidecar.nodes.transport import UpstreamError

SERVING_WITHIN = 60.0  # seconds: a node that answered another request this recently is serving
REMEMBER = 600.0  # seconds a request-caused fingerprint is remembered
SIZE = 1024  # fingerprints remembered at most (LRU): bodies come from clients


def fingerprint(path: str, body: bytes, parsed: dict[str, Any] | None) -> str:
    """The request without its model: what every node was sent (a stream flag included)."""
    text = body
    if parsed is not None:
        rest = {k: v for k, v in parsed.items() if k != "model"}
        with contextlib.suppress(ValueError, RecursionError):  # a body the client made hostile: its bytes do
            text = json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()  # ASCII: lone surrogates too
    return hashlib.sha256(path.encode() + b"\0" + text).hexdigest()[:32]


def way(error: UpstreamError) -> str | None:
    """How an attempt failed, when a request could be what caused it: a 5xx (its status) or a timeout.
    A rate limit, an auth failure or an unreachable node is the node's (or the account's) trouble."""
    if error.moved or error.kind is None:
        return None
    if error.kind is Failure.TIMEOUT:
        return "timeout"
    if error.status >= 500 and error.status != 529:  # 529: Anthropic overloaded, the node's state
        return str(error.status)
    return None


class Suspects:
    """Fingerprints found request-caused lately, and how they failed (bounded, least recently used first)."""

    def __init__(self, size: int = SIZE, remember: float = REMEMBER) -> None:
        self.size = size
        self.remember = remember
        self.found: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def known(self, key: str, now: float) -> str | None:
        """The way this fingerprint failed, if it was found request-caused within `remember` seconds."""
        entry = self.found.get(key)
        if entry is None:
            return None
        if now - entry[1] > self.remember:
            del self.found[key]
            return None
        return entry[0]

    def mark(self, key: str, how: str, now: float) -> None:
        self.found[key] = (how, now)
        self.found.move_to_end(key)
        while len(self.found) > self.size:
            self.found.popitem(last=False)


class Culprit:
    """One request's failures that it could have caused, and the verdict: did it?"""

    __slots__ = ("failures", "key", "own", "reached_at", "repeat", "serving", "suspects")

    def __init__(self, suspects: Suspects) -> None:
        self.suspects = suspects
        self.key: str | None = None  # the fingerprint, made on the first failure that needs it
        self.repeat: str | None = None  # the way this fingerprint was found to fail lately, if it was
        # Whether each node served others when this request first reached it: its last outcome then was a
        # success, within SERVING_WITHIN. Taken before the attempt, so this request's own failures do not
        # count, and a node failing everyone's requests (a dead one) never serves.
        self.serving: dict[int, bool] = {}
        # Each node reached: the node, and its count of failed attempts when this request reached it, so that
        # failures of other requests there meanwhile can be told from this request's own (`own`, by node).
        self.reached_at: dict[int, tuple[NodeState, int]] = {}
        self.own: dict[int, int] = {}
        # (way, node index, error, what it was blamed for, its entry in the request's failed attempts)
        self.failures: list[tuple[str, int, UpstreamError, Blame | None, dict[str, Any]]] = []

    def reached(self, index: int, node: NodeState, now: float) -> None:
        """An attempt on node `index` starts (its figures as they are before it)."""
        if index not in self.serving:
            self.serving[index] = node.last_ok >= node.last_failed and now - node.last_ok <= SERVING_WITHIN
            self.reached_at[index] = (node, node.failed_attempts)

    def kept_serving(self, index: int) -> bool:
        """The node served others when this request reached it, and failed no other request since."""
        if not self.serving.get(index, False):
            return False
        node, before = self.reached_at[index]
        return node.failed_attempts - before <= self.own.get(index, 0)

    def failed(
        self,
        index: int,
        error: UpstreamError,
        blame: Blame | None,
        entry: dict[str, Any],
        key: Callable[[], str],
        now: float,
    ) -> str | None:
        """Record a failure; the way the request caused it when it did (it failed so on two nodes that both
        kept serving others: then answer with `acquit`), else None."""
        if error.kind is not None and not error.moved:  # counted in the node's failed attempts
            self.own[index] = self.own.get(index, 0) + 1
        how = way(error)
        if how is None:
            return None
        self.failures.append((how, index, error, blame, entry))
        if self.key is None:
            self.key = key()
            self.repeat = self.suspects.known(self.key, now)
        nodes = {i for w, i, *_ in self.failures if w == how and self.kept_serving(i)}
        if len(nodes) >= 2:
            self.suspects.mark(self.key, how, now)
            return how
        return None

    def known(self, error: UpstreamError) -> bool:
        """This request was found to cause failures like `error` lately: no same-node retry is worth it
        (a remembered fingerprint never short-cuts the two-node rule: a node down meanwhile must not be
        taken for the request's fault)."""
        return self.repeat is not None and self.repeat == way(error)

    def acquit(self, how: str) -> tuple[UpstreamError, list[Blame]]:
        """The first failure of that way (the client's answer), and what each such failure was blamed
        for (to take back); their entries are marked request-caused."""
        same = [f for f in self.failures if f[0] == how]
        for *_, entry in same:
            entry["request_caused"] = True
        return same[0][2], [blame for _, _, _, blame, _ in same if blame is not None]
