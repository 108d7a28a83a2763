"""A BIDS dataset as a sample table: participants.tsv gives subjects and covariates, sub-*/[ses-*/]anat/ the volumes.

Read by hand, following the BIDS specification (1.10, "Common principles" and "Modality agnostic
files"), rather than with pybids: covfuse needs one file per (subject, session, run) and two TSV
tables, while pybids brings 12 dependencies (SQLAlchemy, formulaic, bids-validator, bidsschematools
...) and indexes every file of the dataset into a database before the first query. The conventions
used, and nothing else:

- a folder holding ``dataset_description.json`` is a BIDS dataset;
- ``participants.tsv``: tab-separated, UTF-8, a header line, first column ``participant_id``
  (``sub-<label>``), ``n/a`` for a missing value; ``participants.json`` describes its columns
  (``Levels`` for a categorical column, ``Units``, ``Description``);
- images: ``sub-<label>/[ses-<label>/]<datatype>/sub-<label>[_ses-<label>][_<key>-<value>...]_<suffix>.nii[.gz]``,
  so a subject with sessions gives one row per session (and per run); beyond the specification, an entry
  of that name without a suffix may be a folder of DICOM slices (a series not yet converted, read as the
  manifest reads one: docs/volumes.md);
- ``sub-<label>/sub-<label>_sessions.tsv`` (first column ``session_id``, ``ses-<label>``): per-session
  columns, joined to that session's rows (for a column also in participants.tsv, the session's value wins);
- folders other than ``sub-*`` (``derivatives/``, ``sourcedata/``, ``code/``) are not read.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covfuse.data.readers.manifest import NIFTI_SUFFIXES
from covfuse.data.table import RESERVED, SampleTable
from covfuse.errors import UserError, suggest

LABEL = re.compile(r"^[A-Za-z0-9]+$")


@dataclass
class BidsManifest(SampleTable):
    """A :class:`~covfuse.data.table.SampleTable` with what ``participants.json`` says about its columns.

    ``levels[column]``: the declared ``Levels`` (value -> description); a column with levels is
    categorical even when its values look like numbers (``categorical`` lists them). ``units``:
    ``Units`` per column. Rows point into participants.tsv (``path``/``line``) for error messages.
    """

    levels: dict[str, dict[str, str]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)


def is_bids(root: str | Path) -> bool:
    """A folder with ``dataset_description.json`` (the one file BIDS requires at its root)."""
    root = Path(root)
    return root.is_dir() and (root / "dataset_description.json").is_file()


def read_tsv(path: Path, id_column: str, prefix: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, cells)]) of a BIDS TSV whose first column is ``id_column`` holding ``<prefix>-<label>``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = [h.strip() for h in next(reader, [])]
            body = [(reader.line_num, [c.strip() for c in row]) for row in reader if any(c.strip() for c in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable tab-separated file ({exc})") from None
    if not header or header[0] != id_column:
        found = repr(header[0]) if header and header[0] else "nothing"
        raise UserError(f"{path}, line 1: the first column must be {id_column!r} (BIDS), found {found}; "
                        "columns are separated by tabs")
    lower = [h.lower() for h in header]
    for h in header[1:]:
        if lower.count(h.lower()) > 1:
            raise UserError(f"{path}, line 1: column {h!r} appears twice")
        if h.lower() in RESERVED:
            raise UserError(f"{path}, line 1: column {h!r} is reserved by covfuse ({', '.join(RESERVED)}); rename it")
    seen: dict[str, int] = {}
    for n, row in body:
        if len(row) != len(header):
            raise UserError(f"{path}, line {n}: {len(row)} tab-separated fields, the header has {len(header)}")
        ident = row[0]
        if not ident.startswith(f"{prefix}-") or not LABEL.match(ident[len(prefix) + 1:]):
            raise UserError(f"{path}, line {n}: {id_column} {ident!r} is not {prefix}-<label> (letters and digits)")
        if ident in seen:
            raise UserError(f"{path}, line {n}: {ident} is listed twice (first on line {seen[ident]})")
        seen[ident] = n
    return header, body


def _sidecar(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with one entry per column")
    return data


def _images(root: Path, subject: str, session: str | None, datatype: str, suffix: str) -> list[Path]:
    """The ``*_<suffix>.nii[.gz]`` files (and ``*_<suffix>/`` DICOM series folders) of one subject (and session),
    their names checked against the folders."""
    folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / datatype
    if not folder.is_dir():
        return []
    stem = f"sub-{subject}_" + (f"ses-{session}_" if session else "")
    found = []
    for path in sorted(folder.iterdir()):
        name = path.name
        ext = "" if path.is_dir() else next((e for e in NIFTI_SUFFIXES[::-1] if name.endswith(e)), None)
        if ext is None or not name[: len(name) - len(ext)].endswith(f"_{suffix}"):
            continue
        entities = name[: len(name) - len(ext) - len(suffix) - 1].split("_")
        if not name.startswith(stem) or not all(re.match(r"^[a-zA-Z]+-[A-Za-z0-9]+$", e) for e in entities):
            raise UserError(f"{path}: the name does not follow BIDS in this folder "
                            f"({stem}[<key>-<value>_...]{suffix}{ext}); rename it")
        found.append(path)
    return found


def _sessions(root: Path, subject: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The subject's session labels on disk, and the columns of its sessions.tsv per session label."""
    folder = root / f"sub-{subject}"
    labels = sorted(p.name[4:] for p in folder.iterdir() if p.is_dir() and p.name.startswith("ses-"))
    table = folder / f"sub-{subject}_sessions.tsv"
    if not table.is_file():
        return labels, {}
    header, body = read_tsv(table, "session_id", "ses")
    return labels, {row[0][4:]: dict(zip(header[1:], row[1:])) for _, row in body}


