"""A response head waits for its body, so both leave in one write, and nothing waits longer than a loop turn."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.onewrite import OneWrite

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else None


def wrap() -> tuple[OneWrite, Recorder]:
    recorder = Recorder()
    return OneWrite(recorder, asyncio.get_running_loop()), recorder  # type: ignore[arg-type]


async def test_head_and_body_leave_in_one_write() -> None:
    transport, recorder = wrap()
    transport.write(HEAD)
    assert recorder.writes == []
    transport.write(b"ok")
    assert recorder.writes == [HEAD + b"ok"]


async def test_a_head_alone_goes_out_on_the_next_loop_turn() -> None:
    transport, recorder = wrap()
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert recorder.writes == [HEAD]
    transport.write(b"data: 1\n\n")  # a stream's later chunks pass straight through, in order
    assert recorder.writes == [HEAD, b"data: 1\n\n"]


async def test_close_sends_a_held_head_first() -> None:
    transport, recorder = wrap()
    transport.write(HEAD)
    transport.close()
    assert recorder.writes == [HEAD]
    assert recorder.closed and transport.is_closing()


async def test_body_bytes_are_never_held_and_the_rest_is_the_transport() -> None:
    transport, recorder = wrap()
    transport.write(b"chunk")
    assert recorder.writes == [b"chunk"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)
