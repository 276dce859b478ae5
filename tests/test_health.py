"""The health state machine: every transition, with a clock we move by hand."""

from __future__ import annotations

from sidecar.config.schema import ActiveCheck, PassiveCheck
from sidecar.nodes.health import Failure, Health, Source

ACTIVE = ActiveCheck(healthy_successes=2, unhealthy_http_failures=3, unhealthy_tcp_failures=2, unhealthy_timeouts=2)
PASSIVE = PassiveCheck(
    healthy_successes=1,
    unhealthy_http_failures=3,
    unhealthy_tcp_failures=2,
    unhealthy_timeouts=1,
    base_ejection_time=10,
    max_ejection_time=35,
)


def test_starts_healthy_and_available() -> None:
    h = Health(ACTIVE, PASSIVE, now=0)
    assert h.state == "healthy" and h.available(0)


def proven() -> Health:
    """A node whose first probe answered: from then on the failure thresholds apply."""
    h = Health(ACTIVE, None, now=0)
    h.record_success(Source.ACTIVE, 0, "probe http 200")
    return h


def test_the_first_probe_failing_takes_a_new_node_out_at_once() -> None:
    h = Health(ACTIVE, None, now=0)
    t = h.record_failure(Source.ACTIVE, Failure.TCP, 1, "probe connect refused")
    assert t is not None and (t.before, t.after) == ("healthy", "unhealthy") and not h.available(1)
    assert h.record_success(Source.ACTIVE, 2) is None  # back by healthy_successes, as after any outage
    assert h.record_success(Source.ACTIVE, 3, "probe http 200").after == "healthy"  # type: ignore[union-attr]


def test_after_the_first_probe_answered_one_failure_is_not_enough() -> None:
    h = proven()
    assert h.record_failure(Source.ACTIVE, Failure.TCP, 1, "probe connect refused") is None and h.healthy


def test_http_failures_threshold_flips_to_unhealthy() -> None:
    h = proven()
    assert h.record_failure(Source.ACTIVE, Failure.HTTP, 1, "probe http 500") is None
    assert h.record_failure(Source.ACTIVE, Failure.HTTP, 2, "probe http 500") is None
    t = h.record_failure(Source.ACTIVE, Failure.HTTP, 3, "probe http 500")
    assert t is not None and (t.before, t.after, t.reason) == ("healthy", "unhealthy", "probe http 500")
    assert not h.available(3) and h.changed_at == 3


def test_success_resets_failure_counters() -> None:
    h = proven()
    h.record_failure(Source.ACTIVE, Failure.HTTP, 1, "x")
    h.record_failure(Source.ACTIVE, Failure.HTTP, 2, "x")
    h.record_success(Source.ACTIVE, 3)
    h.record_failure(Source.ACTIVE, Failure.HTTP, 4, "x")
    h.record_failure(Source.ACTIVE, Failure.HTTP, 5, "x")
    assert h.healthy


def test_failure_kinds_have_their_own_thresholds() -> None:
    h = proven()
    h.record_failure(Source.ACTIVE, Failure.HTTP, 1, "x")
    h.record_failure(Source.ACTIVE, Failure.TCP, 2, "refused")
    assert h.healthy
    t = h.record_failure(Source.ACTIVE, Failure.TCP, 3, "refused")
    assert t is not None and t.reason == "refused"
    h2 = proven()
    h2.record_failure(Source.ACTIVE, Failure.TIMEOUT, 1, "t")
    assert h2.record_failure(Source.ACTIVE, Failure.TIMEOUT, 2, "timeout").after == "unhealthy"


def test_recovery_needs_healthy_successes() -> None:
    h = Health(ACTIVE, None, now=0)
    for i in range(3):
        h.record_failure(Source.ACTIVE, Failure.HTTP, i, "x")
    assert h.record_success(Source.ACTIVE, 10, "probe http 200") is None
    t = h.record_success(Source.ACTIVE, 11, "probe http 200")
    assert t is not None and (t.before, t.after) == ("unhealthy", "healthy") and h.available(11)


def test_a_failure_interrupts_the_success_streak() -> None:
    h = Health(ACTIVE, None, now=0)
    for i in range(3):
        h.record_failure(Source.ACTIVE, Failure.HTTP, i, "x")
    h.record_success(Source.ACTIVE, 10)
    h.record_failure(Source.ACTIVE, Failure.HTTP, 11, "x")
    assert h.record_success(Source.ACTIVE, 12) is None
    assert not h.healthy


