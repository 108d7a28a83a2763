"""2D decoders (covfuse.data.decoders) on real files written here, each checked against an independent read."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from covfuse.data.decode import CorruptImage, crop_box, decode_image
from covfuse.data.decoders import UnsupportedImage, decode_file, read_pixels

S = 16


def _rng_image(shape, dtype=np.uint8, seed=0):
    high = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(dtype)


def _write_png16(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG written by hand (filter 0, zlib), independent of the reader under test."""
    height, width = pixels.shape[:2]
    colour = {1: 0, 3: 2}[1 if pixels.ndim == 2 else pixels.shape[2]]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels.reshape(height, -1))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- PNG, JPEG, BMP
@pytest.mark.parametrize("preset", ["center-crop", "research"])
@pytest.mark.parametrize("suffix", ["png", "jpg", "bmp"])
def test_8bit_colour_is_decode_image_exactly(tmp_path, suffix, preset):
    path = tmp_path / f"a.{suffix}"
    Image.fromarray(_rng_image((23, 31, 3))).save(path)
    pixels, info = read_pixels(path)
    assert np.array_equal(pixels, np.asarray(Image.open(path).convert("RGB")))
    assert info == {"format": {"jpg": "JPEG"}.get(suffix, suffix.upper()), "bits": 8, "channels": 3, "height": 23, "width": 31}
    out = decode_file(path, S, preset)
    assert out.dtype == np.uint8 and np.array_equal(out, decode_image(path, S, preset))


