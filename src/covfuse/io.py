"""File helpers: atomic writes (a file appears whole under its name or not at all: write a temp
name, then rename), figures saved that way, and ``torch.load`` of weights only.

The finished file gets the permissions a plain ``open(path, "w")`` would give (0666 minus the
user's umask): ``tempfile.mkstemp`` creates 0600 files, which collaborators could not read.
A full disk (or quota) becomes a :class:`~covfuse.errors.UserError` naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import tempfile
from pathlib import Path
from typing import Iterator

from covfuse.errors import UserError

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new regular file gets from ``open()`` under the current umask."""
    return 0o666 & ~current_umask()


def disk_full(path: str | os.PathLike, exc: OSError) -> UserError:
    """The one-line answer to ENOSPC/EDQUOT while writing ``path``."""
    return UserError(f"{path}: the disk is full ({exc.strerror or exc}); free some space and run the command again")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is renamed over ``path``, on failure removed.

    The temp name keeps ``path``'s suffix, so writers that pick a format by extension (savefig) still work.
    An existing ``path`` is left untouched when the block raises.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=folder)
    except OSError as exc:
        if exc.errno in _FULL:
            raise disk_full(path, exc) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in _FULL:
            raise disk_full(path, exc) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through a temporary name and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Save a matplotlib figure atomically (format from the suffix, PNG by default), then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"dpi": 110, "format": path.suffix.lstrip(".") or "png", **savefig_kwargs}
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **options)
    finally:
        import matplotlib.pyplot as plt  # lazy: io stays matplotlib-free

        plt.close(fig)
    return path


def load_trusted(path: str | os.PathLike, what: str = "file", map_location="cpu", mmap: bool = False):
    """``torch.load`` with ``weights_only=True``: tensors and plain values only, so no code in the file runs.
    ``mmap=True`` maps the tensors instead of reading them (for looking at a checkpoint's counters).

    A file that carries other pickled objects (which could execute code when unpickled) is refused
    with one line; so is a truncated or non-torch file.
    """
    import torch  # lazy: io stays torch-free (data and report commands import it)

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):  # a pickled object, not a tensor
            raise UserError(f"{path}: refused: this {what} carries pickled Python objects besides tensors (code could "
                            "run on loading); covfuse loads only weights (weights_only=True); re-save it as a "
                            "state dict from a source you trust") from None
        raise UserError(f"{path}: not a readable {what} (corrupt, truncated or not written by torch.save); "
                        "copy it again") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as exc:
        raise UserError(f"{path}: not a readable {what} ({_first_line(exc)}); copy it again") from None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:160]