def test_passive_ejection_is_never_ended_by_probes_only_by_its_timer_and_a_trial() -> None:
    h = Health(ACTIVE, PASSIVE, now=0)
    for i in range(3):
        h.record_failure(Source.PASSIVE, Failure.HTTP, i, "http 500")
    assert h.state == "ejected" and h.ejected_until == 2 + 10
    for t in range(3, 20):  # probes keep passing (the chat endpoint may hang while /v1/models answers)
        assert h.record_success(Source.ACTIVE, t, "probe http 200") is None
    assert h.state == "ejected" and not h.available(19)
    assert not h.trial_ready(11.9) and h.trial_ready(12)
    h.begin_trial()
    t = h.record_success(Source.PASSIVE, 20, "trial request ok", trial=True)
    assert t is not None and (t.before, t.after) == ("ejected", "healthy") and h.available(20)


def test_active_and_passive_verdicts_are_separate_and_both_must_pass() -> None:
    h = Health(ACTIVE, PASSIVE, now=0)
    for i in range(3):
        h.record_failure(Source.PASSIVE, Failure.HTTP, i, "http 500")
    for i in range(3):
        h.record_failure(Source.ACTIVE, Failure.HTTP, 3 + i, "probe http 500")
    assert h.state == "unhealthy" and not h.active_healthy and h.ejected_until is not None
    assert not h.trial_ready(100)  # no trial while the probes say the node is down
    h.record_success(Source.ACTIVE, 101)
    t = h.record_success(Source.ACTIVE, 102, "probe http 200")
    assert t is not None and (t.before, t.after) == ("unhealthy", "ejected")
    assert h.trial_ready(102)
    h.begin_trial()
    assert h.record_success(Source.PASSIVE, 103, "ok", trial=True).after == "healthy"


def test_a_trial_given_back_without_a_verdict_can_be_taken_again() -> None:
    h = Health(None, PASSIVE, now=0)
    h.record_failure(Source.PASSIVE, Failure.TIMEOUT, 0, "read timeout")
    h.begin_trial()
    assert not h.trial_ready(20)
    h.end_trial()  # the client left during the trial
    assert h.trial_ready(20) and h.state == "ejected"


def test_disabled_source_counts_but_never_flips() -> None:
    h = Health(None, PASSIVE, now=0)
    for i in range(10):
        assert h.record_failure(Source.ACTIVE, Failure.HTTP, i, "x") is None
    assert h.healthy


def test_passive_only_gets_a_trial_after_cooldown_that_doubles() -> None:
    h = Health(None, PASSIVE, now=0)
    t = h.record_failure(Source.PASSIVE, Failure.TIMEOUT, 100, "read timeout")
    assert t is not None and t.after == "ejected"
    assert h.ejected_until == 110 and not h.trial_ready(109.9) and h.trial_ready(110)
    h.begin_trial()
    assert not h.trial_ready(111)  # one trial at a time
    h.record_failure(Source.PASSIVE, Failure.HTTP, 111, "http 500", trial=True)  # the trial failed
    assert h.ejected_until == 111 + 20  # doubled
    h.begin_trial()
    h.record_failure(Source.PASSIVE, Failure.HTTP, 131, "http 500", trial=True)
    assert h.ejected_until == 131 + 35  # capped at max_ejection_time
    h.begin_trial()
    t = h.record_success(Source.PASSIVE, 170, "ok", trial=True)
    assert t is not None and t.after == "healthy" and h.available(170) and h.ejected_until is None


def test_ejection_backoff_resets_after_a_long_healthy_spell() -> None:
    h = Health(None, PASSIVE, now=0)
    h.record_failure(Source.PASSIVE, Failure.TIMEOUT, 0, "t")
    h.begin_trial()
    h.record_success(Source.PASSIVE, 10, trial=True)
    h.record_failure(Source.PASSIVE, Failure.TIMEOUT, 11, "t")
    assert h.ejected_until == 11 + 20  # second ejection soon after: doubled
    h.begin_trial()
    h.record_success(Source.PASSIVE, 31, trial=True)
    h.record_failure(Source.PASSIVE, Failure.TIMEOUT, 1000, "t")
    assert h.ejected_until == 1000 + 10  # healthy for long: back to base


