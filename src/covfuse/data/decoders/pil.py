"""PNG, JPEG and BMP through Pillow (and 16-bit colour PNG through pypng, which Pillow reads as 8-bit).

A file whose EXIF Orientation tag (0x0112) says it is stored turned or mirrored (2-8: phones,
dermoscopes) is turned upright first, as image viewers and torchvision's decoders show it, by
Pillow's ``ImageOps.exif_transpose``; its info dict says so (``"rule": "exif-orientation"``), so
``covfuse data info`` counts such files and the fit log says how many there were.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from covfuse.data.decode import crop_box, decode_image
from covfuse.data.decoders.base import Decoder, UnsupportedImage, info, pixel_info, resize_pixels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "P", "PA", "LAB", "HSV"}  # -> 8-bit RGB
GREY_MODES = {"1", "L", "LA", "La"}  # -> 8-bit grey (alpha dropped)
GREY16_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # -> 16-bit grey
EXIF_ORIENTATION = 0x0112
ROTATED = {5, 6, 7, 8}  # orientations that swap width and height
EXIF_RULE = "exif-orientation"


def orientation(img: Image.Image, data: bytes) -> int:
    """The EXIF Orientation of an opened image (1: as stored; 2-8: turned or mirrored), from its header.
    Files without an EXIF block (JPEG's ``Exif`` APP1 segment, PNG's ``eXIf`` chunk) are not asked:
    Pillow would decode a whole PNG to look for one."""
    block = data.find(b"eXIf") if data.startswith(PNG_MAGIC) else data.find(b"Exif\x00", 0, 1 << 17)
    if block < 0:
        return 1
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except (ValueError, TypeError, OSError, SyntaxError):  # a damaged EXIF block: the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _oriented(info_: dict, turned: bool) -> dict:
    return {**info_, "rule": EXIF_RULE} if turned else info_


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
            turned = orientation(img, data) != 1
            pixels = self._array(path, ImageOps.exif_transpose(img) if turned else img)
        return pixels, _oriented(pixel_info(fmt, pixels), turned)

    def probe(self, path: Path, data: bytes) -> dict:
        fmt = _format(data) or path.suffix.lstrip(".").upper()
        with Image.open(io.BytesIO(data)) as img:  # Pillow reads the header only, pixels on load()
            width, height = img.size
            turn = orientation(img, data) if not _png16_colour(data) else 1
            if turn in ROTATED:
                width, height = height, width
            if _png16_colour(data):
                return info(fmt, 16, 1 if data[25] == 4 else 3, height, width)
            if img.mode in COLOUR_MODES:
                return _oriented(info(fmt, 8, 3, height, width), turn != 1)
            if img.mode in GREY_MODES:
                return _oriented(info(fmt, 8, 1, height, width), turn != 1)
        return self.read(path, data)[1]  # 16-bit grey or a mode read() refuses

    def decode(self, path: Path, data: bytes, size: int, preset: str) -> np.ndarray:
        if not _png16_colour(data):
            with Image.open(io.BytesIO(data)) as img:  # Pillow reads the header only, pixels on load()
                mode = img.mode
                if orientation(img, data) != 1:  # turned upright at full size, then cropped and resized
                    return resize_pixels(self.read(path, data)[0], size, preset)
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
