"""Brain volumes as a dataset: a manifest CSV (subject, NIfTI path, target, covariates, split), validated up front.

The manifest is the dataset (docs/volumes.md): one row per volume, ``subject`` and ``path`` (a
``.nii``/``.nii.gz`` file, relative to the manifest's folder) required, ``split`` (train / valid /
test) and ``session`` optional, any other column usable as target or covariate by name. Every
problem is a :class:`~covfuse.errors.UserError` naming the manifest and its line.

Covariates become a float matrix with :class:`CovariateEncoder`: numeric columns standardised with
the *training* rows' mean and sd, categorical ones one-hot over the training levels, and a missing
value imputed (mean / no level) with a 0/1 ``<name>_missing`` indicator column, as DAFT does.
The encoder is saved with the run (``data_state.json``) and reused by test and predict.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from covfuse.errors import UserError, suggest

REQUIRED = ("subject", "path")
RESERVED = ("subject", "path", "split", "session")
SPLIT_NAMES = ("train", "valid", "test")
MISSING = {"", "na", "nan", "n/a", "none", "null", "?"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING


def parse_number(value: str) -> float | None:
    """The finite number a cell holds, or None (a word, empty, NaN, inf)."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass
class Manifest:
    """A parsed manifest: raw string columns plus the resolved files, subjects and splits.

    ``split`` is int8 per row (0 train, 1 valid, 2 test, -1 not given); ``line[i]`` is row i's
    1-based line in the CSV (the header is line 1), for error messages.
    """

    path: Path
    header: list[str]
    columns: dict[str, list[str]]
    files: list[Path]
    subjects: np.ndarray
    split: np.ndarray
    line: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    @property
    def root(self) -> Path:
        return self.path.parent

    def where(self, row: int) -> str:
        return f"{self.path}, line {int(self.line[row])} (subject {self.subjects[row]})"

    def column(self, name: str) -> str:
        """The header's spelling of ``name`` (case-insensitive); a misspelt name is a UserError."""
        lower = {h.lower(): h for h in self.header}
        if name.lower() not in lower:
            raise UserError(f"{self.path}: no column {name!r}{suggest(name, self.header)}; columns: {', '.join(self.header)}")
        found = lower[name.lower()]
        if found in RESERVED and found != "session":
            raise UserError(f"{self.path}: column {found!r} is reserved ({', '.join(RESERVED)}); it cannot be a target or covariate")
        return found

    @property
    def has_split(self) -> bool:
        return bool((self.split >= 0).all())


def read_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Parse and validate a manifest CSV (see the module docstring); volumes are not opened here."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (a CSV with columns subject, path, target and covariates)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            body = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable CSV ({exc})") from None
    if not header or header == [""]:
        raise UserError(f"{path}: empty manifest; the first line must name the columns (subject, path, ...)")
    lower = [h.lower() for h in header]
    dupes = sorted({h for h in lower if lower.count(h) > 1})
    if dupes:
        raise UserError(f"{path}, line 1: column {dupes[0]!r} appears twice")
    for name in REQUIRED:
        if name not in lower:
            raise UserError(f"{path}, line 1: no {name!r} column{suggest(name, header)}; required: {', '.join(REQUIRED)}")
    header = [h.lower() if h.lower() in RESERVED else h for h in header]
    body = [(n, row) for n, row in body if any(cell.strip() for cell in row)]  # blank lines
    if not body:
        raise UserError(f"{path}: the manifest lists no volumes")
    columns: dict[str, list[str]] = {h: [] for h in header}
    lines = []
    for n, row in body:
        if len(row) != len(header):
            raise UserError(f"{path}, line {n}: {len(row)} fields, the header has {len(header)}")
        for h, cell in zip(header, row):
            columns[h].append(cell.strip())
        lines.append(n)
    line = np.asarray(lines, dtype=np.int64)
    subjects = np.asarray(columns["subject"], dtype=object)
    files = []
    for i, (rel, subject) in enumerate(zip(columns["path"], subjects)):
        where = f"{path}, line {line[i]}"
        if not subject:
            raise UserError(f"{where}: empty subject")
        if not rel:
            raise UserError(f"{where}: empty path")
        if not rel.lower().endswith(NIFTI_SUFFIXES):
            raise UserError(f"{where}: {rel!r} is not a NIfTI file (.nii or .nii.gz)")
        file = (path.parent / rel) if not Path(rel).is_absolute() else Path(rel)
        if check_files and not file.is_file():
            raise UserError(f"{where}: volume file {file} not found (paths are relative to the manifest's folder)")
        files.append(file)
    split = np.full(len(files), -1, dtype=np.int8)
    if "split" in columns:
        for i, value in enumerate(columns["split"]):
            v = value.lower()
            v = {"val": "valid", "validation": "valid"}.get(v, v)
            if v not in SPLIT_NAMES:
                raise UserError(f"{path}, line {line[i]}: split {value!r} is not one of {', '.join(SPLIT_NAMES)}")
            split[i] = SPLIT_NAMES.index(v)
        first: dict[str, int] = {}
        for i, subject in enumerate(subjects):
            j = first.setdefault(subject, i)
            if split[j] != split[i]:
                raise UserError(f"{path}, line {line[i]}: subject {subject} is in split {SPLIT_NAMES[split[i]]} but line "
                                f"{line[j]} puts it in {SPLIT_NAMES[split[j]]}; a subject must stay in one split")
    return Manifest(path, header, columns, files, subjects, split, line)


