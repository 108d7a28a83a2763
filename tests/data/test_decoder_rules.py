"""The decoders' rules for 2D files as devices write them (issue 32): EXIF-turned photos, 32-bit and float
grey DICOM, a DICOMDIR. Each file is written here by the library that makes such files (PIL, pydicom)
and checked against that library's own reading of it (ImageOps.exif_transpose, apply_modality_lut,
torchvision's EXIF-aware JPEG decoder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.pixels import apply_modality_lut

from covfuse.cli.main import main as covfuse
from covfuse.data.decoders import UnsupportedImage, decode_file, probe, read_pixels

S = 16
ORIENTATION = 0x0112


def _photo(path: Path, orientation: int, size=(45, 30)) -> Path:
    """A JPEG as a phone writes it: pixels stored as the sensor saw them, EXIF Orientation saying how to show them."""
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) % 64 * 4], axis=-1).astype(np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(rgb).save(path, exif=exif, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision are deprecated")
@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_exif_turned_jpeg_is_read_upright_as_pil_and_torchvision_show_it(tmp_path, orientation):
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    path = _photo(tmp_path / "p.jpg", orientation)
    with Image.open(path) as img:
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    pixels, info = read_pixels(path)
    assert np.array_equal(pixels, upright)
    assert probe(path) == info and (info["height"], info["width"]) == upright.shape[:2]
    assert info.get("rule") == ("exif-orientation" if orientation != 1 else None)
    shown = decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB,
                        apply_exif_orientation=True).permute(1, 2, 0).numpy()
    assert shown.shape == pixels.shape and np.abs(shown.astype(int) - pixels).mean() < 2  # libjpeg builds may differ by a level
    if orientation == 1:
        return  # as stored: the JPEG fast path, tested against decode_image in test_decoders.py
    # the model input: the upright image's central square, resized bilinearly by PIL
    h, w = upright.shape[:2]
    side = min(h, w)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    want = np.asarray(Image.fromarray(upright).resize((S, S), Image.BILINEAR, box=box)).transpose(2, 0, 1)
    assert np.array_equal(decode_file(path, S, "center-crop"), want)


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_png_with_an_exif_chunk_is_turned_too(tmp_path, orientation):
    path = _photo(tmp_path / "p.png", orientation)
    assert b"eXIf" in path.read_bytes()  # Pillow writes PNG's EXIF chunk
    with Image.open(path) as img:
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    pixels, info = read_pixels(path)
    assert np.array_equal(pixels, upright) and probe(path) == info
    assert info.get("rule") == ("exif-orientation" if orientation != 1 else None)


def test_data_info_counts_the_turned_files(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    lines = ["subject,path,label"]
    for i, orientation in enumerate([1, 6, 8, 1, 3]):
        _photo(tmp_path / f"img/{i}.jpg", orientation)
        lines.append(f"s{i},img/{i}.jpg,{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    assert covfuse(["data", "info", str(tmp_path / "m.csv"), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rules"] == {"exif-orientation": 3}
    assert summary["shapes"] == {"30x45x3": 3, "45x30x3": 2}  # 6 and 8 turn a 45x30 photo to 30x45
    assert any(n.startswith("3 of 5 image files carry an EXIF orientation") for n in summary["notes"])


# ------------------------------------------------------------------------------ wide and float DICOM
def _dose(path: Path, values: np.ndarray, *, floats: bool = False, window=None, slope: float = 1e-5) -> Path:
    """An RT dose grid as planning systems write it: 32-bit unsigned stored values and a scaling, or float pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RTDoseStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTDoseStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTDOSE"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    if floats:
        ds.FloatPixelData = values.astype("<f4").tobytes()
    else:
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 31, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
        ds.PixelData = values.astype("<u4").tobytes()
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.save_as(path, enforce_file_format=True)
    return path


def _grid(seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:40, 0:50]
    noise = np.random.default_rng(seed).integers(0, 5000, size=x.shape)
    return (2_000_000 * np.exp(-((x - 25) ** 2 + (y - 20) ** 2) / 300) + noise).astype(np.uint32)


def _windowed(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint((values - low) / (high - low) * 65535), 0, 65535)


