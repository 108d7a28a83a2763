"""2D image files into arrays: one small decoder class per format, picked by magic bytes, then suffix.

One interface for every format, in the manner of MONAI's ``ImageReader`` classes: every decoder
(:class:`~covfuse.data.decoders.base.Decoder`) answers ``accepts(head)`` (do the first bytes look like
my format?), ``read(path, data)`` (the full-resolution pixels plus an info dict), ``probe(path, data)``
(that info dict from the header, where the format allows) and ``decode(path, data, size, preset)`` (the
(C, S, S) array the cache stores). A new format is one new module and one line in :data:`DECODERS`;
nothing downstream changes.

Torch-free to import, like :mod:`covfuse.data.decode`, so the cache's worker processes start fast;
pydicom and tifffile load only when a DICOM or TIFF file is read.

Volumes have their own interface here, :mod:`covfuse.data.decoders.volume` (header, voxels and the MONAI
preprocessing into a model input) with one reader per kind (``nibabel_volumes``: NIfTI, MGH, Analyze;
``dicom_volumes``: DICOM series folders and multi-frame files); a manifest's paths say which kind a table holds.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from covfuse.data.decode import DEFAULT_PRESET, CorruptImage, check_preset, check_size
from covfuse.data.decoders.base import Decoder, UnsupportedImage
from covfuse.data.decoders.dicom import DicomDecoder
from covfuse.data.decoders.pil import PilDecoder
from covfuse.data.decoders.tiff import TiffDecoder
from covfuse.errors import UserError

FORMATS = "PNG, JPEG, BMP, TIFF or DICOM"
# The order of evidence: DICOM's marker at byte 128 first (its 128-byte preamble may hold anything,
# a TIFF header included: "dual-personality" files), then PNG/JPEG/BMP and TIFF signatures at byte 0,
# then the suffix.
DECODERS: list[Decoder] = [DicomDecoder(), PilDecoder(), TiffDecoder()]
TRIED = "no DICOM marker at byte 128, no PNG, JPEG, BMP or TIFF signature, and {suffix}"
log = logging.getLogger(__name__)
LIBRARY_LOGGERS = ("tifffile", "pydicom", "PIL", "png")


#: The rules a decoder may apply to a file (its info dict's ``"rule"``), each said in one line by
#: :func:`rule_notes`: ``covfuse data info`` and the fit log count the files each rule touched.
RULES = {
    "exif-orientation": "{n} of {total} image files carry an EXIF orientation: turned upright as viewers show "
                        "them (Pillow's ImageOps.exif_transpose) before cropping and resizing",
    "dicom-percentile-window": "{n} of {total} DICOM files hold float or over-16-bit grey values without a VOI "
                               "window: their modality values are windowed to each file's 0.5-99.5 percentile "
                               "range (or its WindowCenter/Width) onto 16 bits (docs/data.md, 'DICOM')",
}


def rule_notes(counts: dict[str, int], total: int) -> list[str]:
    """One line per rule in ``counts`` (rule: files), in :data:`RULES` order."""
    return [RULES[rule].format(n=counts[rule], total=total) for rule in RULES if counts.get(rule)]


def decoder_for(path: str | os.PathLike, head: bytes) -> Decoder | None:
    """The first decoder whose magic bytes match ``head`` (in :data:`DECODERS` order), else the first that
    claims the suffix, else None."""
    for decoder in DECODERS:
        if decoder.accepts(head):
            return decoder
    name = str(path).lower()
    return next((d for d in DECODERS if name.endswith(d.suffixes)), None)


class _ToDebug(logging.Filter):
    """A library's own log line about a file becomes a DEBUG record of covfuse's (kept in a run's log at
    debug level, never printed raw on the terminal); the error, if any, reaches the user as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = f"{record.name} says: {record.getMessage()}", ()
        record.levelno, record.levelname, record.name = logging.DEBUG, "DEBUG", log.name
        return True


