"""Subgroups of samples in the user's units: what per-subgroup metrics, gaps and ``covfuse explain`` group by.

The model sees encoded features (:class:`~covfuse.data.table.CovariateEncoder`: standardised
numbers, one-hot levels, missing indicators). Those make bad groups: a standardised count reads
``APOE4=-0.70``, an imputed missing value lands in the group of the mean, and a one-hot column
splits a category into "is F" / "is not F". Groups here come from the table's own values instead,
one grouping per covariate:

* a 0/1 or few-valued number (at most :data:`MAX_GROUP_VALUES` distinct values in the training
  split): one group per value, named as the number (``APOE4=2``);
* a continuous number: :data:`CONTINUOUS_BINS` bins at the training split's tertiles, edges
  rounded (``age<67``, ``age=[67, 78)``, ``age>=78``; :func:`_edges`);
* a categorical column: one group per level as training spelt it (``sex=F``; ``f`` and `` F `` join it);
* a missing value: its own group, ``<name>=missing``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from covfuse.data.table import _strings, as_levels, is_missing, numeric_values, parse_number

MAX_GROUP_VALUES = 10
"""Numbers with more distinct training values than this are continuous: grouped in quantile bins."""
CONTINUOUS_BINS = 3
"""Bins of a continuous covariate (tertiles of the training split)."""
MISSING = "missing"


def format_number(value: float, digits: int | None = None) -> str:
    """A number as a person writes it: no exponent (20190101, not 2.01902e+07), no trailing zeros;
    the shortest exact form, or ``digits`` significant digits."""
    if digits is None:
        return np.format_float_positional(float(value), trim="-")
    return np.format_float_positional(float(value), precision=digits, unique=True, fractional=False, trim="-")


def level_name(level: str, described: dict[str, str] | None = None) -> str:
    """A category's level as the table spells it, with its meaning where the source describes a coded
    level (BIDS ``participants.json`` ``Levels``: ``0 (control)``); a level that is a word already stays as it is."""
    meaning = (described or {}).get(level)
    return f"{level} ({meaning})" if meaning and meaning != level and parse_number(level) is not None else level


@dataclass(frozen=True)
class Grouping:
    """One covariate's groups: ``labels`` in display order and, per sample, ``codes`` (an index into ``labels``).

    ``kind``: "values" (one group per number), "levels" (one per category) or "bins" (ranges of a
    continuous number, labelled ``<a``, ``[a, b)``, ``>=b``). ``missing``: the label of the
    missing group, if there is one.
    """

    labels: tuple[str, ...]
    codes: np.ndarray
    kind: str = "values"
    missing: str | None = None

    def key(self, name: str, code: int) -> str:
        """``age<67`` / ``age>=78`` for the open bins, else ``name=label`` (``sex=F``, ``age=[67, 78)``)."""
        label = self.labels[code]
        open_bin = self.kind == "bins" and label != self.missing and label[:1] in "<>"
        return f"{name}{label}" if open_bin else f"{name}={label}"

    def masks(self, name: str) -> dict[str, np.ndarray]:
        """{key: row mask} for every group with at least one sample, in label order."""
        return {self.key(name, k): self.codes == k for k in range(len(self.labels)) if (self.codes == k).any()}

    def values(self) -> list[str]:
        """Each sample's group label."""
        return [self.labels[c] for c in self.codes]

    @property
    def two_valued(self) -> bool:
        """Exactly two known values or levels (a 0/1 covariate, a two-level category): a difference is defined."""
        return self.kind != "bins" and len([label for label in self.labels if label != self.missing]) == 2


def _by_value(values: np.ndarray, distinct: np.ndarray) -> Grouping:
    """One group per value of ``distinct`` (sorted, holding every finite value of ``values``), plus ``missing`` for NaN."""
    known = np.isfinite(values)
    labels = [format_number(v) for v in distinct]
    codes = np.searchsorted(distinct, np.where(known, values, distinct[0] if len(distinct) else 0.0))
    missing = None
    if not known.all():
        codes, missing = np.where(known, codes, len(labels)), MISSING
        labels.append(MISSING)
    return Grouping(tuple(labels), codes.astype(np.int64), "values", missing)


def value_grouping(values: np.ndarray) -> Grouping | None:
    """Groups of a plain numeric array: one per value, or None for a continuous one (more than MAX_GROUP_VALUES values)."""
    values = np.asarray(values, dtype=np.float64)
    distinct = np.unique(values[np.isfinite(values)])
    return None if len(distinct) > MAX_GROUP_VALUES else _by_value(values, distinct)


