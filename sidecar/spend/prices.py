"""Which price applies to a request, and what the request cost. Pure: no clock, no I/O.

A request is priced by the node that answered and the model: the model as the client asked for it and as
it was sent to the node (a node's `models` table may rename it). The first of these that has a price wins:

1. the node's `prices` for the model sent, then the model asked, then its `"*"` entry;
2. the node's `price`;
3. the top-level `[prices]` for the model sent, then asked;
4. the shipped table (table.py) for the model sent, then asked.

A model name matches in `[prices]` and the shipped table also without a provider prefix (`openai/gpt-4o`),
a date suffix (`gpt-4o-2024-08-06`, `claude-sonnet-4-5-20250929`) or `-latest`, in any case.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from sidecar.config.schema import Config, Node, Price

from .table import AS_OF, SHIPPED

MILLION = 1_000_000
CACHE_SIZE = 4096  # (node, model asked) resolved; model names come from clients
DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True)
class Applied:
    """A price and where it came from, in words for `check` and `log show`."""

    price: Price
    source: str


def forms(model: str) -> Iterator[str]:
    """`model`, then the names it may be listed under."""
    yield model
    name = model.lower().rsplit("/", 1)[-1]
    name = name.removesuffix("-latest")
    yield name
    yield DATE_SUFFIX.sub("", name)


def _named(table: Mapping[str, Price], models: tuple[str | None, ...]) -> tuple[str, Price] | None:
    for model in models:
        if model is None:
            continue
        for name in forms(model):
            found = table.get(name)
            if found is not None:
                return name, found
    return None


def resolve(node: Node, asked: str | None, sent: str | None, overrides: Mapping[str, Price]) -> Applied | None:
    """The price of `node` answering for `asked` (sent to it as `sent`), or None: nothing prices it."""
    for model in (sent, asked, "*"):
        if model is not None and model in node.prices:
            return Applied(node.prices[model], f'node {node.name}: prices["{model}"]')
    if node.price is not None:
        return Applied(node.price, f"node {node.name}: price")
    models = (sent, asked) if sent != asked else (sent,)
    if (hit := _named(overrides, models)) is not None:
        return Applied(hit[1], f'[prices] "{hit[0]}"')
    if (hit := _named(SHIPPED, models)) is not None:
        return Applied(hit[1], f"shipped table ({AS_OF}): {hit[0]}")
    return None


def cost(
    price: Price, prompt: int | None, output: int | None, cached: int | None = None, cache_write: int | None = None
) -> float:
    """USD for the tokens a node reported. `prompt` counts every prompt token, cached and cache-written
    ones included (OpenAI's prompt_tokens; for Anthropic the sidecar adds the cache counts to input_tokens)."""
    read = cached or 0
    written = cache_write or 0
    fresh = max((prompt or 0) - read - written, 0)
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    total = fresh * price.input + read * cached_price + written * write_price + (output or 0) * price.output
    return total / MILLION


class PriceBook:
    """The prices of one config, each (node, model asked) resolved once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.nodes = {n.name: n for n in config.upstream.nodes}
        self.cache: dict[tuple[str, str | None], tuple[str | None, Applied | None]] = {}

    def lookup(self, node: str, asked: str | None) -> tuple[str | None, Applied | None]:
        """The model as sent to `node` for `asked` (its `models` table may rename it), and its price."""
        key = (node, asked)
        try:
            return self.cache[key]
        except KeyError:
            pass
        config = self.nodes.get(node)
        if config is None:
            found: tuple[str | None, Applied | None] = (asked, None)
        else:
            sent = asked if asked is None else config.rewrite_model(asked)
            found = (sent, resolve(config, asked, sent, self.config.prices))
        if len(self.cache) >= CACHE_SIZE:
            self.cache.clear()
        self.cache[key] = found
        return found
