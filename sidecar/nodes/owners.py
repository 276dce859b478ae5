"""Which node made a stateful id (a stored response, a file, a batch, an upload, a vector store): only that node
can serve a request that names it. Bounded: the oldest ids are forgotten first (a forgotten id routes as any
request does). Shared by every config generation, as the state lives at the providers, not in a config; kept
across restarts by the journal when it is on (its `sink` is told of each id, and it `restore`s them at start)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import NamedTuple

CAPACITY = 50_000  # ids remembered (~10 MB at most)
MAX_ID = 200  # characters of an id worth remembering


class Owner(NamedTuple):
    node: str
    translated: bool  # made by a translated answer: the node keeps no state under that id


class Owners:
    __slots__ = ("capacity", "ids", "sink")

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.ids: OrderedDict[str, Owner] = OrderedDict()
        self.sink: Callable[[str, Owner], None] | None = None  # told of each new id (the journal keeps them)

    def __len__(self) -> int:
        return len(self.ids)

    def note(self, made: str, node: str, translated: bool = False) -> None:
        if not made or len(made) > MAX_ID:
            return
        owner = Owner(node, translated)
        self.keep(made, owner)
        if self.sink is not None:
            self.sink(made, owner)

    def restore(self, kept: Iterable[tuple[str, Owner]]) -> None:
        """Ids remembered before a restart, oldest first (those noted since are newer and stay)."""
        fresh = list(self.ids.items())
        for made, owner in kept:
            if len(made) <= MAX_ID and made not in self.ids:
                self.keep(made, owner)
        for made, owner in fresh:
            self.keep(made, owner)

    def keep(self, made: str, owner: Owner) -> None:
        self.ids[made] = owner
        self.ids.move_to_end(made)
        if len(self.ids) > self.capacity:
            self.ids.popitem(last=False)

    def get(self, made: str) -> Owner | None:
        return self.ids.get(made)
