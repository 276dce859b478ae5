"""What the proxy hands the journal besides the `request` event, and what the recorder shows the control plane.

The bodies of a request are never in its event (events go to every monitor): when the journal keeps bodies,
the proxy puts them on the `Desk` just before it publishes the event, and the recorder, an observer of that
event, takes them in the same call (both in the event loop's thread, within one `emit`).

The desk also bounds the bodies held in memory, from the capture of a request still running to the writer that
packs them: at most BUDGET bytes. Past it, what a request would keep is not kept (its record says its bodies
were cut). `kept` and `freed` are counted by the event loop, `written` by the journal's writer thread: each
counter has one writer, so none is lost between the threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .shapes import SpendJSON

BUDGET = 64 * 1024 * 1024  # bytes of bodies held at once, captured and waiting to be written


@dataclass(slots=True)
class Bodies:
    """A request's body, and its answer's body as it went to the client, as much of each as was kept."""

    request: bytes
    request_size: int  # bytes the client sent, the part not kept included
    response: list[bytes] = field(default_factory=list)
    response_size: int = 0  # bytes the client got, the part not kept included
    headers: dict[str, str] = field(default_factory=dict)  # a few that say how to read or replay them

    @property
    def held(self) -> int:
        return len(self.request) + sum(map(len, self.response))


class Desk:
    """One slot for the bodies of the request whose event is being published, and the budget of bodies held."""

    __slots__ = ("bodies", "budget", "event", "freed", "kept", "limit", "written")

    def __init__(self) -> None:
        self.limit = 0  # bytes of each body to keep; 0: bodies are not kept
        self.budget = BUDGET
        self.event: dict[str, Any] | None = None
        self.bodies: Bodies | None = None
        self.kept = 0  # bytes taken into captures so far (the event loop)
        self.freed = 0  # bytes let go without being written: a record dropped, bodies nobody took (the event loop)
        self.written = 0  # bytes the journal wrote and let go (its writer thread)

    def room(self, size: int) -> bool:
        """Whether `size` more bytes may be kept; counted as kept when they may."""
        if self.kept - self.freed - self.written + size > self.budget:
            return False
        self.kept += size
        return True

    def hand(self, event: dict[str, Any], bodies: Bodies) -> None:
        self.event, self.bodies = event, bodies

    def take(self, event: dict[str, Any]) -> Bodies | None:
        if self.event is not event:
            return None
        bodies, self.event, self.bodies = self.bodies, None, None
        return bodies

    def clear(self) -> None:
        """After the event is published: bodies nobody took are let go."""
        if self.bodies is not None:
            self.freed += self.bodies.held
        self.event = self.bodies = None


class Recorder(Protocol):
    """The spend recorder as the control plane and the metrics see it (spend/recorder.py)."""

    def spend(self) -> SpendJSON: ...

    def dropped(self) -> dict[str, int]:
        """Journal records dropped so far, by reason."""
        ...
