"""Atomic writes: a file appears whole under its name or not at all (write a temp name, then rename)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is renamed over ``path``, on failure removed.

    The temp name keeps ``path``'s suffix, so writers that pick a format by extension (savefig) still work.
    An existing ``path`` is left untouched when the block raises.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary name and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


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
        import matplotlib.pyplot as plt  # only here: io stays importable without matplotlib

        plt.close(fig)
    return path
