"""From a sample table to datasets, caches and checks, whatever the source: the one place that knows
what a table's ``kind`` (``image``: 2D files; ``volume``: NIfTI, MGH, Analyze, DICOM) and ``format``
(the CelebA release keeps its own checksummed cache and JPEG decoder) need, so training code only asks.

``settings(cfg)`` reads the preprocessing keys from a data config (image_size, preset, geometry,
intensity, spacing, and the choice of volume: series, volume_index); :func:`make_dataset`,
:func:`collate_functions`, :func:`open_cache`, :func:`build_cache`, :func:`check_files`, :func:`undecodable`,
:func:`check_readable`, the NaN/Inf checks (:func:`nonfinite`, :func:`check_nonfinite`,
:func:`check_nonfinite_before_build`) and :func:`reading_notes` answer for any table.

The cache and dataset modules are imported inside the functions that use them: they import torch,
which ``covfuse data info`` and ``covfuse data verify`` (using :func:`nonfinite`) never need.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from covfuse.data._workers import default_workers, run_chunks
from covfuse.data.chunks import conform, unreadable
from covfuse.data.decode import CorruptImage
from covfuse.data.decoders import decode_file, rule_notes
from covfuse.data.decoders.volume import Choice, Preprocessing, nonfinite_voxels, unreadable_volumes, volume_shape
from covfuse.data.layout import image_layout, image_rules
from covfuse.data.table import SampleTable, md5sum, spelling_note
from covfuse.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """How a file becomes a model input: the side in pixels/voxels plus the 2D preset or the volume steps
    (and which volume a path means where it holds several: ``series``, ``volume_index``)."""

    size: int
    preset: str = "center-crop"
    geometry: str = "resize"
    intensity: str = "zscore"
    spacing: float | None = None
    series: str | None = None
    volume_index: int | None = None


def settings(cfg: Any) -> Settings:
    """The preprocessing keys of a data config (any object with those attributes)."""
    return Settings(cfg.image_size, cfg.preset, cfg.geometry, cfg.intensity, cfg.spacing, cfg.series, cfg.volume_index)


def settings_from_state(saved: dict) -> Settings:
    """The :class:`Settings` a run saved with :func:`describe` (data_state.json's ``preprocessing``)."""
    return Settings(**{k: v for k, v in saved.items() if k in Settings.__dataclass_fields__})


def volume_settings(s: Settings) -> Preprocessing:
    """The volume preprocessing of settings ``s`` (size, geometry, intensity, spacing, series, volume index)."""
    return Preprocessing(size=s.size, geometry=s.geometry, intensity=s.intensity, spacing=s.spacing, series=s.series,
                         volume_index=s.volume_index)


def _choice(s: Settings | Choice | None) -> Choice:
    """Which volume each path means (data.series, data.volume_index), from settings or given as a Choice;
    none chosen without either."""
    if s is None or isinstance(s, Choice):
        return s or Choice()
    return Choice(s.series, s.volume_index)


def describe(table: SampleTable, s: Settings) -> dict:
    """What evaluation must reuse to read files as training did (saved in data_state.json)."""
    if table.kind == "volume":
        return asdict(volume_settings(s))
    return {"size": s.size, "preset": s.preset}


def reading_notes(table: SampleTable, columns=(), cache=None) -> list[str]:
    """Every rule that applied in reading the table, one line each (docs/data.md, "Nothing silent"): the
    reader's (encoding, decimal commas, sheet), merged spellings of the categorical ``columns``, and the
    decoders' file rules (EXIF orientation, DICOM windowing) counted over the 2D files: from the
    cache's record when a cache holds them, else from the files' headers."""
    notes = [*table.notes, *(note for note in (spelling_note(table, c) for c in columns) if note)]
    if table.kind == "image" and table.format != "celeba":
        rules = cache.info["rules"] if cache is not None and "rules" in cache.info else image_rules(table)
        notes += rule_notes(rules, len(table))
    return notes


def fingerprint(table: SampleTable) -> str:
    """What identifies a table's data wherever it lies: the md5 of its source files' bytes (manifest,
    participants.tsv, CelebA's text files) and of its files' paths relative to the source's folder.
    A run records it, so data that moved (``--data.root NEW``) is recognised and other data refused."""
    h = hashlib.md5()
    for source in table.sources:
        h.update(f"{Path(source).name}\0{md5sum(Path(source))}\n".encode())
    root = str(table.root)
    for file in table.files:
        h.update(Path(os.path.relpath(file, root)).as_posix().encode() + b"\n")
    return h.hexdigest()


class _Conformed:
    """A picklable decoder (DataLoader workers) returning every file in the table's layout."""

    def __init__(self, channels: int, dtype: str):
        self.channels, self.dtype = channels, dtype

    def __call__(self, path, size: int, preset: str):
        return conform(decode_file(path, size, preset), self.channels, self.dtype)


def _decoder(table: SampleTable):
    """The 2D decoder for a table's files: JPEG/PIL for CelebA, any supported format for manifests."""
    if table.format == "celeba":
        return None  # ImageDataset's default: covfuse.data.decode.decode_image
    return _Conformed(*image_layout(table))


def _volume_cache_args(cache, table: SampleTable, s: Settings, cache_dir) -> tuple:
    """(files, preprocessing, folder, name) that the volume cache functions of ``cache`` take for ``table``."""
    settings = volume_settings(s)
    return (table.files, settings, cache.cache_folder(table, cache_dir or None),
            cache.source_key(table, *settings.record().values()))


def open_cache(table: SampleTable, s: Settings, cache_dir: str | os.PathLike | None = None):
    """The table's cache at these settings (in ``cache_dir``, default beside the source) if one was
    built and still matches, else None."""
    from covfuse.data import cache  # lazy: imports torch, which `covfuse data info` never needs

    if table.kind == "volume":
        files, settings, folder, name = _volume_cache_args(cache, table, s, cache_dir)
        return cache.open_volume_cache(files, settings, folder, name=name)
    return cache.open_cache(table, s.size, s.preset, cache_dir or None)


def build_cache(table: SampleTable, s: Settings, cache_dir: str | os.PathLike | None = None):
    """Decode/preprocess every file of the table once into its memmap cache (resumable)."""
    from covfuse.data import cache  # lazy: imports torch, which `covfuse data info` never needs

    if table.kind == "volume":
        files, settings, folder, name = _volume_cache_args(cache, table, s, cache_dir)
        return cache.build_volume_cache(files, settings, folder, name=name)
    return cache.build_cache(table, s.size, s.preset, cache_dir=cache_dir or None)


def check_files(table: SampleTable, rows: np.ndarray, skip_corrupt: bool = False,
                s: Settings | Choice | None = None) -> set[str]:
    """Before training reads files lazily: a wrong kind of volume fails now, not in a worker; an empty
    image file is refused (a stat each); with ``skip_corrupt`` every file is decoded once (:func:`undecodable`)
    and the paths of those that fail are returned (the caller leaves them out). ``s``: the settings, whose
    choice of volume (data.series, data.volume_index) applies to volumes."""
    if skip_corrupt:
        return {str(table.files[row]) for row, _ in undecodable(table, rows, s=s)}
    if table.kind == "volume":
        volume_shape(table.files[int(rows[0])], table.where(int(rows[0])), _choice(s))
        return set()
    paths = [str(table.files[int(r)]) for r in rows]
    empty = [p for p in paths if os.path.getsize(p) == 0]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise CorruptImage(empty[0], f"empty file, 0 bytes{more}")
    if table.format != "celeba":  # one decode up front: an unreadable format fails here with its name
        decode = _decoder(table)
        if decode is not None:
            decode(paths[0], 8, "research")
    return set()


def undecodable(table: SampleTable, rows: np.ndarray | None = None, *, workers: int | None = None,
                progress=None, s: Settings | Choice | None = None) -> list[tuple[int, str]]:
    """(row, reason) for each file of ``rows`` (default all) that the decoder training uses cannot decode
    (CelebA's JPEG path, any supported 2D format, every voxel of a volume as ``s`` chooses it), in row order: the one
    decode check of ``covfuse data verify`` and ``--skip_corrupt``. The files are read in
    chunks by ``workers`` processes (default: :func:`default_workers`); ``progress(n)`` is told each
    chunk's size as it finishes."""
    rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
    paths = [str(table.files[int(r)]) for r in rows]
    if table.kind == "volume":
        work, size, extra = unreadable_volumes, 64, (_choice(s),)
    else:
        work, size, extra = unreadable, 256, (table.format != "celeba",)  # any_format: DICOM, TIFF, 16-bit PNG ...
    tasks = [(paths[i: i + size], *extra) for i in range(0, len(paths), size)]
    row_of = {path: int(row) for path, row in zip(paths, rows)}
    bad = []
    for i, found in run_chunks(work, tasks, default_workers(len(paths)) if workers is None else workers):
        bad += [(row_of[path], reason) for path, reason in found]
        if progress is not None:
            progress(len(tasks[i][0]))
    return sorted(bad)


def nonfinite(table: SampleTable, rows: np.ndarray | None = None, cache=None,
              s: Settings | Choice | None = None) -> list[tuple[int, int]]:
    """(row, count) for each volume of ``rows`` (default all) holding NaN or Inf voxels, as the volume
    ``cache`` recorded them when it was built (else read from the files); 2D images: none (their decoders
    refuse float samples, naming the count)."""
    if table.kind != "volume":
        return []
    rows = range(len(table)) if rows is None else [int(r) for r in rows]
    recorded = (getattr(cache, "info", None) or {}).get("nonfinite")
    if recorded is not None:  # a cache without the record (older) falls back to reading the files
        return [(r, int(recorded[str(r)])) for r in rows if str(r) in recorded]
    return [(r, n) for r in rows if (n := nonfinite_voxels(table.files[r], _choice(s), table.where(r)))]


def check_nonfinite(table: SampleTable, rows: np.ndarray, rule: str = "zero", cache=None,
                    s: Settings | Choice | None = None) -> tuple[int, int]:
    """data.nonfinite: ``refuse`` raises one line naming the first file with NaN/Inf voxels and its count;
    ``zero`` returns (files, voxels) that preprocessing sets to 0. A reused ``cache`` holds the files
    zeroed, so its record is checked too: refuse stays refuse, and zero is still counted in the log."""
    found = nonfinite(table, rows, cache, s)
    if found and rule == "refuse":
        row, count = min(found)
        more = f" (and {len(found) - 1} more file(s) have some)" if len(found) > 1 else ""
        raise UserError(f"{table.where(row)}: {table.files[row]} has {count:,} NaN/Inf voxel(s){more}; set "
                        "data.nonfinite zero to treat them as 0 before normalisation, or fix the file(s) "
                        "(`covfuse data info` counts them)")
    return len(found), sum(n for _, n in found)


def check_nonfinite_before_build(table: SampleTable, s: Settings, rule: str = "zero",
                                 cache_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """:func:`check_nonfinite` over every row, before a build reads every file: from the record of a built
    volume cache where there is one, else the files. 2D tables hold no NaN/Inf samples: (0, 0), no cache opened."""
    if table.kind != "volume":
        return 0, 0
    return check_nonfinite(table, np.arange(len(table)), rule, open_cache(table, s, cache_dir), s)


def check_readable(table: SampleTable, where, s: Settings | Choice | None = None) -> None:
    """Every file of ``table`` can be opened (volumes: the header(s) of one 3-D volume, as ``s`` chooses it;
    images: a file, not empty), the first bad row named by ``where(i)`` (or by its file alone where ``where(i)``
    is empty), before any file is decoded."""
    if table.kind == "volume":
        for i, file in enumerate(table.files):
            volume_shape(file, where(i), _choice(s))
        return
    for i, file in enumerate(table.files):
        at = f"{where(i)}: " if where(i) else ""
        if os.path.isdir(file):
            raise UserError(f"{at}{file}: a folder, not an image file; give image files (e.g. {file}/<name>)")
        if not os.path.isfile(file):
            raise UserError(f"{at}{file}: no such image file")
        if os.path.getsize(file) == 0:
            raise UserError(f"{at}{CorruptImage(file, 'empty file, 0 bytes')}")


def collate_functions(table: SampleTable) -> tuple[Callable | None, Callable | None]:
    """The DataLoader ``collate_fn`` of the table's (training, evaluation) batches. 2D batches come ready-made
    from :meth:`ImageDataset.__getitems__ <covfuse.data.dataset.ImageDataset.__getitems__>`; training ones are
    grouped by covariate row, which spares hybrid convs a copy of their input at every layer. Volumes are
    served one sample at a time and take DataLoader's default (None)."""
    if table.kind == "volume":
        return None, None
    from covfuse.data.dataset import collate, collate_grouped  # lazy: imports torch

    return collate_grouped, collate


def make_dataset(table: SampleTable, rows: np.ndarray, covariates: np.ndarray, targets: np.ndarray, s: Settings,
                 *, train: bool = False, cache=None):
    """The torch Dataset of ``rows``: samples ``{"image", "covariates", "target", "index"}`` with
    ``covariates`` (N, K) and ``targets`` (N,) indexed by table row."""
    from covfuse.data.dataset import ImageDataset, VolumeDataset  # lazy: imports torch

    if table.kind == "volume":
        return VolumeDataset(table.files, rows, covariates, targets, volume_settings(s), train=train, cache=cache)
    if table.kind != "image":
        raise UserError(f"{table.path}: unknown kind of sample {table.kind!r}")
    return ImageDataset(table.files, rows, targets, covariates, image_size=s.size, preset=s.preset, train=train,
                        cache=cache, decode=_decoder(table))
