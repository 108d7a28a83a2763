"""`covfuse data show` on the synthetic twins: the montage's size, the decoded arrays against the libraries that
wrote the files (PIL, nibabel), and its refusals (exit 2, one line, nothing written)."""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covfuse.cli.main import main as covfuse
from covfuse.data.decoders import read_pixels
from covfuse.data.show import montage_size
from covfuse.data.twins.brains import write_synth3d
from covfuse.data.twins.faces import write_synth

from data_fixtures import make_twin


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The three kinds of source: a CelebA folder, an image manifest, a volume manifest (small)."""
    base = tmp_path_factory.mktemp("show")
    write_synth(base / "faces", n=12, seed=1, image_size=(24, 28), format="manifest", progress=False)
    write_synth3d(base / "brains", n=6, size=12)
    return {"celeba": make_twin(tmp_path_factory, n=60, size=(24, 28), seed=5),
            "manifest": base / "faces" / "manifest.csv", "volumes": base / "brains" / "manifest.csv"}


def files_in(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("source, kind, rows", [("celeba", "image", 5), ("manifest", "image", 3),
                                                ("volumes", "volume", 2)])
def test_the_montage_has_one_tile_per_row(twins, tmp_path, capsys, source, kind, rows):
    out = tmp_path / "figs" / "show.png"  # a folder that does not exist yet is made
    assert covfuse(["data", "show", str(twins[source]), "--rows", str(rows), "--image_size", "16",
                    "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: {rows} row(s) as the network sees them")
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == montage_size(rows, kind)
    width, height = montage_size(rows, kind)
    if kind == "volume":  # one line of three slices per row
        assert (width, height) == (720, rows * 320 + 50)
    else:  # up to four tiles per line
        assert (width, height) == (320 * min(rows, 4), 420 * -(-rows // 4) + 50)


def test_the_montage_labels_rows_chosen_by_id(twins, tmp_path, capsys):
    out = tmp_path / "two.png"
    assert covfuse(["data", "show", str(twins["manifest"]), "--ids", "images/000004.jpg,images/000002.jpg",
                    "--covariates", "Young,Male", "--out", str(out), "--image_size", "16"]) == 0
    assert "2 row(s)" in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.size == montage_size(2, "image")


def test_npy_of_a_2d_row_is_the_decoded_image(twins, tmp_path, capsys):
    for source, row_id, file in (("celeba", "000002.jpg", twins["celeba"] / "celeba/img_align_celeba/000002.jpg"),
                                 ("manifest", "images/000003.jpg", twins["manifest"].parent / "images/000003.jpg")):
        out = tmp_path / f"{source}.npy"
        assert covfuse(["data", "show", str(twins[source]), "--ids", row_id, "--out", str(out)]) == 0
        assert f"wrote {out}: the decoded array of {row_id}" in capsys.readouterr().out
        got = np.load(out)
        assert got.dtype == np.float32 and got.shape == (28, 24, 3)  # full resolution, before resizing
        np.testing.assert_array_equal(got, np.asarray(Image.open(file).convert("RGB"), dtype=np.float32))
        np.testing.assert_array_equal(got, read_pixels(file)[0].astype(np.float32))


def test_npy_of_a_volume_is_in_ras(twins, tmp_path, capsys):
    """A volume written LPS-permuted and one from the twin's manifest come back as nibabel's closest canonical (RAS)."""
    rng = np.random.default_rng(0)
    voxels = rng.normal(100, 20, (7, 9, 11)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 10], [-1.5, 0, 0, 20], [0, 3.0, 0, -5], [0, 0, 0, 1]])  # axes P, S, L
    nib.save(nib.Nifti1Image(voxels, affine), tmp_path / "odd.nii.gz")
    out = tmp_path / "odd.npy"
    assert covfuse(["data", "show", str(tmp_path / "odd.nii.gz"), "--out", str(out)]) == 0
    assert "RAS" in capsys.readouterr().out
    expected = nib.as_closest_canonical(nib.load(tmp_path / "odd.nii.gz"))
    assert nib.aff2axcodes(expected.affine) == ("R", "A", "S")
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (11, 7, 9)
    np.testing.assert_array_equal(got, expected.get_fdata(dtype=np.float32))

    out = tmp_path / "row.npy"
    assert covfuse(["data", "show", str(twins["volumes"]), "--rows", "1", "--out", str(out)]) == 0
    first = twins["volumes"].parent / "volumes" / "sub-0001.nii.gz"
    np.testing.assert_array_equal(np.load(out), nib.as_closest_canonical(nib.load(first)).get_fdata(dtype=np.float32))


def _refused(argv, folder, capsys, expect: str) -> None:
    before = files_in(folder)
    code = covfuse(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("covfuse data: error: ") and expect in lines[0], lines[0]
    assert files_in(folder) == before  # nothing written


def test_refusals_are_one_line_and_write_nothing(twins, tmp_path, capsys, monkeypatch):
    manifest = str(twins["manifest"])
    (tmp_path / "afile").write_text("not a folder")
    cases = [
        (["--ids", "images/000099.jpg", "--out", "s.png"], "--ids: no row of"),
        (["--ids", "images/00003.jpg", "--out", "s.png"], "(did you mean 'images/000003.jpg'?)"),
        (["--out", "s.jpg"], "--out s.jpg: name a .png (the montage) or a .npy"),
        (["--out", "afile/s.png"], "afile is a file, not a folder"),
        (["--rows", "3", "--out", "s.npy"], "a .npy holds one row's array"),
        (["--ids", "images/000001.jpg,images/000002.jpg", "--out", "s.npy"], "a .npy holds one row's array"),
        (["--rows", "0", "--out", "s.png"], "--rows must be at least 1"),
        (["--covariates", "Yung", "--out", "s.png"], "no column 'Yung' (did you mean 'Young'?)"),
        (["--out", "afile"], "--out afile: name a .png"),
        (["--out", "afile.png", "--image_size", "4"], "image size must be an integer of at least 8"),
    ]
    monkeypatch.chdir(tmp_path)
    for extra, expect in cases:
        _refused(["data", "show", manifest, *extra], tmp_path, capsys, expect)
    (tmp_path / "taken.png").write_bytes(b"mine")
    _refused(["data", "show", manifest, "--out", "taken.png"], tmp_path, capsys, "taken.png exists; pass --overwrite")
    locked = (tmp_path / "locked").resolve()
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: let the folder read as unwritable, as it does for a user
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p).resolve() == locked else
                                real(p, mode, *a, **k))
        _refused(["data", "show", manifest, "--out", "locked/s.png"], tmp_path, capsys,
                 "--out locked/s.png: cannot write into locked (permission denied)")
    finally:
        locked.chmod(0o755)


def test_the_preprocessing_comes_from_a_run_config_then_the_flags(twins, tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("data:\n  image_size: 12\n  preset: research\n")
    out = tmp_path / "cfg.png"
    assert covfuse(["data", "show", str(twins["manifest"]), "--config", str(tmp_path / "run.yaml"), "--rows", "1",
                    "--out", str(out)]) == 0
    assert "(12x12 px, preset research;" in capsys.readouterr().out
    assert covfuse(["data", "show", str(twins["manifest"]), "--config", str(tmp_path / "run.yaml"), "--rows", "1",
                    "--image_size", "20", "--out", str(out), "--overwrite"]) == 0
    assert "(20x20 px, preset research;" in capsys.readouterr().out
