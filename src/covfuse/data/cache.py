"""Memmap caches of decoded files, one per source and settings: 2D images and volumes.

**2D images** (:func:`build_cache`, :func:`open_cache`, :class:`ImageCache`): decoded, cropped,
resized, (N, C, S, S), one file per size and preset. Any image table
(:class:`~covfuse.data.table.SampleTable`) has one; a :class:`CelebAMeta` is read as its table.
uint8 for 8-bit sources (``.u8``), uint16 for 16-bit ones (``.u16``: radiographs, DICOM; the cache
keeps 16-bit data 16-bit); C is 3 (RGB) or 1 (greyscale).

Where: ``.covfuse-cache/`` in the source's folder by default (the table's ``root``: the folder
holding CelebA's text files, a manifest's folder, a BIDS dataset), or any ``cache_dir``
(:func:`cache_folder`). Files for size S and preset P:

* ``K-P-S.u8`` (or ``.u16``; K the source's key, :func:`source_key`: ``celeba`` for the release, else
  the manifest's name plus a short hash of its resolved absolute path and the settings, e.g.
  ``train-3f2a9c01``): raw pixels, C order, shape (N, C, S, S), row i = the table's file i. Any
  number of manifests share one folder, each with its own files;
* ``K-P-S.json``: what it holds (shape, dtype, size, preset, crop, count, the md5 of the source files it
  was built from — CelebA's three text files, or the manifest plus every image's resolved absolute path, size and mtime —
  the decoders that really read the files, and how many files each decoder rule touched, ``rules``).
  Written last: a cache without it is not a cache.

Building writes ``K-P-S.u8.partial`` plus ``K-P-S.progress.json`` (the chunks done so
far, rewritten atomically after each chunk), so an interrupted build resumes where it stopped;
the final names appear only by rename once every chunk is done. A cache whose record no longer
matches its sources or settings is ignored (and rebuilt by ``covfuse data cache``).

**Volumes** (:func:`build_volume_cache`, :func:`open_volume_cache`, :class:`VolumeCache`): float16
(N, 1, S, S, S), row i = file i preprocessed by :mod:`covfuse.data.decoders.volume`, in the same
folder; its name holds a key of the resolved absolute path, size and mtime of every file the volumes are read from (each
slice of a DICOM folder, both files of an Analyze pair) and the preprocessing, so a changed file or
setting is a new cache. Built like the images, by the same chunked, resumable machinery
(``.f16.partial`` plus ``.progress.json``, worker processes, renamed when complete); each volume is
written to the file as it is done, so the build's memory does not grow with the cohort.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL
import torch
from filelock import FileLock
from tqdm import tqdm

from covfuse.data._workers import default_workers, run_chunks
from covfuse.data.chunks import fill_chunk as _fill_chunk  # module-level names: tests patch them
from covfuse.data.chunks import fill_volumes as _fill_volumes
from covfuse.data.decode import PRESETS, check_preset, check_size
from covfuse.data.decoders import decoder_for
from covfuse.data.decoders.volume import Preprocessing, library, volume_files
from covfuse.data.layout import image_layout, image_rules
from covfuse.data.readers.celeba import table_from_meta
from covfuse.data.readers.celeba_release import CelebAMeta
from covfuse.data.table import SampleTable, md5sum
from covfuse.errors import UserError
from covfuse.io import atomic_write_text

log = logging.getLogger(__name__)

CACHE_DIRNAME = ".covfuse-cache"
FORMAT = "covfuse-image-cache"
VERSION = 1
VOLUME_FORMAT = "covfuse-volume-cache"
VOLUME_VERSION = 1


def as_table(source):
    """A :class:`SampleTable` of 2D images: ``source`` itself, or a :class:`CelebAMeta`'s table."""
    if isinstance(source, CelebAMeta):
        return table_from_meta(source)
    if getattr(source, "kind", "image") != "image":
        raise UserError(f"{source.path}: the image cache holds 2D images; volumes have their own cache")
    return source


def source_key(table, *settings) -> str:
    """The part of a cache's name that says whose it is: ``celeba`` for the release (one per folder),
    else the table file's stem plus 8 hex digits of the md5 of its resolved absolute path (symbolic
    links followed: a relative and an absolute ``data.root`` to one file give one name) and
    ``settings``, so two manifests in one folder (or one manifest at two settings) never share a file name."""
    if table.format == "celeba":
        return "celeba"
    where = str(Path(table.path).resolve())
    sheet = [f"sheet={table.extra['sheet']}"] if "sheet" in table.extra else []  # two sheets of one workbook
    digest = hashlib.md5("|".join([where, *sheet, *map(str, settings)]).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(where).stem) or table.format
    return f"{stem}-{digest}"


