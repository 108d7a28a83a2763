"""One process per run folder: an advisory lock (``fcntl.flock``) on ``<run>/.lock``, held while a command uses the run.

A study also claims each run before it starts it (:class:`Claim`, ``<cell>/.<run>.claim`` beside the
run folder, so a new run's folder stays empty until training writes it): another process that
meets a claimed run skips it, and ``covfuse status`` reads who holds it.

The operating system drops the lock when the process ends, however it ends (SIGKILL included), so
a stale lock never blocks the next ``--resume``. The file holds the owner's line (pid, host, since) while
the lock is held and is emptied when the owner lets go; a line left in a file nobody holds is the mark
of an owner that died (SIGKILL, a crash, a lost node): the next taker finds it in ``previous``, and
:func:`left_by_dead` tells who without taking anything. Where ``fcntl`` does not exist (Windows) runs are
not locked.

Short critical sections shared by processes on one study (writing study.json, creating the tracking
store, claiming a search's next trial) use :func:`folder_lock`, a blocking lock file in a folder.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from filelock import FileLock

from covfuse.errors import UserError
from covfuse.io import file_mode

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


class RunBusy(UserError):
    """The run is locked by another process (``owner`` says which: pid, host, since)."""

    def __init__(self, message: str, owner: str):
        super().__init__(message)
        self.owner = owner


def _owner_line() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"


def _probe(path: str | os.PathLike) -> tuple[bool, str] | None:
    """(whether a process holds the lock file ``path`` now, the owner line in it), or None when there is no
    such file to read (or no fcntl). A shared, non-blocking ``flock`` fails exactly while someone holds it."""
    path = Path(path)
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
        except OSError:
            held = True
        return held, os.pread(fd, 200, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)


def holder(path: str | os.PathLike) -> str | None:
    """Who holds the lock file ``path`` (its owner line), or None when nobody does (or no fcntl)."""
    probe = _probe(path) if Path(path).is_file() else None
    if probe is None or not probe[0]:
        return None
    return probe[1] or "unknown"


class _Held(Exception):
    """Another process holds the lock (``owner``: its owner line)."""

    def __init__(self, owner: str):
        self.owner = owner


def left_by_dead(path: str | os.PathLike) -> str | None:
    """The owner line of a lock file whose owner died holding it (nobody holds it now, yet the line is still
    there), or None: free and released cleanly, held now, or no such file."""
    probe = _probe(path)
    if probe is None or probe[0]:
        return None
    return probe[1] or None


def _take(path: Path, attempts: int) -> tuple[int, str | None]:
    """An exclusive ``flock`` on ``path`` (created if missing), tried ``attempts`` times 0.2 s apart; returns the
    open descriptor with this process's owner line written and the line a dead owner left (None when the last
    owner let go), or raises :class:`_Held`."""
    for attempt in range(attempts):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if attempt == attempts - 1:
                raise _Held(owner) from None
            time.sleep(0.2)
    previous = os.pread(fd, 200, 0).decode(errors="replace").strip() or None
    os.ftruncate(fd, 0)
    os.pwrite(fd, _owner_line().encode(), 0)
    return fd, previous


class _Lock:
    """Release and context-manager protocol of a lock held through ``self._fd``."""

    _fd: int | None = None
    previous: str | None = None  # the owner line of a previous owner that died holding the lock, else None

    def release(self) -> None:
        """Let go: the owner line is emptied first, so nobody takes this owner for a dead one."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Claim(_Lock):
    """An exclusive claim on ``path`` for as long as it is held; RunBusy when another process holds it.
    ``attempts``: how often to try, 0.2 s apart (`covfuse status` peeks with a shared lock for an instant)."""

    def __init__(self, path: str | os.PathLike, attempts: int = 3):
        self.path = Path(path)
        self._fd = None
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd, self.previous = _take(self.path, attempts=attempts)
        except _Held as held:
            raise RunBusy(f"{self.path} is held by another covfuse process ({held.owner})", held.owner) from None


class RunLock(_Lock):
    """Take the lock of ``run_dir`` (which must exist) or raise a UserError naming the process holding it."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd = None
        if fcntl is None:
            return
        try:  # `covfuse status` peeks with a shared lock for an instant: try again
            self._fd, self.previous = _take(self.path, attempts=3)
        except _Held as held:
            raise RunBusy(f"{self.path.parent} is in use by another covfuse process ({held.owner}); wait for it to "
                          "finish or stop it, or choose another --name", held.owner) from None


def folder_lock(folder: str | os.PathLike, name: str):
    """A blocking lock file ``folder/name`` (the folder is created) for a short critical section shared by
    processes (``with folder_lock(...):``). It waits as long as another process holds it: the operating system
    releases it when that process ends, however it ends."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / name))