def _edges(train: np.ndarray) -> list[float]:
    """Bin edges at the training values' tertiles, strictly above their minimum.

    Integers get integer edges (``v < 67`` is ``v <= 66``); other numbers are rounded to two
    significant digits of their range (whole units for a range of 10-99, hundredths for 0.1-0.99). Where rounding or
    ties merge the edges, the unrounded ones are used; where every tertile falls on the minimum (a
    number that is mostly 0), the one edge is the next value above it: ``x<next`` is ``x = min``.
    """
    quantiles = np.quantile(train, np.arange(1, CONTINUOUS_BINS) / CONTINUOUS_BINS)
    lo, hi = float(train.min()), float(train.max())
    if np.all(train == np.round(train)):
        rounded = np.ceil(quantiles)
    else:
        decimals = 1 - int(np.floor(np.log10(hi - lo)))
        rounded = np.round(quantiles, decimals)
    for candidate in (rounded, quantiles):
        edges = sorted({float(e) for e in candidate if lo < e <= hi})
        if len(edges) == CONTINUOUS_BINS - 1:
            return edges
    above = train[train > lo]
    return edges or [float(above.min())]


def _binned(values: np.ndarray, train: np.ndarray) -> Grouping:
    edges = _edges(train)
    shown = [format_number(e) for e in edges]
    labels = [f"<{shown[0]}", *(f"[{a}, {b})" for a, b in zip(shown[:-1], shown[1:])), f">={shown[-1]}"]
    known = np.isfinite(values)
    codes = np.searchsorted(np.asarray(edges), np.where(known, values, 0.0), side="right")
    missing = None
    if not known.all():
        codes, missing = np.where(known, codes, len(labels)), MISSING
        labels.append(MISSING)
    return Grouping(tuple(labels), codes.astype(np.int64), "bins", missing)


def _levels(raw: Sequence[str], levels: Sequence[str], described: dict[str, str] | None = None) -> Grouping:
    """A categorical column: the training levels in their order, levels only seen outside training after them;
    the missing group is "missing", or "(missing)" where a level is literally called "missing"."""
    known = [str(v) for v in raw if not is_missing(v)]
    found = list(levels) + sorted(set(known) - set(levels))
    index = {level: k for k, level in enumerate(found)}
    labels = [level_name(level, described) for level in found]
    missing = None
    if any(is_missing(v) for v in raw):
        missing = MISSING if MISSING not in labels else f"({MISSING})"
        index[missing] = len(labels)
        labels.append(missing)
    codes = [index[missing] if is_missing(v) else index[str(v)] for v in raw]
    return Grouping(tuple(labels), np.asarray(codes, dtype=np.int64), "levels", missing)


def covariate_groups(encoder, table, rows: np.ndarray, train_rows: np.ndarray) -> dict[str, Grouping]:
    """{covariate: its groups for the samples at table ``rows``}. Whether a number is grouped by value or
    in bins, and the bins' edges, come from the training rows alone, so every split and fold groups alike."""
    rows = np.asarray(rows, dtype=np.int64)
    out: dict[str, Grouping] = {}
    for spec in encoder.specs:
        name = table.column(spec["name"])
        if spec["kind"] == "categorical":
            out[spec["name"]] = _levels(as_levels(spec, _strings(table, name, rows)), spec["levels"],
                                        getattr(table, "levels", {}).get(name))
            continue
        values = numeric_values(table, name)
        train = values[np.asarray(train_rows, dtype=np.int64)]
        train = train[np.isfinite(train)]
        present = values[rows]
        if spec["kind"] == "binary" or len(np.unique(train)) <= MAX_GROUP_VALUES:
            distinct = np.unique(np.concatenate([train, present[np.isfinite(present)]]))  # a new value: its own group
            out[spec["name"]] = _by_value(present, distinct)
        else:
            out[spec["name"]] = _binned(present, train)
    return out


def covariate_values(encoder, table, rows: np.ndarray) -> dict[str, list[str]]:
    """{covariate: each sample's value as the table has it} (numbers as :func:`format_number` writes them,
    levels as the table spells them, missing as "")."""
    rows = np.asarray(rows, dtype=np.int64)
    out: dict[str, list[str]] = {}
    for spec in encoder.specs:
        name = table.column(spec["name"])
        if spec["kind"] == "categorical":
            out[spec["name"]] = ["" if is_missing(v) else str(v) for v in _strings(table, name, rows)]
        else:
            out[spec["name"]] = ["" if not np.isfinite(v) else format_number(v) for v in numeric_values(table, name)[rows]]
    return out


def as_groupings(covariates: Mapping[str, Grouping | np.ndarray]) -> dict[str, Grouping]:
    """Groupings as given, plain arrays grouped by value (continuous arrays are left out)."""
    out = {}
    for name, g in covariates.items():
        g = g if isinstance(g, Grouping) else value_grouping(g)
        if g is not None:
            out[name] = g
    return out