def manifest_from_files(files: Sequence[str | Path], values: dict[str, str]) -> Manifest:
    """A manifest for volume files named one by one (``covfuse predict RUN A.nii.gz ...``), each with the
    same raw covariate ``values``; the subject is the file name without its NIfTI suffix."""
    files = [Path(f) for f in files]
    for f in files:
        if not f.name.lower().endswith(NIFTI_SUFFIXES):
            raise UserError(f"{f}: not a NIfTI file (.nii or .nii.gz); give the volumes of a volume run")
        if not f.is_file():
            raise UserError(f"{f}: volume file not found")
    subjects = [f.name[: -len(".nii.gz")] if f.name.lower().endswith(".nii.gz") else f.name[: -len(".nii")] for f in files]
    header = ["subject", "path", *values]
    columns = {"subject": subjects, "path": [str(f) for f in files], **{k: [v] * len(files) for k, v in values.items()}}
    return Manifest(Path("--covariates"), header, columns, files, np.asarray(subjects, dtype=object),
                    np.full(len(files), -1, dtype=np.int8), np.arange(1, len(files) + 1, dtype=np.int64))


# ------------------------------------------------------------------------------ column types
def column_kind(manifest: Manifest, name: str, categorical: Sequence[str] = ()) -> str:
    """"numeric" or "categorical": declared categorical, else numeric unless no value parses as a number.

    A column where some values are numbers and others are not is an error naming the first bad row.
    """
    name = manifest.column(name)
    values = manifest.columns[name]
    if name.lower() in {c.lower() for c in categorical}:
        return "categorical"
    present = [(i, v) for i, v in enumerate(values) if not is_missing(v)]
    numbers = [(i, v) for i, v in present if parse_number(v) is not None]
    if not numbers and present:
        return "categorical"
    for i, v in present:
        if parse_number(v) is None:
            raise UserError(f"{manifest.where(i)}: non-numeric value {v!r} in numeric column {name!r} "
                            f"(fix the value, leave it empty for missing, or declare {name!r} in data.categorical)")
    return "numeric"


def check_numeric(manifest: Manifest, name: str) -> None:
    """Every present value of ``name`` is a finite number (a column known to be numeric, e.g. from a
    fitted encoder: unlike :func:`column_kind`, a column of words is an error here, not a category)."""
    for i, v in enumerate(manifest.columns[name]):
        if not is_missing(v) and parse_number(v) is None:
            raise UserError(f"{manifest.where(i)}: non-numeric value {v!r} in numeric column {name!r} "
                            "(the run was trained on numbers; fix the value, or leave it empty for missing)")


def numeric_values(manifest: Manifest, name: str) -> np.ndarray:
    """float64 per row, NaN where missing (call :func:`column_kind` first to validate)."""
    return np.asarray([np.nan if is_missing(v) else float(v) for v in manifest.columns[name]], dtype=np.float64)


@dataclass
class CovariateEncoder:
    """Covariate columns -> float features, with statistics from the training rows only.

    ``specs``: one dict per covariate: ``{"name", "kind": "numeric", "mean", "std", "missing"}`` or
    ``{"name", "kind": "categorical", "levels": [...], "missing"}``; ``missing`` says whether a
    ``<name>_missing`` indicator column follows. Feature order: per covariate, its value (numeric) or
    one column per level (``name=level``), then its indicator.
    """

    specs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def fit(cls, manifest: Manifest, names: Sequence[str], train_rows: np.ndarray,
            categorical: Sequence[str] = ()) -> CovariateEncoder:
        train_rows = np.asarray(train_rows, dtype=np.int64)
        specs = []
        for raw in names:
            name = manifest.column(raw)
            kind = column_kind(manifest, name, categorical)
            # Whether an indicator exists is decided from every row (a pattern, not a statistic),
            # so the feature layout is the same for every split.
            has_missing = any(is_missing(v) for v in manifest.columns[name])
            if kind == "numeric":
                values = numeric_values(manifest, name)[train_rows]
                values = values[np.isfinite(values)]
                if len(values) == 0:
                    raise UserError(f"{manifest.path}: covariate {name!r} has no value in the training split")
                mean, std = float(values.mean()), float(values.std())
                specs.append({"name": name, "kind": kind, "mean": mean, "std": std if std > 0 else 1.0,
                              "missing": has_missing})
            else:
                levels = sorted({manifest.columns[name][i] for i in train_rows if not is_missing(manifest.columns[name][i])})
                if not levels:
                    raise UserError(f"{manifest.path}: covariate {name!r} has no value in the training split")
                specs.append({"name": name, "kind": kind, "levels": levels, "missing": has_missing})
        return cls(specs)

    @property
    def feature_names(self) -> list[str]:
        out = []
        for s in self.specs:
            out += [s["name"]] if s["kind"] == "numeric" else [f"{s['name']}={level}" for level in s["levels"]]
            if s["missing"]:
                out.append(f"{s['name']}_missing")
        return out

    def transform(self, manifest: Manifest, rows: np.ndarray | None = None) -> np.ndarray:
        """float32 (len(rows), F): standardised numbers, one-hot levels (an unseen level: all zero), indicators."""
        rows = np.arange(len(manifest)) if rows is None else np.asarray(rows, dtype=np.int64)
        parts = []
        for s in self.specs:
            name = manifest.column(s["name"])
            raw = [manifest.columns[name][i] for i in rows]
            missing = np.asarray([is_missing(v) for v in raw])
            if s["kind"] == "numeric":
                check_numeric(manifest, name)
                values = numeric_values(manifest, name)[rows]
                z = (values - s["mean"]) / s["std"]
                parts.append(np.where(missing, 0.0, z)[:, None])  # imputed with the training mean
            else:
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


