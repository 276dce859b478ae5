"""What the figures are keyed by: a failure reason's bounded category, a status class, a model's label, and the
histograms' buckets. Pure: every label value is a fixed word, a node name or a bounded model name."""

from __future__ import annotations

PREFIX = "llm_sidecar_"
# Seconds, for LLM calls: from a cached answer in 10 ms to a long reasoning stream of 10 minutes.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Seconds, for an active probe (a GET /v1/models, its timeout 2 s by default).
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NONE = "none"  # no model in the request, no node that answered, no status
OTHER = "other"  # a model name the config does not list, past the bound of names seen
MAX_SEEN_MODELS = 32  # names labelled as themselves beyond the configured ones, first answered first
MAX_LABEL_CHARS = 100  # a longer name, or an unprintable one, is `other`
CONTINUATION = "continuation: "  # the prefix of a failed continuation's reason (forward.carry_on)
# What a failure reason (a free text, with errno strings and provider text in it) is counted as.
REASONS = frozenset(
    {
        "timeout", "connect", "reset", "http_5xx", "http_4xx", "rate_limited", "auth", "context_window",
        "error_event", "bad_response", "moved", "request_caused", "other",
    }
)  # fmt: skip
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def reason_category(reason: str) -> str:
    """The bounded category of a failure reason (see proxy/answer.py, nodes/transport.py, proxy/relay.py, proxy/forward.py)."""
    if reason.startswith(CONTINUATION):
        reason = reason[len(CONTINUATION) :]
    if reason.startswith("moved on:"):  # the node was judged out while the attempt waited: no failure
        return "moved"
    if reason.startswith("rate limited"):
        return "rate_limited"
    if reason.startswith("auth ("):
        return "auth"
    if reason.startswith("http "):
        return "http_5xx" if reason[5:6] == "5" else "http_4xx"
    if reason.startswith("overloaded ("):  # Anthropic's 529
        return "http_5xx"
    if reason == "context window exceeded":
        return "context_window"
    if reason.startswith("connect "):  # "connect failed (...)", "connect timeout": the node is unreachable
        return "connect"
    if "timeout" in reason or reason.startswith(("no first token", "no token before")):
        return "timeout"
    if reason.startswith(("connection ", "stream ended")):
        return "reset"
    if reason.startswith("error event"):
        return "error_event"
    if reason.startswith(
        ("bad content-type", "malformed event", "event larger", "response too large", "no data before",
         "redirect (", "continuation ended", "error in a ")
    ):  # fmt: skip
        return "bad_response"
    return "other"


def status_class(status: int) -> str:
    """2xx, 4xx, 5xx...; 499 (the client left) on its own; `none` when no status was set."""
    if status == 499:
        return "499"
    return STATUS_CLASSES.get(status // 100, NONE) if status > 0 else NONE


STATUS = {status: status_class(status) for status in range(100, 600)}  # looked up once per request


def model_label(model: str | None, known: frozenset[str]) -> str:
    """A configured model name as it is, `other` for any other, `none` for no model."""
    if model is None:
        return NONE
    return model if model in known else OTHER
