"""Subgroups of samples in the user's units: what per-subgroup metrics, gaps and ``covfuse explain`` group by.

The model sees encoded features (:class:`~covfuse.data.table.CovariateEncoder`: standardised
numbers, one-hot levels, missing indicators). Those make bad groups: a standardised count reads
``APOE4=-0.70``, an imputed missing value lands in the group of the mean, and a one-hot column
splits a category into "is F" / "is not F". Groups here come from the table's own values instead,
one grouping per covariate:

* a 0/1 or few-valued number (at most :data:`MAX_GROUP_VALUES` distinct values): one group per
  value, named as the number (``APOE4=2``);
* a continuous number: :data:`CONTINUOUS_BINS` bins at the training split's quantiles, edges
  rounded to 3 significant digits (``age<66.7``, ``age=66.7-78.3``, ``age>=78.3``);
* a categorical column: one group per level as the table spells it (``sex=F``);
* a missing value: its own group, ``<name>=missing``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

MAX_GROUP_VALUES = 10
"""Numbers with more distinct values than this are continuous: grouped in quantile bins."""
CONTINUOUS_BINS = 3
"""Bins of a continuous covariate (tertiles of the training split)."""
MISSING = "missing"


def group_key(name: str, label: str) -> str:
    """``age<66.7`` for a bin below or above an edge, else ``name=label`` (``sex=F``, ``APOE4=missing``)."""
    return f"{name}{label}" if label[:1] in "<>" else f"{name}={label}"


@dataclass(frozen=True)
class Grouping:
    """One covariate's groups: ``labels`` in display order and, per sample, ``codes`` (an index into ``labels``)."""

    labels: tuple[str, ...]
    codes: np.ndarray

    def masks(self, name: str) -> dict[str, np.ndarray]:
        """{``group_key(name, label)``: row mask} for every group with at least one sample, in label order."""
        return {group_key(name, label): self.codes == k for k, label in enumerate(self.labels) if (self.codes == k).any()}

    def values(self) -> list[str]:
        """Each sample's group label."""
        return [self.labels[c] for c in self.codes]


def _number(value: float) -> str:
    return f"{float(value):g}"


def _by_value(values: np.ndarray, order: np.ndarray | None = None) -> Grouping:
    """One group per distinct finite value of ``values`` (sorted numerically), plus ``missing`` for NaN."""
    known = np.isfinite(values)
    distinct = np.unique(values[known]) if order is None else order
    labels = [_number(v) for v in distinct]
    codes = np.searchsorted(distinct, np.where(known, values, distinct[0] if len(distinct) else 0.0))
    if not known.all():
        codes = np.where(known, codes, len(labels))
        labels.append(MISSING)
    return Grouping(tuple(labels), codes.astype(np.int64))


def value_grouping(values: np.ndarray) -> Grouping | None:
    """Groups of a plain numeric array: one per value, or None for a continuous one (more than MAX_GROUP_VALUES values)."""
    values = np.asarray(values, dtype=np.float64)
    if len(np.unique(values[np.isfinite(values)])) > MAX_GROUP_VALUES:
        return None
    return _by_value(values)


def _edges(train: np.ndarray) -> list[float]:
    """Bin edges at the training values' quantiles, rounded to 3 significant digits, strictly inside their range."""
    quantiles = np.quantile(train, np.arange(1, CONTINUOUS_BINS) / CONTINUOUS_BINS)
    edges = sorted({float(f"{q:.3g}") for q in quantiles})
    return [e for e in edges if train.min() < e <= train.max()] or [float(np.median(train))]


def _binned(values: np.ndarray, train: np.ndarray) -> Grouping:
    edges = _edges(train)
    labels = [f"<{_number(edges[0])}"]
    labels += [f"{_number(a)}-{_number(b)}" for a, b in zip(edges[:-1], edges[1:])]
    labels.append(f">={_number(edges[-1])}")
    known = np.isfinite(values)
    codes = np.searchsorted(np.asarray(edges), np.where(known, values, 0.0), side="right")
    if not known.all():
        codes = np.where(known, codes, len(labels))
        labels.append(MISSING)
    return Grouping(tuple(labels), codes.astype(np.int64))


def _levels(raw: Sequence[str], levels: Sequence[str]) -> Grouping:
    """A categorical column: the training levels in their order, levels only seen outside training after them."""
    from covfuse.data.table import is_missing

    known = [str(v) for v in raw if not is_missing(v)]
    labels = list(levels) + sorted(set(known) - set(levels))
    if any(is_missing(v) for v in raw):
        labels.append(MISSING)
    index = {label: k for k, label in enumerate(labels)}
    return Grouping(tuple(labels), np.asarray([index[MISSING if is_missing(v) else str(v)] for v in raw], dtype=np.int64))


def covariate_groups(encoder, table, rows: np.ndarray, train_rows: np.ndarray) -> dict[str, Grouping]:
    """{covariate: its groups for the samples at table ``rows``}, bins and levels from ``train_rows``."""
    from covfuse.data.table import _strings, numeric_values

    rows = np.asarray(rows, dtype=np.int64)
    out: dict[str, Grouping] = {}
    for spec in encoder.specs:
        name = table.column(spec["name"])
        if spec["kind"] == "categorical":
            out[spec["name"]] = _levels(_strings(table, name, rows), spec["levels"])
            continue
        values = numeric_values(table, name)
        train = values[np.asarray(train_rows, dtype=np.int64)]
        train = train[np.isfinite(train)]
        present = values[rows]
        distinct = np.unique(np.concatenate([train, present[np.isfinite(present)]]))
        if spec["kind"] == "binary" or len(distinct) <= MAX_GROUP_VALUES:
            out[spec["name"]] = _by_value(present, distinct)
        else:
            out[spec["name"]] = _binned(present, train)
    return out


def covariate_values(encoder, table, rows: np.ndarray) -> dict[str, list[str]]:
    """{covariate: each sample's value as the table has it} (numbers printed with %g, missing as "")."""
    from covfuse.data.table import _strings, is_missing, numeric_values

    rows = np.asarray(rows, dtype=np.int64)
    out: dict[str, list[str]] = {}
    for spec in encoder.specs:
        name = table.column(spec["name"])
        if spec["kind"] == "categorical":
            out[spec["name"]] = ["" if is_missing(v) else str(v) for v in _strings(table, name, rows)]
        else:
            out[spec["name"]] = ["" if not np.isfinite(v) else _number(v) for v in numeric_values(table, name)[rows]]
    return out


def as_groupings(covariates: Mapping[str, Grouping | np.ndarray]) -> dict[str, Grouping]:
    """Groupings as given, plain arrays grouped by value (continuous arrays are left out)."""
    out = {}
    for name, g in covariates.items():
        g = g if isinstance(g, Grouping) else value_grouping(g)
        if g is not None:
            out[name] = g
    return out