def read_bids(root: str | Path, *, suffix: str = "T1w", datatype: str = "anat") -> BidsManifest:
    """One row per ``<suffix>`` image (default: T1-weighted anatomy): ``subject`` (the participant label,
    without ``sub-``), ``path`` (relative to ``root``), ``session`` when the dataset has sessions, then the
    participants.tsv and sessions.tsv columns. ``split`` is -1 everywhere: BIDS has no split column, so
    splits come from a seed. Every problem is a :class:`UserError` naming the file (and line)."""
    root = Path(root)
    if not is_bids(root):
        raise UserError(f"{root}: not a BIDS dataset (no dataset_description.json in it)")
    _sidecar(root / "dataset_description.json")
    table = root / "participants.tsv"
    if not table.is_file():
        raise UserError(f"{table}: not found; a BIDS dataset lists its subjects there "
                        "(a tab-separated table: participant_id, then one column per covariate)")
    header, body = read_tsv(table, "participant_id", "sub")
    if not body:
        raise UserError(f"{table}: lists no participants")
    listed = {row[0]: n for n, row in body}
    for folder in sorted(root.glob("sub-*")):
        if folder.is_dir() and folder.name not in listed:
            raise UserError(f"{table}: subject folder {folder.name}/ is not listed; add a line for it "
                            f"(participant_id {folder.name}, n/a where a value is unknown){suggest(folder.name, listed)}")
    rows: list[dict[str, str]] = []
    files, lines = [], []
    session_columns: list[str] = []
    for n, row in body:
        subject = row[0][4:]
        labels, per_session = _sessions(root, subject) if (root / row[0]).is_dir() else ([], {})
        for extra in (c for cols in per_session.values() for c in cols):
            if extra not in session_columns:
                session_columns.append(extra)
        found = [(None, p) for p in _images(root, subject, None, datatype, suffix)]
        found += [(ses, p) for ses in labels for p in _images(root, subject, ses, datatype, suffix)]
        if not found:
            raise UserError(f"{table}, line {n}: {row[0]} has no image {row[0]}/[ses-<label>/]{datatype}/"
                            f"{row[0]}[_ses-<label>]_..._{suffix}.nii[.gz] (or a folder of that name holding its "
                            "DICOM slices); add it or remove the line")
        for session, path in found:
            values = {"subject": subject, "path": path.relative_to(root).as_posix(), "session": session or "n/a"}
            values.update(zip(header[1:], row[1:]))
            values.update(per_session.get(session or "", {}))
            rows.append(values)
            files.append(path)
            lines.append(n)
    has_sessions = any(r["session"] != "n/a" for r in rows)
    columns_order = ["subject", "path", *(["session"] if has_sessions else []), *header[1:]]
    columns_order += [c for c in session_columns if c not in columns_order]
    columns = {c: [r.get(c, "n/a") for r in rows] for c in columns_order}
    meta = _sidecar(root / "participants.json")
    described = {k: v for k, v in meta.items() if isinstance(v, dict) and k in columns}
    levels = {k: {str(a): str(b) for a, b in v["Levels"].items()} for k, v in described.items()
              if isinstance(v.get("Levels"), dict)}
    units = {k: str(v["Units"]) for k, v in described.items() if "Units" in v}
    return BidsManifest(table, columns_order, columns, files, np.asarray(columns["subject"], dtype=object),
                        np.full(len(files), -1, dtype=np.int8), np.asarray(lines, dtype=np.int64), kind="volume",
                        format="bids", categorical=tuple(levels), sources=(table,), root_dir=root,
                        levels=levels, units=units)

