"""What the proxy hands the journal besides the `request` event, and what the recorder shows the control plane.

The bodies of a request are never in its event (events go to every monitor): when the journal keeps bodies,
the proxy puts them on the `Desk` just before it publishes the event, and the recorder, an observer of that
event, takes them in the same call (both in the event loop's thread, within one `emit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .shapes import SpendJSON


@dataclass(slots=True)
class Bodies:
    """A request's body, and its answer's body as it went to the client, up to the journal's cap."""

    request: bytes
    response: list[bytes] = field(default_factory=list)
    response_size: int = 0  # bytes the client got, the part not kept included
    headers: dict[str, str] = field(default_factory=dict)  # a few that say how to read or replay them


class Desk:
    """One slot for the bodies of the request whose event is being published."""

    __slots__ = ("bodies", "event", "limit")

    def __init__(self) -> None:
        self.limit = 0  # bytes of each body to keep; 0: bodies are not kept
        self.event: dict[str, Any] | None = None
        self.bodies: Bodies | None = None

    def hand(self, event: dict[str, Any], bodies: Bodies) -> None:
        self.event, self.bodies = event, bodies

    def take(self, event: dict[str, Any]) -> Bodies | None:
        if self.event is not event:
            return None
        bodies, self.event, self.bodies = self.bodies, None, None
        return bodies

    def clear(self) -> None:
        self.event = self.bodies = None


class Recorder(Protocol):
    """The spend recorder as the control plane and the metrics see it (spend/recorder.py)."""

    def spend(self) -> SpendJSON: ...

    def dropped(self) -> dict[str, int]:
        """Journal records dropped so far, by reason."""
        ...
