"""TIFF through tifffile (8/16-bit, grey/RGB/palette, any planar layout), Pillow for codecs tifffile lacks."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from covfuse.data.decoders.base import Decoder, UnsupportedImage, info, pixel_info
from covfuse.data.decoders.pil import PilDecoder

MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


class TiffDecoder(Decoder):
    """The first image of a TIFF file; a stack of images (pages, z, time) is refused, one line."""

    name = "TIFF"
    suffixes = (".tif", ".tiff")

    @property
    def errors(self):
        import tifffile

        return (tifffile.TiffFileError,)

    def accepts(self, head: bytes) -> bool:
        return head.startswith(MAGIC)

    def probe(self, path: Path, data: bytes) -> dict:
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first if tif.pages else None
            plain = (page is not None and page.dtype in (np.uint8, np.uint16) and len(tif.series[0].shape) == len(page.shape)
                     and page.photometric in (0, 1, 2))  # MINISWHITE, MINISBLACK, RGB
            if plain:
                channels = 3 if page.photometric == 2 else 1
                return info("TIFF", 8 * page.dtype.itemsize, channels, page.imagelength, page.imagewidth)
        return self.read(path, data)[1]

    def read(self, path: Path, data: bytes) -> tuple[np.ndarray, dict]:
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not tif.pages:
                raise ValueError("no image in the file")
            page = tif.pages.first
            series = tif.series[0] if tif.series else None
            if series is not None and len(series.shape) > len(page.shape):
                raise UnsupportedImage(path, f"a stack of images, shape {tuple(series.shape)} ({series.axes}); "
                                             "covfuse reads one 2D image per file: save each as its own file")
            try:
                pixels = page.asarray()
            except (KeyError, ValueError) as exc:  # tifffile names the codec package it lacks (imagecodecs)
                if "imagecodecs" not in str(exc):
                    raise
                return self._pillow(path, data, str(exc).strip("'\""))
            pixels = _to_standard(path, pixels, page)
        return pixels, pixel_info("TIFF", pixels)

    @staticmethod
    def _pillow(path: Path, data: bytes, why: str) -> tuple[np.ndarray, dict]:
        """LZW, PackBits, JPEG-in-TIFF ...: Pillow decodes these itself (8-bit, 16-bit grey)."""
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                pixels = PilDecoder._array(path, img)
        except (OSError, ValueError) as exc:
            raise UnsupportedImage(path, f"{why}; Pillow cannot read it either ({exc}); pip install imagecodecs") from None
        return pixels, pixel_info("TIFF", pixels)


def _to_standard(path: Path, pixels: np.ndarray, page) -> np.ndarray:
    """tifffile's array -> (H, W) or (H, W, 3) uint8/uint16, per the page's photometric interpretation."""
    from tifffile import PHOTOMETRIC

    axes = page.axes.replace("Q", "")
    if "S" in axes and axes.index("S") < axes.index("Y"):  # planar configuration 2: samples first
        pixels = np.moveaxis(pixels, axes.index("S"), -1)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.dtype not in (np.uint8, np.uint16):
        bad = int((~np.isfinite(pixels)).sum()) if pixels.dtype.kind in "fc" else 0
        nonfinite = f", {bad:,} of them NaN/Inf" if bad else ""
        raise UnsupportedImage(path, f"{pixels.dtype} samples{nonfinite}; covfuse reads 8- and 16-bit unsigned images: "
                                     "convert it (e.g. scaled into uint16" + (", NaN/Inf set to 0)" if bad else ")"))
    photometric = page.photometric
    if photometric == PHOTOMETRIC.PALETTE and page.colormap is not None:
        colormap = np.asarray(page.colormap)  # (3, 2**bits), 16-bit entries
        pixels = colormap[:, pixels].transpose(1, 2, 0)
        return (pixels // 257).astype(np.uint8) if (colormap % 257 == 0).all() else pixels.astype(np.uint16)
    if photometric == PHOTOMETRIC.MINISWHITE:
        pixels = np.iinfo(pixels.dtype).max - pixels
    if pixels.ndim == 3:
        if photometric in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE) or pixels.shape[2] < 3:
            pixels = pixels[..., 0]  # grey (+ alpha): the grey plane
        elif photometric == PHOTOMETRIC.RGB:
            pixels = pixels[..., :3]  # RGB (+ alpha)
        else:
            raise UnsupportedImage(path, f"photometric interpretation {photometric.name}; save it as grey or RGB")
    if pixels.ndim != 2 and not (pixels.ndim == 3 and pixels.shape[2] == 3):
        raise UnsupportedImage(path, f"array of shape {pixels.shape}; covfuse reads one grey or RGB image per file")
    return np.ascontiguousarray(pixels)
