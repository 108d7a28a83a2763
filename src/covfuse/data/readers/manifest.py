"""Manifest reader: a CSV/TSV/.xlsx table with one row per image or volume file (``subject``, ``path``, columns).

The manifest is the dataset (docs/data.md, "Your own data"): ``subject`` and ``path`` (relative to
the manifest's folder) are required, ``split`` (train / valid / test) and ``session`` optional, any
other column usable as target or covariate by name. ``path`` names volumes (NIfTI ``.nii``/``.nii.gz``,
FreeSurfer ``.mgz``/``.mgh``, Analyze ``.hdr``/``.img``, a folder of DICOM slices, a multi-frame DICOM
file) or 2D image files (PNG, JPEG, TIFF, DICOM, BMP); one manifest holds one kind (:func:`table_kind`).
Every problem is a :class:`~covfuse.errors.UserError` naming the manifest and its line.

Tables as spreadsheets write them (:data:`ROW_READERS`, one reader per suffix): a CSV/TSV in UTF-8
(with or without BOM) or UTF-16 with BOM, else cp1252, else latin-1 (a note says which); ``,``,
``;`` or tab as delimiter; in a ``;`` or tab file, columns written with a decimal comma are numbers
(:func:`~covfuse.data.table.decimal_comma_columns`); an ``.xlsx`` workbook's first sheet or
``data.sheet``; Windows ``\\`` separators in ``path``. Each such rule that applied is one line in
the table's ``notes``.
"""
from __future__ import annotations

import csv
import datetime
import io
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from covfuse.data.decoders.dicom_volumes import holds_volume
from covfuse.data.decoders.nibabel_volumes import SUFFIXES as VOLUME_SUFFIXES
from covfuse.data.groups import format_number
from covfuse.data.table import RESERVED, SPLIT_NAMES, SampleTable, decimal_comma_columns
from covfuse.errors import UserError, suggest

REQUIRED = ("subject", "path")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", *DICOM_SUFFIXES, ".bmp")
SHEETS = (".xlsx", ".xlsm")  # workbooks read through openpyxl
MANIFEST_SUFFIXES = (".csv", ".tsv", *SHEETS)
UNREAD_SHEETS = (".xls", ".ods", ".numbers")  # spreadsheets refused with the way to save them
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


class Rows(NamedTuple):
    """A table file's cells as strings: the header, (line, cells) per row, the delimiter of a text
    file or the sheet read of a workbook (the other None), and one note per reading rule that applied."""

    header: list[str]
    body: list[tuple[int, list[str]]]
    delimiter: str | None
    sheet: str | None
    notes: list[str]


def decode_text(path: Path, data: bytes) -> tuple[str, str | None]:
    """(text, note): UTF-8 with or without BOM and UTF-16 with BOM as they are; anything else is not
    UTF-8 and is read as cp1252 (Excel on Windows), or latin-1 where cp1252 leaves a byte undefined,
    with a note saying so."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), None
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        bad = exc.start
    for encoding, what in (("cp1252", "Windows-1252, as Excel on Windows saves CSV"), ("latin-1", "ISO 8859-1")):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return text, (f"{path.name} is not UTF-8 (byte {data[bad]:#04x} at offset {bad}): read as {encoding} ({what}); "
                      "save it as UTF-8 to be sure of its accents")
    raise AssertionError("unreachable: latin-1 decodes every byte")


def _text_rows(path: Path, sheet: str | None) -> Rows:
    if sheet is not None:
        raise UserError(f"{path}: data.sheet {sheet!r} picks a sheet of an .xlsx workbook; {path.name} is a text "
                        "table: leave data.sheet unset")
    text, note = decode_text(path, path.read_bytes())
    try:
        delimiter = sniff_delimiter(text.split("\n", 1)[0], path)
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        body = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV ({exc}); save it from a spreadsheet as CSV (UTF-8) "
                        "and try again") from None
    return Rows(header, body, delimiter, None, [note] if note else [])


def _cell(value) -> str:
    """A spreadsheet cell as a CSV export writes it: numbers without a trailing .0, dates in ISO form
    (a time only when there is one), TRUE/FALSE, empty for an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return format_number(value)
    if isinstance(value, datetime.datetime):
        return value.date().isoformat() if value.time() == datetime.time() else value.isoformat(sep=" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value).strip()


def _sheet_rows(path: Path, sheet: str | None) -> Rows:
    """The first sheet (or ``sheet``) of an .xlsx/.xlsm workbook through openpyxl, cached formula values."""
    import openpyxl  # only for workbooks

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable .xlsx workbook ({' '.join(str(exc).split())[:100]}); save it again "
                        "from the spreadsheet as .xlsx, or as CSV (UTF-8)") from None
    try:
        names = book.sheetnames
        if sheet is None:
            name = names[0]
        elif str(sheet) in names:
            name = str(sheet)
        else:
            raise UserError(f"{path}: no sheet {sheet!r}{suggest(str(sheet), names)}; its sheets: {', '.join(names)} "
                            "(set data.sheet, or --sheet, to one of them)")
        rows = [[_cell(v) for v in row] for row in book[name].iter_rows(values_only=True)]
    finally:
        book.close()
    while rows and not any(rows[-1]):
        rows.pop()
    header = rows[0] if rows else []
    while header and not header[-1]:  # columns past the last named one are empty in every row, or an error below
        header = header[:-1]
    body = []
    for n, row in enumerate(rows[1:], start=2):
        extra = [c for c in row[len(header):] if c]
        row = row[:len(header)] + [""] * (len(header) - len(row))  # Excel keeps no trailing empty cells
        body.append((n, row + extra))
    notes = [f"{path.name}: read sheet {name!r}, the first of {len(names)} (data.sheet picks another)"] \
        if sheet is None and len(names) > 1 else []
    return Rows(header, body, None, name, notes)


