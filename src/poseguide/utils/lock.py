"""One writer per run folder: an advisory lock held for the life of the process.

``train``, ``evaluate`` and ``base train`` take the lock of their run folder before they remove,
truncate or write anything in it; a second command on the same folder stops at once with one
line naming the holder (host, PID, command, since when). The lock is ``fcntl.flock`` on
``<run>/poseguide.lock``: the kernel releases it when the holder exits, however it exits, so a
lock left by a process that was killed is taken over by the next command, which says so in one
line (the file still names the dead holder). The file itself is never removed (removing it would
let two processes lock two different files of the same name); a clean release empties it.

A process holds each folder's lock once, however often it asks (``poseguide demo`` trains, then
evaluates the same run): the lock is counted and released by the last :func:`run_lock` to exit.
Under a launch of several processes only the main process takes it (:func:`team_lock`); the
others wait until it holds the lock, and every process stops when it cannot.

Where the filesystem cannot lock (some network or FUSE mounts), the holder file is still read:
a live process on this host named in it refuses the start; otherwise the run goes on unprotected
with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poseguide.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "poseguide.lock"
NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)


class RunBusyError(UserError, RuntimeError):
    """Another process holds the run folder's lock."""


@dataclass
class _Held:
    fd: int | None  # None: the filesystem could not lock (the holder file still says who)
    count: int


_HELD: dict[Path, _Held] = {}


def _me(command: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[:8]}  # fmt: skip


def _holder(path: Path) -> dict[str, Any] | None:
    """Who the lock file says holds it (None when empty or unreadable)."""
    try:
        text = path.read_text(errors="replace")[:4096]
        found = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return (f"PID {holder.get('pid')} on {holder.get('host')} "
            f"(poseguide {holder.get('command')}, since {holder.get('since')})")  # fmt: skip


def _busy(root: Path, holder: dict[str, Any] | None, command: str) -> RunBusyError:
    return RunBusyError(
        f"{root} is in use by {_describe(holder)}: one command at a time writes a run folder; "
        f"wait for it to finish, or give this {command} another run.name"
    )


def _write_holder(fd: int, command: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_me(command)) + "\n").encode(), 0)
    os.fsync(fd)


def _take(root: Path, command: str) -> int | None:
    """Lock ``root`` for this process; returns the locked file descriptor (None when the
    filesystem cannot lock). Raises :class:`RunBusyError` when another process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(root, _holder(path), command) from None
    except OSError as err:
        if err.errno not in NO_LOCKING:
            os.close(fd)
            raise
        return _unlockable(root, path, fd, command)
    before = _holder(path)
    if before and (before.get("host"), before.get("pid")) != (socket.gethostname(), os.getpid()):
        log.warning("%s: took over the lock of %s, which is no longer running", root,
                    _describe(before))  # fmt: skip
    _write_holder(fd, command)
    return fd


def _unlockable(root: Path, path: Path, fd: int, command: str) -> None:
    """The filesystem cannot lock: refuse a live holder on this host, else go on unprotected."""
    before = _holder(path)
    same_host = before is not None and before.get("host") == socket.gethostname()
    if same_host and before.get("pid") != os.getpid() and _alive(before.get("pid")):
        os.close(fd)
        raise _busy(root, before, command)
    log.warning("%s: this filesystem cannot lock files; nothing stops a second command on this "
                "run folder (from another machine)", root)  # fmt: skip
    _write_holder(fd, command)
    os.close(fd)
    return None


def _release(root: Path) -> None:
    held = _HELD[root]
    held.count -= 1
    if held.count:
        return
    del _HELD[root]
    if held.fd is None:
        with contextlib.suppress(OSError):
            (root / LOCK_FILE).write_text("")
        return
    with contextlib.suppress(OSError):
        os.ftruncate(held.fd, 0)  # a clean release: the next holder has nothing to take over
    os.close(held.fd)  # releases the flock


@contextlib.contextmanager
def run_lock(root: str | os.PathLike, command: str, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of the run folder ``root`` (created if missing) while the block runs.

    ``command`` names what holds it (``train``, ``evaluate``...), shown to a second command.
    ``enabled=False`` does nothing (the non-main processes of a launch). Raises
    :class:`RunBusyError` at once when another process holds it.
    """
    if not enabled:
        yield
        return
    key = Path(root).resolve()
    if key in _HELD:
        _HELD[key].count += 1
    else:
        _HELD[key] = _Held(_take(key, command), 1)
    try:
        yield
    finally:
        _release(key)


@contextlib.contextmanager
def team_lock(root: str | os.PathLike, command: str, team: Any) -> Iterator[None]:
    """:func:`run_lock` for a launch of several processes: the main process takes it, the
    others wait for that (``team.run``, :mod:`poseguide.utils.team`), and all stop when it
    cannot be taken (the main process with the lock line, the others naming it)."""
    with contextlib.ExitStack() as stack:
        team.run(lambda: stack.enter_context(run_lock(root, command, enabled=team.is_main)))
        yield


def is_held(root: str | os.PathLike) -> bool:
    """This process holds the lock of ``root``."""
    return Path(root).resolve() in _HELD
