"""A run's log.txt: a timestamped copy of everything the run prints, progress and warnings included.

Two routes reach the file: a logging handler on the same file object (on the root logger and on
Lightning's loggers, which do not propagate) catches log records, and a tee on ``sys.stdout``/``sys.stderr`` catches
``print`` and warnings. Lightning's console handler holds the original stderr, so no line is
written twice. Carriage-return updates (tqdm bars) are collapsed to their last state per line.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from covfuse.layers import autotune

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LOGGERS = ("", "lightning.pytorch", "lightning.fabric")  # the last two do not propagate to the root


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class _Tee:
    """A text stream writing through to ``stream`` and, line by line with a timestamp, to ``log``."""

    def __init__(self, stream: IO[str], log: IO[str], lock: threading.Lock, tag: str):
        self._stream, self._log, self._lock, self._tag = stream, log, lock, tag
        self._pending = ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                line = line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
                if line.strip():
                    self._log.write(f"{_stamp()} {self._tag} {line}\n")
            self._log.flush()
        return written

    def flush(self) -> None:
        self._stream.flush()

    def close_pending(self) -> None:
        with self._lock:
            line = self._pending.rsplit("\r", 1)[-1]
            if line.strip():
                self._log.write(f"{_stamp()} {self._tag} {line}\n")
            self._pending = ""
            self._log.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ... of the real stream
        return getattr(self._stream, name)


@contextmanager
def capture(path: str | Path, enabled: bool = True) -> Iterator[None]:
    """Append everything printed and logged inside the block to ``path``, each line timestamped."""
    if not enabled:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", encoding="utf-8", buffering=1)
    lock = threading.Lock()
    handler = logging.StreamHandler(log)  # shares the file object (and its order) with the tees
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    ours = logging.getLogger("covfuse")  # propagates to the root's handler
    old_level = ours.level
    ours.setLevel(logging.INFO)
    autotune.log_again()  # each run's log names the hybrid back-ends it uses, even those chosen before
    out, err = sys.stdout, sys.stderr
    tee_out, tee_err = _Tee(out, log, lock, "|"), _Tee(err, log, lock, "!")
    sys.stdout, sys.stderr = tee_out, tee_err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        tee_out.close_pending()
        tee_err.close_pending()
        for logger in loggers:
            logger.removeHandler(handler)
        ours.setLevel(old_level)
        log.close()
