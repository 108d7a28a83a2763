"""DICOM through pydicom: the displayed image (modality then VOI transform, MONOCHROME1 inverted) as uint16.

The steps are the standard's grayscale pipeline (PS3.4 N.2), done by pydicom's own functions:
``apply_modality_lut`` (Modality LUT, or RescaleSlope/Intercept: stored values -> e.g. Hounsfield
units), then ``apply_voi_lut`` (a VOI LUT, else WindowCenter/Width; with neither the values pass
unchanged). The result lies in a *display range* fixed by the header, not by the image:
[0, 2**bits - 1] for a VOI LUT of ``bits`` bits, otherwise the range the stored bits can hold
(BitsStored, signed or not) taken through the rescale, which is also the range pydicom's windowing
maps onto. That range is mapped linearly onto 0..65535, so the same raw value gives the same output
in every file of a series (no per-image min-max), and MONOCHROME1 (0 = white) is inverted.
Colour files (RGB, YBR converted to RGB by pydicom) keep 8 bits, or are scaled from BitsStored to 16.

**Wide or float grey data** (:func:`percentile_window`): pixel data with more than 16 stored bits and
no VOI window (an RT dose grid, a 32-bit parametric map), or float pixel data (FloatPixelData,
DoubleFloatPixelData), would use a few of the 65536 levels over a display range fixed by the
header (2**32 values for 32 bits). Its modality values are kept in float64 and windowed instead:
to the file's own WindowCenter/Width when it has one, else to the 0.5-99.5 percentile range of its
values (values outside clip to the ends), then mapped linearly onto 0..65535. The info dict says so
(``"rule": "dicom-percentile-window"``); ``covfuse data info`` counts these files and the fit log
says how many there were. NaN/Inf values are refused (no value to give them).

A DICOMDIR (a media index without pixels) and compressed pixel data without a working decoder are
refused in one line naming what to do (:func:`decoder_hint`).
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from covfuse.data.decoders.base import Decoder, UnsupportedImage, info, pixel_info


class DicomDecoder(Decoder):
    """One 2D DICOM image (single frame, grey or colour); a compressed one needs pydicom's codec plugin."""

    name = "DICOM"
    suffixes = (".dcm", ".dicom", ".dic")

    @property
    def errors(self):
        from pydicom.errors import InvalidDicomError

        return (InvalidDicomError, AttributeError, KeyError, TypeError)  # missing or malformed attributes

    def accepts(self, head: bytes) -> bool:
        return head[128:132] == b"DICM"  # the preamble's magic (files without it are found by suffix)

    def _dataset(self, path: Path, data: bytes):
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), force=not self.accepts(data[:132]))
        if "DirectoryRecordSequence" in ds or str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "")) \
                == DICOMDIR_UID:
            raise UnsupportedImage(path, "a DICOMDIR: the index of a DICOM disc or folder, not an image; list the image "
                                         "files it indexes in the manifest instead (the files beside it, e.g. "
                                         f"`find {path.parent} -type f ! -name DICOMDIR`)")
        if "PixelData" not in ds and "SOPClassUID" not in ds and "Rows" not in ds:
            raise ValueError("no DICOM image attributes (SOPClassUID, Rows, PixelData): damaged or not DICOM")
        if not any(tag in ds for tag in PIXEL_TAGS):
            raise UnsupportedImage(path, "a DICOM file without pixel data (PixelData); give the image files of the series")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise UnsupportedImage(path, f"a multi-frame DICOM ({frames} frames); covfuse reads one 2D image per file")
        return ds

    def probe(self, path: Path, data: bytes) -> dict:
        ds = self._dataset(path, data)  # pydicom defers the pixel data: nothing is decoded here
        colour = int(ds.get("SamplesPerPixel", 1)) == 3
        bits = 8 if colour and int(ds.BitsAllocated) == 8 else 16
        out = info("DICOM", bits, 3 if colour else 1, int(ds.Rows), int(ds.Columns))
        return {**out, "rule": WINDOW_RULE} if not colour and needs_window(ds) else out

    def read(self, path: Path, data: bytes) -> tuple[np.ndarray, dict]:
        ds = self._dataset(path, data)
        pixels = _pixel_array(path, ds)
        if int(ds.get("SamplesPerPixel", 1)) == 3:
            pixels = _colour(pixels, int(ds.BitsStored))
        elif needs_window(ds):
            pixels = percentile_window(pixels, ds, path)
            return pixels, {**pixel_info("DICOM", pixels), "rule": WINDOW_RULE}
        else:
            pixels = display_pixels(pixels, ds, path)
        return pixels, pixel_info("DICOM", pixels)


DICOMDIR_UID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
WINDOW_RULE = "dicom-percentile-window"
PERCENTILES = (0.5, 99.5)