def cache_folder(table, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a table's caches go: ``cache_dir``, else ``.covfuse-cache`` in the folder of its source."""
    return Path(cache_dir) if cache_dir is not None else table.root / CACHE_DIRNAME


def cache_paths(source, size: int, preset: str, cache_dir: str | os.PathLike | None = None,
                dtype: str = "uint8") -> tuple[Path, Path]:
    """(data file, metadata JSON) for this source, size and preset."""
    table = as_table(source)
    folder = cache_folder(table, cache_dir)
    stem = f"{source_key(table, check_preset(preset), check_size(size))}-{preset}-{size}"
    return folder / f"{stem}.{SUFFIX[dtype]}", folder / f"{stem}.json"


SUFFIX = {"uint8": "u8", "uint16": "u16"}


def _fingerprint(table) -> dict:
    """The md5 of what identifies the table's content: its source files, and for tables other than the
    checksummed CelebA release every image's resolved absolute path, size and modification time (what the
    files are, not how a path to them was typed: ``data.root`` relative or absolute, the same cache)."""
    out = {Path(p).name: md5sum(Path(p)) for p in table.sources}
    if table.format != "celeba":
        h = hashlib.md5()
        for f in table.files:
            h.update(file_stamp(f).encode())
        out["files"] = h.hexdigest()
    return out


def file_stamp(file: str | os.PathLike) -> str:
    """One line naming a file by what it is: its resolved absolute path, size and modification time (ns).
    The one stamp both caches key on."""
    st = os.stat(file)
    return f"{Path(file).resolve()}|{st.st_size}|{st.st_mtime_ns}\n"


def _description(source, size: int, preset: str, layout: tuple[int, str] | None = None) -> dict:
    table = as_table(source)
    channels, dtype = layout or image_layout(table)  # from the files' headers, before any decoding
    crop = "central square of side min(W, H)" if PRESETS[preset]["crop"] == "square" else "none (whole image)"
    return {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype,
        "shape": [len(table), channels, size, size],
        "count": len(table),
        "size": size,
        "preset": preset,
        "crop": crop,
        "resize": "bilinear (PIL, after libjpeg draft downscaling)",
        "decoder": None,  # filled in by the build: the decoders that really read the files
        "sources": _fingerprint(table),
    }


#: The library behind each decoder of covfuse.data.decoders (by its ``name``), for the cache's record.
LIBRARIES = {"PIL": "Pillow", "TIFF": "tifffile", "DICOM": "pydicom"}


def decoders_used(table) -> str:
    """The decoders that read the table's files, with their libraries' versions (e.g. ``DICOM (pydicom
    3.0.1), PIL (Pillow 11.0.0)``): each file's first bytes pick its decoder as the decode does.
    CelebA's JPEGs are read by simplejpeg with Pillow as fallback (covfuse.data.decode)."""
    if table.format == "celeba":
        return f"simplejpeg {version('simplejpeg')} (Pillow {PIL.__version__} fallback)"
    names = set()
    for file in table.files:
        with open(file, "rb") as f:
            decoder = decoder_for(file, f.read(132))
        names.add(decoder.name if decoder is not None else "none")
    out = []
    for name in sorted(names):
        try:
            out.append(f"{name} ({LIBRARIES[name]} {version(LIBRARIES[name])})")
        except (KeyError, PackageNotFoundError):
            out.append(name)
    return ", ".join(out)


class ImageCache:
    """Read-only view of a built cache; ``cache[row]`` and ``cache.get_batch(rows)`` give uint8 or uint16
    tensors, as the cache holds them."""

    def __init__(self, path: Path, info: dict):
        self.path = Path(path)
        self.info = info
        self.size = int(info["size"])
        self.preset = str(info["preset"])
        self.shape = tuple(info["shape"])
        self._array: np.memmap | None = None

    @property
    def array(self) -> np.memmap:
        if self._array is None:  # opened lazily, so pickling to DataLoader workers copies no data
            self._array = np.memmap(self.path, dtype=np.dtype(self.info.get("dtype", "uint8")), mode="r",
                                    shape=self.shape)
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ImageCache({str(self.path)!r}, images={len(self)}, size={self.size}, preset={self.preset!r})"

    def __getitem__(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[row]))

    def get_batch(self, rows: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        """(B, C, S, S) in the cache's dtype for ``rows`` in the given order; rows where ``flip`` is true
        are mirrored.

        One copy per image straight from the memmap, visited in file order (sequential reads when
        the file is not in the page cache); mirroring happens in that same copy. A plain loop of
        row copies beats ``np.take`` at 224 px (2x) and is within 30% of it at 64 px.
        """
        rows = np.asarray(rows, dtype=np.int64)
        flips = np.zeros(len(rows), dtype=bool) if flip is None else np.asarray(flip, dtype=bool)
        out = np.empty((len(rows),) + tuple(self.shape[1:]), dtype=np.dtype(self.info.get("dtype", "uint8")))
        array = self.array
        for j in np.argsort(rows, kind="stable").tolist():
            out[j] = array[rows[j], :, :, ::-1] if flips[j] else array[rows[j]]
        return torch.from_numpy(out)


def open_cache(
    meta, size: int, preset: str = "center-crop", cache_dir: str | os.PathLike | None = None
) -> ImageCache | None:
    """The cache for ``meta`` (a table or a CelebAMeta) at ``size``/``preset`` if it exists and matches
    its sources, else None."""
    meta = as_table(meta)
    data, info_path = cache_paths(meta, size, preset, cache_dir)
    if not info_path.is_file():
        log.debug("no image cache at %s", data)
        return None
    try:
        data = data.with_suffix("." + SUFFIX[json.loads(info_path.read_text()).get("dtype", "uint8")])
    except (OSError, ValueError, KeyError):
        pass
    if not info_path.is_file() or not data.is_file():
        log.debug("no image cache at %s", data)
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring image cache at %s: unreadable metadata (%s)", data, exc)
        return None
    layout = (int(info["shape"][1]), str(info.get("dtype", "uint8"))) if isinstance(info.get("shape"), list) and len(info["shape"]) == 4 else None
    expected = _description(meta, size, preset, layout)
    problems = [k for k in ("format", "version", "shape", "size", "preset", "sources") if info.get(k) != expected[k]]
    if not problems and data.stat().st_size != int(np.prod(expected["shape"])) * np.dtype(expected["dtype"]).itemsize:
        problems = ["file size"]
    if problems:
        log.warning(
            "ignoring image cache at %s: its %s do(es) not match the data; rebuild it with `covfuse data cache %s --size %d --preset %s%s`",
            data, ", ".join(problems), meta.path if meta.format != "celeba" else meta.root, size, preset,
            f" --cache_dir {cache_dir}" if cache_dir is not None else "",
        )
        return None
    log.info("using image cache at %s", data)
    return ImageCache(data, info)


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def build_cache(
    meta: SampleTable | CelebAMeta,
    size: int,
    preset: str = "center-crop",
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    chunk: int = 1024,
    progress: bool = True,
    rebuild: bool = False,
) -> ImageCache:
    """Decode every image of ``meta`` into the cache (resuming an interrupted build); return it.

    ``workers`` processes decode chunks of ``chunk`` images in parallel (default: one per 5,000
    images up to the available CPUs, so small folders run in-process; 0 or 1: in this process).
    An existing valid cache is returned as is unless ``rebuild``.
    """
    size, preset = check_size(size), check_preset(preset)
    meta = as_table(meta)
    existing = None if rebuild else open_cache(meta, size, preset, cache_dir)
    if existing is not None:
        return existing
    desc = _description(meta, size, preset)
    data, info_path = cache_paths(meta, size, preset, cache_dir, desc["dtype"])
    made_folder = not data.parent.exists()
    try:
        data.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{data.parent}: cannot create the cache folder ({exc.strerror}); set data.cache_dir DIR "
                        "(fit) or --cache_dir DIR (data cache) to a writable folder") from None
    # Two processes (two runs of a study, two SLURM tasks, `data cache` beside a fit) may want the
    # same cache at once: one builds it, the other waits for the lock and then finds it built.
    lock = data.with_name(data.name + ".lock")
    try:
        with FileLock(str(lock)):
            existing = None if rebuild else open_cache(meta, size, preset, cache_dir)
            if existing is not None:
                return existing
            return _build(meta, size, preset, desc, data, info_path, workers, chunk, progress)
    except UserError:
        if made_folder:  # a first build that failed before any chunk: leave no folder behind
            remove_if_alone(lock)
        elif not data.with_name(data.name + ".partial").exists() and not data.exists():
            lock.unlink(missing_ok=True)  # nothing of this source to guard in a shared folder
        raise


