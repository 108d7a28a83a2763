"""Time-to-event targets from a sample table: a time column and a 0/1 event column, validated up front.

A survival head (``model.head: survival``) reads ``data.target`` as the time (to the event, or to
the last visit when censored) and ``data.event`` as 1 = event observed, 0 = censored, from the
string columns of a :class:`~covfuse.data.table.SampleTable` (a manifest or BIDS dataset, 2D or
volumes; CelebA's 0/1 attributes take binary heads only), so every such source gets the same checks.
Labels are one float64 array (N, 2) of ``[time, event]`` (float64 so that predictions.csv writes the
times back exactly as read, and its C-index equals metrics.json's): training passes them around like
any target.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from covfuse.data.table import is_missing, parse_number
from covfuse.errors import UserError

TIME, EVENT = 0, 1
"""Columns of the (N, 2) survival label array."""

_EVENT_VALUES = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}


def survival_labels(table, time: str, event: str | None) -> np.ndarray:
    """float64 (N, 2) ``[time, event]`` from the named columns; every bad cell is a one-line UserError
    naming the row: a missing, non-numeric or negative time, an event other than 0/1."""
    if not event:
        raise UserError("model.head survival needs data.event, the 0/1 column saying whether the event was observed "
                        "(1) or the time is censored (0); data.target names the time column")
    time, event = table.column(time), table.column(event)
    if time == event:
        raise UserError(f"{table.path}: data.target and data.event both name column {time!r}; the target is the "
                        "time, the event is a separate 0/1 column")
    times, events = table.columns[time], table.columns[event]
    out = np.empty((len(times), 2), dtype=np.float64)
    for i, (t, e) in enumerate(zip(times, events)):
        if is_missing(t):
            raise UserError(f"{table.where(i)}: the survival time {time!r} is missing; drop the row or fill it in")
        value = parse_number(t)
        if value is None:
            raise UserError(f"{table.where(i)}: the survival time {time!r} must be a number, got {t!r}; "
                            "data.target names the time column of a survival head")
        if value < 0:
            raise UserError(f"{table.where(i)}: the survival time {time!r} is negative ({t}); times count from "
                            "the baseline scan and must be >= 0")
        code = _EVENT_VALUES.get(e.strip())
        if code is None:
            raise UserError(f"{table.where(i)}: the event column {event!r} must be 1 (event observed) or 0 "
                            f"(censored), got {e!r}")
        out[i] = (value, code)
    return out


def check_events(table, labels: np.ndarray, splits: dict[str, np.ndarray], names: Sequence[str] | None = None) -> None:
    """Every split needs at least one observed event: without one the Cox loss has no term and the
    C-index has no comparable pair."""
    for name in names or splits:
        rows = splits[name]
        if len(rows) and not labels[rows, EVENT].any():
            raise UserError(f"{table.path}: the {name} split has no events ({len(rows)} rows, all censored); the "
                            "C-index is undefined there: move subjects with events into it, or use other splits")
