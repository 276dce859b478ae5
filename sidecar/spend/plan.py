"""What `llm-sidecar check` says about spend: which price applies to each node and model, where none does,
the budgets, and the journal that keeps spend across restarts."""

from __future__ import annotations

from sidecar.config.schema import Budget, Config, Node, Price
from sidecar.journal.paths import journal_path

from .prices import resolve
from .table import AS_OF, SHIPPED


def price_words(price: Price) -> str:
    """`$2.50 in, $1.25 cached, $10.00 out` (and the cache write, when it is not the input price)."""
    words = [f"${price.input:g} in"]
    if price.cached_input is not None and price.cached_input != price.input:
        words.append(f"${price.cached_input:g} cached")
    if price.cache_write is not None and price.cache_write != price.input:
        words.append(f"${price.cache_write:g} cache write")
    words.append(f"${price.output:g} out")
    return ", ".join(words)


def budget_words(budget: Budget) -> str:
    caps = []
    if budget.daily_usd is not None:
        caps.append(f"${budget.daily_usd:g} a day")
    if budget.monthly_usd is not None:
        caps.append(f"${budget.monthly_usd:g} a month")
    return ", ".join(caps)


def node_lines(node: Node, config: Config) -> tuple[list[str], list[str]]:
    """The price of each model the node's `models` table names (or of everything it serves), and warnings."""
    lines: list[str] = []
    warnings: list[str] = []
    pad = " " * 11
    if not node.models:
        if node.price is not None:
            lines.append(f"  {node.name:<12} any model: {price_words(node.price)} (its price)")
        for model, price in node.prices.items():
            lines.append(f"{pad}  {model}: {price_words(price)} (its prices)")
        if node.price is None:
            lines.append(
                f"  {node.name:<12} any model, by the name asked: [prices] or the shipped table ({len(SHIPPED)} models)"
                "; a model in neither is not counted (log stats shows it)"
            )
        return lines, warnings
    for asked, sent in node.models.items():
        applied = resolve(node, None if asked == "*" else asked, sent, config.prices)
        shown = f"{asked} -> {sent}" if asked != sent else asked
        if applied is None:
            lines.append(f"  {node.name:<12} {shown}: no price")
            warnings.append(
                f"node {node.name}, model {shown}: no price applies, so its spend is not counted and no budget "
                f"can stop it (set price = {{ input = ..., output = ... }} on the node, or [prices])"
            )
        else:
            lines.append(f"  {node.name:<12} {shown}: {price_words(applied.price)} ({applied.source})")
    return lines, warnings


def render(config: Config) -> tuple[str, list[str]]:
    """The lines `check` prints after the plan, and the warnings (printed to stderr)."""
    lines = [f"prices   USD per million tokens; shipped table as of {AS_OF} (a node's price or [prices] overrides it)"]
    warnings: list[str] = []
    for node in config.upstream.nodes:
        more, warned = node_lines(node, config)
        lines += more
        warnings += warned
    budgets = [f"sidecar {budget_words(config.budget)} (past it: 429)"] if budget_words(config.budget) else []
    budgets += [f"{n.name} {budget_words(n.budget)} (past it: out, traffic fails over)" for n in config.upstream.nodes
                if n.budget is not None and budget_words(n.budget)]  # fmt: skip
    lines.append("budget   " + ("; ".join(budgets) if budgets else "none") + " (local days and months)")
    journal = config.journal
    if journal.enabled:
        bodies = f", bodies up to {journal.max_body_bytes} bytes each" if journal.bodies else ", no bodies"
        lines.append(
            f"journal  {journal_path(journal)}: {journal.retention_days:g} days, at most {journal.max_bytes} bytes"
            f"{bodies}; spend survives restarts"
        )
    else:
        lines.append("journal  off: no request log, and spend starts from zero at each start")
        if budgets:
            warnings.append("budgets are set but [journal] is off: spend is forgotten when the sidecar restarts")
    return "\n".join(lines), warnings