def remove_if_alone(lock: Path) -> None:
    """Remove a cache folder this command made, and its lock file, when nothing else is in it."""
    if [p.name for p in lock.parent.iterdir()] == [lock.name]:
        lock.unlink(missing_ok=True)
        lock.parent.rmdir()


def _fill_in_chunks(fill, task, partial: Path, marker: Path, nbytes: int, desc: dict, n: int, chunk: int,
                    workers: int | None, per_worker: int, progress: bool, what: str, unit: str,
                    resume_hint: str) -> dict[int, object]:
    """The chunked, resumable build both caches share: ``fill(*task(start))`` writes rows
    ``start...start+chunk`` of ``partial`` (a file of ``nbytes``) in worker processes (or in this
    one), and ``marker`` records after each chunk which are done and what each returned, so an
    interrupted build resumes with only the missing chunks. Returns {start: fill's result} for
    every chunk. A failure with chunks done keeps them and says ``resume_hint`` resumes them."""
    starts = list(range(0, n, chunk))
    done: dict[int, object] = {}
    if partial.is_file() and marker.is_file():
        try:
            state = json.loads(marker.read_text())
            if state.get("description") == desc and state.get("chunk") == chunk:
                results = state.get("results", {})
                done = {int(s): results.get(str(s)) for s in state["done"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            done = {}
        if done:
            log.info("resuming %s build at %s: %d of %d chunks done", what, partial, len(done), len(starts))
    if not done:
        with open(partial, "wb") as f:  # sparse file of the final size
            f.truncate(nbytes)

    todo = [s for s in starts if s not in done]
    workers = default_workers(len(todo) * chunk, per_worker) if workers is None else workers
    with tqdm(total=n, initial=sum(min(chunk, n - s) for s in done), desc=f"caching {what}", unit=unit,
              disable=not progress, mininterval=2) as bar:
        try:
            for i, result in run_chunks(fill, [task(s) for s in todo], workers):
                done[todo[i]] = result
                _write_json(marker, {"description": desc, "chunk": chunk, "done": sorted(done),
                                     "results": {str(s): r for s, r in sorted(done.items())}})
                bar.update(min(chunk, n - todo[i]))
        except UserError as exc:
            if not done:  # nothing worth resuming: leave nothing behind
                partial.unlink(missing_ok=True)
                marker.unlink(missing_ok=True)
                raise
            # The chunks already done stay valid: say so, rather than leave an unexplained file.
            raise UserError(f"{exc} (the {len(done)} finished chunks stay in {partial.name}; {resume_hint} "
                            "resumes from them)") from None
    return done


def _build(meta, size: int, preset: str, desc: dict, data: Path, info_path: Path,
           workers: int | None, chunk: int, progress: bool) -> ImageCache:
    """The build itself, under the cache's lock: resume ``.partial`` chunks, decode the rest, rename."""
    partial = data.with_name(data.name + ".partial")
    marker = data.with_name(data.stem + ".progress.json")
    shape, n = tuple(desc["shape"]), len(meta)
    any_format = meta.format != "celeba"
    _fill_in_chunks(
        _fill_chunk,
        lambda s: (str(partial), shape, s, [str(f) for f in meta.files[s : s + chunk]], size, preset, desc["dtype"],
                   any_format),
        partial, marker, int(np.prod(shape)) * np.dtype(desc["dtype"]).itemsize, desc, n, chunk, workers, 5_000,
        progress, f"{size}px", "img", "the next `covfuse data cache`")
    desc = {**desc, "decoder": decoders_used(meta), "rules": image_rules(meta)}
    # Replace this source's own cache only now that the new one is complete: a failed build leaves
    # the previous cache (and every other source's) as it was.
    info_path.unlink(missing_ok=True)
    for suffix in SUFFIX.values():  # the same cache in the other depth, if the files changed depth
        other = data.with_suffix("." + suffix)
        if other != data:
            other.unlink(missing_ok=True)
    os.replace(partial, data)
    _write_json(info_path, desc)
    marker.unlink(missing_ok=True)
    log.info("wrote image cache %s (%d images, %d px, %s)", data, n, size, preset)
    return ImageCache(data, desc)


# ---------------------------------------------------------------------------------- volumes
def _volume_key(files: Sequence[Path], settings: Preprocessing) -> str:
    """Identifies the volume cache's content: the path, size and mtime of every file each volume is read from,
    and the preprocessing."""
    h = hashlib.sha1(json.dumps(settings.record(), sort_keys=True).encode())
    for f in files:
        for member in volume_files(Path(f)):
            h.update(file_stamp(member).encode())
    return h.hexdigest()[:16]


class VolumeCache:
    """float16 memmap (N, 1, S, S, S), row i = files[i] preprocessed; ``cache[i]`` is a tensor."""

    def __init__(self, path: Path, info: dict):
        self.path, self.info = Path(path), info
        self.shape = tuple(info["shape"])
        self._array: np.memmap | None = None

    def _data(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.float16, mode="r", shape=self.shape)
        return self._array

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._data()[row]))

    def __getstate__(self) -> dict:  # worker processes reopen the memmap; no voxels are pickled
        return {"path": self.path, "info": self.info, "shape": self.shape, "_array": None}


