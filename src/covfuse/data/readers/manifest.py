"""Manifest reader: a CSV/TSV with one row per image or volume file (``subject``, ``path``, columns).

The manifest is the dataset (docs/data.md, "Your own data"): ``subject`` and ``path`` (relative to
the manifest's folder) are required, ``split`` (train / valid / test) and ``session`` optional, any
other column usable as target or covariate by name. ``path`` names volumes (NIfTI ``.nii``/``.nii.gz``,
FreeSurfer ``.mgz``/``.mgh``, Analyze ``.hdr``/``.img``, a folder of DICOM slices, a multi-frame DICOM
file) or 2D image files (PNG, JPEG, TIFF, DICOM, BMP); one manifest holds one kind (:func:`table_kind`).
Every problem is a :class:`~covfuse.errors.UserError` naming the manifest and its line.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from covfuse.data.decoders.dicom_volumes import holds_volume
from covfuse.data.decoders.nibabel_volumes import SUFFIXES as VOLUME_SUFFIXES
from covfuse.data.table import RESERVED, SPLIT_NAMES, SampleTable
from covfuse.errors import UserError, suggest

REQUIRED = ("subject", "path")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", *DICOM_SUFFIXES, ".bmp")
MANIFEST_SUFFIXES = (".csv", ".tsv")
KINDS = (f"neither a volume ({', '.join(VOLUME_SUFFIXES[:6])}, or a folder of DICOM slices) nor a 2D image "
         f"({', '.join(IMAGE_SUFFIXES)}, or DICOM without a suffix)")


def file_kind(name: str, file: Path | None = None) -> str | None:
    """"volume", "image", "dicom" (a 2D image or a multi-frame volume: the table decides, :func:`table_kind`)
    or None (not a file type covfuse reads), from the name; a folder is a volume (a DICOM series), and a
    name without a known suffix is DICOM when the file carries DICOM's ``DICM`` marker (PACS exports
    often name files ``IM0001`` or by UID)."""
    lower = name.lower().rstrip("/\\")
    if lower.endswith(VOLUME_SUFFIXES) or (file is not None and file.is_dir()):
        return "volume"
    if lower.endswith(DICOM_SUFFIXES) or (file is not None and not lower.endswith(IMAGE_SUFFIXES) and is_dicom(file)):
        return "dicom"
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def table_kind(kinds: list[str], files: list[Path]) -> tuple[str, int | None]:
    """The kind of a table whose rows have ``kinds`` (:func:`file_kind`): the first row's that says it (a volume
    or a 2D image); DICOM rows follow it, and a table of DICOM files only is a volume table when its first file
    is a multi-frame volume. Also the first row of the other kind (None if none): one table holds one kind."""
    decided = next((k for k in kinds if k != "dicom"), None)
    if decided is None:
        return ("volume" if files and holds_volume(files[0]) else "image"), None
    other = "image" if decided == "volume" else "volume"
    return decided, next((i for i, k in enumerate(kinds) if k == other), None)


def is_dicom(file: Path) -> bool:
    """Whether ``file`` starts with DICOM Part 10's 128-byte preamble and ``DICM``."""
    try:
        with open(file, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


DELIMITERS = (",", ";", "\t")


def sniff_delimiter(header: str, path: Path) -> str:
    """The header line's delimiter: whichever of ``,`` ``;`` and tab it holds most (a European spreadsheet
    saves CSV with ``;``; a .tsv may hold commas in its names), else by suffix. By hand rather than
    csv.Sniffer, which guesses from character frequencies over a few lines and picks letters or
    spaces on a short header."""
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: (counts[d], d == ("\t" if path.suffix.lower() == ".tsv" else ",")))
    if counts[best]:
        return best
    return "\t" if path.suffix.lower() == ".tsv" else ","


def row_ids(path: Path, columns: dict[str, list[str]], line: np.ndarray) -> list[str]:
    """Each row's id in predictions.csv: the manifest's own ``id`` column when it has one (unique, not
    empty), else the ``path``, with ``#L<line>`` added where one file sits in several rows."""
    names = {h.lower(): h for h in columns}
    if "id" in names:
        ids = columns[names["id"]]
        first: dict[str, int] = {}
        for i, value in enumerate(ids):
            if not value:
                raise UserError(f"{path}, line {line[i]}: empty id; the id column names each row once")
            j = first.setdefault(value, i)
            if j != i:
                raise UserError(f"{path}, line {line[i]}: id {value!r} is also on line {line[j]}; the id column names "
                                "each row once (drop the column to use path and line)")
        return list(ids)
    paths = columns["path"]
    seen: dict[str, int] = {}
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
    return [p if seen[p] == 1 else f"{p}#L{n}" for p, n in zip(paths, line)]