def test_trial_needs_more_successes_when_configured() -> None:
    h = Health(None, PassiveCheck(healthy_successes=2, unhealthy_timeouts=1, base_ejection_time=5), now=0)
    h.record_failure(Source.PASSIVE, Failure.TIMEOUT, 0, "t")
    h.begin_trial()
    assert h.record_success(Source.PASSIVE, 6, trial=True) is None
    assert h.trial_ready(6)  # next trial allowed at once
    h.begin_trial()
    assert h.record_success(Source.PASSIVE, 7, trial=True).after == "healthy"


def test_retry_after_blocks_until_then() -> None:
    h = Health(None, PASSIVE, now=0)
    h.block(30, now=0)
    assert h.healthy and not h.available(29) and h.available(30)


def test_retry_after_is_capped_at_the_max_ejection_time() -> None:
    h = Health(None, PASSIVE, now=0)
    h.block(float("inf"), now=5)
    assert h.blocked_until == 5 + 35
    h.block(1e12, now=6)
    assert h.blocked_until == 6 + 35


def test_manual_down_overrides_health() -> None:
    h = Health(ACTIVE, PASSIVE, now=0)
    t = h.set_manual(True, 5)
    assert t is not None and (t.before, t.after, t.reason) == ("healthy", "down", "manual down")
    assert not h.available(6) and not h.trial_ready(6)
    assert h.set_manual(True, 6) is None
    assert h.set_manual(False, 7).after == "healthy"


def test_a_model_is_out_for_its_retry_after_capped() -> None:
    from sidecar.nodes.health import ModelHealth

    m = ModelHealth()
    m.rate_limited(until=1000.0, now=0.0, cap=300.0)
    assert not m.available(299.0) and m.available(300.0)


def test_a_model_is_ejected_after_its_threshold_and_for_longer_each_time() -> None:
    from sidecar.nodes.health import ModelHealth

    m = ModelHealth()
    assert not m.failed(0.0, 2, 10.0, 300.0, "http 503")
    assert m.failed(0.0, 2, 10.0, 300.0, "http 503") and not m.available(9.9) and m.available(10.0)
    m.failed(10.0, 2, 10.0, 300.0, "http 503")
    assert m.failed(10.0, 2, 10.0, 300.0, "http 503") and not m.available(29.9)  # twice as long
    m.succeeded()
    assert m.failures == 0 and m.ejections == 0


def test_per_model_states_are_bounded_and_know_when_other_models_succeed() -> None:
    from sidecar.nodes.health import ModelStates

    states = ModelStates(size=3)
    for i in range(10):
        states.get(f"m{i}")
        states.ok(f"m{i}", float(i))
    assert len(states.health) == 3 and len(states.succeeded) <= 3  # model names come from clients
    states = ModelStates(size=8)
    states.ok("fine", 0.0)
    states.ok("broken", 1.0)
    assert states.others_fine("broken", 30.0, within=60) and not states.others_fine("broken", 100.0, within=60)
    assert not states.others_fine("fine", 30.0, within=0.5)


def test_node_auto_trusts_the_node_now_whatever_held_it_out() -> None:
    """`node auto` clears an ejection, a Retry-After hold (even the longest) and the failure counts."""
    h = Health(ACTIVE, PASSIVE, now=0)
    for t in range(PASSIVE.unhealthy_http_failures):
        h.record_failure(Source.PASSIVE, Failure.HTTP, now=t, reason="http 503")
    h.block(1e12, now=3)
    h.record_failure(Source.ACTIVE, Failure.TCP, now=3, reason="probe connect refused")
    assert h.state == "unhealthy" and not h.available(4)
    t = h.set_manual(False, now=4)
    assert t is not None and t.after == "healthy"
    assert h.available(4) and h.blocked_until == 0.0 and h.ejected_until is None
    assert all(
        c.as_dict() == {"successes": 0, "http_failures": 0, "tcp_failures": 0, "timeouts": 0}
        for c in h.counters.values()
    )
    # The checks then judge it afresh: one more failure does not eject it again at once.
    h.record_failure(Source.PASSIVE, Failure.HTTP, now=5, reason="http 503")
    assert h.available(5)
