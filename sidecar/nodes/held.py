"""What the sidecar holds of upstream answers at once: one budget for the process, one share per attempt.

A non-stream answer is read whole before any of it is sent (attempt.whole), so a node that cuts it can still
be failed over. `max_response_bytes` bounds one answer; `max_held_bytes` bounds all of them together, so
answers at once cannot take their number times the cap. An answer that finds no room left is handed on as it
arrives (attempt.whole), at the cost of failing over on a cut after that.
"""

from __future__ import annotations


class Budget:
    """The bytes of answers held at once, across config generations: a reload sets a new `limit` and keeps
    what is held, since requests in flight on the old generation still hold it."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def share(self) -> Share:
        return Share(self)


class Share:
    """One attempt's bytes in the budget: taken as they arrive, given back all at once by the scope that
    owns the attempt (attempt.Attempt), on every path: success, failure, cancellation."""

    __slots__ = ("budget", "taken")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.taken = 0

    def take(self, size: int) -> bool:
        """Count `size` more bytes held; False (nothing taken) when they do not fit."""
        budget = self.budget
        if budget.held + size > budget.limit:
            return False
        budget.held += size
        self.taken += size
        return True

    def give_back(self) -> None:
        self.budget.held -= self.taken
        self.taken = 0
