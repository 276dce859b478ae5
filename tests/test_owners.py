"""Which node made a stateful id: bounded, newest kept, told to a sink, restored after a restart."""

from __future__ import annotations

from sidecar.nodes.owners import MAX_ID, Owner, Owners


def test_the_oldest_ids_are_forgotten_first_and_a_noted_id_is_new_again() -> None:
    owners = Owners(capacity=3)
    for made in ("a", "b", "c"):
        owners.note(made, "n1")
    owners.note("a", "n2")  # made again (by another node): the newest
    owners.note("d", "n1")
    assert owners.get("b") is None and owners.get("a") == Owner("n2", False) and len(owners) == 3


def test_each_new_id_is_told_to_the_sink_and_what_is_too_long_is_not_kept() -> None:
    told: list[tuple[str, Owner]] = []
    owners = Owners()
    owners.sink = lambda made, owner: told.append((made, owner))
    owners.note("resp_1", "n1", translated=True)
    owners.note("x" * (MAX_ID + 1), "n1")
    owners.note("", "n1")
    assert told == [("resp_1", Owner("n1", True))] and len(owners) == 1


def test_restored_ids_are_older_than_those_noted_since_start_and_are_not_told_again() -> None:
    told: list[str] = []
    owners = Owners(capacity=3)
    owners.sink = lambda made, owner: told.append(made)
    owners.note("fresh", "n2")
    owners.restore([("old1", Owner("n1", False)), ("old2", Owner("n1", False)), ("fresh", Owner("n1", False)),
                    ("old3", Owner("n1", True))])  # fmt: skip
    assert told == ["fresh"]
    assert owners.get("fresh") == Owner("n2", False)  # the owner noted since start wins
    assert list(owners.ids) == ["old2", "old3", "fresh"]  # over capacity: the oldest restored one went