def needs_window(ds) -> bool:
    """Grey data the display-range mapping would squeeze into a few levels: float pixel data, or more than
    16 stored bits without a VOI LUT or window (module docstring)."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return True
    windowed = bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)
    return int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16) > 16 and not windowed


def _first(value) -> float:
    """A DICOM value that may be multi-valued (WindowCenter 40\\400): its first."""
    return float(value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value)


def window_range(values: np.ndarray, ds) -> tuple[float, float]:
    """(low, high) of the float window rule: the file's first WindowCenter/Width (linear), else the
    :data:`PERCENTILES` of its values; a constant image gets (v, v + 1)."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        low, high = center - width / 2, center + width / 2
    else:
        low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    return (low, high) if high > low else (low, low + 1.0)


def percentile_window(stored: np.ndarray, ds, path: Path) -> np.ndarray:
    """Wide or float grey values -> uint16 0..65535: the modality LUT in float64, then :func:`window_range`
    mapped linearly (clipped at its ends), MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImage(path, f"photometric interpretation {photometric}; covfuse reads MONOCHROME1/2 and RGB")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise UnsupportedImage(path, f"float pixel data with {bad} NaN/Inf value(s); covfuse cannot tell what they "
                                     "stand for: set them to a number (e.g. 0) in the file")
    low, high = window_range(values, ds)
    scaled = (values - low) / (high - low) * 65535.0
    out = np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)
    return 65535 - out if photometric == "MONOCHROME1" else out


def _pixel_array(path: Path, ds) -> np.ndarray:
    """pydicom's pixel array; compressed pixel data no installed decoder reads is one line naming what to do."""
    from pydicom.pixels import get_decoder

    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    compressed = syntax is not None and syntax.is_compressed
    if compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise UnsupportedImage(path, f"pixel data compressed as {syntax.name}, which no decoder of pydicom's reads; "
                                         "convert the file to uncompressed DICOM with your DICOM toolkit") from None
        if not decoder.is_available:
            raise UnsupportedImage(path, f"pixel data compressed as {syntax.name}; {decoder_hint(decoder)}")
    try:
        return ds.pixel_array
    except RuntimeError as exc:  # every available plugin failed (e.g. Pillow and a 12-bit JPEG Extended)
        if not compressed:
            raise ValueError(str(exc).splitlines()[0]) from None
        reasons = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        hint = decoder_hint(get_decoder(syntax))
        if hint:
            raise UnsupportedImage(path, f"pixel data compressed as {syntax.name} did not decode with the decoders "
                                         f"installed ({'; '.join(reasons)[:160]}); {hint}") from None
        raise UnsupportedImage(path, f"pixel data compressed as {syntax.name}: no decoder installed here reads it "
                                     f"({'; '.join(reasons)[:160]}); convert the file to uncompressed DICOM with your "
                                     "DICOM toolkit, or replace it") from None


def decoder_hint(decoder) -> str:
    """What to install for a transfer syntax, from pydicom's list of its plugins that are missing here:
    ``pip install pylibjpeg pylibjpeg-libjpeg`` (JPEG Extended 12-bit, JPEG Lossless, JPEG-LS; checked on
    pydicom's JPGExtended.dcm and JPEGLSNearLossless_16.dcm) or the plugin pydicom names for the syntax;
    never gdcm (the PyPI package ``gdcm`` is another project, and python-gdcm prints raw C messages). "" when
    every plugin pydicom knows is installed."""
    packages = {}
    for line in decoder.missing_dependencies:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        plugin, _, needs = line.partition(" - requires ")
        names = [re.split(r"[<>=!~ ]", part.strip(), maxsplit=1)[0] for part in needs.split(" and ")]
        packages[plugin.strip()] = [n for n in names if n and n != "numpy"]
    choice = packages.get("pylibjpeg") or next((p for name, p in packages.items() if name != "gdcm" and p), None)
    return f"install a decoder for it: pip install {' '.join(choice)}" if choice else ""


def display_range(ds) -> tuple[float, float]:
    """(low, high) of the values ``apply_voi_lut(apply_modality_lut(x, ds), ds)`` can take (module docstring)."""
    voi = ds.get("VOILUTSequence")
    if voi:
        return 0.0, float(2 ** int(voi[0].LUTDescriptor[2]) - 1)
    modality = ds.get("ModalityLUTSequence")
    if modality:
        return 0.0, float(2 ** int(modality[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    low, high = (0, 2**bits - 1) if int(ds.get("PixelRepresentation", 0)) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted((low * float(slope) + float(intercept), high * float(slope) + float(intercept)))
    return float(low), float(high)


def display_pixels(stored: np.ndarray, ds, path: Path) -> np.ndarray:
    """Stored grey values -> uint16 0..65535 over the display range, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImage(path, f"photometric interpretation {photometric}; covfuse reads MONOCHROME1/2 and RGB")
    values = apply_voi_lut(apply_modality_lut(stored, ds), ds)
    low, high = display_range(ds)
    scaled = (np.asarray(values, dtype=np.float64) - low) / max(high - low, 1e-12) * 65535.0
    out = np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)
    return 65535 - out if photometric == "MONOCHROME1" else out


def _colour(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    scaled = pixels.astype(np.float64) / (2**bits_stored - 1) * 65535.0
    return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)
