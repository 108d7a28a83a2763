"""Volumes as scanners and pipelines write them (issue 32): a DICOM series folder, an enhanced multi-frame DICOM,
FreeSurfer .mgz, an Analyze pair and a 4-D NIfTI each read as the same volume written as NIfTI.

Each file is written here by the library that owns its format (pydicom, nibabel) from one NIfTI volume; the
reference is nibabel's own reading of that NIfTI, reoriented to RAS by nibabel (``as_closest_canonical``),
and covfuse's model input from the NIfTI file.
"""
from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from data_fixtures import write_dicom_series, write_multiframe

from covfuse.cli.main import main as covfuse
from covfuse.data.decoders.volume import Choice, Preprocessing, load_volume, read_volume, volume_shape
from covfuse.errors import UserError

# voxel axes permuted and flipped against RAS, anisotropic voxels: x -> anterior, y -> inferior, z -> left;
# sizes that float32 holds exactly (NIfTI keeps its affine in float32, DICOM in decimals)
PERMUTED = np.array([[0.0, 0.0, -2.5, 40.0], [1.25, 0.0, 0.0, -30.0], [0.0, -1.0, 0.0, 20.0], [0, 0, 0, 1]])
# the slices' order along the DICOM slice normal runs against the volume's z
AGAINST_NORMAL = np.array([[1.25, 0.0, 0.0, -10.0], [0.0, 1.0, 0.0, 5.0], [0.0, 0.0, -2.0, 30.0], [0, 0, 0, 1]])
SETTINGS = Preprocessing(size=8)


def volume(seed: int = 0, shape=(11, 9, 7)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-900, 2500, shape).astype(np.int16)


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nibabel's reorientation to RAS, the reference for every comparison."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine))
    return np.asanyarray(image.dataobj), image.affine


def assert_same_volume(path, nifti, choice: Choice = Choice(), settings: Preprocessing = SETTINGS):
    """covfuse reads ``path`` as nibabel reads ``nifti`` (voxels and affine after RAS reorientation), and
    gives it the same model input as the NIfTI file."""
    voxels, affine = read_volume(path, choice)
    image = nib.load(str(nifti))
    want, want_affine = canonical(image.get_fdata(dtype=np.float32), image.affine)
    got, got_affine = canonical(voxels, affine)
    assert got.shape == want.shape and np.array_equal(got, want)
    np.testing.assert_allclose(got_affine, want_affine, atol=1e-4)
    chosen = {"series": choice.series, "volume_index": choice.volume_index}
    assert torch.equal(load_volume(path, Preprocessing(**settings.record(), **chosen)), load_volume(nifti, settings))
    resampled = Preprocessing(**{**settings.record(), "spacing": 2.0})  # resampling reads the affine too
    assert torch.equal(load_volume(path, Preprocessing(**resampled.record(), **chosen)), load_volume(nifti, resampled))


@pytest.mark.parametrize("affine", [PERMUTED, AGAINST_NORMAL], ids=["permuted", "against-normal"])
def test_a_dicom_series_is_the_volume_its_nifti_holds(tmp_path, affine):
    data = volume()
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "t1.nii.gz"))
    write_dicom_series(tmp_path / "series_MR700", data, affine)
    (tmp_path / "series_MR700" / "DICOMDIR.txt").write_text("not an image")  # other files are passed over
    assert volume_shape(tmp_path / "series_MR700") == (11, 9, 7)
    assert_same_volume(tmp_path / "series_MR700", tmp_path / "t1.nii.gz")


def test_an_enhanced_multiframe_dicom_is_the_volume_its_nifti_holds(tmp_path):
    data = volume(1)
    nib.save(nib.Nifti1Image(data, PERMUTED), str(tmp_path / "t1.nii.gz"))
    write_multiframe(tmp_path / "enhanced.dcm", data, PERMUTED)
    assert_same_volume(tmp_path / "enhanced.dcm", tmp_path / "t1.nii.gz")
    write_multiframe(tmp_path / "shared.dcm", data, PERMUTED, positions=False)
    with pytest.raises(UserError, match=r"shared\.dcm: frame 1 of 7 carries no position of its own "
                                        r"\(PerFrameFunctionalGroupsSequence -> PlanePositionSequence\)"):
        volume_shape(tmp_path / "shared.dcm")


