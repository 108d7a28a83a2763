"""One process per run folder: an advisory lock (``fcntl.flock``) on ``<run>/.lock``, held while a command uses the run.

The operating system drops the lock when the process ends, however it ends (SIGKILL included), so
a stale lock never blocks the next ``--resume``. The file holds the owner's pid for the message.
Where ``fcntl`` does not exist (Windows) runs are not locked.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from covfuse.errors import UserError
from covfuse.io import file_mode

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    """Take the lock of ``run_dir`` (which must exist) or raise a UserError naming the process holding it."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.path.parent} is in use by another covfuse process ({owner}); wait for it to "
                            "finish or stop it, or choose another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
