"""Values that need more than a type: `${VAR}` secrets from the environment, and URLs.

A key is never in the file itself; a URL must be one a node can be reached at and must not carry
credentials or characters that could split a request line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from .envfile import Environment
from .table import Table, show

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def secret(table: Table, name: str, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """Resolve a `${VAR}` key reference; keys never live in the file itself. The value is never echoed."""
    raw = table.get(name, str, None)
    if raw is None or raw == "":
        return None, None
    match = _ENV_REF.fullmatch(raw)
    if not match:
        table.error(
            name, 'must reference an environment variable, like "${OPENAI_API_KEY}"; keys are not stored in the file'
        )
        return None, None
    var = match.group(1)
    value = env.get(var)
    if value is None:
        table.error(name, env.unset(var) if isinstance(env, Environment) else f"environment variable {var} is not set")
    elif not value.strip():
        table.error(name, f"environment variable {var} is empty")
    # Sent in a header: a newline would inject headers, and non-ASCII fails every request.
    elif bad_char(value.strip()):
        table.error(name, f"environment variable {var} holds a space, control or non-ASCII character")
    else:
        return value.strip(), var
    return None, None


def bad_char(raw: str) -> str | None:
    """The first character that is not printable ASCII or is a space, described without echoing the rest
    (it may be secret). urlsplit silently drops tab, CR and LF; a non-ASCII host or key fails every request."""
    for i, ch in enumerate(raw):
        if not "\x21" <= ch <= "\x7e":
            return f"{ch!r} at position {i}"
    return None


def url_problem(raw: str) -> str | None:
    """What is wrong with a node's url, or None."""
    if bad := bad_char(raw):
        return f"must be printable ASCII without spaces (percent-encode the path, xn-- form for the host), found {bad}"
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        # Not echoed: the URL may carry credentials, and errors are printed.
        return f"is not a valid URL: {exc}"
    if parts.username or parts.password:
        return 'must not carry credentials (user:password@); use api_key = "${VAR}"'
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL, got {show(raw)}"
    if parts.query or parts.fragment or "?" in raw or "#" in raw:  # even empty: paths are appended to the URL
        return f"must not carry a query or fragment, got {show(raw)}"
    return None


def parse_url(table: Table, raw: str) -> str:
    if problem := url_problem(raw):
        table.error("url", problem)
        return raw
    url = raw.rstrip("/")
    # Providers document their base URL with /v1 (and the openai SDK's base_url has it), but the sidecar
    # appends the client's whole path, /v1 included: kept, every request would go to /v1/v1/....
    return url[: -len("/v1")] if url.endswith("/v1") else url