def test_mgz_mgh_and_analyze_read_through_nibabel(tmp_path):
    data = volume(2)
    nib.save(nib.Nifti1Image(data, PERMUTED), str(tmp_path / "t1.nii.gz"))
    nib.save(nib.MGHImage(data.astype(np.float32), PERMUTED), str(tmp_path / "brain.mgz"))
    nib.save(nib.MGHImage(data, PERMUTED), str(tmp_path / "brain.mgh"))
    for name in ("brain.mgz", "brain.mgh"):
        assert_same_volume(tmp_path / name, tmp_path / "t1.nii.gz")
    # Analyze 7.5 stores voxel sizes, not an orientation: nibabel reads it in its radiological convention
    nib.save(nib.AnalyzeImage(data, np.diag([2.0, 1.5, 1.25, 1.0])), str(tmp_path / "scan.img"))
    as_read = nib.load(str(tmp_path / "scan.hdr"))
    nib.save(nib.Nifti1Image(np.asanyarray(as_read.dataobj), as_read.affine), str(tmp_path / "scan.nii.gz"))
    for name in ("scan.hdr", "scan.img"):  # either file names the pair
        assert_same_volume(tmp_path / name, tmp_path / "scan.nii.gz")


def test_a_4d_nifti_needs_data_volume_index(tmp_path):
    data = np.stack([volume(s) for s in (3, 4, 5)], axis=-1)
    nib.save(nib.Nifti1Image(data, PERMUTED), str(tmp_path / "bold.nii.gz"))
    for k in range(3):
        nib.save(nib.Nifti1Image(data[..., k], PERMUTED), str(tmp_path / f"v{k}.nii.gz"))
    with pytest.raises(UserError, match=r"bold\.nii\.gz holds 3 volumes \(4-D, 11x9x7x3\); choose one with "
                                        r"data\.volume_index \(0 to 2, -1 the last; `covfuse data info --volume_index N`\)"):
        volume_shape(tmp_path / "bold.nii.gz")
    assert_same_volume(tmp_path / "bold.nii.gz", tmp_path / "v1.nii.gz", Choice(volume_index=1))
    assert_same_volume(tmp_path / "bold.nii.gz", tmp_path / "v2.nii.gz", Choice(volume_index=-1))
    with pytest.raises(UserError, match=r"data\.volume_index 3 is outside .*bold\.nii\.gz's 3 volumes"):
        volume_shape(tmp_path / "bold.nii.gz", choice=Choice(volume_index=3))


def _two_series(folder, data):
    write_dicom_series(folder, data, PERMUTED, uid="1.2.826.0.1.1", description="T1 MPRAGE")
    localizer = np.zeros((11, 9, 3), np.int16)
    write_dicom_series(folder, localizer, AGAINST_NORMAL, uid="1.2.826.0.1.2", description="localizer", seed=1)


def test_a_folder_of_several_series_is_refused_naming_them_and_data_series_picks_one(tmp_path):
    data = volume(6)
    nib.save(nib.Nifti1Image(data, PERMUTED), str(tmp_path / "t1.nii.gz"))
    _two_series(tmp_path / "study", data)
    with pytest.raises(UserError, match=r"study: holds 2 DICOM series: 1\.2\.826\.0\.1\.1 'T1 MPRAGE' \(7 files\); "
                                        r"1\.2\.826\.0\.1\.2 'localizer' \(3 files\); choose one with data\.series"):
        volume_shape(tmp_path / "study")
    assert_same_volume(tmp_path / "study", tmp_path / "t1.nii.gz", Choice(series="1.2.826.0.1.1"))
    assert_same_volume(tmp_path / "study", tmp_path / "t1.nii.gz", Choice(series="t1 mprage"))  # description, any case
    with pytest.raises(UserError, match=r"no series here is data\.series 'T2' .*it holds 1\.2\.826\.0\.1\.1"):
        volume_shape(tmp_path / "study", choice=Choice(series="T2"))


