"""The event hub: replay, order, and a bounded queue per subscriber."""

from __future__ import annotations

import asyncio

from sidecar.observe.events import EventHub


async def test_replay_then_live_in_order() -> None:
    hub = EventHub(replay=3)
    for i in range(5):
        hub.publish("request", n=i)
    stream = hub.subscribe()
    got = [await anext(stream) for _ in range(3)]
    assert [e["n"] for e in got] == [2, 3, 4]
    hub.publish("health", n=5)
    assert (await anext(stream))["n"] == 5
    await stream.aclose()
    assert not hub.subscribers


async def test_stuck_subscriber_overflows_and_is_told_what_it_missed() -> None:
    hub = EventHub(replay=0, queue_size=10)
    stream = hub.subscribe(replay=False)
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # subscribed, reading nothing more
    for i in range(50):
        hub.publish("request", n=i)  # never blocks
    assert (await first)["n"] == 0
    received = [await anext(stream) for _ in range(9)]
    assert [e["n"] for e in received] == list(range(1, 10))
    hub.publish("request", n=50)
    missed = await anext(stream)
    assert missed["type"] == "missed" and missed["count"] == 40
    assert (await anext(stream))["n"] == 50
    await stream.aclose()
