"""The control socket's path and binding: a Unix socket only this user can open.

The socket is bound here rather than by the server library, so its mode is 0600 from the start, its
directory is refused when others can write it, and a live sidecar on the same path is refused rather
than robbed of its socket.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from sidecar.config.problems import one_line
from sidecar.config.schema import UNIX_PATH_MAX
from sidecar.listener.bind import StartupError


def socket_is_live(path: Path) -> bool:
    """Whether something accepts connections on `path` (a stale socket refuses them)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (OSError, ValueError):
        return False
    finally:
        probe.close()
    return True


_MOVE_IT = "use a directory only you can write (mkdir -m 700) via --control-socket or [server].control_socket"


def _check_path(path: Path) -> None:
    """Refuse an unusable path before anything is created for it."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise StartupError(f"control socket path {one_line(str(path))} contains a NUL byte")
    if len(raw) > UNIX_PATH_MAX:
        raise StartupError(
            f"control socket path {one_line(str(path))} is {len(raw)} bytes; a Unix socket path may have at most "
            f"{UNIX_PATH_MAX}: use a shorter --control-socket or [server].control_socket"
        )


def _unsafe_directory(directory: Path) -> str | None:
    """Why another user could swap the socket in `directory`, or None.

    As ssh and tmux do, every directory up to / must belong to us or root (their owner can
    rename any entry) and be writable by no one else, unless it is sticky like /tmp: there
    only an entry's owner may remove or rename it. Directories not made yet are made 0700.
    """
    uid = os.getuid()
    try:
        real = directory.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        return f"{directory} cannot be resolved ({exc})"
    for part in (real, *real.parents):
        try:
            st = os.stat(part)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{part} cannot be checked ({exc.strerror or exc})"
        if st.st_uid not in (uid, 0):
            return f"{part} belongs to uid {st.st_uid}"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return f"{part} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}, not sticky)"
    return None


def _refuse_unsafe(path: Path) -> None:
    if why := _unsafe_directory(path.parent):
        raise StartupError(f"refusing control socket {one_line(str(path))}: {one_line(why)}; {_MOVE_IT}")


def _make_directory(directory: Path) -> None:
    """Each missing level 0700 (`mkdir(parents=True)` would give the parents the umask's mode)."""
    missing: list[Path] = []
    while not directory.is_dir() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for level in reversed(missing):
        try:
            level.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StartupError(f"cannot create {level}: {exc.strerror or exc}") from None
    if missing and not missing[0].is_dir():
        raise StartupError(f"cannot create {missing[0]}: a file is in the way")


def _remove_stale(path: Path) -> None:
    """Replace only a dead socket of ours: a live one is another sidecar, anything else is not ours to delete."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"cannot check control socket path {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"control socket path {path} exists and is not a socket")
    if st.st_uid != os.getuid():
        raise StartupError(
            f"control socket path {path} holds a socket of uid {st.st_uid}, not yours; "
            "have it removed or use another --control-socket"
        )
    if socket_is_live(path):
        raise StartupError(f"another llm-sidecar is running on control socket {path}; stop it or use --control-socket")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartupError(
            f"cannot remove the stale control socket {path}: {exc.strerror or exc}; remove it or use another "
            "--control-socket"
        ) from None


def bind_unix(path: Path) -> socket.socket:
    """Bind `path` with mode 0600 where no other user can swap it; replace only our own stale socket."""
    _check_path(path)
    _refuse_unsafe(path)  # before anything is made: no stray directory in a place we refuse
    _make_directory(path.parent)
    _refuse_unsafe(path)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind control socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock
