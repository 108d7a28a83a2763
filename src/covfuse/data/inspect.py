"""What `covfuse data info` and `covfuse data verify` report about a source, computed here and printed
by the command line: the summary of a CelebA folder (:func:`celeba_info`) or of any other table
(:func:`table_info`: column kinds, splits, file shapes and layouts, non-finite voxels), and the
release's md5 checksums (:func:`check_checksums`). Decoding every file is
:func:`covfuse.data.samples.undecodable`, the check ``--skip_corrupt`` uses too.

Torch-free, so neither command imports torch (``covfuse.data.samples`` keeps its torch imports inside the
functions that need them).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from covfuse.data.decode import CorruptImage
from covfuse.data.decoders import read_pixels, rule_notes
from covfuse.data.decoders.volume import Choice, open_volume
from covfuse.data.layout import layout_name
from covfuse.data.readers import read_table
from covfuse.data.readers.celeba_release import OPTIONAL_FILES, CelebAMeta
from covfuse.data.readers.celeba_release import SPLIT_NAMES as CELEBA_SPLITS
from covfuse.data.samples import nonfinite
from covfuse.data.table import SPLIT_NAMES, SampleTable, describe_columns, md5sum, spelling_note, subject_split
from covfuse.errors import UserError

# The release's md5 checksums, as listed in torchvision's CelebA.file_list
# (torchvision/datasets/celeba.py, torchvision 0.19-0.29); the text files are the CRLF originals.
OFFICIAL_MD5 = {
    "img_align_celeba.zip": "00d2c5bc6d35e252742224ab0c1e8fcb",
    "list_attr_celeba.txt": "75e246fa4810816ffd6ee81facbd244c",
    "identity_CelebA.txt": "32bd1bd63d3c78cd57e08160ec5ed1e2",
    "list_bbox_celeba.txt": "00566efa6fedff7a56946cd1c10f1c16",
    "list_landmarks_align_celeba.txt": "cc24ecafdb5b50baae59b03474781f8c",
    "list_eval_partition.txt": "d32c9cbf5e040fd4025c592c306e6668",
}
OPTIONAL_MD5 = ("img_align_celeba.zip", *OPTIONAL_FILES)  # absent: reported, not a failure


# ---------------------------------------------------------------------------------------- info
def celeba_info(meta: CelebAMeta, target: str | None = None, covariates: list[str] | None = None) -> dict:
    """The `data info` JSON of a CelebA folder: num_images, splits, attributes (+ target/covariates when asked)."""
    counts = np.bincount(meta.split, minlength=3)
    rates = meta.attrs.mean(axis=0) if len(meta) else np.zeros(len(meta.attr_names))
    out: dict = {
        "kind": "image",
        "format": "celeba",
        "num_images": len(meta),
        "num_samples": len(meta),
        "num_subjects": int(len(np.unique(meta.identity))),
        "splits": {name: int(c) for name, c in zip(CELEBA_SPLITS, counts)},
        "attributes": {name: round(float(r), 6) for name, r in zip(meta.attr_names, rates)},
        "columns": {name: {"type": "binary", "positive_rate": round(float(r), 6)}
                    for name, r in zip(meta.attr_names, rates)},
        "shape": None,
    }
    first = meta.image_dir / meta.filenames[0] if len(meta) else None
    if first is not None and first.is_file():
        try:
            with Image.open(first) as img:
                out["shape"] = [img.height, img.width, len(img.getbands())]
        except OSError:
            pass  # `covfuse data verify` reports unreadable images
    if target is None and not covariates:
        return out
    if target is None:
        raise UserError("--covariates needs --target (the covariates are summarised against the target)")
    y, c, sel = meta.select(target, covariates or [])

    def rate(values, mask=None):
        values = values if mask is None else values[mask]
        return round(float(values.mean()), 6) if len(values) else None

    out["identities"] = int(len(np.unique(meta.identity)))
    out["target"] = {
        "name": sel.target,
        "positive_rate": {"all": rate(y), **{s: rate(y, meta.split == i) for i, s in enumerate(CELEBA_SPLITS)}},
    }
    out["covariates"] = {
        name: {
            "positive_rate": rate(c[:, j]),
            "target_rate_given": {str(v): rate(y, c[:, j] == v) for v in (0, 1)},
            "count_given": {str(v): int((c[:, j] == v).sum()) for v in (0, 1)},
        }
        for j, name in enumerate(sel.covariates)
    }
    return out


def split_rates(meta: CelebAMeta) -> dict[str, dict[str, float]]:
    """Each attribute's positive rate per split (NaN for an empty split), for `data info`'s table."""
    return {name: {s: float(meta.attrs[meta.split == i, j].mean()) if (meta.split == i).any() else float("nan")
                   for i, s in enumerate(CELEBA_SPLITS)}
            for j, name in enumerate(meta.attr_names)}


def table_info(path: str | Path, target: str | None = None, covariates: list[str] | None = None,
               categorical: list[str] | None = None, check_files: bool = True, choice: Choice = Choice(),
               sheet: str | None = None) -> dict:
    """The `data info` JSON of a manifest or BIDS dataset: kind, format, num_subjects, num_samples
    (num_volumes for volumes, num_images for 2D images), splits, columns, shape, layouts (2D images) or
    formats (volumes: NIfTI, MGH, Analyze, DICOM series, DICOM multi-frame), non-finite voxels,
    ``rules`` (files each decoder rule touched: EXIF orientation, DICOM windowing) and ``notes`` (one line
    per rule that applied in reading, :func:`covfuse.data.samples.reading_notes`'s lines).

    With ``check_files`` every file's header is read (volumes: nibabel's or every DICOM slice's header, no
    voxels, the volume ``choice`` picks where a path holds several; 2D: decoded), so a
    missing, unreadable or wrong-dimensional file is reported with its row.
    """
    table = read_table(path, sheet=sheet)
    for name in [*([target] if target else []), *(covariates or [])]:
        table.column(name)  # unknown names: a UserError with a suggestion
    split = subject_split(table, seed=0)
    shapes: Counter = Counter()
    layouts: Counter = Counter()
    formats: Counter = Counter()
    found: list = []
    rules: Counter = Counter()
    if check_files:
        headers = [file_header(table, i, choice) for i in range(len(table))]
        shapes = Counter(shape for shape, _ in headers)
        layouts = Counter((info["channels"], info["bits"]) for _, info in headers if "channels" in info)
        formats = Counter(info["format"] for _, info in headers if table.kind == "volume")
        rules = Counter(info["rule"] for _, info in headers if info and info.get("rule"))
        found = nonfinite(table, s=choice)
    columns = describe_columns(table, categorical or ())
    merged = [name for name, c in columns.items() if c.get("merged")]
    notes = [*table.notes, *(spelling_note(table, name) for name in merged), *rule_notes(rules, len(table))]
    noun = "num_volumes" if table.kind == "volume" else "num_images"
    return {
        "kind": table.kind,
        "format": table.format,
        "manifest": str(table.path),
        "num_subjects": int(len(set(table.subjects.tolist()))),
        "num_samples": len(table),
        noun: len(table),
        "splits": {name: int((split == k).sum()) for k, name in enumerate(SPLIT_NAMES)},
        "split_source": "split column" if table.has_split else
                        "none in the data: subjects shuffled 70/15/15 by data.split_seed (default 0)",
        "columns": columns,
        "shape": list(next(iter(shapes))) if len(shapes) == 1 else None,
        "shapes": {"x".join(map(str, k)): v for k, v in shapes.items()},
        "layouts": {layout_name(*k): v for k, v in sorted(layouts.items())},
        "read_as": layout_name(3 if any(c == 3 for c, _ in layouts) else 1,
                               16 if any(b == 16 for _, b in layouts) else 8) if layouts else None,
        **({"formats": dict(sorted(formats.items()))} if table.kind == "volume" else {}),
        "nonfinite": {"files": len(found), "voxels": sum(n for _, n in found),
                      "first": str(table.columns["path"][found[0][0]]) if found else None},
        "rules": dict(sorted(rules.items())),
        "notes": notes,
    }


def file_header(table: SampleTable, row: int, choice: Choice = Choice()) -> tuple[tuple, dict]:
    """(a file's shape from its header: (X, Y, Z) for a volume, (H, W) or (H, W, C) for a 2D image;
    the 2D decoder's info dict: format, bits, channels; for a volume ``{"format"}``: what it is read from,
    e.g. ``NIfTI``, ``DICOM series``, ``MGH 4-D (3 volumes, index 1)``)."""
    file = table.files[row]
    if table.kind == "volume":
        source, index = open_volume(file, table.where(row), choice)
        count = source.shape[3] if len(source.shape) == 4 else 1
        label = source.format + (f" 4-D ({count} volumes, index {index})" if count > 1 else "")
        return tuple(int(v) for v in source.shape[:3]), {"format": label}
    try:
        pixels, info = read_pixels(file)
    except CorruptImage as exc:
        raise UserError(f"{table.where(row)}: {table.columns['path'][row]}: cannot decode the image ({exc.reason}); "
                        "replace the file or remove its row") from None
    return tuple(int(v) for v in pixels.shape), info


# ---------------------------------------------------------------------------------- checksums
@dataclass
class Checksum:
    """One release file against its official md5: ``status`` ok, absent (an optional file), missing or
    mismatch; ``lf_copy``: a mismatching text file whose CRLF form matches (an LF copy)."""

    name: str
    path: Path
    status: str
    md5: str | None = None
    expected: str = ""
    lf_copy: bool = False

    @property
    def note(self) -> str:
        return " (same content with LF line endings; torchvision rejects LF copies, covfuse accepts them)" \
            if self.lf_copy else ""

    @property
    def problem(self) -> str | None:
        """What `data verify` fails with, or None."""
        if self.status == "missing":
            return f"{self.path} is missing"
        if self.status == "mismatch":
            return f"{self.path} differs from the official release{self.note}"
        return None


def check_checksums(base: Path) -> list[Checksum]:
    """The text files (and the zip, when present) of the CelebA folder ``base`` against the release's md5."""
    out = []
    for name, expected in OFFICIAL_MD5.items():
        path = base / name
        if not path.is_file():
            out.append(Checksum(name, path, "absent" if name in OPTIONAL_MD5 else "missing", expected=expected))
            continue
        got = md5sum(path)
        if got == expected:
            out.append(Checksum(name, path, "ok", got, expected))
            continue
        crlf = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if path.suffix == ".txt" else b""
        out.append(Checksum(name, path, "mismatch", got, expected,
                            lf_copy=bool(crlf) and hashlib.md5(crlf).hexdigest() == expected))
    return out
