"""Request and response bodies as the journal keeps them: as the capture cut them (proxy/capture.py), every key
redacted, compressed.

The keys are every node's and the sidecar's own, as the config holds them; a key shorter than MIN_KEY is
left alone, as proxy/redact.py does (it is no secret, and masking it would garble the text). A key is
masked in the whole body after the parts are joined, so a key split across reads is masked too.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sidecar.config.schema import Config
from sidecar.observe.record import Bodies

MASK = b"[redacted]"
MIN_KEY = 8
LEVEL = 6


def keys_of(config: Config) -> tuple[bytes, ...]:
    """Every secret the config holds, longest first (a key that contains another is masked whole)."""
    found = {n.api_key for n in config.upstream.nodes} | {config.server.api_key}
    return tuple(sorted((k.encode() for k in found if k is not None and len(k) >= MIN_KEY), key=len, reverse=True))


def redact(data: bytes, keys: Iterable[bytes]) -> bytes:
    for key in keys:
        if key in data:
            data = data.replace(key, MASK)
    return data


@dataclass(frozen=True)
class Packed:
    """Bodies ready for the `bodies` table."""

    request: bytes
    response: bytes
    request_size: int
    response_size: int
    cut: int  # REQUEST_CUT | RESPONSE_CUT: which was longer than the cap (redaction changes sizes too)
    headers: str


REQUEST_CUT = 1
RESPONSE_CUT = 2


def pack(bodies: Bodies, keys: tuple[bytes, ...]) -> Packed:
    """Redacted and compressed (in the writer thread); what the capture could not keep is marked cut."""
    request = bodies.request
    response = b"".join(bodies.response)
    cut = (REQUEST_CUT if len(request) < bodies.request_size else 0) | (
        RESPONSE_CUT if len(response) < bodies.response_size else 0
    )
    headers = {k: redact(v.encode("latin-1", "replace"), keys).decode("latin-1") for k, v in bodies.headers.items()}
    return Packed(
        request=zlib.compress(redact(request, keys), LEVEL),
        response=zlib.compress(redact(response, keys), LEVEL),
        request_size=bodies.request_size,
        response_size=bodies.response_size,
        cut=cut,
        headers=json.dumps(headers),
    )


def unpack(blob: bytes | None) -> bytes:
    return b"" if blob is None else zlib.decompress(blob)


def readable(data: bytes, headers: dict[str, Any], response: bool) -> str:
    """A body as text for `log show`: a gzip-encoded answer unzipped, JSON pretty-printed, the rest as it is."""
    if response and headers.get("content-encoding", "").lower() == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        with contextlib.suppress(zlib.error):
            data = inflater.decompress(data)  # a body cut at the cap unzips as far as it goes
    text = data.decode("utf-8", "replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return text
