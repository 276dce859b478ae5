"""What the sidecar checks of a request before any node is asked: its method and path, the client's key and
request id, the headers that go no further, whether it asks for a stream, and its body, read whole and bounded.
Pure but for `read_body`, so the hostile-request tests need no server."""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

# Never forwarded upstream: hop-by-hop headers, and the client's own credentials. Cookies too: a client
# keeps what one node's CDN set (`__cf_bm`), and its next request may go to another provider.
REQUEST_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
        b"upgrade", b"host", b"content-length", b"expect", b"authorization", b"proxy-authorization",
        b"x-api-key", b"api-key", b"x-request-id", b"cookie",
    }
)  # fmt: skip
# The OpenAI API uses no other method. TRACE to an echoing upstream handed the node's key to the
# client; OPTIONS would answer browsers' CORS preflights with the node's CORS policy; HEAD and PUT/PATCH
# serve nothing an SDK calls.
ALLOWED_METHODS = frozenset({"GET", "POST", "DELETE"})
ALLOW_HEADER = (b"allow", b"GET, POST, DELETE")
# What a node (or a server in front of it) may resolve into another path than the one checked here:
# dot segments, raw or percent-encoded in any case (and `..;`, which Tomcat reads as `..`),
# encoded slashes and backslashes. The decoded path is checked too, in case the server's differs.
RAW_PATH_TRICK = re.compile(rb"\\|%2f|%5c|(?:^|/)(?:\.|%2e){1,2}(?:[/;]|\Z)", re.IGNORECASE)
PATH_TRICK = re.compile(r"\\|(?:^|/)\.{1,2}(?:[/;]|\Z)")
# A client's X-Request-Id is logged, echoed and sent upstream: printable ASCII without blanks,
# quotes or backslashes, at most MAX_REQUEST_ID long, else a generated one is used.
MAX_REQUEST_ID = 128
REQUEST_ID = re.compile(rb"[!#-&(-\[\]-~]+")
NOT_HEADERS = frozenset({b"", b"close", b"keep-alive"})  # Connection tokens naming no header to drop


class ClientGone(Exception):
    pass


def streams(body: bytes) -> bool:
    """Whether a body that mentions `"stream": true` asks for a stream: the mention may sit anywhere
    (a JSON schema's property), and a stream gets the first-token limit. Parsed only then."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return True  # not JSON: the node will say what it makes of it
    return not isinstance(parsed, dict) or parsed.get("stream") is True


def path_is_safe(path: str, raw: bytes) -> bool:
    """False for a path a node could resolve elsewhere (see RAW_PATH_TRICK).

    Normal paths carry no ".", "%" or backslash: they skip the regular expressions.
    """
    if b"." not in raw and b"%" not in raw and b"\\" not in raw and "." not in path and "\\" not in path:
        return True
    return RAW_PATH_TRICK.search(raw) is None and PATH_TRICK.search(path) is None


def client_key_ok(key: bytes, authorization: bytes, x_api_key: bytes | None) -> bool:
    """The client sent the sidecar's key: as a bearer token (OpenAI's SDKs, Claude Code's
    ANTHROPIC_AUTH_TOKEN) or as `x-api-key` (Anthropic's SDKs, ANTHROPIC_API_KEY)."""
    if x_api_key is not None and hmac.compare_digest(x_api_key, key):
        return True
    scheme, _, token = authorization.partition(b" ")
    # Auth schemes are case-insensitive (RFC 9110 11.1), and one or more spaces may follow the scheme.
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.lstrip(b" "), key)


def client_request_id(value: bytes) -> str | None:
    """The client's X-Request-Id capped at MAX_REQUEST_ID, or None when it is not in the safe charset."""
    value = value[:MAX_REQUEST_ID]
    return value.decode("ascii") if REQUEST_ID.fullmatch(value) else None


def request_drop(connection: list[bytes]) -> frozenset[bytes]:
    """The headers not forwarded upstream: the fixed set, plus those the client's Connection names.

    A header named in Connection is hop-by-hop (RFC 9110 7.6.1): `Connection: close, X-Secret` means
    X-Secret was for the sidecar, not for the node. Usually it names only keep-alive or close.
    """
    if not connection or (len(connection) == 1 and connection[0].lower() in NOT_HEADERS):
        return REQUEST_DROP  # what HTTP clients send: nothing, or `keep-alive` (already dropped) or `close`
    tokens = {token.strip().lower() for value in connection for token in value.split(b",")}
    extra = tokens - REQUEST_DROP - NOT_HEADERS
    return REQUEST_DROP | extra if extra else REQUEST_DROP


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None when it exceeds `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