def test_rgba_and_palette_png_become_rgb(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.fromarray(_rng_image((20, 24, 4)), "RGBA").save(rgba)
    pal = tmp_path / "pal.png"
    Image.fromarray(_rng_image((20, 24, 3))).convert("P").save(pal)
    for path in (rgba, pal):
        assert np.array_equal(read_pixels(path)[0], np.asarray(Image.open(path).convert("RGB")))
        assert np.array_equal(decode_file(path, S), decode_image(path, S))


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_8bit_grey_is_one_channel_of_the_rgb_decode(tmp_path, suffix):
    path = tmp_path / f"g.{suffix}"
    Image.fromarray(_rng_image((40, 28)), "L").save(path)
    pixels, info = read_pixels(path)
    assert np.array_equal(pixels, np.asarray(Image.open(path))) and info["channels"] == 1
    out = decode_file(path, S)
    assert out.shape == (1, S, S) and out.dtype == np.uint8
    if suffix == "png":  # decode_image turns grey into three equal channels, resized alike
        assert np.array_equal(out[0], decode_image(path, S)[0])
    else:  # a drafted (DCT-scaled) decode: close to the full decode, not equal
        full = np.asarray(Image.open(path).resize((S, S), Image.BILINEAR, box=crop_box(28, 40, "center-crop")))
        assert np.abs(out[0].astype(int) - full).mean() < 12


def test_16bit_grey_png_keeps_16_bits(tmp_path):
    low = _rng_image((30, 22))
    p8, p16 = tmp_path / "g8.png", tmp_path / "g16.png"
    Image.fromarray(low, "L").save(p8)
    Image.fromarray(low.astype(np.uint16) * 257).save(p16)
    pixels, info = read_pixels(p16)
    assert pixels.dtype == np.uint16 and np.array_equal(pixels, low.astype(np.uint16) * 257)
    assert info["bits"] == 16 and info["channels"] == 1
    out = decode_file(p16, S)
    assert out.shape == (1, S, S) and out.dtype == np.uint16
    # bilinear resizing is linear: the 16-bit result is 257x the 8-bit one, up to PIL's rounding of
    # the 8-bit image after each of its two passes
    assert np.abs(out[0] / 257.0 - decode_file(p8, S)[0]).max() <= 1.0


def test_16bit_rgb_png_keeps_16_bits(tmp_path):
    rgb = _rng_image((18, 26, 3), np.uint16)
    path = tmp_path / "c16.png"
    _write_png16(path, rgb)
    pixels, info = read_pixels(path)
    assert pixels.dtype == np.uint16 and np.array_equal(pixels, rgb)
    assert info == {"format": "PNG", "bits": 16, "channels": 3, "height": 18, "width": 26}
    out = decode_file(path, S, "research")
    for c in range(3):  # each channel resized as the same values in a 16-bit grey PNG
        grey = tmp_path / f"ch{c}.png"
        _write_png16(grey, np.ascontiguousarray(rgb[..., c]))
        assert np.array_equal(read_pixels(grey)[0], np.asarray(Image.open(grey)))
        assert np.array_equal(out[c], decode_file(grey, S, "research")[0])


# ----------------------------------------------------------------------------------- TIFF
def test_tiff_8bit_rgb_matches_tifffile_and_the_png_decode(tmp_path):
    rgb = _rng_image((21, 33, 3))
    tif, png = tmp_path / "a.tif", tmp_path / "a.png"
    tifffile.imwrite(tif, rgb, photometric="rgb")
    Image.fromarray(rgb).save(png)
    pixels, info = read_pixels(tif)
    assert np.array_equal(pixels, tifffile.imread(tif)) and info["format"] == "TIFF" and info["bits"] == 8
    assert np.array_equal(decode_file(tif, S), decode_image(png, S))


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_tiff_16bit_grey_and_rgb(tmp_path, planar):
    grey = _rng_image((25, 19), np.uint16)
    rgb = _rng_image((25, 19, 3), np.uint16, seed=1)
    tifffile.imwrite(tmp_path / "g.tif", grey, photometric="minisblack", compression="zlib")
    tifffile.imwrite(tmp_path / "c.tif", rgb if planar == "contig" else np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig=planar)
    _write_png16(tmp_path / "g.png", grey)
    pixels, info = read_pixels(tmp_path / "g.tif")
    assert np.array_equal(pixels, tifffile.imread(tmp_path / "g.tif")) and info["bits"] == 16
    assert np.array_equal(decode_file(tmp_path / "g.tif", S), decode_file(tmp_path / "g.png", S))
    pixels, info = read_pixels(tmp_path / "c.tif")
    assert pixels.shape == (25, 19, 3) and np.array_equal(pixels, rgb) and info["channels"] == 3
    assert decode_file(tmp_path / "c.tif", S).dtype == np.uint16


def test_tiff_codec_tifffile_lacks_falls_back_to_pillow(tmp_path):
    path = tmp_path / "lzw.tif"
    Image.fromarray(_rng_image((20, 20, 3))).save(path, compression="tiff_lzw")
    assert np.array_equal(read_pixels(path)[0], np.asarray(Image.open(path)))


def test_tiff_stack_and_float_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", _rng_image((3, 10, 10)), photometric="minisblack")
    tifffile.imwrite(tmp_path / "float.tif", np.ones((10, 10), np.float32))
    with pytest.raises(UnsupportedImage, match=r"stack\.tif: cannot read the image \(a stack of images"):
        read_pixels(tmp_path / "stack.tif")
    with pytest.raises(UnsupportedImage, match="float32 samples"):
        decode_file(tmp_path / "float.tif", S)


# ---------------------------------------------------------------------------------- DICOM
def _write_dicom(path, stored, *, photometric="MONOCHROME2", bits_stored=16, signed=False, rescale=None, window=None,
                 syntax=None, pixel_bytes=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, int(signed)
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixel_bytes if pixel_bytes is not None else stored.astype("<i2" if signed else "<u2").tobytes()
    if syntax is not None:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def _by_hand(path, *, bits_stored, signed, rescale, window, invert):
    """The DICOM grayscale pipeline written out: rescale, linear window (PS3.3 C.11.2.1.2.1), scale, invert."""
    x = pydicom.dcmread(path).pixel_array.astype(np.float64)  # pydicom's own stored values
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    if rescale:
        slope, intercept = rescale
        x = x * slope + intercept
        low, high = low * slope + intercept, high * slope + intercept
    if window:
        c, w = window
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (high - low) + low
        y[x <= c - 0.5 - (w - 1) / 2] = low
        y[x > c - 0.5 + (w - 1) / 2] = high
        x = y
    out = np.clip(np.rint((x - low) / (high - low) * 65535), 0, 65535)
    return (65535 - out if invert else out).astype(np.uint16)


@pytest.mark.parametrize("photometric,bits_stored,signed,rescale,window", [
    ("MONOCHROME2", 16, False, None, None),
    ("MONOCHROME1", 12, False, (2.0, -1000.0), None),  # 12 bits in 16-bit words, rescaled, inverted
    ("MONOCHROME2", 12, False, (1.0, -1024.0), (40.0, 400.0)),  # a CT-like soft-tissue window
    ("MONOCHROME1", 16, True, (0.5, 10.0), (100.0, 1000.0)),
])
def test_dicom_matches_the_pipeline_written_out(tmp_path, photometric, bits_stored, signed, rescale, window):
    rng = np.random.default_rng(3)
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1)) if signed else (0, 2**bits_stored)
    stored = rng.integers(lo, hi, size=(20, 30))
    if window:  # put most values near the window so the linear part is exercised
        stored[:10] = rng.integers(900, 1200, size=(10, 30))
    path = tmp_path / "x.dcm"
    _write_dicom(path, stored, photometric=photometric, bits_stored=bits_stored, signed=signed, rescale=rescale, window=window)
    pixels, info = read_pixels(path)
    assert info == {"format": "DICOM", "bits": 16, "channels": 1, "height": 20, "width": 30}
    expected = _by_hand(path, bits_stored=bits_stored, signed=signed, rescale=rescale, window=window,
                        invert=photometric == "MONOCHROME1")
    assert np.array_equal(pydicom.dcmread(path).pixel_array, stored)
    assert np.abs(pixels.astype(int) - expected).max() <= 1  # float rounding at .5 only
    out = decode_file(path, S)
    assert out.shape == (1, S, S) and out.dtype == np.uint16