def _damaged(folder, damage: str):
    """A series written from one volume, then damaged as real exports are."""
    import pydicom

    files = write_dicom_series(folder, volume(7), PERMUTED)
    by_position = sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[0]))
    if damage == "gap":
        by_position[3].unlink()
    elif damage in ("orientation", "position", "tilt"):
        ds = pydicom.dcmread(by_position[2])
        if damage == "orientation":
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        elif damage == "position":
            ds.ImagePositionPatient = pydicom.dcmread(by_position[3]).ImagePositionPatient
        ds.save_as(by_position[2])
        if damage == "tilt":
            for k, f in enumerate(by_position):
                ds = pydicom.dcmread(f)
                ds.ImagePositionPatient = [float(v) + (0.6 * k if i == 2 else 0) for i, v in enumerate(ds.ImagePositionPatient)]
                ds.save_as(f)
    elif damage == "empty":
        for f in files:
            f.unlink()
        (folder / "notes.txt").write_text("the scans are in the subfolders")
        (folder / "s1").mkdir()
    elif damage == "one slice":
        for f in files[1:]:
            f.unlink()


@pytest.mark.parametrize("damage, message", [
    ("gap", r"uneven slice spacing: 5\.000 mm from IM\d+ to IM\d+, 2\.500 mm between other neighbours \(a missing "
            r"slice\?\)"),
    ("orientation", r"mixed orientations: IM\d+ has ImageOrientationPatient \[.*\], IM\d+ \[.*\] \(a localizer in "
                    r"the series\?\); keep the slices of one orientation in the folder"),
    ("position", r"IM\d+ and IM\d+ lie at one position .*several volumes in one series"),
    ("tilt", r"the slices step 13\.5 degrees off their normal \(a tilted gantry\)"),
    ("empty", r"a folder without DICOM images \(1 file\(s\), none a DICOM image\); its subfolders \(s1\) may each hold "
              r"a series: name one series folder per row"),
    ("one slice", r"one slice \(IM\d+\) is a 2D image, not a volume"),
])
def test_a_series_that_is_not_one_even_volume_is_refused_in_one_line(tmp_path, damage, message):
    _damaged(tmp_path / "s", damage)
    with pytest.raises(UserError, match=message) as caught:
        volume_shape(tmp_path / "s", "m.csv, line 2")
    assert str(caught.value).startswith(f"m.csv, line 2: {tmp_path / 's'}") and "\n" not in str(caught.value)


def _mixed_manifest(root):
    """A manifest naming one volume of each kind, and the NIfTI each was written from."""
    kinds = {}
    for i, name in enumerate(("series", "enhanced.dcm", "brain.mgz", "scan.hdr", "bold.nii.gz", "plain.nii.gz")):
        data = volume(10 + i)
        affine = PERMUTED if name != "scan.hdr" else None
        nifti = root / "ref" / f"{i}.nii.gz"
        nifti.parent.mkdir(parents=True, exist_ok=True)
        if name == "series":
            write_dicom_series(root / name, data, affine)
        elif name == "enhanced.dcm":
            write_multiframe(root / name, data, affine)
        elif name == "brain.mgz":
            nib.save(nib.MGHImage(data, affine), str(root / name))
        elif name == "scan.hdr":
            nib.save(nib.AnalyzeImage(data, np.diag([2.0, 1.5, 1.25, 1.0])), str(root / "scan.img"))
            affine = nib.load(str(root / name)).affine
        elif name == "bold.nii.gz":
            nib.save(nib.Nifti1Image(np.stack([volume(20), data], axis=-1), affine), str(root / name))
        else:
            nib.save(nib.Nifti1Image(data, affine), str(root / name))
        nib.save(nib.Nifti1Image(data, affine), str(nifti))
        kinds[name] = nifti
    lines = ["subject,path,split,label,age"] + [f"s{i},{name},{('train', 'valid', 'test')[i % 3]},{i % 2},{50 + i}"
                                                for i, name in enumerate(kinds)]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return kinds


def test_the_volume_cache_holds_every_kind_as_read_from_its_file(tmp_path):
    from covfuse.data.cache import build_volume_cache, open_volume_cache

    kinds = _mixed_manifest(tmp_path)
    files = [tmp_path / name for name in kinds]
    settings = Preprocessing(size=8, volume_index=1)
    cache = build_volume_cache(files, settings, tmp_path / "cache", progress=False)
    for i, (name, nifti) in enumerate(kinds.items()):
        assert torch.equal(cache[i], load_volume(tmp_path / name, settings).half()), name
        assert torch.equal(cache[i], load_volume(nifti, Preprocessing(size=8)).half()), name
    assert open_volume_cache(files, settings, tmp_path / "cache") is not None
    # a slice rewritten in place (same folder, same names) is a changed volume: the cache no longer matches
    one = sorted((tmp_path / "series").iterdir())[0]
    os.utime(one, ns=(one.stat().st_atime_ns, one.stat().st_mtime_ns + 10**9))
    assert open_volume_cache(files, settings, tmp_path / "cache") is None


