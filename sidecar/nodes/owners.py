"""Which node made a stateful id (a stored response, a file, a batch, an upload, a vector store): only that node
can serve a request that names it. Bounded: the oldest ids are forgotten first (a forgotten id routes as any
request does). Shared by every config generation, as the state lives at the providers, not in a config."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

CAPACITY = 50_000  # ids remembered (~10 MB at most)
MAX_ID = 200  # characters of an id worth remembering


class Owner(NamedTuple):
    node: str
    translated: bool  # made by a translated answer: the node keeps no state under that id


class Owners:
    __slots__ = ("capacity", "ids")

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.ids: OrderedDict[str, Owner] = OrderedDict()

    def __len__(self) -> int:
        return len(self.ids)

    def note(self, made: str, node: str, translated: bool = False) -> None:
        if not made or len(made) > MAX_ID:
            return
        self.ids[made] = Owner(node, translated)
        self.ids.move_to_end(made)
        if len(self.ids) > self.capacity:
            self.ids.popitem(last=False)

    def get(self, made: str) -> Owner | None:
        return self.ids.get(made)
