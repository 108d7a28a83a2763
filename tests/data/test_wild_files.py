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
from covfuse.errors import UserError
from covfuse.data.decoders import UnsupportedImage, decode_file, read_pixels
from data.test_decoders import _by_hand, _write_dicom


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


# ------------------------------------------------------------------------------ non-finite values
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "demo.yaml"
TINY = ["--data.image_size", "16", "--data.batch_size", "4", "--data.cache", "off", "--trainer.max_epochs", "1",
        "--trainer.summary", "false", "--bootstrap", "20", "--trainer.progress", "none"]


@pytest.fixture(scope="module")
def nan_twin(tmp_path_factory):
    """A 24-subject 16³ twin whose first volume has a NaN background (as SPM/FSL write it) and second an Inf voxel."""
    import nibabel as nib

    from covfuse.cli.main import main as covfuse

    out = tmp_path_factory.mktemp("nan") / "t"
    assert covfuse(["data", "synth3d", str(out), "--n", "24", "--size", "16", "--seed", "3"]) == 0
    import csv

    paths = [out / r["path"] for r in csv.DictReader(open(out / "manifest.csv"))]
    counts = {}
    for path, value in zip(paths[:2], (np.nan, np.inf)):
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj).astype(np.float32)
        mask = data <= np.quantile(data, 0.2) if value != np.inf else np.zeros(data.shape, bool)
        mask.flat[7] = True
        data[mask] = value
        clean = np.where(mask, 0, data).astype(np.float32)
        nib.save(nib.Nifti1Image(data, image.affine), str(path))
        nib.save(nib.Nifti1Image(clean, image.affine), str(path.with_name("clean-" + path.name)))
        counts[path] = int(mask.sum())
    return out, paths, counts


def test_nan_and_inf_voxels_become_zero_before_normalisation(nan_twin):
    import nibabel as nib

    from covfuse.data.decoders.volume import Preprocessing, load_volume

    _, paths, counts = nan_twin
    settings = Preprocessing(size=16)
    for path in paths[:2]:
        assert int((~np.isfinite(nib.load(str(path)).get_fdata())).sum()) == counts[path]  # nibabel's own read
        x = load_volume(path, settings)
        assert torch_finite(x)
        # the reference: the same file with its NaN/Inf set to 0 by numpy, written by nibabel
        assert np.array_equal(x.numpy(), load_volume(path.with_name("clean-" + path.name), settings).numpy())


def torch_finite(x) -> bool:
    import torch

    return bool(torch.isfinite(x).all())


def test_data_info_reports_files_with_nonfinite_values(nan_twin, capsys):
    import json

    from covfuse.cli.main import main as covfuse

    twin, paths, counts = nan_twin
    assert covfuse(["data", "info", str(twin / "manifest.csv"), "--format", "json"]) == 0
    bad = json.loads(capsys.readouterr().out)["nonfinite"]
    assert bad == {"files": 2, "voxels": sum(counts.values()), "first": paths[0].relative_to(twin).as_posix()}
    assert covfuse(["data", "info", str(twin / "manifest.csv")]) == 0
    assert f"non-finite: 2 file(s) hold {sum(counts.values()):,} NaN/Inf voxel(s)" in capsys.readouterr().out


