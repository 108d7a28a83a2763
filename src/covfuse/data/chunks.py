"""Cache and verify workers, torch-free so worker processes start fast: every 2D file decoded (CelebA's
JPEG path, or the decoder of its format, :mod:`covfuse.data.decoders`) and put in its table's layout
(:func:`conform`), a chunk at a time into the cache's memmap (:func:`fill_chunk`) or checked
(:func:`unreadable`); NIfTI volumes preprocessed a chunk at a time into the volume cache
(:func:`fill_volumes`; torch and MONAI load in the worker when the first volume is read).

Kept apart from :mod:`covfuse.data.decode` (presets, the CelebA JPEG path), which the decoders build on:
this module sits above both, so neither imports the other in a circle. pydicom and tifffile load only
when a DICOM or TIFF file is read.
"""
from __future__ import annotations

import numpy as np

from covfuse.data.decode import CorruptImage, decode_image
from covfuse.data.decoders import decode_file
from covfuse.data.decoders.volume import Preprocessing, load_volume, nonfinite_voxels, transform
from covfuse.errors import UserError


def conform(image: np.ndarray, channels: int, dtype: str) -> np.ndarray:
    """``image`` (C, S, S) in a table's layout: grey repeated into RGB or RGB made grey (ITU-R 601 luma,
    as PIL's ``convert("L")``), 8-bit widened to 16 (x 257: 255 -> 65535) or 16-bit narrowed to 8
    (rounded). A manifest may mix files; it is read in its richest layout, so every batch stacks."""
    if image.shape[0] != channels:
        if channels == 3:
            image = np.repeat(image, 3, axis=0)
        else:
            luma = image.astype(np.float64).transpose(1, 2, 0) @ np.array([0.299, 0.587, 0.114])
            image = np.rint(luma)[None].astype(image.dtype)
    if image.dtype != np.dtype(dtype):
        if np.dtype(dtype) == np.uint16:
            image = image.astype(np.uint16) * np.uint16(257)
        else:
            image = np.rint(image.astype(np.float64) / 257).astype(np.uint8)
    return np.ascontiguousarray(image)


def fill_chunk(path: str, shape: tuple, start: int, files: list[str], size: int, preset: str,
               dtype: str = "uint8", any_format: bool = False) -> int:
    """Cache worker: decode ``files`` into rows ``start...`` of the memmap at ``path`` (JPEG/PIL decoding,
    or with ``any_format`` covfuse.data.decoders for PNG/TIFF/DICOM of any depth)."""
    decode = decode_file if any_format else decode_image
    array = np.memmap(path, dtype=np.dtype(dtype), mode="r+", shape=shape)
    for i, file in enumerate(files):
        try:
            image = decode(file, size, preset)
            array[start + i] = conform(image, shape[1], dtype) if any_format else image
        except CorruptImage as exc:
            raise UserError(f"{file}: cannot decode the image ({exc.reason}); `covfuse data verify ROOT` lists all such "
                            "files; `covfuse fit --skip_corrupt --data.cache off` trains without them") from None
    array.flush()
    del array
    return len(files)


def fill_volumes(path: str, shape: tuple, start: int, files: list[str], settings: Preprocessing) -> dict[str, int]:
    """Volume cache worker: preprocess ``files`` (:func:`~covfuse.data.decoders.volume.load_volume`) into
    rows ``start...`` of the float16 file at ``path``, each row written as soon as it is made (the file
    is never mapped, so the worker holds one volume at a time); returns {row: NaN/Inf voxels set to 0}."""
    pipeline = transform(settings)
    row_bytes = int(np.prod(shape[1:])) * 2
    nonfinite = {}
    with open(path, "r+b") as out:
        for i, file in enumerate(files):
            volume = load_volume(file, settings, pipeline).numpy().astype(np.float16)
            out.seek((start + i) * row_bytes)
            out.write(volume.tobytes())
            if count := nonfinite_voxels(file, settings.choice):
                nonfinite[str(start + i)] = count
    return nonfinite


def unreadable(paths: list[str], any_format: bool = False) -> list[tuple[str, str]]:
    """(file, reason) for each of ``paths`` that does not decode (the worker of
    :func:`covfuse.data.samples.undecodable`: ``covfuse data verify``, ``--skip_corrupt``): CelebA's JPEG
    path, or with ``any_format`` the decoder of every supported format (PNG, TIFF, DICOM ...); a file in a
    format covfuse cannot use (a stack, float samples) counts as not decoding."""
    decode = decode_file if any_format else decode_image
    bad = []
    for path in paths:
        try:
            decode(path, 8, "research")
        except CorruptImage as exc:
            bad.append((path, exc.reason))
        except UserError as exc:  # UnsupportedImage: "PATH: cannot read the image (REASON)"
            bad.append((path, getattr(exc, "reason", str(exc))))
    return bad
