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
"""
from __future__ import annotations

import io
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
        if "PixelData" not in ds and "SOPClassUID" not in ds and "Rows" not in ds:
            raise ValueError("no DICOM image attributes (SOPClassUID, Rows, PixelData): damaged or not DICOM")
        if "PixelData" not in ds:
            raise UnsupportedImage(path, "a DICOM file without pixel data (PixelData); give the image files of the series")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise UnsupportedImage(path, f"a multi-frame DICOM ({frames} frames); covfuse reads one 2D image per file")
        return ds

    def probe(self, path: Path, data: bytes) -> dict:
        ds = self._dataset(path, data)  # pydicom defers the pixel data: nothing is decoded here
        colour = int(ds.get("SamplesPerPixel", 1)) == 3
        bits = 8 if colour and int(ds.BitsAllocated) == 8 else 16
        return info("DICOM", bits, 3 if colour else 1, int(ds.Rows), int(ds.Columns))

    def read(self, path: Path, data: bytes) -> tuple[np.ndarray, dict]:
        ds = self._dataset(path, data)
        pixels = _pixel_array(path, ds)
        if int(ds.get("SamplesPerPixel", 1)) == 3:
            pixels = _colour(pixels, int(ds.BitsStored))
        else:
            pixels = display_pixels(pixels, ds, path)
        return pixels, pixel_info("DICOM", pixels)


def _pixel_array(path: Path, ds) -> np.ndarray:
    """pydicom's pixel array; a compressed transfer syntax without a decoder plugin is one line naming it."""
    from pydicom.pixels import get_decoder

    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise UnsupportedImage(path, f"pixel data compressed as {syntax.name}, which pydicom cannot decode") from None
        if not decoder.is_available:
            raise UnsupportedImage(path, f"pixel data compressed as {syntax.name}; pydicom needs a plugin for it: "
                                         + "; or ".join(decoder.missing_dependencies))
    try:
        return ds.pixel_array
    except RuntimeError as exc:  # every available plugin failed (e.g. Pillow and a 12-bit lossless JPEG)
        if syntax is not None and syntax.is_compressed:
            needs = "; or ".join(get_decoder(syntax).missing_dependencies) or "another decoder plugin"
            raise UnsupportedImage(path, f"pixel data compressed as {syntax.name} did not decode ({str(exc).splitlines()[0]}); "
                                         f"install {needs}") from None
        raise ValueError(str(exc).splitlines()[0]) from None


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
