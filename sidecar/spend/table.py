"""The shipped price table: what common models cost, as the providers published it on `AS_OF`.

USD per million tokens: (input, output, cached input, cache write); None is the input price. Long-context
tiers, batch and priority discounts are not modelled. Prices change: a node's `price`/`prices` or the
top-level `[prices]` override these (docs/journal.md).
"""

from __future__ import annotations

from sidecar.config.schema import Price

AS_OF = "2025-11-20"
SOURCES = (
    "https://openai.com/api/pricing/",
    "https://docs.anthropic.com/en/docs/about-claude/pricing",
    "https://api-docs.deepseek.com/quick_start/pricing",
    "https://ai.google.dev/gemini-api/docs/pricing",
)


def _p(input_: float, output: float, cached: float | None = None, write: float | None = None) -> Price:
    return Price(input=input_, output=output, cached_input=cached, cache_write=write)


SHIPPED: dict[str, Price] = {
    # OpenAI: cached input at the published discount; no charge for cache writes.
    "gpt-4o": _p(2.50, 10.00, 1.25),
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "gpt-4.1": _p(2.00, 8.00, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "gpt-5": _p(1.25, 10.00, 0.125),
    "gpt-5.1": _p(1.25, 10.00, 0.125),
    "gpt-5-mini": _p(0.25, 2.00, 0.025),
    "gpt-5-nano": _p(0.05, 0.40, 0.005),
    "o1": _p(15.00, 60.00, 7.50),
    "o3": _p(2.00, 8.00, 0.50),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "text-embedding-3-small": _p(0.02, 0.0),
    "text-embedding-3-large": _p(0.13, 0.0),
    # Anthropic: cache reads at 0.1x input, 5-minute cache writes at 1.25x.
    "claude-opus-4-5": _p(5.00, 25.00, 0.50, 6.25),
    "claude-opus-4-1": _p(15.00, 75.00, 1.50, 18.75),
    "claude-opus-4": _p(15.00, 75.00, 1.50, 18.75),
    "claude-sonnet-4-5": _p(3.00, 15.00, 0.30, 3.75),
    "claude-sonnet-4": _p(3.00, 15.00, 0.30, 3.75),
    "claude-3-7-sonnet": _p(3.00, 15.00, 0.30, 3.75),
    "claude-haiku-4-5": _p(1.00, 5.00, 0.10, 1.25),
    "claude-3-5-haiku": _p(0.80, 4.00, 0.08, 1.00),
    # DeepSeek (V3.2): cache hits at a tenth.
    "deepseek-chat": _p(0.28, 0.42, 0.028),
    "deepseek-reasoner": _p(0.28, 0.42, 0.028),
    # Google, prompts up to 200k tokens.
    "gemini-2.5-pro": _p(1.25, 10.00, 0.31),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.075),
}
