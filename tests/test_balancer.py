"""Node selection: smooth weighted round-robin, priority levels, trials and panic."""

from __future__ import annotations

from collections import Counter

from sidecar.config.schema import PassiveCheck
from sidecar.nodes.balancer import Balancer, SmoothWeighted
from sidecar.nodes.health import Failure, Health, Source


def healthy(n: int) -> list[Health]:
    return [Health(None, PassiveCheck(unhealthy_http_failures=1, base_ejection_time=10), now=0) for _ in range(n)]


def eject(h: Health, now: float = 0) -> None:
    h.record_failure(Source.PASSIVE, Failure.HTTP, now, "http 500")
    assert not h.healthy


def test_smooth_weighted_is_nginx_sequence() -> None:
    rr = SmoothWeighted()
    picks = [rr.pick([(0, 5), (1, 1), (2, 1)]) for _ in range(7)]
    assert picks == [0, 0, 1, 0, 2, 0, 0]  # nginx: a a b a c a a


def test_weights_hold_over_many_picks() -> None:
    health = healthy(3)
    b = Balancer([0, 0, 0], [100, 10, 1], health)
    counts = Counter(b.choose(set(), 1).index for _ in range(1110))
    assert counts == {0: 1000, 1: 100, 2: 10}


def test_lower_priority_gets_nothing_while_a_higher_node_is_healthy() -> None:
    health = healthy(3)
    b = Balancer([0, -1, 5], [1, 100, 1], health)
    assert {b.choose(set(), 1).index for _ in range(50)} == {2}
    eject(health[2])
    assert {b.choose(set(), 1).index for _ in range(50)} == {0}
    eject(health[0])
    assert {b.choose(set(), 1).index for _ in range(50)} == {1}


def test_retry_excludes_tried_nodes_and_falls_to_next_level() -> None:
    health = healthy(3)
    b = Balancer([1, 1, 0], [1, 1, 1], health)
    first = b.choose(set(), 1).index
    second = b.choose({first}, 1).index
    assert {first, second} == {0, 1}
    assert b.choose({0, 1}, 1).index == 2


def test_panic_mode_tries_unhealthy_nodes_in_priority_order() -> None:
    health = healthy(3)
    b = Balancer([0, 10, 5], [1, 1, 1], health)
    for h in health:
        eject(h, 0)
    choice = b.choose(set(), 1)
    assert choice.index == 1 and choice.panic
    assert b.choose({1}, 1).index == 2
    assert b.choose({1, 2}, 1).index == 0
    assert b.choose({0, 1, 2}, 1) is None


def test_panic_skips_manually_drained_nodes() -> None:
    health = healthy(2)
    b = Balancer([0, -1], [1, 1], health)
    health[0].set_manual(True, 0)
    health[1].set_manual(True, 0)
    assert b.choose(set(), 1) is None
    assert b.serving(1) is None


def test_rate_limited_node_is_skipped_and_tried_last_in_panic() -> None:
    health = healthy(2)
    b = Balancer([0, -1], [1, 1], health)
    health[0].block(30, now=0)
    assert b.choose(set(), 1).index == 1
    eject(health[1])
    choice = b.choose(set(), 1)
    assert choice.index == 1 and choice.panic  # unhealthy but not rate limited comes first
    assert b.choose({1}, 1).index == 0


def test_trial_goes_to_the_ejected_primary_once_after_cooldown() -> None:
    health = healthy(2)
    b = Balancer([0, -1], [1, 1], health)
    eject(health[0], 0)
    assert b.choose(set(), 5).index == 1  # cooling down
    choice = b.choose(set(), 10)
    assert choice.index == 0 and choice.trial
    assert b.choose(set(), 10).trial  # choosing is pure: the trial is offered until someone takes it
    health[0].begin_trial()  # the attempt scope takes it
    assert b.choose(set(), 10).index == 1  # trial in flight: others go to the backup


def test_serving_is_the_top_usable_node() -> None:
    health = healthy(3)
    b = Balancer([0, 0, -1], [1, 5, 1], health)
    assert b.serving(1) == 1
    health[1].set_manual(True, 1)
    assert b.serving(1) == 0


def test_a_preferred_node_is_taken_only_inside_the_winning_level_and_does_not_move_the_wheel() -> None:
    from sidecar.config.schema import PassiveCheck
    from sidecar.nodes.health import Health

    health = [Health(None, PassiveCheck(), 0.0) for _ in range(3)]
    b = Balancer([0, 0, -1], [1, 1, 1], health)
    assert b.choose(set(), 0.0, prefer=1).index == 1
    assert [b.choose(set(), 0.0).index for _ in range(2)] == [0, 1]  # the wheel as if nothing was preferred
    assert b.choose(set(), 0.0, prefer=2).index != 2  # a lower level is never preferred over a usable one
