"""Prompt-cache affinity (pure): how a conversation is recognised, and how long a pin lives."""

from __future__ import annotations

from sidecar.nodes.affinity import Pins, conversation_key

SYSTEM = {"role": "system", "content": "You are a careful agent."}


def turn(*later: dict[str, str], model: str = "gpt-4o") -> dict[str, object]:
    return {"model": model, "messages": [SYSTEM, {"role": "user", "content": "fix the bug"}, *later]}


def test_every_turn_of_a_conversation_has_the_same_key() -> None:
    first = conversation_key(None, turn())
    later = conversation_key(None, turn({"role": "assistant", "content": "done"}, {"role": "user", "content": "?"}))
    assert first is not None and first == later


def test_other_conversations_and_other_models_get_other_keys() -> None:
    other = {"model": "gpt-4o", "messages": [SYSTEM, {"role": "user", "content": "write docs"}]}
    assert conversation_key(None, turn()) != conversation_key(None, other)
    assert conversation_key(None, turn()) != conversation_key(None, turn(model="gpt-4o-mini"))


def test_anthropics_top_level_system_prompt_tells_conversations_apart() -> None:
    def ask(system: str, *later: dict[str, str]) -> dict[str, object]:
        return {"model": "claude", "system": system, "messages": [{"role": "user", "content": "fix the bug"}, *later]}

    assert conversation_key(None, ask("You review code.")) != conversation_key(None, ask("You write tests."))
    later = ask("You review code.", {"role": "assistant", "content": "done"}, {"role": "user", "content": "?"})
    assert conversation_key(None, ask("You review code.")) == conversation_key(None, later)


def test_an_explicit_session_wins_and_no_messages_means_no_key() -> None:
    assert conversation_key(b"agent-7", turn()) == "s:agent-7"
    assert conversation_key(None, {"model": "m", "input": "embed me"}) is None
    assert conversation_key(None, None) is None


def test_a_pin_lives_its_ttl_from_the_last_use_and_the_map_is_bounded() -> None:
    pins = Pins(ttl=10, size=2)
    pins.pin("a", "openai", now=0)
    assert pins.get("a", 9) == "openai"
    pins.pin("a", "openai", now=9)  # used again: the cache lives on
    assert pins.get("a", 18) == "openai" and pins.get("a", 19.5) is None
    for key in ("x", "y", "z"):
        pins.pin(key, "n", now=20)
    assert len(pins) == 2 and pins.get("x", 20) is None  # the oldest went first