def volume_cache_paths(files: Sequence[Path], settings: Preprocessing, cache_dir: Path,
                       name: str = "volumes") -> tuple[Path, Path]:
    """(data, metadata) of the volume cache; ``name`` says whose it is (:func:`source_key`), the key
    which files and settings it holds."""
    stem = f"{name}-{settings.size}-{settings.geometry}-{settings.intensity}-{_volume_key(files, settings)}"
    return cache_dir / f"{stem}.f16", cache_dir / f"{stem}.json"


def open_volume_cache(files: Sequence[Path], settings: Preprocessing, cache_dir: Path,
                      name: str = "volumes") -> VolumeCache | None:
    """The volume cache for exactly these files and settings, or None (the files are read instead)."""
    data, meta = volume_cache_paths(files, settings, cache_dir, name)
    if not meta.is_file() or not data.is_file():
        return None
    info = json.loads(meta.read_text())
    expected = len(files) * settings.size ** 3 * 2
    if info.get("format") != VOLUME_FORMAT or data.stat().st_size != expected:
        log.warning("ignoring volume cache %s: size or format does not match", data)
        return None
    log.info("using volume cache at %s", data)
    return VolumeCache(data, info)


def build_volume_cache(files: Sequence[Path], settings: Preprocessing, cache_dir: Path, *, progress: bool = True,
                       name: str = "volumes", workers: int | None = None, chunk: int = 32) -> VolumeCache:
    """Preprocess every file once into the float16 memmap, as the image cache is built: ``workers``
    processes fill chunks of ``chunk`` volumes (default: one per 200 volumes up to the available CPUs;
    0 or 1: in this process), each row written straight to ``.partial`` (never mapped, so memory
    stays one chunk's worth whatever the cohort), resumable after an interruption, renamed when complete."""
    existing = open_volume_cache(files, settings, cache_dir, name)
    if existing is not None:
        return existing
    data, meta = volume_cache_paths(files, settings, cache_dir, name)
    made_folder = not cache_dir.exists()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Two processes (two runs of a study, two SLURM tasks) may want the same cache at once: one
    # builds it, the other waits for the lock and then finds it built.
    lock = data.with_suffix(".lock")
    try:
        with FileLock(str(lock)):
            existing = open_volume_cache(files, settings, cache_dir, name)
            if existing is not None:
                return existing
            return _build_volumes(files, settings, data, meta, progress, workers, chunk)
    except UserError:
        if made_folder:  # a failed first build leaves no folder behind
            remove_if_alone(lock)
        elif not data.with_suffix(".f16.partial").exists() and not data.exists():
            lock.unlink(missing_ok=True)  # nothing of this source to guard in a shared folder
        raise


