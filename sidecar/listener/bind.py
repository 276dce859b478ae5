"""The proxy's listening socket, and the error that stops a start.

`StartupError` is what the sidecar cannot start with (an address in use, a control socket path that is
unsafe): the command prints it as one line and exits 1. The control socket raises it too.
"""

from __future__ import annotations

import socket

BACKLOG = 2048


class StartupError(Exception):
    """The sidecar cannot start (port taken, socket in use, ...): one clear line."""


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock
