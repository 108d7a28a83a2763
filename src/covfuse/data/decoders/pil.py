"""PNG, JPEG and BMP through Pillow (and 16-bit colour PNG through pypng, which Pillow reads as 8-bit)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from covfuse.data.decode import crop_box, decode_image
from covfuse.data.decoders.base import Decoder, UnsupportedImage, info, pixel_info, resize_pixels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "P", "PA", "LAB", "HSV"}  # -> 8-bit RGB
GREY_MODES = {"1", "L", "LA", "La"}  # -> 8-bit grey (alpha dropped)
GREY16_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # -> 16-bit grey


def _format(head: bytes) -> str:
    if head.startswith(PNG_MAGIC):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"BM"):
        return "BMP"
    return ""


def _png16_colour(data: bytes) -> bool:
    """A 16-bit PNG with colour or alpha (IHDR: bit depth at byte 24, colour type 2/4/6 at byte 25):
    Pillow would drop its low bytes, so pypng reads it."""
    return data.startswith(PNG_MAGIC) and len(data) > 25 and data[24] == 16 and data[25] in (2, 4, 6)


def _read_png16(data: bytes) -> np.ndarray:
    import png  # pypng: pure Python, used only for the 16-bit colour PNGs Pillow cannot keep 16-bit

    try:
        width, height, rows, info = png.Reader(bytes=data).asDirect()
        planes = info["planes"]
        pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    except png.Error as exc:
        raise ValueError(str(exc)) from None
    return np.ascontiguousarray(pixels[..., :3] if planes >= 3 else pixels[..., 0])


class PilDecoder(Decoder):
    """PNG (8/16-bit, grey/colour), JPEG and BMP. 8-bit colour files decode through
    :func:`~covfuse.data.decode.decode_image` itself, so a CelebA image gives the same bytes either way."""

    name = "PIL"
    suffixes = (".png", ".jpg", ".jpeg", ".jpe", ".bmp")

    def accepts(self, head: bytes) -> bool:
        return bool(_format(head))

    def read(self, path: Path, data: bytes) -> tuple[np.ndarray, dict]:
        fmt = _format(data) or path.suffix.lstrip(".").upper()
        if _png16_colour(data):
            pixels = _read_png16(data)
            return pixels, pixel_info(fmt, pixels)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            pixels = self._array(path, img)
        return pixels, pixel_info(fmt, pixels)

    def probe(self, path: Path, data: bytes) -> dict:
        fmt = _format(data) or path.suffix.lstrip(".").upper()
        with Image.open(io.BytesIO(data)) as img:  # Pillow reads the header only, pixels on load()
            width, height = img.size
            if _png16_colour(data):
                return info(fmt, 16, 1 if data[25] == 4 else 3, height, width)
            if img.mode in COLOUR_MODES:
                return info(fmt, 8, 3, height, width)
            if img.mode in GREY_MODES:
                return info(fmt, 8, 1, height, width)
        return self.read(path, data)[1]  # 16-bit grey or a mode read() refuses

    def decode(self, path: Path, data: bytes, size: int, preset: str) -> np.ndarray:
        if not _png16_colour(data):
            with Image.open(io.BytesIO(data)) as img:  # Pillow reads the header only, pixels on load()
                mode = img.mode
                if mode in COLOUR_MODES:
                    return decode_image(path, size, preset)
                if mode == "L" and img.format == "JPEG":
                    return self._grey_jpeg(img, size, preset)
        return resize_pixels(self.read(path, data)[0], size, preset)

    @staticmethod
    def _array(path: Path, img: Image.Image) -> np.ndarray:
        if img.mode in COLOUR_MODES:
            return np.asarray(img.convert("RGB"))
        if img.mode in GREY_MODES:
            return np.asarray(img.convert("L"))
        if img.mode in GREY16_MODES:
            pixels = np.asarray(img)
            if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
                raise UnsupportedImage(path, f"{img.mode} pixels outside 0..65535; save it as 8- or 16-bit")
            return pixels.astype(np.uint16)
        raise UnsupportedImage(path, f"pixel mode {img.mode!r}; covfuse reads 8- and 16-bit grey or RGB images")

    @staticmethod
    def _grey_jpeg(img: Image.Image, size: int, preset: str) -> np.ndarray:
        """Grey JPEG: libjpeg's draft reduction first, as decode_image does for colour ones."""
        width, height = img.size
        left, top, right, bottom = crop_box(width, height, preset)
        drafted = img.draft("L", (math.ceil(size * width / (right - left)), math.ceil(size * height / (bottom - top))))
        fx, fy = (drafted[1][2] / width, drafted[1][3] / height) if drafted else (1.0, 1.0)
        out = img.resize((size, size), Image.BILINEAR, box=(left * fx, top * fy, right * fx, bottom * fy))
        return np.asarray(out)[None].copy()
