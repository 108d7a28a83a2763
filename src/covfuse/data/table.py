"""The sample table: every data source (CelebA release, image or volume manifest, BIDS) as one table.

A reader (:mod:`covfuse.data.readers`) turns a source into a :class:`SampleTable`: one row per
sample (an image or a volume) with its file, its ``subject`` (the person: CelebA identity, patient,
participant), an optional split, and named columns usable as target or covariates. Everything
after the table is format-blind: covariate encoding (:class:`CovariateEncoder`, fitted on the
training rows), target encoding (:func:`encode_target`), subject-grouped splits and folds
(:func:`subject_split`, :func:`subject_folds`), datasets, caches, statistics and studies.

Covariates become a float matrix: numeric columns standardised with the *training* rows' mean and
sd, except 0/1 indicator columns, which stay 0/1 (so a hybrid kernel reads ``W_0`` for 0 and
``W_0 + W_1`` for 1, and the discrete-pattern back-end applies); categorical ones one-hot over the
training levels; a missing value imputed (training mean / no level) with a 0/1 ``<name>_missing``
indicator column, as DAFT does. The encoder is saved with the run (``data_state.json``) and reused
by test and predict; predict checks new rows against the values training held with
:func:`check_covariate_values` (the one such check). :func:`column_kind` and
:func:`describe_columns` say what a column holds (``covfuse data info``).

Nothing silent (docs/data.md, "How covfuse reads a table"): spellings of a category that differ
only in case or surrounding spaces are one level (:func:`merged_levels`, said by
:func:`spelling_note`); a column of dates is a kind of its own, refused as a covariate unless
declared in data.categorical; a ``;`` or tab table's decimal commas are read as numbers by its
reader (:func:`decimal_comma_columns`). The rules that applied to a table are its ``notes``.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from covfuse.errors import UserError, suggest

RESERVED = ("subject", "path", "split", "session")
SPLIT_NAMES = ("train", "valid", "test")
MISSING = {"", "na", "nan", "n/a", "none", "null", "?"}


def is_missing(value) -> bool:
    return str(value).strip().lower() in MISSING


def md5sum(path: Path, block: int = 1 << 20) -> str:
    """The md5 of a file's bytes, read in blocks: what identifies a table's ``sources`` (the run's data
    fingerprint, a cache's record) and what CelebA's release files are checked against."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def parse_number(value: str) -> float | None:
    """The finite number a cell holds, or None (a word, empty, NaN, inf)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class SampleTable:
    """One row per sample: files, subjects, splits and named columns (docs/data.md, "Your own data").

    ``columns`` maps a column name to one value per row: a list of strings as the source spells
    them (manifests, BIDS) or a numeric array (CelebA's 0/1 attributes, 200k rows). ``split`` is
    int8 per row (0 train, 1 valid, 2 test, -1 not given); ``line[i]`` is row i's 1-based line in
    ``path`` (for error messages). ``kind`` is ``image`` (2D files) or ``volume`` (NIfTI, MGH, DICOM ...);
    ``format`` names the reader. ``ids`` is each row's id in predictions.csv (default: the ``path``
    column). ``categorical`` lists columns the source declares categorical (BIDS ``Levels``).
    ``sources`` are the files whose content identifies the table (a run's data fingerprint, cache records). ``binary_only``:
    every column is a 0/1 attribute (CelebA), so only binary heads apply. ``notes``: one line per reading
    rule that applied (a text encoding fallback, decimal commas, the sheet read), for data info and the fit log.
    """

    path: Path
    header: list[str]
    columns: dict[str, Any]
    files: list
    subjects: np.ndarray
    split: np.ndarray
    line: np.ndarray
    kind: str = "volume"
    format: str = "manifest"
    ids: list[str] | None = None
    categorical: tuple[str, ...] = ()
    sources: tuple[Path, ...] = ()
    root_dir: Path | None = None
    binary_only: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        counts = np.bincount(self.split[self.split >= 0], minlength=3) if len(self) else np.zeros(3, int)
        return (f"SampleTable({self.format} {self.kind}s from {str(self.path)!r}: {len(self)} samples, "
                f"{len(np.unique(self.subjects.astype(str)))} subjects, train/valid/test={counts[0]}/{counts[1]}/"
                f"{counts[2]}, columns={[h for h in self.header if h not in RESERVED]})")

    @property
    def source(self) -> Path:
        """What error messages name: the folder of a CelebA release, else the table's file."""
        return self.root if self.format == "celeba" else self.path

    @property
    def root(self) -> Path:
        """The folder the source lives in (where its cache folder goes)."""
        return self.root_dir if self.root_dir is not None else self.path.parent

    def where(self, row: int) -> str:
        return f"{self.path}, line {int(self.line[row])} (subject {self.subjects[row]})"

    def row_ids(self, rows: np.ndarray | Sequence[int]) -> list[str]:
        """Each row's id in predictions.csv (unique per sample)."""
        ids = self.ids if self.ids is not None else self.columns["path"]
        return [str(ids[int(i)]) for i in rows]

    def column(self, name: str) -> str:
        """The header's spelling of ``name`` (case-insensitive); a misspelt name is a UserError."""
        lower = {h.lower(): h for h in self.header}
        if str(name).lower() not in lower:
            usable = [h for h in self.header if h not in RESERVED]
            if self.format == "celeba":
                raise UserError(f"unknown attribute {name!r}{suggest(str(name), usable)}; valid names are listed by "
                                f"`covfuse data info {self.root}`")
            raise UserError(f"{self.path}: no column {name!r}{suggest(str(name), usable)}; columns: {', '.join(usable)}")
        found = lower[str(name).lower()]
        if found in RESERVED and found != "session":
            raise UserError(f"{self.path}: column {found!r} is reserved ({', '.join(RESERVED)}); it cannot be a target or covariate")
        return found

    def values(self, name: str) -> list[str] | np.ndarray:
        return self.columns[self.column(name)]

    @property
    def has_split(self) -> bool:
        return bool(len(self.split)) and bool((self.split >= 0).all())


def check_selection(table: SampleTable, target: str | None, covariates: Sequence[str]) -> tuple[str | None, list[str]]:
    """(target, covariates) in the table's spelling; the target is not a covariate, none twice."""
    names = [table.column(c) for c in covariates]
    t = table.column(target) if target else None
    noun = "attribute" if table.format == "celeba" else "column"
    if t is not None and t in names:
        raise UserError(f"{noun} {t!r} is the target; it cannot also be a covariate")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise UserError(f"covariate {dup!r} is listed twice")
    return t, names


def check_categorical(covariates: Sequence[str], categorical: Sequence[str]) -> None:
    """Every column declared in data.categorical is one of the covariates: a misspelt name would otherwise be
    ignored and its column silently stay numeric."""
    names = {c.lower() for c in covariates}
    for name in categorical:
        if str(name).lower() not in names:
            listed = ", ".join(covariates) or "none"
            raise UserError(f"data.categorical names {name!r}, which is not in data.covariates ({listed})"
                            f"{suggest(str(name), covariates)}; declare only covariates there")


# ------------------------------------------------------------------------------ column types
def _numeric_array(values) -> bool:
    return isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.number)


DECIMAL_COMMA = re.compile(r"[+-]?(\d+(,\d+)?|,\d+)([eE][+-]?\d+)?")


def decimal_comma_columns(columns: dict[str, list[str]]) -> dict[str, str]:
    """The columns (reserved ones aside) whose every present value is a number written with a decimal
    comma, at least one of them with a comma (``63,5``), as a ``;`` or tab table from a European spreadsheet
    holds them: their values are rewritten in place with a point; returned: {name: its first value
    with a comma, as written}. A column mixing ``63,5`` and ``63.5`` is left as it is (and is an
    error if used as a number)."""
    out = {}
    for name, values in columns.items():
        if name in RESERVED or _numeric_array(values):
            continue
        present = [v for v in values if not is_missing(v)]
        if any("," in v for v in present) and all(DECIMAL_COMMA.fullmatch(v) for v in present):
            columns[name] = [v.replace(",", ".") for v in values]
            out[name] = next(v for v in present if "," in v)
    return out


DATE = re.compile(r"(\d{4}-\d{1,2}-\d{1,2}|\d{4}/\d{1,2}/\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{4}|\d{1,2}/\d{1,2}/\d{2})"
                  r"([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?")


def is_date(value) -> bool:
    """Whether a cell is written as a date (2021-03-04, 2021/03/04, 04.03.2021, 3/4/2021, 3/4/21), a time
    of day allowed after it."""
    return bool(DATE.fullmatch(str(value).strip()))


def column_kind(table: SampleTable, name: str, categorical: Sequence[str] = ()) -> str:
    """"numeric", "categorical" or "date": declared categorical (by the config or the source), else
    numeric unless no value parses as a number; a column of words every one of which is a date is
    "date" (no covariate as it is: :meth:`CovariateEncoder.fit` refuses it). A column where some
    values are numbers and others are not is an error naming the first bad row."""
    name = table.column(name)
    values = table.columns[name]
    if name.lower() in {c.lower() for c in (*categorical, *table.categorical)}:
        return "categorical"
    if _numeric_array(values):
        return "numeric"
    present = [(i, v) for i, v in enumerate(values) if not is_missing(v)]
    numbers = [(i, v) for i, v in present if parse_number(v) is not None]
    if not numbers and present:
        return "date" if all(is_date(v) for _, v in present) else "categorical"
    for i, v in present:
        if parse_number(v) is None:
            comma = " (numbers with a decimal comma are read as such only when every value of the column is one, " \
                    "in a ';' or tab-separated table)" if DECIMAL_COMMA.fullmatch(str(v)) else ""
            raise UserError(f"{table.where(i)}: non-numeric value {v!r} in numeric column {name!r} "
                            f"(fix the value, leave it empty for missing, or declare {name!r} in data.categorical){comma}")
    return "numeric"


def check_not_date(table: SampleTable, name: str, kind: str) -> None:
    """A date column is no covariate as it is: one line saying how to make it one."""
    if kind == "date":
        example = next(v for v in table.columns[name] if not is_missing(v))
        raise UserError(f"{table.path}: column {name!r} holds dates (e.g. {example!r}); a date is no covariate as it is: "
                        f"convert it to a number in a new column (such as age at scan, or days since baseline), or "
                        f"declare {name!r} in data.categorical to use each date as a level")


def level_key(value) -> str:
    """What makes two spellings one level of a category: case and surrounding spaces do not count."""
    return str(value).strip().casefold()


def merged_levels(values) -> dict[str, list[str]]:
    """{level: its spellings} over the present ``values``: spellings with one :func:`level_key` are one level,
    named by its most frequent spelling (a tie: the first in sorted order)."""
    counts = Counter(str(v) for v in values if not is_missing(v))
    groups: dict[str, list[str]] = {}
    for spelling in sorted(counts):
        groups.setdefault(level_key(spelling), []).append(spelling)
    return {max(spellings, key=lambda s: counts[s]): spellings for spellings in groups.values()}


def spelling_note(table: SampleTable, name: str) -> str | None:
    """The one line saying which spellings of a categorical column became one level, or None."""
    values = table.columns[name]
    if _numeric_array(values):
        return None
    merged = {level: s for level, s in merged_levels(values).items() if len(s) > 1}
    if not merged:
        return None
    return (f"{name}: spellings that differ only in case or surrounding spaces are one level: "
            + "; ".join(f"{level} ({' = '.join(repr(v) for v in s)})" for level, s in merged.items()))


def as_levels(spec: dict[str, Any], raw: Sequence[str]) -> list[str]:
    """Each raw value of a categorical covariate as the level of ``spec`` it spells (:func:`level_key`), else
    unchanged; runs from before spellings were merged (no ``fold`` in the spec) match exactly."""
    if not spec.get("fold"):
        return list(raw)
    index = {level_key(level): level for level in spec["levels"]}
    return [index.get(level_key(v), v) for v in raw]


def check_numeric(table: SampleTable, name: str) -> None:
    """Every present value of ``name`` is a finite number (a column known to be numeric, e.g. from a
    fitted encoder: unlike :func:`column_kind`, a column of words is an error here, not a category)."""
    values = table.columns[name]
    if _numeric_array(values):
        return
    for i, v in enumerate(values):
        if not is_missing(v) and parse_number(v) is None:
            raise UserError(f"{table.where(i)}: non-numeric value {v!r} in numeric column {name!r} "
                            "(the run was trained on numbers; fix the value, or leave it empty for missing)")


def numeric_values(table: SampleTable, name: str) -> np.ndarray:
    """float64 per row, NaN where missing (call :func:`column_kind` first to validate)."""
    values = table.columns[name]
    if _numeric_array(values):
        return values.astype(np.float64)
    return np.asarray([np.nan if is_missing(v) else float(v) for v in values], dtype=np.float64)


def describe_columns(table: SampleTable, categorical: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Per column, what ``covfuse data info`` shows: ``type`` (a reserved column's own name, else
    :func:`column_kind`), ``missing`` (a count), and ``levels`` (level: count, spellings merged as
    :func:`merged_levels` does, and ``merged``: level: spellings where that applied) of a categorical
    column, ``min`` and ``max`` of a numeric one, ``distinct`` and an ``example`` of a date column."""
    out = {}
    for name in table.header:
        values = table.columns[name]
        kind = name if name in RESERVED else column_kind(table, name, categorical)
        present = [v for v in values if not is_missing(v)]
        entry: dict[str, Any] = {"type": kind, "missing": len(values) - len(present)}
        if kind == "categorical":
            counts = Counter(str(v) for v in present)
            merged = merged_levels(present)
            entry["levels"] = {level: sum(counts[v] for v in merged[level]) for level in sorted(merged)}
            if any(len(s) > 1 for s in merged.values()):
                entry["merged"] = {level: s for level, s in merged.items() if len(s) > 1}
        elif kind == "date":
            entry.update({"distinct": len(set(present)), "example": str(present[0])})
        elif kind == "numeric":
            numbers = [float(v) for v in present]
            entry.update({"min": min(numbers), "max": max(numbers)} if numbers else {})
        out[name] = entry
    return out


def _strings(table: SampleTable, name: str, rows: np.ndarray) -> list[str]:
    values = table.columns[name]
    if _numeric_array(values):
        return [f"{v:g}" for v in values[rows]]
    return [str(values[int(i)]) for i in rows]


@dataclass
class CovariateEncoder:
    """Covariate columns -> float features, with statistics from the training rows only.

    ``specs``: one dict per covariate: ``{"name", "kind": "numeric", "mean", "std", "missing"}``,
    ``{"name", "kind": "binary", "mean", "missing"}`` (a 0/1 column, kept 0/1; ``mean`` imputes) or
    ``{"name", "kind": "categorical", "levels": [...], "missing", "fold"}`` (``fold``: a value matches its
    level whatever its case and surrounding spaces, :func:`as_levels`); ``missing`` says whether a
    ``<name>_missing`` indicator column follows. Feature order: per covariate, its value (numeric,
    binary) or one column per level (``name=level``), then its indicator.
    """

    specs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def fit(cls, table: SampleTable, names: Sequence[str], train_rows: np.ndarray,
            categorical: Sequence[str] = ()) -> CovariateEncoder:
        train_rows = np.asarray(train_rows, dtype=np.int64)
        specs = []
        for raw in names:
            name = table.column(raw)
            kind = column_kind(table, name, categorical)
            check_not_date(table, name, kind)
            # Whether an indicator exists is decided from every row (a pattern, not a statistic),
            # so the feature layout is the same for every split.
            values_all = table.columns[name]
            has_missing = False if _numeric_array(values_all) else any(is_missing(v) for v in values_all)
            if kind == "numeric":
                values = numeric_values(table, name)[train_rows]
                values = values[np.isfinite(values)]
                if len(values) == 0:
                    raise UserError(f"{table.path}: covariate {name!r} has no value in the training split")
                mean, std = float(values.mean()), float(values.std())
                if set(np.unique(values).tolist()) <= {0.0, 1.0}:
                    specs.append({"name": name, "kind": "binary", "mean": mean, "missing": has_missing})
                else:
                    specs.append({"name": name, "kind": kind, "mean": mean, "std": std if std > 0 else 1.0,
                                  "missing": has_missing})
            else:
                # the training split's levels, each named as the whole column spells it most (spelling_note's names)
                trained = {level_key(v) for v in _strings(table, name, train_rows) if not is_missing(v)}
                levels = sorted(level for level in merged_levels(_strings(table, name, np.arange(len(table))))
                                if level_key(level) in trained)
                if not levels:
                    raise UserError(f"{table.path}: covariate {name!r} has no value in the training split")
                specs.append({"name": name, "kind": kind, "levels": levels, "missing": has_missing, "fold": True})
        return cls(specs)

    @property
    def feature_names(self) -> list[str]:
        out = []
        for s in self.specs:
            out += [f"{s['name']}={level}" for level in s["levels"]] if s["kind"] == "categorical" else [s["name"]]
            if s["missing"]:
                out.append(f"{s['name']}_missing")
        return out

    def layout(self) -> list[tuple[dict[str, Any], list[int], int | None]]:
        """Per covariate: (its spec, its value columns in the feature matrix, its missing-indicator column or None)."""
        out, at = [], 0
        for s in self.specs:
            width = len(s["levels"]) if s["kind"] == "categorical" else 1
            out.append((s, list(range(at, at + width)), at + width if s["missing"] else None))
            at += width + bool(s["missing"])
        return out

    def transform(self, table: SampleTable, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 (len(rows), F): standardised numbers, 0/1 indicators, one-hot levels (an unseen level:
        all zero), missing indicators."""
        rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
        parts = []
        for s in self.specs:
            name = table.column(s["name"])
            if s["kind"] in ("numeric", "binary"):
                check_numeric(table, name)
                values = numeric_values(table, name)[rows]
                missing = ~np.isfinite(values)
                z = values if s["kind"] == "binary" else (values - s["mean"]) / s["std"]
                fill = s["mean"] if s["kind"] == "binary" else 0.0  # the training mean, in feature units
                parts.append(np.where(missing, fill, z)[:, None])
            else:
                raw = as_levels(s, _strings(table, name, rows))
                missing = np.asarray([is_missing(v) for v in raw], dtype=bool)
                parts.append(np.asarray([[float(v == level) for level in s["levels"]] for v in raw]).reshape(len(rows), -1))
            if s["missing"]:
                parts.append(missing.astype(np.float64)[:, None])
        if not parts:
            return np.zeros((len(rows), 0), dtype=np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        return {"specs": self.specs, "features": self.feature_names}

    @classmethod
    def from_dict(cls, data: dict) -> CovariateEncoder:
        return cls([dict(s) for s in data["specs"]])


def _raw(x: float) -> str:
    return f"{round(x, 6) + 0.0:g}"  # + 0.0 turns -0.0 into 0


def check_covariate_values(table: SampleTable, encoder: CovariateEncoder, seen: dict | None,
                           where: Callable[[int], str], *, extrapolate: bool = False,
                           marks: dict[int, list[str]] | None = None) -> None:
    """The one check of new rows against what training held (``covfuse predict``), each bad row named by
    ``where(i)``: a covariate column the table lacks, a word in a numeric column or a missing value where
    training had no missing indicator are refused; a value the training split never held (a level the
    one-hot never saw, a number outside the training range or set of values) is noted in ``marks`` under
    its row (a table: one bad row must not cost the others), else refused unless ``extrapolate``.

    ``seen`` is the module's ``covariate_values``: per *encoded* feature, the training split's set of
    values or its min..max. Numbers are compared after encoding (the float32 arithmetic of
    :meth:`CovariateEncoder.transform`) and shown in raw units.
    """
    columns = [table.column(spec["name"]) for spec in encoder.specs]  # a missing column: the reader's line
    for spec, name in zip(encoder.specs, columns):
        info = (seen or {}).get(spec["name"]) or {}
        if spec["kind"] == "numeric" and "values" in info:  # a run from before numbers kept their range
            info = {"min": min(info["values"]), "max": max(info["values"])}
        mean, std = (spec["mean"], spec["std"]) if spec["kind"] == "numeric" else (0.0, 1.0)
        for i, value in enumerate(table.columns[name]):
            value = str(value)
            if is_missing(value):
                if not spec["missing"]:
                    raise UserError(f"{where(i)}: {name} is missing, but the run never saw it missing (it has no "
                                    f"{name}_missing indicator); give a value")
                continue
            if spec["kind"] == "categorical":
                if as_levels(spec, [value])[0] not in spec["levels"]:
                    _unseen(i, marks, extrapolate, f"{name}={value} (unseen level)",
                            f"{where(i)}: {name}={value} was never seen in training, which had {name} in "
                            f"{{{', '.join(spec['levels'])}}}; give one of those values (or pass --extrapolate to "
                            "predict with no level set, as `covfuse test` encodes an unseen level)")
                continue
            number = parse_number(value)
            if number is None:
                raise UserError(f"{where(i)}: non-numeric value {value!r} for numeric covariate {name!r} "
                                "(the run was trained on numbers; give a number, or leave it empty for missing)")
            z = float(np.float32((number - mean) / std))  # as CovariateEncoder.transform
            if "values" in info and z not in info["values"]:
                # The training table also holds 0 (the imputed mean) when the covariate has missing
                # values; it is accepted (the encoder maps the mean there) but not listed as a choice.
                listed = [_raw(mean + std * v) for v in info["values"] if not (spec["missing"] and v == 0.0)]
                hint = (" (covfuse maps CelebA's -1/1 to 0/1)" if table.format == "celeba" and number == -1
                        and set(listed) <= {"0", "1"} else "")
                _unseen(i, marks, extrapolate, f"{name}={value} (training had {'/'.join(listed)})",
                        f"{where(i)}: {name}={value} was never seen in training, which had {name} in "
                        f"{{{', '.join(listed)}}}{hint}; give one of those values (or pass --extrapolate to predict "
                        "anyway)")
            elif "min" in info and not info["min"] <= z <= info["max"]:
                low, high = _raw(mean + std * info["min"]), _raw(mean + std * info["max"])
                _unseen(i, marks, extrapolate, f"{name}={value} (training range {low}..{high})",
                        f"{where(i)}: {name}={value} lies outside the training range [{low}, {high}]; the model "
                        "would extrapolate (pass --extrapolate to predict anyway)")


def _unseen(row: int, marks: dict[int, list[str]] | None, extrapolate: bool, mark: str, error: str) -> None:
    """A value training never held: noted under its row in ``marks`` (a table), else refused unless ``extrapolate``."""
    if marks is not None:
        marks.setdefault(row, []).append(mark)
    elif not extrapolate:
        raise UserError(error)


# --------------------------------------------------------------------------------- targets
def encode_target(table: SampleTable, name: str, task: str = "classification",
                  classes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(values, classes): class indices as float32 for classification (``classes`` in the given order, or
    the sorted values: numerically when all are numbers), floats for regression. A missing target is an error."""
    name = table.column(name)
    values = table.columns[name]
    if _numeric_array(values) and task != "regression" and not classes:
        found = np.unique(values)
        if len(found) < 2:
            raise UserError(f"{table.path}: the target {name!r} has a single value {found.tolist()}; a classifier "
                            "needs two or more")
        index = np.searchsorted(found, values)
        return index.astype(np.float32), [f"{v:g}" for v in found]
    raw = values if not _numeric_array(values) else [f"{v:g}" for v in values]
    for i, v in enumerate(raw):
        if is_missing(v):
            raise UserError(f"{table.where(i)}: the target {name!r} is missing; drop the row or fill it in")
    if task == "regression":
        for i, v in enumerate(raw):
            if parse_number(v) is None:
                raise UserError(f"{table.where(i)}: the regression target {name!r} must be a number, got {v!r}; "
                                "choose a numeric target, or a classification head (binary, multiclass)")
        return numeric_values(table, name).astype(np.float32), []
    if classes:
        classes = [str(c) for c in classes]
    else:  # spellings differing in case or spaces are one class (merged_levels), as for a covariate
        found = list(merged_levels(raw))
        numeric = all(parse_number(v) is not None for v in found)
        classes = sorted(found, key=(lambda v: float(v)) if numeric else None)
    fold = len({level_key(c) for c in classes}) == len(classes)  # classes given as "M" and "m": exact match
    index = {level_key(c) if fold else c: k for k, c in enumerate(classes)}
    for i, v in enumerate(raw):
        if (level_key(v) if fold else v) not in index:
            raise UserError(f"{table.where(i)}: target value {v!r} is not one of data.classes {classes}")
    if len(classes) < 2:
        raise UserError(f"{table.path}: the target {name!r} has a single value {classes}; a classifier needs two or more")
    return np.asarray([index[level_key(v) if fold else v] for v in raw], dtype=np.float32), list(classes)


# ---------------------------------------------------------------------------------- splits
def subject_split(table: SampleTable, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> np.ndarray:
    """The table's split (a ``split`` column, CelebA's partition), or (without one) subjects shuffled by
    ``seed`` into train/valid/test (70/15/15 of the subjects)."""
    if table.has_split:
        return table.split.copy()
    subjects = np.unique(table.subjects.astype(str))
    if len(subjects) < 3:
        raise UserError(f"{table.path}: {len(subjects)} subject(s); a train/valid/test split needs at least 3")
    order = np.random.default_rng(seed).permutation(len(subjects))
    n_train = max(1, int(round(fractions[0] * len(subjects))))
    n_valid = max(1, int(round(fractions[1] * len(subjects))))
    n_train = min(n_train, len(subjects) - n_valid - 1)
    code = np.empty(len(subjects), dtype=np.int8)
    code[order[:n_train]], code[order[n_train:n_train + n_valid]], code[order[n_train + n_valid:]] = 0, 1, 2
    lookup = dict(zip(subjects.tolist(), code.tolist()))
    return np.asarray([lookup[s] for s in table.subjects.astype(str)], dtype=np.int8)


def subject_folds(table: SampleTable, split: np.ndarray, k: int, seed: int,
                  stratify: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train rows, validation rows) over train+valid, grouped by subject (sklearn's
    StratifiedGroupKFold when ``stratify`` is given, else GroupKFold, both shuffled by ``seed``); test is never used."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    pool = np.flatnonzero(split <= 1) if (split >= 0).all() else np.arange(len(split))
    groups = table.subjects[pool]
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise UserError(f"k-fold needs k >= 2 folds, got {k!r}")
    noun = "identities" if table.format == "celeba" else "subjects"
    if len(np.unique(groups)) < k:
        raise UserError(f"{table.root if table.format == 'celeba' else table.path}: only {len(np.unique(groups))} "
                        f"{noun} in train+valid; cannot make {k} {noun[:-3] + 'y' if noun == 'identities' else 'subject'}-grouped folds")
    if stratify is not None:
        splitter = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=int(seed))
        parts = splitter.split(np.zeros(len(pool)), np.asarray(stratify)[pool], groups)
    else:
        parts = GroupKFold(n_splits=int(k), shuffle=True, random_state=int(seed)).split(np.zeros(len(pool)), groups=groups)
    return [(pool[np.sort(tr)].astype(np.int64), pool[np.sort(va)].astype(np.int64)) for tr, va in parts]
