"""A node's key, taken out of what the node says before it reaches the client, the log or the monitor.

A node may quote the key it was sent ("invalid x-api-key sk-..."): in an error body of any type, a header
(`WWW-Authenticate`), an event mid-stream. What the node writes is redacted wherever it goes; the
sidecar's own words never are: a failure reason ("error in a 200 answer (<the node's words>)") is redacted
only in the node's words it quotes, so a key that is also a word ("overloaded") leaves the sidecar's intact.

A key shorter than MIN_KEY is never redacted: it is no secret (guessed in moments), and replacing it would
garble answers and the sidecar's words ("a" in every "overloaded", or a key `"` in every JSON string).
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = b"[redacted]"
MIN_KEY = 8


def secret(key: str | None) -> bytes | None:
    """The key as it appears on the wire, or None when there is nothing to redact."""
    return key.encode() if key is not None and len(key) >= MIN_KEY else None


def redact(data: bytes, key: str | None) -> bytes:
    needle = secret(key)
    return data.replace(needle, MASK) if needle is not None and needle in data else data


def redact_quote(reason: str, quoted: str, key: str | None) -> str:
    """`reason` with the key taken out of `quoted`, the node's words it ends with in parentheses."""
    if not quoted or key is None or len(key) < MIN_KEY or not reason.endswith(f"({quoted})"):
        return reason
    return reason[: -len(quoted) - 1] + quoted.replace(key, MASK.decode()) + ")"


def redact_headers(headers: Iterable[tuple[bytes, bytes]], key: str | None) -> list[tuple[bytes, bytes]]:
    """Every value with the key taken out; a header whose name holds the key is dropped (a name has no room
    for the mask: `[` is no token character)."""
    needle = secret(key)
    if needle is None:
        return list(headers)
    return [(k, v.replace(needle, MASK)) for k, v in headers if needle not in k]


class Redactor:
    """The key taken out of a body read in pieces, however the node's bytes are split.

    A piece that ends with the start of the key keeps that start back until the next piece says whether
    the key follows (`end` hands back what is kept when the body ends). Whole SSE events end in a blank
    line, which no key holds, so an event stream is never held back by it.
    """

    __slots__ = ("first", "held", "key", "probe")

    def __init__(self, key: str | None) -> None:
        self.key = secret(key)
        # The key's first MIN_KEY bytes are looked for first: they rarely occur in text, where its first byte
        # alone ("s") occurs in most words of the key-long tail held back (~2 us an event for a 164-byte key).
        self.probe = self.key[:MIN_KEY] if self.key is not None else b""
        self.first = self.probe[:1]
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        key = self.key
        if key is None:
            return data
        if self.held:
            data, self.held = self.held + data, b""
        probe = self.probe
        if probe in data:
            data = data.replace(key, MASK)
        # The longest end of `data` that begins the key: one as long as the probe begins with it...
        size = len(data)
        at = data.find(probe, max(0, size - len(key) + 1))
        while at >= 0 and not key.startswith(data[at:]):
            at = data.find(probe, at + 1)
        if at < 0:  # ... else a shorter one, within the probe's length of the end
            at = data.find(self.first, max(0, size - len(probe) + 1))
            while at >= 0 and not key.startswith(data[at:]):
                at = data.find(self.first, at + 1)
        if at >= 0:
            data, self.held = data[:at], data[at:]
        return data

    def end(self) -> bytes:
        held, self.held = self.held, b""
        return held
