"""The decoder interfaces, the errors and the shared resize: 2D files (see :mod:`covfuse.data.decoders`) and
volumes (:class:`VolumeReader`, see :mod:`covfuse.data.decoders.volume`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from covfuse.data.decode import DEFAULT_PRESET, crop_box
from covfuse.errors import UserError


class UnsupportedImage(UserError):
    """A valid file covfuse cannot turn into an image as it is (a missing codec, a stack, float samples)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot read the image ({reason})")


class UnreadableVolume(UserError):
    """A file or folder that does not hold one volume covfuse can read as it is (several DICOM series, a gap
    between slices, a 4-D file without data.volume_index ...); the message names it and says what to do."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class Decoder:
    """One file format: ``accepts`` the first bytes, ``read`` full-resolution pixels, ``probe`` the header's
    :func:`pixel_info`, ``decode`` to (C, S, S)."""

    name = ""
    suffixes: tuple[str, ...] = ()
    errors: tuple[type[BaseException], ...] = ()  # the library's own exceptions that mean "bad file"

    def accepts(self, head: bytes) -> bool:
        raise NotImplementedError

    def read(self, path: Path, data: bytes) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def probe(self, path: Path, data: bytes) -> dict:
        """:func:`pixel_info` without decoding, where the header says it; by default by reading."""
        return self.read(path, data)[1]

    def decode(self, path: Path, data: bytes, size: int, preset: str) -> np.ndarray:
        return resize_pixels(self.read(path, data)[0], size, preset)


def pixel_info(fmt: str, pixels: np.ndarray) -> dict:
    """The info dict :func:`read_pixels` returns next to an (H, W) or (H, W, 3) uint8/uint16 array."""
    return info(fmt, 8 * pixels.dtype.itemsize, 1 if pixels.ndim == 2 else pixels.shape[2], *pixels.shape[:2])


def info(fmt: str, bits: int, channels: int, height: int, width: int) -> dict:
    return {"format": fmt, "bits": int(bits), "channels": int(channels), "height": int(height), "width": int(width)}


def resize_pixels(pixels: np.ndarray, size: int, preset: str = DEFAULT_PRESET) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8/uint16 -> (C, size, size), same dtype: the preset's crop box, then PIL's
    bilinear resize (as :func:`~covfuse.data.decode.decode_image`); uint16 goes through 32-bit float
    channels (PIL has no 16-bit bilinear) and is rounded back, so 16-bit data stays 16-bit."""
    height, width = pixels.shape[:2]
    box = crop_box(width, height, preset)
    if pixels.dtype == np.uint8:
        out = np.asarray(Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB").resize(
            (size, size), Image.BILINEAR, box=box))
        return np.ascontiguousarray(out[None] if out.ndim == 2 else out.transpose(2, 0, 1))
    channels = pixels[..., None] if pixels.ndim == 2 else pixels
    out = np.empty((channels.shape[2], size, size), dtype=np.uint16)
    for c in range(channels.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(channels[..., c], dtype=np.float32), "F")
        out[c] = np.clip(np.rint(np.asarray(plane.resize((size, size), Image.BILINEAR, box=box))), 0, 65535)
    return out


class VolumeSource:
    """One volume opened from its header: ``format``, ``shape`` (3-D, or 4-D with the volumes last), ``affine`` (voxel
    indices -> RAS mm, as nibabel gives it), ``files`` (every file it is read from, for the cache's stamps),
    ``floating`` (whether voxels can be NaN/Inf) and :meth:`voxels` (the values as stored after the file's
    scaling, (X, Y, Z); ``index`` picks one volume of a 4-D file)."""

    format = ""  # what it is read from, as `covfuse data info` counts it: NIfTI, MGH, Analyze, DICOM series ...
    shape: tuple[int, ...] = ()
    affine: np.ndarray
    files: list[Path]
    floating: bool = False

    def voxels(self, index: int | None = None) -> np.ndarray:
        raise NotImplementedError


class VolumeReader:
    """One kind of volume: ``accepts(path, head)`` (a folder has an empty ``head``; a file its first 132
    bytes) and ``open(path, series)`` (a :class:`VolumeSource`; ``series`` is data.series, for a folder
    holding several DICOM series)."""

    name = ""
    kind = ""  # what a file it cannot read is called in the message ("DICOM", "NIfTI, MGH or Analyze")

    def accepts(self, path: Path, head: bytes) -> bool:
        raise NotImplementedError

    def open(self, path: Path, series: str | None = None) -> VolumeSource:
        raise NotImplementedError