def test_refuse_stops_with_one_line_naming_the_first_file(nan_twin, tmp_path, capsys, small_monai):
    from covfuse.cli.main import main as covfuse

    twin, paths, counts = nan_twin
    runs = tmp_path / "runs"
    code = covfuse(["fit", "--config", str(CONFIG), "--data.root", str(twin / "manifest.csv"), *TINY,
                    "--runs_dir", str(runs), "--name", "r", "--data.nonfinite", "refuse"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert f"{paths[0].relative_to(twin).as_posix()}" in lines[0] and f"has {counts[paths[0]]:,} NaN/Inf voxel(s)" in lines[0]
    assert "(and 1 more file(s) have some)" in lines[0] and "data.nonfinite zero" in lines[0]
    assert not runs.exists()


def test_zero_trains_finite_and_says_so_in_the_log(nan_twin, tmp_path, small_monai):
    import csv

    from covfuse.cli.main import main as covfuse

    twin, paths, counts = nan_twin
    runs = tmp_path / "runs"
    assert covfuse(["fit", "--config", str(CONFIG), "--data.root", str(twin / "manifest.csv"), *TINY,
                    "--runs_dir", str(runs), "--name", "z"]) == 0
    log = (runs / "z" / "log.txt").read_text()
    assert f"data.nonfinite zero: {sum(counts.values())} NaN/Inf voxel(s) in 2 file(s) set to 0" in log
    rows = list(csv.DictReader(open(runs / "z" / "predictions.csv")))
    assert rows and all(np.isfinite(float(r["probability"])) for r in rows)


def test_a_reused_cache_keeps_the_nonfinite_rule_and_its_log_line(nan_twin, tmp_path, capsys, small_monai):
    """A cache built under zero holds the files zeroed: a later refuse must still refuse, and a later zero
    still logs the count (both from the cache's record, checked against nibabel's count)."""
    from covfuse.cli.main import main as covfuse

    twin, paths, counts = nan_twin
    runs, cached = tmp_path / "runs", [*TINY[:4], "--data.cache", "build", "--data.cache_dir", str(tmp_path / "c"),
                                       *TINY[6:]]
    base = ["fit", "--config", str(CONFIG), "--data.root", str(twin / "manifest.csv"), *cached, "--runs_dir", str(runs)]
    assert covfuse([*base, "--name", "a"]) == 0  # builds the cache
    assert covfuse([*base, "--name", "b"]) == 0  # reuses it
    log = (runs / "b" / "log.txt").read_text()
    assert "using volume cache" in log
    assert f"data.nonfinite zero: {sum(counts.values())} NaN/Inf voxel(s) in 2 file(s) set to 0" in log
    capsys.readouterr()
    assert covfuse([*base, "--name", "r", "--data.nonfinite", "refuse"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"has {counts[paths[0]]:,} NaN/Inf voxel(s)" in lines[0], lines
    assert not (runs / "r").exists()


def test_a_float_tiff_with_nan_is_refused_with_its_count(tmp_path):
    pixels = np.random.default_rng(1).random((12, 10)).astype(np.float32)
    pixels[:3] = np.nan
    path = tmp_path / "map.tif"
    tifffile.imwrite(path, pixels)
    assert int(np.isnan(tifffile.imread(path)).sum()) == 30  # tifffile's own read
    with pytest.raises(UnsupportedImage, match=r"map\.tif: cannot read the image \(float32 samples, 30 of them NaN/Inf"):
        read_pixels(path)


# --------------------------------------------------------------------- every hint true: verify, skip_corrupt
FIT2D = ["--data.image_size", "16", "--data.batch_size", "4", "--data.target", "label", "--data.covariates", "age",
         "--trainer.max_epochs", "1", "--trainer.summary", "false", "--bootstrap", "0", "--trainer.progress", "none",
         "--trainer.accelerator", "cpu"]


def dicom_manifest(folder: Path, n: int = 12, broken: int | None = None) -> Path:
    """``m.csv`` naming n dual-personality DICOMs (train/valid/test); row ``broken`` lost its tail in transfer."""
    (folder / "dcm").mkdir(parents=True)
    rng = np.random.default_rng(4)
    lines = ["subject,path,split,label,age"]
    for i in range(n):
        _dual(folder / "dcm" / f"IM{i:04d}.dcm", rng.integers(0, 4096, (20, 20)).astype(np.uint16))
        lines.append(f"s{i},dcm/IM{i:04d}.dcm,{('train', 'train', 'valid', 'test')[i % 4]},{i % 2},{50 + i}")
    if broken is not None:
        path = folder / "dcm" / f"IM{broken:04d}.dcm"
        path.write_bytes(path.read_bytes()[:-300])
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return folder / "m.csv"


def test_data_verify_takes_a_dicom_manifest_and_names_the_bad_file(tmp_path, monkeypatch, capsys):
    from covfuse.cli.main import main as covfuse

    monkeypatch.chdir(tmp_path)
    dicom_manifest(tmp_path / "good")
    assert covfuse(["data", "verify", "good/m.csv", "--workers", "1"]) == 0
    assert "images: 12 of 12 decode" in capsys.readouterr().out
    dicom_manifest(tmp_path / "bad", broken=4)
    assert covfuse(["data", "verify", "bad/m.csv", "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert lines == [lines[0]] and lines[0].startswith(
        "covfuse data: error: verification failed: bad/m.csv, line 6 (subject s4): bad/dcm/IM0004.dcm does not "
        "decode (DICOM: "), err
    assert "images: 11 of 12 decode" in out
    with pytest.raises(Exception):  # pydicom, the reference, cannot decode it either
        pydicom.dcmread("bad/dcm/IM0004.dcm").pixel_array


def test_data_verify_takes_a_bids_dataset(tmp_path, capsys):
    from data.test_bids import make_bids

    from covfuse.cli.main import main as covfuse

    make_bids(tmp_path / "study")
    assert covfuse(["data", "verify", str(tmp_path / "study"), "--workers", "1"]) == 0
    assert "verified: every file of" in capsys.readouterr().out


def test_skip_corrupt_leaves_out_a_broken_dicom_and_keeps_the_clean_ones(tmp_path, monkeypatch, capsys):
    from covfuse.cli.main import main as covfuse

    monkeypatch.chdir(tmp_path)
    dicom_manifest(tmp_path, broken=4)  # a train row
    assert covfuse(["fit", "--data.root", "m.csv", *FIT2D, "--data.cache", "off", "--name", "k", "--skip_corrupt"]) == 0, \
        capsys.readouterr().err[-2000:]
    assert (tmp_path / "runs/k/skipped.txt").read_text().split() == ["IM0004.dcm"]
    import json

    assert json.loads((tmp_path / "runs/k/metrics.json").read_text())["skipped_images"] == 1


def test_skip_corrupt_works_with_a_cache_build_config(tmp_path, monkeypatch, capsys, caplog):
    """`covfuse data verify` says `covfuse fit --skip_corrupt` trains without the bad files: it must, also where the
    config says data.cache build (the build used to stop at the bad file with the same advice)."""
    from covfuse.cli.main import main as covfuse

    monkeypatch.chdir(tmp_path)
    dicom_manifest(tmp_path, broken=4)
    assert covfuse(["fit", "--data.root", "m.csv", *FIT2D, "--data.cache", "build", "--name", "k", "--skip_corrupt"]) == 0, \
        capsys.readouterr().err[-2000:]
    assert (tmp_path / "runs/k/skipped.txt").read_text().split() == ["IM0004.dcm"]
    said = [r.getMessage() for r in caplog.records if "data.skip_corrupt" in r.getMessage()]
    assert said == ["data.skip_corrupt: 1 file(s) do not decode, so no cache is built (it holds every file); the "
                    "others are read as training goes"]  # once, though Lightning prepares the data twice


def test_skip_corrupt_with_nothing_to_skip_builds_the_cache_and_says_nothing(tmp_path, caplog):
    """With every file decoding, --skip_corrupt changes nothing: the cache is built, no warning is logged."""
    import logging

    from covfuse.data import samples
    from covfuse.training.config import DataConfig
    from covfuse.training.datamodule import CovfuseDataModule

    dicom_manifest(tmp_path)
    data = CovfuseDataModule(DataConfig(root=str(tmp_path / "m.csv"), target="label", covariates=["age"],
                                        image_size=16, cache="build", skip_corrupt=True))
    with caplog.at_level(logging.INFO, logger="covfuse"):
        data.prepare_data()
        data.setup("fit")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert samples.open_cache(data.table, data.settings(), data.cfg.cache_dir) is not None
    assert data.skipped == []


# -------------------------------------------------------------------------- honest layouts, ids, delimiters
def _rgb_dicom(path: Path, rgb: np.ndarray) -> None:
    _write_dicom(path, np.zeros(rgb.shape[:2]))
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    ds.save_as(path)


def mixed_manifest(folder: Path) -> tuple[Path, np.ndarray]:
    """A grey 8-bit PNG first (it used to set the layout for all), a grey 16-bit PNG, an RGB DICOM."""
    from PIL import Image

    rng = np.random.default_rng(5)
    (folder / "img").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / "img/a.png")
    Image.fromarray(rng.integers(0, 65536, (16, 16)).astype(np.uint16)).save(folder / "img/b.png")
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    _rgb_dicom(folder / "img/c.dcm", rgb)
    (folder / "m.csv").write_text("subject,path,label\ns1,img/a.png,0\ns2,img/b.png,1\ns3,img/c.dcm,1\n")
    return folder / "m.csv", rgb


def test_a_mixed_manifest_is_read_in_its_richest_layout_with_one_warning(tmp_path, caplog, capsys):
    import json

    from covfuse.cli.main import main as covfuse
    from covfuse.data.readers import read_table
    from covfuse.data.layout import image_layout
    from covfuse.data.samples import _decoder

    manifest, rgb = mixed_manifest(tmp_path)
    table = read_table(manifest)
    with caplog.at_level(logging.WARNING):
        assert image_layout(table) == (3, "uint16")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"{manifest}: the files mix layouts (grey 8-bit 1, grey 16-bit 1, RGB 8-bit 1); all are read "
                      "as RGB 16-bit (grey repeated into 3 channels, 8-bit values scaled x257)"]
    # the RGB DICOM stays colour: its three planes, widened, are pydicom's own pixel array
    out = _decoder(table)(str(tmp_path / "img/c.dcm"), 16, "research")
    assert out.shape == (3, 16, 16) and out.dtype == np.uint16
    assert np.array_equal(out, pydicom.dcmread(tmp_path / "img/c.dcm").pixel_array.transpose(2, 0, 1).astype(np.uint16) * 257)
    assert np.array_equal(rgb, pydicom.dcmread(tmp_path / "img/c.dcm").pixel_array)
    assert covfuse(["data", "info", str(manifest), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layouts"] == {"grey 8-bit": 1, "grey 16-bit": 1, "RGB 8-bit": 1} and summary["read_as"] == "RGB 16-bit"
    assert covfuse(["data", "info", str(manifest)]) == 0
    assert "layouts: grey 8-bit (1), grey 16-bit (1), RGB 8-bit (1); mixed: all are read as RGB 16-bit" in capsys.readouterr().out


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_comma_semicolon_and_tab_manifests_read_alike(tmp_path, delimiter):
    import csv

    from covfuse.data.readers import read_table

    manifest, _ = mixed_manifest(tmp_path)
    rows = list(csv.reader(open(manifest)))
    other = tmp_path / "other.csv"
    with open(other, "w", newline="") as f:
        # a decimal comma in the values, as a European spreadsheet writes them next to ";"
        csv.writer(f, delimiter=delimiter).writerows([rows[0] + ["score"]] +
                                                     [r + ["2,5" if delimiter != "," else "2.5"] for r in rows[1:]])
    table, reference = read_table(other), read_table(manifest)
    assert table.columns["path"] == reference.columns["path"] and table.columns["label"] == reference.columns["label"]
    assert table.header == ["subject", "path", "label", "score"]
    assert table.columns["score"] == ["2.5"] * 3  # the decimal comma of a ';' or tab table is a decimal point


def test_ids_are_unique_per_row(tmp_path, capsys):
    from covfuse.cli.main import main as covfuse
    from covfuse.data.readers import read_table

    manifest, _ = mixed_manifest(tmp_path)
    text = manifest.read_text() + "s4,img/a.png,1\n"  # one file in two rows (two readers' labels)
    manifest.write_text(text)
    table = read_table(manifest)
    assert table.row_ids(range(4)) == ["img/a.png#L2", "img/b.png", "img/c.dcm", "img/a.png#L5"]
    lines = text.splitlines()
    with_id = ["id," + lines[0]] + [f"r{i}," + line for i, line in enumerate(lines[1:])]
    manifest.write_text("\n".join(with_id) + "\n")
    assert read_table(manifest).row_ids(range(4)) == ["r0", "r1", "r2", "r3"]
    manifest.write_text("\n".join(with_id[:-1] + ["r0," + lines[-1]]) + "\n")
    assert covfuse(["data", "info", str(manifest)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("line 5: id 'r0' is also on line 2; the id column names each row once "
                                            "(drop the column to use path and line)")


# ------------------------------------------------------------------- docs/data.md's dermoscopy example, verbatim
DATA_MD = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def dermoscopy_example() -> tuple[list[str], list[list[str]]]:
    """(manifest lines, commands) of docs/data.md's dermoscopy layout, as printed there."""
    import shlex

    text = DATA_MD.read_text()
    block = text.split("    photos/manifest.csv:\n", 1)[1]
    manifest_text, rest = block.split("\n\n", 1)
    commands_text = rest.split("\n\n", 1)[0]
    manifest = [line[4:] for line in manifest_text.splitlines()]
    joined = commands_text.replace("\\\n", " ")
    return manifest, [shlex.split(line)[1:] for line in joined.splitlines() if line.strip().startswith("covfuse ")]


def test_the_dermoscopy_example_in_docs_runs_as_printed(tmp_path, monkeypatch, capsys):
    import csv

    from PIL import Image

    from covfuse.cli.main import main as covfuse

    manifest, commands = dermoscopy_example()
    assert manifest[0] == "subject,path,split,melanoma,age,sex,site" and len(commands) == 2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(Path(__file__).resolve().parents[2] / "configs")
    (tmp_path / "photos/img").mkdir(parents=True)
    (tmp_path / "photos/manifest.csv").write_text("\n".join(manifest) + "\n")
    rng = np.random.default_rng(0)
    for row in list(csv.DictReader(manifest))[:]:
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "photos" / row["path"])
    for argv in commands:
        code = covfuse(argv)
        assert code == 0, (argv, capsys.readouterr().err[-2000:])
    rows = list(csv.DictReader(open(tmp_path / "runs/isic-hybrid/predictions.csv")))
    assert sorted(r["id"] for r in rows) == ["img/ISIC_0000003.jpg", "img/ISIC_0000004.jpg"]
    assert all(np.isfinite(float(r["probability"])) for r in rows)


def test_a_truncated_float_nifti_is_one_line_not_a_traceback(tmp_path, capsys):
    """A float NIfTI cut short (a copy that stopped): counting its NaN voxels read it, and a gzip EOFError
    escaped as a traceback from `data info` and `fit`; preprocessing named MONAI's wrapper, not the cause."""
    import gzip

    import nibabel as nib

    from covfuse.cli.main import main as covfuse
    from covfuse.data.decoders.volume import Preprocessing, load_volume

    data = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    (tmp_path / "v").mkdir()
    for name in ("a", "b", "c"):
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / f"v/{name}.nii.gz"))
    whole = (tmp_path / "v/b.nii.gz").read_bytes()
    (tmp_path / "v/b.nii.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(EOFError):  # the reference: gzip itself says the file ends early
        gzip.decompress((tmp_path / "v/b.nii.gz").read_bytes())
    (tmp_path / "m.csv").write_text("subject,path,age\ns1,v/a.nii.gz,60\ns2,v/b.nii.gz,70\ns3,v/c.nii.gz,80\n")
    assert covfuse(["data", "info", str(tmp_path / "m.csv")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "v/b.nii.gz: cannot read the volume (EOFError" in lines[0], lines
    with pytest.raises(UserError, match=r"cannot preprocess .*b\.nii\.gz \(EOFError: "):
        load_volume(tmp_path / "v/b.nii.gz", Preprocessing(size=8))


def test_skip_corrupt_leaves_out_a_truncated_volume(tmp_path, capsys, small_monai):
    """`covfuse data verify` tells a volume manifest with a cut-short NIfTI that `fit --skip_corrupt` trains without
    it: it must (volumes were never skipped; the run stopped at the file, also with the config's cache build)."""
    import csv

    from covfuse.cli.main import main as covfuse

    twin = tmp_path / "t"
    assert covfuse(["data", "synth3d", str(twin), "--n", "24", "--size", "16", "--seed", "4"]) == 0
    rows = list(csv.DictReader(open(twin / "manifest.csv")))
    bad = twin / next(r["path"] for r in rows if r["split"] == "train")
    bad.write_bytes(bad.read_bytes()[:3000])
    assert covfuse(["data", "verify", str(twin / "manifest.csv")]) == 2
    assert "`covfuse fit --skip_corrupt` trains without it" in capsys.readouterr().err
    runs = tmp_path / "runs"
    cached = [*TINY[:4], "--data.cache", "build", *TINY[6:]]
    assert covfuse(["fit", "--config", str(CONFIG), "--data.root", str(twin / "manifest.csv"), *cached,
                    "--runs_dir", str(runs), "--name", "k", "--skip_corrupt"]) == 0, capsys.readouterr().err[-2000:]
    assert (runs / "k/skipped.txt").read_text().split() == [bad.name]
    predicted = [r["id"] for r in csv.DictReader(open(runs / "k/predictions.csv"))]
    assert predicted and not any(bad.name in p for p in predicted)