def _old_sheet(path: Path, sheet: str | None) -> Rows:
    raise UserError(f"{path}: covfuse reads .xlsx workbooks and CSV/TSV, not {path.suffix} files: save it as .xlsx "
                    "or as CSV (UTF-8) and point data.root there")


#: How each table suffix becomes rows; a new table format is one reader and one line here.
ROW_READERS: dict[str, Callable[[Path, str | None], Rows]] = {
    ".csv": _text_rows, ".tsv": _text_rows, **{suffix: _sheet_rows for suffix in SHEETS},
    **{suffix: _old_sheet for suffix in UNREAD_SHEETS},
}


def read_rows(path: Path, sheet: str | None = None) -> Rows:
    """The table file's rows, read by its suffix's reader (a text file of another suffix as CSV)."""
    return ROW_READERS.get(path.suffix.lower(), _text_rows)(path, sheet)


def read_manifest(path: str | Path, *, check_files: bool = True, sheet: str | None = None) -> SampleTable:
    """Parse and validate a manifest (see the module docstring); files are not opened here."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (a CSV with columns subject, path, target and covariates)")
    header, body, delimiter, sheet, notes = read_rows(path, sheet)
    if not header or header == [""]:
        raise UserError(f"{path}: empty manifest; the first line must name the columns (subject, path, ...)")
    lower = [h.lower() for h in header]
    dupes = sorted({h for h in lower if lower.count(h) > 1})
    if dupes:
        raise UserError(f"{path}, line 1: column {dupes[0]!r} appears twice; rename or remove one of them")
    for name in REQUIRED:
        if name not in lower:
            raise UserError(f"{path}, line 1: no {name!r} column{suggest(name, header)}; required: {', '.join(REQUIRED)}")
    header = [h.lower() if h.lower() in RESERVED else h for h in header]
    body = [(n, row) for n, row in body if any(cell.strip() for cell in row)]  # blank lines
    if not body:
        raise UserError(f"{path}: the manifest lists no files; add one row per image or volume under its header")
    columns: dict[str, list[str]] = {h: [] for h in header}
    lines = []
    for n, row in body:
        if len(row) != len(header):
            raise UserError(f"{path}, line {n}: {len(row)} fields, the header has {len(header)}; quote cells that hold "
                            f"the delimiter {delimiter!r}, or fix the row" if sheet is None else
                            f"{path}, row {n}: {len(row)} cells, the header has {len(header)}; name every column "
                            "in the first row, or clear the cells beyond it")
        for h, cell in zip(header, row):
            columns[h].append(cell.strip())
        lines.append(n)
    line = np.asarray(lines, dtype=np.int64)
    subjects = np.asarray(columns["subject"], dtype=object)
    files, kinds, decided = [], [], None
    for i, (rel, subject) in enumerate(zip(columns["path"], subjects)):
        where = f"{path}, line {line[i]}"
        if not subject:
            raise UserError(f"{where}: empty subject; fill in the person the file belongs to, or remove the row")
        if not rel:
            raise UserError(f"{where}: empty path; name the row's file, or remove the row")
        file = local_path(path, rel)
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
            drive = " (a Windows drive path: give paths relative to the manifest's folder)" \
                if len(rel) > 2 and rel[1] == ":" and rel[2] in "\\/" else ""
            raise UserError(f"{where}: {noun} file {file} not found (paths are relative to the manifest's folder){drive}")
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
    if delimiter in (";", "\t"):
        commas = decimal_comma_columns(columns)
        if commas:
            name, example = next(iter(commas.items()))
            notes.append(f"{', '.join(commas)}: numbers written with a decimal comma (in a "
                         f"{'semicolon' if delimiter == ';' else 'tab'}-separated table), read as numbers "
                         f"({name} {example} = {example.replace(',', '.')})")
    extra = {"sheet": sheet} if sheet is not None else {}
    return SampleTable(path, header, columns, files, subjects, split, line, kind=kind, format="manifest",
                       sources=(path,), ids=row_ids(path, columns, line), notes=notes, extra=extra)


def local_path(manifest: Path, rel: str) -> Path:
    """A manifest's ``path`` cell as a file: relative to the manifest's folder unless absolute, Windows'
    ``\\`` separators read as ``/`` (a manifest written on Windows)."""
    rel = rel.replace("\\", "/")
    return Path(rel) if Path(rel).is_absolute() else manifest.parent / rel


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
