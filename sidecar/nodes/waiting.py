"""Attempts waiting on a node for what they may send, so that they move on at once when it is judged out.

An attempt that has delivered nothing to its client yet (no first token of a stream, no byte of a
non-stream answer) waits inside a cancel scope (`asyncio.timeout`). When the node, or the model on it,
is judged out by anything — another request's failure or timeout, a probe, `node down`, `failover` — each
such attempt's scope is expired now: the attempt ends with no verdict on the node (it did nothing wrong
that this attempt saw) and its request goes on to the next node at once instead of waiting out its own
limit. An attempt whose request has nowhere else to go stays: moving it would only fail it sooner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType


class Waiter:
    """One waiting attempt: `with node.waiting.waiter(scope, model, can_move) as waiter:`."""

    __slots__ = ("can_move", "model", "reason", "scope", "waiters")

    def __init__(
        self,
        waiters: set[Waiter],
        scope: asyncio.Timeout,
        model: str | None,
        can_move: Callable[[], bool],
    ) -> None:
        self.waiters = waiters
        self.scope = scope
        self.model = model
        self.can_move = can_move  # whether the request has another usable node to go to now
        self.reason: str | None = None  # why it was moved on; None while it waits

    def __enter__(self) -> Waiter:
        self.waiters.add(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.waiters.discard(self)

    def move(self, reason: str) -> bool:
        """Expire the attempt's scope now (its task gets a TimeoutError at its next await)."""
        if self.reason is not None or self.scope.expired() or not self.can_move():
            return False  # already moved, or its own limit ran out this very moment: it is on its way anyway
        self.reason = reason
        self.scope.reschedule(asyncio.get_running_loop().time())
        return True


class Waiting:
    """The attempts waiting on one node."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: set[Waiter] = set()

    def waiter(self, scope: asyncio.Timeout, model: str | None, can_move: Callable[[], bool]) -> Waiter:
        return Waiter(self.waiters, scope, model, can_move)

    def move(self, reason: str, model: str | None = None) -> int:
        """Move on every waiting attempt (only those for `model` when given); how many moved."""
        if not self.waiters:
            return 0
        return sum(1 for w in list(self.waiters) if (model is None or w.model == model) and w.move(reason))

    def __len__(self) -> int:
        return len(self.waiters)