@contextlib.contextmanager
def _quiet(path: Path):
    """Third-party warnings and log lines raised while reading ``path`` go to covfuse's log at debug level."""
    quiet = _ToDebug()
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
    for w in caught:
        log.debug("%s: %s says: %s", path, w.category.__name__, " ".join(str(w.message).split()))


def _load(path: str | os.PathLike) -> tuple[Decoder, Path, bytes]:
    path = Path(path)
    try:
        with open(path, "rb") as f:  # one read; every decoder parses from memory
            data = f.read()
    except FileNotFoundError:
        raise CorruptImage(path, "the file is missing") from None
    except IsADirectoryError:
        raise CorruptImage(path, "a folder, not an image file") from None
    except OSError as exc:
        raise CorruptImage(path, exc.strerror or type(exc).__name__) from None
    if not data:
        raise CorruptImage(path, "empty file, 0 bytes")
    decoder = decoder_for(path, data[:132])
    if decoder is None:
        suffix = f"the suffix {path.suffix!r} is not one of theirs" if path.suffix else "no suffix"
        raise CorruptImage(path, f"not an image file: none of {FORMATS}; tried: {TRIED.format(suffix=suffix)}")
    return decoder, path, data


def _guard(decoder: Decoder, path: Path, call):
    """Run ``call``; a library's complaint about the file becomes one :class:`CorruptImage` line."""
    try:
        with _quiet(path):
            return call()
    except UserError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error,
            Image.DecompressionBombError, *decoder.errors) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        if isinstance(exc, Image.UnidentifiedImageError):
            reason = "not an image file"  # PIL's text names a BytesIO, not the file
        raise CorruptImage(path, f"{decoder.name}: {reason}") from None


def read_pixels(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """The whole image at full resolution: (H, W) grey or (H, W, 3) RGB, uint8 or uint16, and
    ``{"format", "bits", "channels", "height", "width"}`` (plus ``"rule"`` where one of :data:`RULES` applied).

    8- and 16-bit files keep their values; DICOM is the displayed image (modality LUT or rescale,
    then VOI LUT or window, MONOCHROME1 inverted) mapped linearly onto 0..65535 over its display
    range (see :mod:`covfuse.data.decoders.dicom`). A missing, empty, truncated or non-image file
    raises :class:`~covfuse.data.decode.CorruptImage` naming it; a readable file covfuse cannot use
    as it is (a missing codec, a multi-page stack, float samples) raises :class:`UnsupportedImage`.
    """
    decoder, path, data = _load(path)
    return _guard(decoder, path, lambda: decoder.read(path, data))


def probe(path: str | os.PathLike) -> dict:
    """The info dict of :func:`read_pixels` (format, bits, channels, height, width) from the file's header
    where the format allows (PNG, JPEG, BMP, DICOM, uncompressed-layout TIFF): to size a cache before
    decoding. Errors as :func:`read_pixels`, except that damaged pixel data may only show when decoded."""
    decoder, path, data = _load(path)
    return _guard(decoder, path, lambda: decoder.probe(path, data))


def decode_file(path: str | os.PathLike, size: int, preset: str = DEFAULT_PRESET) -> np.ndarray:
    """The image as (C, size, size), C = 1 (grey) or 3 (RGB, also for RGBA and palette files), uint8
    for 8-bit sources and uint16 for 16-bit ones, cropped and resized by ``preset`` as
    :func:`~covfuse.data.decode.decode_image` does (bilinear). An 8-bit colour JPEG/PNG/BMP gives
    exactly ``decode_image(path, size, preset)``. Errors as :func:`read_pixels`."""
    size, preset = check_size(size), check_preset(preset)
    decoder, path, data = _load(path)
    return _guard(decoder, path, lambda: decoder.decode(path, data, size, preset))


__all__ = ["DECODERS", "RULES", "Decoder", "UnsupportedImage", "decode_file", "decoder_for", "probe", "read_pixels",
           "rule_notes"]