def test_data_info_and_verify_read_every_kind_and_name_the_options(tmp_path, capsys):
    _mixed_manifest(tmp_path)
    manifest = str(tmp_path / "m.csv")
    assert covfuse(["data", "info", manifest]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.csv, line 6 (subject s4): " in err[0] and "bold.nii.gz holds 2 volumes" in err[0] \
        and "`covfuse data info --volume_index N`" in err[0]
    assert covfuse(["data", "info", manifest, "--volume_index", "1", "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "volume" and summary["num_volumes"] == 6 and summary["shape"] == [11, 9, 7]
    assert summary["formats"] == {"Analyze": 1, "DICOM multi-frame": 1, "DICOM series": 1, "MGH": 1, "NIfTI": 1,
                                  "NIfTI 4-D (2 volumes, index 1)": 1}
    assert covfuse(["data", "info", manifest, "--volume_index", "1"]) == 0
    assert "formats: Analyze (1), DICOM multi-frame (1), DICOM series (1)" in capsys.readouterr().out
    assert covfuse(["data", "verify", manifest, "--volume_index", "-1"]) == 0
    out = capsys.readouterr().out
    assert "volumes: 6 of 6 decode" in out and "formats: Analyze (1), DICOM multi-frame (1), DICOM series (1), MGH (1), " \
        "NIfTI (1), NIfTI 4-D (2 volumes, index 1) (1)" in out
    # a folder of two series: data info names them and --series picks one, as data.series does for a run
    shutil.rmtree(tmp_path / "series")
    _two_series(tmp_path / "series", volume(10))
    assert covfuse(["data", "info", manifest, "--volume_index", "1"]) == 2
    assert "holds 2 DICOM series" in capsys.readouterr().err
    assert covfuse(["data", "info", manifest, "--volume_index", "1", "--series", "T1 MPRAGE"]) == 0


def test_a_manifest_of_multiframe_dicoms_is_a_volume_manifest(tmp_path):
    from covfuse.data.readers.manifest import read_manifest

    for i in range(3):
        write_multiframe(tmp_path / f"v{i}.dcm", volume(30 + i), PERMUTED)
    (tmp_path / "m.csv").write_text("subject,path\n" + "".join(f"s{i},v{i}.dcm\n" for i in range(3)))
    table = read_manifest(tmp_path / "m.csv")
    assert table.kind == "volume" and [volume_shape(f) for f in table.files] == [(11, 9, 7)] * 3


def test_a_bids_entry_may_be_a_dicom_series_folder(tmp_path):
    from covfuse.data.readers.bids import read_bids

    root = tmp_path / "study"
    (root / "sub-01/anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t60\nsub-02\t70\n")
    nib.save(nib.Nifti1Image(volume(40), PERMUTED), str(root / "sub-01/anat/sub-01_T1w.nii.gz"))
    write_dicom_series(root / "sub-02/anat/sub-02_T1w", volume(41), PERMUTED)
    table = read_bids(root)
    assert table.columns["path"] == ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w"]
    assert [volume_shape(f) for f in table.files] == [(11, 9, 7)] * 2


def test_fit_and_test_read_series_folders_and_4d_files_as_chosen_and_reuse_one_cache(tmp_path, capsys):
    """A study as a hospital sends it: each subject a folder holding the T1 series beside a localizer, or a 4-D
    NIfTI; data.series and data.volume_index pick the volumes, fit builds their cache once and test reuses it."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "demo.yaml"
    rng = np.random.default_rng(0)
    lines = ["subject,path,split,diagnosis,age,sex,APOE4"]
    for i in range(12):
        data = volume(50 + i, (8, 8, 6))
        name = f"sub-{i:02d}"
        if i % 3:
            _two_series(tmp_path / name, data)
        else:
            nib.save(nib.Nifti1Image(np.stack([data, data // 2], axis=-1), PERMUTED), str(tmp_path / f"{name}.nii.gz"))
            name += ".nii.gz"
        split = ("train",) * 6 + ("valid", "valid", "valid", "test", "test", "test")
        lines.append(f"s{i},{name},{split[i]},{('CN', 'AD')[i % 2]},{60 + rng.integers(0, 30)},{'FM'[i % 2]},{i % 3}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    runs = tmp_path / "runs"
    tiny = ["--data.image_size", "8", "--data.batch_size", "4", "--trainer.max_epochs", "1", "--trainer.summary",
            "false", "--bootstrap", "20", "--trainer.progress", "none", "--runs_dir", str(runs)]
    fit = ["fit", "--config", str(config), "--data.root", str(tmp_path / "m.csv"), *tiny, "--name", "dicom"]
    assert covfuse(fit) == 2  # a 4-D file, then folders of two series: refused, naming the option that chooses
    assert "m.csv, line 2 (subject s0): " in (err := capsys.readouterr().err) and "choose one with data.volume_index" in err
    assert covfuse([*fit, "--data.volume_index", "0"]) == 2
    assert "m.csv, line 3 (subject s1): " in (err := capsys.readouterr().err) and "choose one with data.series" in err
    assert covfuse([*fit, "--data.series", "T1 MPRAGE", "--data.volume_index", "0"]) == 0, capsys.readouterr().err[-2000:]
    caches = list((tmp_path / ".covfuse-cache").glob("*.f16"))
    assert len(caches) == 1
    built = caches[0].stat().st_mtime_ns
    capsys.readouterr()
    assert covfuse(["test", str(runs / "dicom")]) == 0
    out = capsys.readouterr()
    assert "ignoring" not in out.out + out.err and caches[0].stat().st_mtime_ns == built
    import csv

    predicted = {row["id"]: row for row in csv.DictReader(open(runs / "dicom" / "predictions.csv"))}
    assert sorted(predicted) == ["sub-06.nii.gz", "sub-07", "sub-08", "sub-09.nii.gz", "sub-10", "sub-11"]
    # predict reads a series folder with the run's data.series, as test read it: the same probability
    _, _, _, _, age, sex, apoe4 = lines[11].split(",")
    assert covfuse(["predict", str(runs / "dicom"), str(tmp_path / "sub-10"), "--covariates",
                    f"age={age},sex={sex},APOE4={apoe4}"]) == 0
    out = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert len(out) == 2 and out[1][:2] == [str(tmp_path / "sub-10"), "sub-10"]
    probability = out[0].index(next(c for c in out[0] if c.startswith("P(")))  # then predicted_<target> (issue 34)
    assert float(out[1][probability]) == pytest.approx(float(predicted["sub-10"]["probability"]), abs=2e-6)



def _refusal(make, target: str, choice: Choice = Choice()) -> str:
    """What covfuse says of ``target`` (a path in the current folder) once ``make()`` has written it."""
    from pathlib import Path

    make()
    with pytest.raises(UserError) as caught:
        volume_shape(Path(target), "m.csv, line 2 (subject s1)", choice)
    return str(caught.value)


def test_docs_errors_lists_each_volume_refusal_as_covfuse_says_it(tmp_path, monkeypatch):
    """docs/errors.md, "Volumes as they come": each row's message is what covfuse says of files written here."""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    said = {}
    for damage in ("orientation", "position", "tilt", "empty", "one slice"):
        folder = f"s-{damage.replace(' ', '-')}"
        said[f"volume-series-{damage.replace(' ', '-')}"] = _refusal(lambda: _damaged(Path(folder), damage), folder)
    said["volume-multiframe-positions"] = _refusal(
        lambda: write_multiframe(Path("enhanced.dcm"), volume(1), PERMUTED, positions=False), "enhanced.dcm")

    def three_series():
        _two_series(Path("MR700"), volume(2))
        write_dicom_series(Path("MR700"), volume(3)[:, :, :2], PERMUTED, uid="1.2.826.0.1.3", description="localizer",
                           seed=2)

    said["volume-series-none"] = _refusal(three_series, "MR700", Choice(series="T2"))
    said["volume-series-ambiguous"] = _refusal(lambda: None, "MR700", Choice(series="localizer"))
    said["volume-index-range"] = _refusal(
        lambda: nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), "bold.nii.gz"), "bold.nii.gz",
        Choice(volume_index=3))
    text = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    section = text.split("## Volumes as they come", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `"):
            rows[cells[0].strip("`")] = cells[2]
    assert rows == {case: message.replace("|", "\\|") for case, message in said.items()}