def test_dicom_without_preamble_is_found_by_suffix(tmp_path):
    path = tmp_path / "raw.dcm"
    _write_dicom(path, np.arange(64).reshape(8, 8))
    path.write_bytes(path.read_bytes()[132:])  # strip preamble + "DICM"
    assert read_pixels(path)[1]["format"] == "DICOM"


def test_dicom_compressed_without_plugin_names_it(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS plugin is installed here, so pydicom decodes the file and there is no missing-plugin message to check")
    path = tmp_path / "jls.dcm"
    _write_dicom(path, np.zeros((8, 8)), syntax=JPEGLSLossless, pixel_bytes=encapsulate([b"\xff\xd8" + b"\x00" * 30]))
    with pytest.raises(UnsupportedImage, match=r"jls\.dcm: .*JPEG-LS.*pip install pylibjpeg pylibjpeg-libjpeg\)$") as err:
        read_pixels(path)
    assert "\n" not in str(err.value) and "gdcm" not in str(err.value)  # PyPI's gdcm is another project


# ---------------------------------------------------------------------------------- bad files
def _truncated(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD = {
    "missing.png": (lambda p: None, "the file is missing"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file, 0 bytes"),
    "notes.png": (lambda p: p.write_text("hello, not a picture\n"), "not an image file"),
    "noise.bin": (lambda p: p.write_bytes(b"\x01\x02" * 100), "not an image file"),
    "bad.dcm": (lambda p: p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x07" * 40), "DICOM"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_unreadable_files_are_one_line_naming_the_file(tmp_path, name):
    write, reason = BAD[name]
    path = tmp_path / name
    write(path)
    for call in (lambda: read_pixels(path), lambda: decode_file(path, S)):
        with pytest.raises(CorruptImage) as err:
            call()
        assert str(err.value).startswith(f"{path}: cannot decode the image (") and reason in str(err.value)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["t.png", "t.jpg", "t.tif", "t16.png", "t.dcm"])
def test_truncated_files_are_corrupt(tmp_path, name):
    writers = {
        "t.png": lambda p: Image.fromarray(_rng_image((64, 64, 3))).save(p),
        "t.jpg": lambda p: Image.fromarray(_rng_image((64, 64, 3))).save(p, quality=95),
        "t.tif": lambda p: tifffile.imwrite(p, _rng_image((64, 64), np.uint16)),
        "t16.png": lambda p: _write_png16(p, _rng_image((64, 64, 3), np.uint16)),
        "t.dcm": lambda p: _write_dicom(p, _rng_image((64, 64), np.uint16)),
    }
    path = _truncated(tmp_path, name, writers[name])
    with pytest.raises(CorruptImage, match=rf"{name}: cannot decode the image") as err:
        decode_file(path, S)
    assert "\n" not in str(err.value)


def test_dicom_voi_lut_sequence_wins_over_the_window(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.random.default_rng(5).integers(0, 4096, size=(12, 14))
    path = tmp_path / "lut.dcm"
    _write_dicom(path, stored, bits_stored=12, window=(2048.0, 4096.0))
    ds = pydicom.dcmread(path)
    first, entries, bits = 1000, 2000, 10  # values below 1000 -> lut[0], above 2999 -> lut[-1]
    lut = np.round(np.sqrt(np.linspace(0, 1, entries)) * (2**bits - 1)).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [entries, first, bits], lut.tolist()
    item["LUTDescriptor"].VR, item["LUTData"].VR = "US", "US"
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path)
    index = np.clip(pydicom.dcmread(path).pixel_array.astype(np.int64) - first, 0, entries - 1)
    expected = np.rint(lut[index] / (2**bits - 1) * 65535).astype(np.uint16)
    assert np.abs(read_pixels(path)[0].astype(int) - expected).max() <= 1


def test_dicom_rgb_stays_8bit_rgb(tmp_path):
    rgb = _rng_image((10, 12, 3))
    path = tmp_path / "rgb.dcm"
    _write_dicom(path, np.zeros((10, 12)))
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    ds.save_as(path)
    pixels, info = read_pixels(path)
    assert np.array_equal(pixels, pydicom.dcmread(path).pixel_array) and np.array_equal(pixels, rgb)
    assert info["bits"] == 8 and info["channels"] == 3
    assert decode_file(path, S).shape == (3, S, S)


def test_decoding_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    Image.fromarray(_rng_image((40, 40, 3))).save(tmp_path / "a.jpg")
    _write_dicom(tmp_path / "a.dcm", _rng_image((40, 40), np.uint16))
    code = ("import sys; from covfuse.data.decoders import decode_file; "
            f"[decode_file(p, 16) for p in ({str(tmp_path / 'a.jpg')!r}, {str(tmp_path / 'a.dcm')!r})]; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_probe_reads_what_read_pixels_returns(tmp_path):
    from covfuse.data.decoders import probe

    files = {"a.png": lambda p: Image.fromarray(_rng_image((9, 7, 3))).save(p),
             "g.jpg": lambda p: Image.fromarray(_rng_image((9, 7)), "L").save(p),
             "g16.png": lambda p: Image.fromarray(_rng_image((9, 7), np.uint16)).save(p),
             "c16.png": lambda p: _write_png16(p, _rng_image((9, 7, 3), np.uint16)),
             "c.tif": lambda p: tifffile.imwrite(p, _rng_image((9, 7, 3), np.uint16), photometric="rgb"),
             "w.tif": lambda p: tifffile.imwrite(p, _rng_image((9, 7)), photometric="miniswhite"),
             "p.tif": lambda p: Image.fromarray(_rng_image((9, 7, 3))).convert("P").save(p),
             "x.dcm": lambda p: _write_dicom(p, _rng_image((9, 7), np.uint16))}
    for name, write in files.items():
        write(tmp_path / name)
        assert probe(tmp_path / name) == read_pixels(tmp_path / name)[1], name
    with pytest.raises(CorruptImage, match="empty file"):
        (tmp_path / "e.dcm").write_bytes(b"")
        probe(tmp_path / "e.dcm")
