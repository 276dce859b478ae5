"""The send watch: one sweep cancels attempts that overran, and tells them it was the cause."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.nodes.watchdog import SendWatch


async def test_overrunning_task_is_cancelled_and_told_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SendWatch, "SWEEP", 0.01)
    watch = SendWatch()
    sweeper = asyncio.ensure_future(watch.run())

    async def stalled() -> str:
        task = watch.watch(0.05)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "send timeout" if watch.unwatch(task) else "cancelled by someone else"
        return "finished"

    async def quick() -> str:
        task = watch.watch(5)
        await asyncio.sleep(0.01)
        return "finished" if not watch.unwatch(task) else "wrongly fired"

    assert await asyncio.gather(stalled(), quick()) == ["send timeout", "finished"]
    assert not watch.deadlines and not watch.fired
    sweeper.cancel()


async def test_foreign_cancellation_still_propagates() -> None:
    watch = SendWatch()

    async def attempt() -> None:
        task = watch.watch(5)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert not watch.unwatch(task)
            raise

    task = asyncio.ensure_future(attempt())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