def _build_volumes(files: Sequence[Path], settings: Preprocessing, data: Path, meta: Path,
                   progress: bool, workers: int | None, chunk: int) -> VolumeCache:
    """The volume build itself, under the cache's lock (:func:`_fill_in_chunks`, as the image cache)."""
    partial = data.with_suffix(".f16.partial")
    marker = data.with_suffix(".progress.json")
    shape = (len(files), 1, *(settings.size,) * 3)
    desc = {"format": VOLUME_FORMAT, "version": VOLUME_VERSION, "shape": list(shape), "preprocessing": asdict(settings)}
    chunk = max(1, int(chunk))
    done = _fill_in_chunks(
        _fill_volumes, lambda s: (str(partial), shape, s, [str(f) for f in files[s : s + chunk]], settings),
        partial, marker, int(np.prod(shape)) * 2, desc, len(files), chunk, workers, 200, progress, "volumes", "vol",
        "the next run with --data.cache build")
    # row -> NaN/Inf voxels set to 0, so a later run's data.nonfinite applies without the files
    nonfinite = {row: count for s in sorted(done) for row, count in (done[s] or {}).items()}
    os.replace(partial, data)
    info = {**desc, "dtype": "float16", "files": [str(f) for f in files], "decoder": library(), "nonfinite": nonfinite}
    atomic_write_text(meta, json.dumps(info, indent=1) + "\n")
    marker.unlink(missing_ok=True)
    log.info("wrote volume cache %s (%d volumes, %d^3)", data, len(files), settings.size)
    return VolumeCache(data, info)