@pytest.mark.parametrize("floats", [False, True])
def test_a_32bit_or_float_dose_keeps_its_values_through_a_percentile_window(tmp_path, floats):
    stored = _grid()
    path = _dose(tmp_path / "dose.dcm", stored.astype(np.float32) / 1e5 if floats else stored, floats=floats)
    ds = pydicom.dcmread(path)
    dose = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)  # pydicom's values, in Gy
    assert dose.max() == pytest.approx(stored.max() / 1e5, rel=1e-6)
    low, high = np.percentile(dose, [0.5, 99.5])
    pixels, info = read_pixels(path)
    assert info["rule"] == "dicom-percentile-window" and probe(path) == info and pixels.dtype == np.uint16
    assert np.abs(pixels.astype(int) - _windowed(dose, low, high)).max() <= 1
    # the display-range mapping used to give 8 levels over 0.05 % of the range; now every distinct dose inside
    # the window keeps a level of its own
    inside = dose[(dose > low) & (dose < high)]
    assert len(np.unique(pixels)) >= 0.95 * len(np.unique(np.rint((inside - low) / (high - low) * 65535)))


def test_a_32bit_dose_with_a_window_uses_that_window(tmp_path):
    stored = _grid(1)
    path = _dose(tmp_path / "dose.dcm", stored, window=(10.0, 8.0))  # 6..14 Gy
    ds = pydicom.dcmread(path)
    dose = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    pixels, info = read_pixels(path)
    assert info.get("rule") is None  # the file's own VOI window: the standard pipeline, not the rule
    assert decode_file(path, S).shape == (1, S, S)
    float_path = _dose(tmp_path / "f.dcm", dose.astype(np.float32), floats=True, window=(10.0, 8.0))
    pixels, info = read_pixels(float_path)
    assert info["rule"] == "dicom-percentile-window"
    assert np.abs(pixels.astype(int) - _windowed(dose.astype(np.float32).astype(np.float64), 6.0, 14.0)).max() <= 1


def test_float_pixels_with_nan_are_refused_in_one_line(tmp_path):
    values = _grid().astype(np.float32)
    values[3, 4] = np.nan
    path = _dose(tmp_path / "nan.dcm", values, floats=True)
    with pytest.raises(UnsupportedImage, match=r"nan\.dcm: .*float pixel data with 1 NaN/Inf value") as err:
        read_pixels(path)
    assert "\n" not in str(err.value)


def test_data_info_counts_the_windowed_dicoms(tmp_path, capsys):
    from data.test_decoders import _write_dicom

    (tmp_path / "img").mkdir()
    _dose(tmp_path / "img/a.dcm", _grid(0))
    _dose(tmp_path / "img/b.dcm", _grid(1), floats=True)
    _write_dicom(tmp_path / "img/c.dcm", np.arange(64).reshape(8, 8))  # 16-bit: the display range, no rule
    (tmp_path / "m.csv").write_text("subject,path\ns1,img/a.dcm\ns2,img/b.dcm\ns3,img/c.dcm\n")
    assert covfuse(["data", "info", str(tmp_path / "m.csv"), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rules"] == {"dicom-percentile-window": 2}
    assert any(n.startswith("2 of 3 DICOM files hold float or over-16-bit grey values") for n in summary["notes"])


# ---------------------------------------------------------------------------------- DICOMDIR
def test_a_dicomdir_is_named_as_an_index_with_the_way_to_list_its_images(tmp_path, capsys):
    from pydicom.fileset import FileSet

    from data.test_decoders import _write_dicom

    _write_dicom(tmp_path / "x.dcm", np.arange(64).reshape(8, 8))
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    ds.PatientID, ds.PatientName, ds.StudyInstanceUID, ds.SeriesInstanceUID = "p1", "A^B", "1.2.3", "1.2.3.4"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "20240101", "120000", "1", 1, 1
    fs = FileSet()
    fs.add(ds)
    fs.write(tmp_path / "disc")  # a DICOMDIR plus the image under PT000000/ST000000/...
    (tmp_path / "m.csv").write_text("subject,path,split\ns1,x.dcm,train\ns2,disc/DICOMDIR,valid\ns3,x.dcm,test\n")
    assert covfuse(["data", "info", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a DICOMDIR: the index of a DICOM disc or folder, not an image" in err[0]
    assert f"find {tmp_path / 'disc'} -type f ! -name DICOMDIR" in err[0]
    images = [p for p in (tmp_path / "disc").rglob("*") if p.is_file() and p.name != "DICOMDIR"]
    assert len(images) == 1  # what the hint lists reads as the image pydicom wrote
    assert np.array_equal(read_pixels(images[0])[0], read_pixels(tmp_path / "x.dcm")[0])