# --------------------------------------------------------------------------------- targets
def encode_target(manifest: Manifest, name: str, task: str = "classification",
                  classes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(values, classes): class indices as float32 for classification (``classes`` in the given order, or
    the sorted values: numerically when all are numbers), floats for regression. A missing target is an error."""
    name = manifest.column(name)
    raw = manifest.columns[name]
    for i, v in enumerate(raw):
        if is_missing(v):
            raise UserError(f"{manifest.where(i)}: the target {name!r} is missing; drop the row or fill it in")
    if task == "regression":
        for i, v in enumerate(raw):
            if parse_number(v) is None:
                raise UserError(f"{manifest.where(i)}: the regression target {name!r} must be a number, got {v!r}; "
                                "choose a numeric target, or a classification head (binary, multiclass)")
        return numeric_values(manifest, name).astype(np.float32), []
    if classes:
        classes = [str(c) for c in classes]
        for i, v in enumerate(raw):
            if v not in classes:
                raise UserError(f"{manifest.where(i)}: target value {v!r} is not one of data.classes {classes}")
    else:
        found = set(raw)
        numeric = all(parse_number(v) is not None for v in found)
        classes = sorted(found, key=(lambda v: float(v)) if numeric else None)
    if len(classes) < 2:
        raise UserError(f"{manifest.path}: the target {name!r} has a single value {classes}; a classifier needs two or more")
    index = {c: k for k, c in enumerate(classes)}
    return np.asarray([index[v] for v in raw], dtype=np.float32), list(classes)


# ---------------------------------------------------------------------------------- splits
def subject_split(manifest: Manifest, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> np.ndarray:
    """The manifest's ``split`` column, or (without one) subjects shuffled by ``seed`` into train/valid/test."""
    if "split" in manifest.columns:
        return manifest.split.copy()
    subjects = np.unique(manifest.subjects.astype(str))
    if len(subjects) < 3:
        raise UserError(f"{manifest.path}: {len(subjects)} subject(s); a train/valid/test split needs at least 3")
    order = np.random.default_rng(seed).permutation(len(subjects))
    n_train = max(1, int(round(fractions[0] * len(subjects))))
    n_valid = max(1, int(round(fractions[1] * len(subjects))))
    n_train = min(n_train, len(subjects) - n_valid - 1)
    code = np.empty(len(subjects), dtype=np.int8)
    code[order[:n_train]], code[order[n_train:n_train + n_valid]], code[order[n_train + n_valid:]] = 0, 1, 2
    lookup = dict(zip(subjects.tolist(), code.tolist()))
    return np.asarray([lookup[s] for s in manifest.subjects.astype(str)], dtype=np.int8)


def subject_folds(manifest: Manifest, split: np.ndarray, k: int, seed: int,
                  stratify: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train rows, validation rows) over train+valid, grouped by subject (sklearn's
    StratifiedGroupKFold when ``stratify`` is given, GroupKFold-like shuffled otherwise); test is never used."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    pool = np.flatnonzero(split <= 1) if (split >= 0).all() else np.arange(len(split))
    groups = manifest.subjects[pool].astype(str)
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise UserError(f"k-fold needs k >= 2 folds, got {k!r}")
    if len(np.unique(groups)) < k:
        raise UserError(f"{manifest.path}: only {len(np.unique(groups))} subjects in train+valid; cannot make {k} subject-grouped folds")
    if stratify is not None:
        splitter = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=int(seed))
        parts = splitter.split(np.zeros(len(pool)), np.asarray(stratify)[pool], groups)
    else:
        parts = GroupKFold(n_splits=int(k), shuffle=True, random_state=int(seed)).split(np.zeros(len(pool)), groups=groups)
    return [(pool[np.sort(tr)].astype(np.int64), pool[np.sort(va)].astype(np.int64)) for tr, va in parts]
