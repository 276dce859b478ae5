"""Hedged first tokens ([upstream.hedge], opt-in): a stream that has no first token after `after`
seconds is also sent to the next usable node serving its model; the first real token wins.

The loser is cancelled at once (its connection closed, so the provider stops generating) and gets no
verdict unless it failed; the client sees one stream. Only generation paths are hedged (a hedge is a
second request: never for uploads or anything with side effects), and at most `budget` of the last
minute's requests: a hedge costs a request, and a slow provider must not double the load on the next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from sidecar.nodes.attempt import Attempt
from sidecar.nodes.balancer import Choice
from sidecar.nodes.transport import UpstreamError

from .answer import Ready

HEDGED_PATHS = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/responses"})
WINDOW = 60.0  # seconds the budget looks back


class HedgeBudget:
    """The share of the last minute's hedgeable requests that were hedged."""

    __slots__ = ("hedges", "requests")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.hedges: deque[float] = deque()

    def _trim(self, now: float) -> None:
        for times in (self.requests, self.hedges):
            while times and times[0] < now - WINDOW:
                times.popleft()

    def counted(self, now: float) -> None:
        """A hedgeable request started."""
        self.requests.append(now)
        self._trim(now)

    def allows(self, share: float, now: float) -> bool:
        self._trim(now)
        return len(self.hedges) + 1 <= share * len(self.requests)

    def spent(self, now: float) -> None:
        self.hedges.append(now)

    def share(self, now: float) -> float:
        self._trim(now)
        return len(self.hedges) / len(self.requests) if self.requests else 0.0


class Lost(Exception):
    """The other attempt's first token came first: this one ends with no verdict."""


class Hedge:
    """The second attempt of a hedged stream, in a task of its own: it races the first one to a first token,
    then, if it won, stays open while the request relays its answer, and ends when told (`finish`/`lose`).

    Its `with upstream.attempt(...)` is inside its task, so whatever happens its lease, in-flight count and
    response go back there: on its own failure (recorded at once), on losing or on cancellation (no verdict).
    """

    def __init__(
        self, choice: Choice, first: Callable[[Attempt], Awaitable[Ready]], attempt: Attempt, entry: dict[str, Any]
    ) -> None:
        self.choice = choice
        self.attempt = attempt
        self.entry = entry  # its line in the request's record: node, over, won
        self.ready: Ready | None = None
        self.error: UpstreamError | None = None
        self.settled = asyncio.Event()  # ready, or failed
        self.release: asyncio.Future[UpstreamError | Lost | None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.ensure_future(self._run(first))

    async def _run(self, first: Callable[[Attempt], Awaitable[Ready]]) -> None:
        with self.attempt as attempt:
            try:
                self.ready = await first(attempt)
            except UpstreamError as exc:
                self.error = exc
                raise
            finally:
                self.settled.set()
            outcome = await self.release
            if isinstance(outcome, Lost):
                raise outcome
            if outcome is not None:
                attempt.fail(outcome)  # the relay found it broken mid-stream

    def lose(self) -> None:
        if not self.release.done():
            self.release.set_result(Lost())
        if not self.settled.is_set():
            self.task.cancel()

    def finish(self, broken: UpstreamError | None) -> None:
        if not self.release.done():
            self.release.set_result(broken)

    async def close(self) -> None:
        """Wait for the attempt to have ended (its outcome recorded); cancel it if it is still racing."""
        self.lose()
        with contextlib.suppress(asyncio.CancelledError, Lost, UpstreamError):
            await self.task


async def race(
    main: asyncio.Future[Ready], after: float | None, start: Callable[[], Hedge | None], racing: list[Hedge]
) -> tuple[Ready, Hedge | None, Hedge | None]:
    """Wait for `main`'s first token; past `after` seconds without one, race a hedge (`start`, which may
    decline). Returns (the winner's ready, the hedge when it won, a hedge that failed before `main`
    answered, to account for). When `main` fails while its hedge still races, the failure is raised and
    the hedge left in `racing` for the caller to go on with."""
    hedge: Hedge | None = None
    handed_on = False
    try:
        if after is not None:
            done, _ = await asyncio.wait({main}, timeout=after)
            if not done:
                hedge = start()
        if hedge is None:
            return await main, None, None
        settled: asyncio.Future[Any] = asyncio.ensure_future(hedge.settled.wait())
        racers: set[asyncio.Future[Any]] = {main, settled}
        try:
            done, _ = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
        if main in done:
            if main.exception() is not None and not (hedge.settled.is_set() and hedge.error is not None):
                racing.append(hedge)  # main failed: the hedge goes on alone
                handed_on = True
            return main.result(), None, hedge if hedge.error is not None else None
        if hedge.ready is not None:  # the hedge's first token came first
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                await main
            handed_on = True
            return hedge.ready, hedge, None
        return await main, None, hedge  # the hedge failed first: main goes on alone
    finally:
        if not main.done():
            main.cancel()
        if hedge is not None and not handed_on:
            await hedge.close()
