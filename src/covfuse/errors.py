"""Errors the CLI turns into one line on stderr and an exit status (UserError 2, Terminated 143,
RunInterrupted 128 + the signal, RunDiverged 1), and the spelling hint their messages carry."""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(ValueError):
    """A problem with the user's input (file, name, value, shape) that they can fix."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest spelling of ``name`` in ``choices``, or ''."""
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.5)
    return f" (did you mean {lower[match[0]]!r}?)" if match else ""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``scancel``, a cluster's pre-emption) raised as an exception, so the
    ``finally``/``except`` blocks that remove half-written output run, as they do for Ctrl-C;
    ``covfuse`` then exits with 143 (128 + 15)."""


class RunInterrupted(Exception):
    """A run stopped by SIGINT/SIGTERM after saving a checkpoint; ``str()`` is the line to show (how to resume)
    and ``code`` the exit status (128 + the signal number, as a shell reports a signal)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class RunDiverged(Exception):
    """Training stopped because its loss or a validation metric became NaN/Inf: exit status 1 (the run
    failed; not a user's typo), ``str()`` the line to show (epoch, step, the checkpoint kept, what to check)."""

    code = 1
