"""The retry plan (pure): which node goes again, after how long, and when to give up."""

from __future__ import annotations

import random

import pytest

from sidecar.config.schema import RetryPolicy
from sidecar.nodes.health import Failure
from sidecar.nodes.transport import UpstreamError
from sidecar.proxy.retry import MIN_SPACING, Fault, RetryPlan, fault_of

POLICY = RetryPolicy(max_wait=5, same_node=1, backoff=0.5, max_backoff=4, attempts_per_node=3)


def plan(**kw: object) -> RetryPlan:
    options: dict[str, object] = {"retry_timeout": 30.0, "rng": random.Random(7)}
    options.update(kw)
    return RetryPlan(POLICY, 0.0, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (UpstreamError(Failure.HTTP, "rate limited (429)", status=429), Fault.RATE_LIMITED),
        (UpstreamError(Failure.HTTP, "http 500", status=500), Fault.SERVER),
        (UpstreamError(Failure.HTTP, "http 503", status=503), Fault.SERVER),
        (UpstreamError(Failure.TCP, "connection closed before a response"), Fault.SERVER),
        (UpstreamError(Failure.TCP, "connect failed (refused)"), Fault.UNREACHABLE),
        (UpstreamError(Failure.TIMEOUT, "connect timeout"), Fault.SILENT),
        (UpstreamError(Failure.TIMEOUT, "no first token in 10s"), Fault.SILENT),
        (UpstreamError(Failure.HTTP, "auth (401)", status=401), Fault.FINAL),
        (UpstreamError(None, "context window exceeded", status=400), Fault.FINAL),
        (UpstreamError(Failure.HTTP, "redirect (302)", status=302), Fault.FINAL),
        (UpstreamError(Failure.HTTP, "malformed event before any token"), Fault.FINAL),
    ],
)
def test_failures_are_sorted_by_what_a_retry_can_do(error: UpstreamError, fault: Fault) -> None:
    assert fault_of(error) is fault


def test_a_short_retry_after_is_waited_out_on_the_same_node_once() -> None:
    p = plan()
    p.start(0, 0.0)
    decision = p.failed(0, Fault.RATE_LIMITED, 1.0, 0.01)
    assert decision.same and decision.wait == pytest.approx(1.0)
    p.start(0, 1.01)
    assert not p.failed(0, Fault.RATE_LIMITED, 1.0, 1.02).same  # still limited: fail over


def test_a_retry_after_past_max_wait_fails_over_and_the_node_waits_its_turn() -> None:
    p = plan()
    p.start(0, 0.0)
    assert not p.failed(0, Fault.RATE_LIMITED, 6.0, 0.0).same
    assert p.excluded(0.0) == {0}
    p.start(1, 0.0)
    assert not p.failed(1, Fault.SILENT, None, 0.1).same
    assert p.round_wait(0.1) == pytest.approx(5.9)  # the first node's Retry-After, not a busy loop


def test_a_retry_after_past_the_retry_timeout_is_not_waited_for() -> None:
    p = plan(retry_timeout=3.0)
    p.start(0, 0.0)
    assert not p.failed(0, Fault.RATE_LIMITED, 4.0, 0.0).same
    assert p.round_wait(0.0) is None


def test_a_server_error_gets_one_same_node_retry_after_a_jittered_backoff() -> None:
    p = plan()
    p.start(0, 0.0)
    first = p.failed(0, Fault.SERVER, None, 0.0)
    assert first.same and 0.25 <= first.wait <= 0.5
    p.start(0, first.wait)
    assert not p.failed(0, Fault.SERVER, None, first.wait).same  # then fail over


def test_an_overloaded_node_that_says_when_fails_over_at_once_and_is_not_asked_before() -> None:
    p = plan()
    p.start(0, 0.0)
    assert not p.failed(0, Fault.SERVER, 3.0, 0.0).same  # a 529 or 503 with Retry-After: 3
    assert p.round_wait(0.0) == pytest.approx(3.0)  # its Retry-After, not a backoff of 0.25-0.5 s
    assert p.excluded(2.9) == {0} and p.excluded(3.1) == set()