def read_manifest(path: str | Path, *, check_files: bool = True) -> SampleTable:
    """Parse and validate a manifest (see the module docstring); files are not opened here."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (a CSV with columns subject, path, target and covariates)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            delimiter = sniff_delimiter(f.readline(), path)
            f.seek(0)
            reader = csv.reader(f, delimiter=delimiter)
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
        raise UserError(f"{path}: the manifest lists no files")
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
    files, kinds, decided = [], [], None
    for i, (rel, subject) in enumerate(zip(columns["path"], subjects)):
        where = f"{path}, line {line[i]}"
        if not subject:
            raise UserError(f"{where}: empty subject")
        if not rel:
            raise UserError(f"{where}: empty path")
        file = (path.parent / rel) if not Path(rel).is_absolute() else Path(rel)
        kind = file_kind(rel, file)
        if kind is None:
            missing = "" if file.exists() else f" (and {file} does not exist)"
            raise UserError(f"{where}: {rel!r} is {KINDS}{missing}")
        kinds.append(kind)
        if kind != "dicom":  # DICOM rows follow the table (table_kind)
            decided = decided or kind
            if kind != decided:
                raise UserError(f"{where}: {rel!r} is a {kind} but earlier rows name "
                                f"{'volumes' if decided == 'volume' else '2D images'}; one manifest holds one kind of file")
        if check_files and not file.exists():
            noun = "volume" if kind == "volume" else "image"
            raise UserError(f"{where}: {noun} file {file} not found (paths are relative to the manifest's folder)")
        files.append(file)
    kind, _ = table_kind(kinds, files)
    split = np.full(len(files), -1, dtype=np.int8)
    if "split" in columns:
        for i, value in enumerate(columns["split"]):
            v = value.lower()
            v = {"val": "valid", "validation": "valid"}.get(v, v)
            if v not in SPLIT_NAMES:
                raise UserError(f"{path}, line {line[i]}: split {value!r} is not one of {', '.join(SPLIT_NAMES)}")
            split[i] = SPLIT_NAMES.index(v)
        check_subject_splits(path, subjects, split, line)
    return SampleTable(path, header, columns, files, subjects, split, line, kind=kind, format="manifest",
                       sources=(path,), ids=row_ids(path, columns, line))


def check_subject_splits(path: Path, subjects: np.ndarray, split: np.ndarray, line: np.ndarray) -> None:
    """A subject stays in one split: the first row that breaks this is one line naming both rows."""
    first: dict[str, int] = {}
    for i, subject in enumerate(subjects):
        j = first.setdefault(subject, i)
        if split[j] != split[i]:
            raise UserError(f"{path}, line {line[i]}: subject {subject} is in split {SPLIT_NAMES[split[i]]} but line "
                            f"{line[j]} puts it in {SPLIT_NAMES[split[j]]}; a subject must stay in one split")


def manifest_from_files(files: Sequence[str | Path], values: dict[str, str]) -> SampleTable:
    """A table for files named one by one (``covfuse predict RUN A.nii.gz ...``), each with the same
    raw covariate ``values``; the subject is the file name without its suffix."""
    files = [Path(f) for f in files]
    kinds = []
    for f in files:
        kind = file_kind(f.name, f)
        if kind is None:
            raise UserError(f"{f}: not a volume or a 2D image file; give the files the run was trained on")
        if not f.exists():
            raise UserError(f"{f}: file not found")
        kinds.append(kind)
    kind, other = table_kind(kinds, files)
    if other is not None:
        raise UserError("give either volumes or 2D images, not both")
    subjects = [f.name[: -len(".nii.gz")] if f.name.lower().endswith(".nii.gz") else f.stem for f in files]
    header = ["subject", "path", *values]
    columns = {"subject": subjects, "path": [str(f) for f in files], **{k: [v] * len(files) for k, v in values.items()}}
    return SampleTable(Path("--covariates"), header, columns, files, np.asarray(subjects, dtype=object),
                       np.full(len(files), -1, dtype=np.int8), np.arange(1, len(files) + 1, dtype=np.int64),
                       kind=kind if files else "volume", format="files")
