"""Files as the wild makes them (issue 24): dual-personality DICOMs, NaN-masked NIfTI, float TIFFs with NaN.

Each file is written here the way other tools write it (pydicom, nibabel, tifffile) and read back
against that library's own reader.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile

from covfuse.data.decode import CorruptImage
from covfuse.data.decoders import UnsupportedImage, decode_file, read_pixels
from test_data_decoders import _by_hand, _write_dicom


def _tiff_header() -> bytes:
    """The first 128 bytes of a real little-endian TIFF, as dual-personality DICOMs carry in their preamble."""
    out = io.BytesIO()
    tifffile.imwrite(out, np.zeros((2, 2), np.uint8))
    return out.getvalue()[:128].ljust(128, b"\0")


def _dual(path: Path, stored: np.ndarray) -> Path:
    _write_dicom(path, stored)
    ds = pydicom.dcmread(path)
    ds.preamble = _tiff_header()  # pydicom writes any 128 bytes it is given before "DICM"
    ds.save_as(path)
    data = path.read_bytes()
    assert data[:4] == b"II*\x00" and data[128:132] == b"DICM"
    return path


def test_a_dicom_whose_preamble_is_a_tiff_header_is_read_as_dicom(tmp_path):
    stored = np.random.default_rng(0).integers(0, 65536, (24, 20)).astype(np.uint16)
    path = _dual(tmp_path / "IM0001.dcm", stored)
    pixels, info = read_pixels(path)
    assert info["format"] == "DICOM" and pixels.shape == (24, 20)
    assert np.array_equal(pydicom.dcmread(path).pixel_array, stored)
    expected = _by_hand(path, bits_stored=16, signed=False, rescale=None, window=None, invert=False)
    assert np.array_equal(pixels, expected)
    assert decode_file(path, 8).shape == (1, 8, 8)
    # no suffix, as PACS exports name them: the marker at byte 128 decides, not the TIFF signature at 0
    bare = tmp_path / "IM0002"
    bare.write_bytes(path.read_bytes())
    assert np.array_equal(read_pixels(bare)[0], pixels)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicoms_own_dual_personality_files(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed here")
    assert open(path, "rb").read(4) in (b"II*\x00", b"MM\x00*")  # a TIFF header in the preamble
    pixels, info = read_pixels(path)
    assert info["format"] == "DICOM" and pixels.shape == pydicom.dcmread(path).pixel_array.shape


def test_library_warnings_never_reach_the_terminal(tmp_path, capfd, caplog):
    """A TIFF that makes tifffile log complaints (a dual file whose DICOM marker is gone): read, and
    tifffile's lines are covfuse's debug records, not raw stderr lines."""
    path = _dual(tmp_path / "x.tif", np.arange(256, dtype=np.uint16).reshape(16, 16))
    data = bytearray(path.read_bytes())
    data[128:132] = b"XXXX"
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.DEBUG, logger="covfuse"):
        pixels, info = read_pixels(path)
    assert info["format"] == "TIFF"
    assert np.array_equal(pixels, tifffile.imread(path))
    assert capfd.readouterr().err == ""
    assert any("tifffile says" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_a_file_no_decoder_reads_names_what_was_tried(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"\x01" * 300)
    with pytest.raises(CorruptImage) as err:
        read_pixels(path)
    text = str(err.value)
    assert text.startswith(f"{path}: cannot decode the image (not an image file")
    assert "no DICOM marker at byte 128" in text and "PNG, JPEG, BMP or TIFF signature" in text and "'.xyz'" in text
    assert "\n" not in text