def test_timeouts_and_refusals_never_go_to_the_same_node_again() -> None:
    for fault in (Fault.SILENT, Fault.FINAL):
        p = plan()
        p.start(0, 0.0)
        assert not p.failed(0, fault, None, 0.0).same
        assert 0 in p.excluded(0.0)
        assert p.round_wait(0.0) is None


def test_every_node_failing_transiently_starts_rounds_until_the_per_node_cap() -> None:
    p = plan()
    now = 0.0
    starts: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(20):
        for node in (0, 1):
            if node in p.excluded(now):
                continue
            p.start(node, now)
            starts[node].append(now)
            p.failed(node, Fault.UNREACHABLE, None, now)
        wait = p.round_wait(now)
        if wait is None:
            break
        now += wait
    assert [len(s) for s in starts.values()] == [POLICY.attempts_per_node] * 2
    for times in starts.values():  # never more than two attempts on one node within MIN_SPACING
        assert all(b - a >= MIN_SPACING for a, b in zip(times, times[2:], strict=False))


def test_no_node_gets_three_attempts_within_the_spacing_even_with_a_retry_after_of_a_millisecond() -> None:
    p = RetryPlan(RetryPolicy(same_node=5), 0.0, retry_timeout=30)
    times = []
    now = 0.0
    for _ in range(3):
        p.start(0, now)
        times.append(now)
        decision = p.failed(0, Fault.RATE_LIMITED, 0.001, now)  # (0 is no wait at all: see below)
        if not decision.same:
            break
        now += decision.wait
    assert len(times) == 3 and times[2] - times[0] >= MIN_SPACING


def test_the_plan_treats_a_retry_after_of_zero_as_none_and_honours_a_short_one() -> None:
    plan = RetryPlan(RetryPolicy(backoff=0.5, max_backoff=4), 0.0, nodes=2, retry_timeout=30)
    plan.start(0, 0.0)
    zero = plan.failed(0, Fault.RATE_LIMITED, 0.0, 0.0)
    assert not zero.same  # fail over at once, as for a 429 without Retry-After
    assert 0.25 <= plan.nodes[0].ready_at <= 0.5  # and the node is not asked again before a backoff
    plan = RetryPlan(RetryPolicy(), 0.0, nodes=2, retry_timeout=30)
    plan.start(0, 0.0)
    short = plan.failed(0, Fault.RATE_LIMITED, 0.08, 0.0)
    assert short.same and short.wait == pytest.approx(0.08)  # 80 ms on the preferred node is worth waiting


def test_the_retries_cap_ends_the_plan() -> None:
    p = plan(retries=1)
    p.start(0, 0.0)
    assert p.failed(0, Fault.SERVER, None, 0.0).same
    p.start(0, 0.3)
    assert not p.failed(0, Fault.SERVER, None, 0.3).same
    assert p.exhausted and p.round_wait(0.3) is None


def test_under_a_retries_cap_a_same_node_retry_never_costs_another_node_its_first_try() -> None:
    p = plan(retries=1, nodes=2)
    p.start(0, 0.0)
    assert not p.failed(0, Fault.SERVER, None, 0.0).same  # the one retry goes to the other node
    assert p.excluded(0.0) == {0} and not p.exhausted


def test_no_retry_timeout_means_only_the_caps_bound_the_plan() -> None:
    p = plan(retry_timeout=0.0)
    p.start(0, 0.0)
    assert p.failed(0, Fault.RATE_LIMITED, 600.0, 0.0).same is False  # past max_wait: fail over
    assert p.round_wait(0.0) == pytest.approx(600.0)


def test_backoff_doubles_and_is_capped() -> None:
    p = plan(rng=random.Random(1))
    for retry, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        assert base / 2 <= p.backoff(retry) <= base
