"""Volume manifests: validation errors with their line, covariate encoding from train only, subject folds."""
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covfuse.cli.main import main as covfuse
from covfuse.data.readers.manifest import read_manifest
from covfuse.data.table import CovariateEncoder, subject_folds, subject_split
from covfuse.errors import UserError


def write_volume(path: Path, shape=(8, 8, 8), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).normal(100, 10, size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def write_manifest(folder: Path, rows: list[dict], volumes: bool = True) -> Path:
    header = list(rows[0])
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)
    if volumes:
        for i, row in enumerate(rows):
            if not (folder / row["path"]).exists():
                write_volume(folder / row["path"], seed=i)
    return folder / "manifest.csv"


def rows(n: int = 6) -> list[dict]:
    splits = ["train", "train", "train", "valid", "test", "test", "train", "valid"]
    return [{"subject": f"s{i}", "path": f"v/s{i}.nii.gz", "split": splits[i % len(splits)], "dx": "CN" if i % 2 else "AD",
             "age": str(60 + i), "sex": "F" if i % 3 else "M", "apoe4": str(i % 3)} for i in range(n)]


def info(capsys, manifest: Path, *extra: str) -> tuple[int, str, str]:
    code = covfuse(["data", "info", str(manifest), "--format", "json", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_valid_manifest_is_summarised(tmp_path, capsys):
    import json

    manifest = write_manifest(tmp_path, rows())
    code, out, err = info(capsys, manifest)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["num_subjects"] == 6 and summary["num_volumes"] == 6 and summary["shape"] == [8, 8, 8]
    assert summary["splits"] == {"train": 3, "valid": 1, "test": 2}
    assert summary["columns"]["age"] == {"type": "numeric", "missing": 0, "min": 60.0, "max": 65.0}
    assert summary["columns"]["sex"]["type"] == "categorical" and summary["columns"]["sex"]["levels"] == {"F": 4, "M": 2}


def _missing_file(folder, table):
    (folder / table[2]["path"]).unlink()
    return 4, "not found"


def _unreadable(folder, table):
    (folder / table[1]["path"]).write_bytes(b"this is not a nifti file")
    return 3, "cannot read"


def _two_d(folder, table):
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(folder / table[3]["path"]))
    return 5, "2-D"


def _four_d(folder, table):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), str(folder / table[4]["path"]))
    return 6, "4-D"


def _non_numeric(folder, table):
    table[2]["age"] = "sixty"
    return 4, "non-numeric value 'sixty' in numeric column 'age'"


def _duplicate_subject(folder, table):
    table[4]["subject"] = "s0"  # s0 is in train, row 4 in test
    return 6, "subject s0 is in split test but line 2 puts it in train"


@pytest.mark.parametrize("damage", [_missing_file, _unreadable, _two_d, _four_d, _non_numeric, _duplicate_subject])
def test_bad_manifests_exit_2_with_one_line_naming_the_line(tmp_path, capsys, damage):
    table = rows()
    write_manifest(tmp_path, table)
    line, words = damage(tmp_path, table)
    manifest = write_manifest(tmp_path, table, volumes=False)
    code, out, err = info(capsys, manifest)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"manifest.csv, line {line}" in err and words in err


def test_unknown_column_is_named_with_a_suggestion(tmp_path, capsys):
    manifest = write_manifest(tmp_path, rows())
    code, _, err = info(capsys, manifest, "--target", "dx", "--covariates", "age,sexx")
    assert code == 2 and err.count("\n") == 1
    assert "no column 'sexx'" in err and "did you mean 'sex'?" in err


def test_standardisation_uses_training_rows_only(tmp_path):
    table = rows(8)
    for row in table:  # valid/test ages far away: any leak into the statistics moves them
        if row["split"] != "train":
            row["age"] = "1000"
    manifest = read_manifest(write_manifest(tmp_path, table))
    train = np.flatnonzero(manifest.split == 0)
    encoder = CovariateEncoder.fit(manifest, ["age"], train)
    ages = np.asarray([float(r["age"]) for r in table])
    assert encoder.specs[0]["mean"] == pytest.approx(ages[train].mean())
    assert encoder.specs[0]["std"] == pytest.approx(ages[train].std())
    z = encoder.transform(manifest)[:, 0]
    assert z[train].mean() == pytest.approx(0, abs=1e-6) and z[train].std() == pytest.approx(1, abs=1e-5)
    assert (z[manifest.split != 0] > 10).all()  # test rows are scaled by the training statistics
    # the same encoder, saved and reloaded, gives the same features
    again = CovariateEncoder.from_dict(encoder.to_dict()).transform(manifest)
    np.testing.assert_array_equal(again[:, 0], z)


def test_missing_values_become_indicator_columns(tmp_path):
    table = rows(8)
    table[1]["apoe4"] = ""      # train
    table[4]["apoe4"] = "NA"    # test
    table[2]["sex"] = ""        # train
    manifest = read_manifest(write_manifest(tmp_path, table))
    train = np.flatnonzero(manifest.split == 0)
    encoder = CovariateEncoder.fit(manifest, ["apoe4", "sex"], train)
    assert encoder.feature_names == ["apoe4", "apoe4_missing", "sex=F", "sex=M", "sex_missing"]
    x = encoder.transform(manifest)
    present = [i for i in train if table[i]["apoe4"] not in ("", "NA")]
    values = np.asarray([float(table[i]["apoe4"]) for i in present])
    for i, row in enumerate(table):
        missing = row["apoe4"] in ("", "NA")
        assert x[i, 1] == float(missing)
        expected = 0.0 if missing else (float(row["apoe4"]) - values.mean()) / values.std()
        assert x[i, 0] == pytest.approx(expected, abs=1e-6)  # imputed with the training mean
        assert list(x[i, 2:]) == ([0, 0, 1] if row["sex"] == "" else [row["sex"] == "F", row["sex"] == "M", 0])


def test_folds_are_grouped_by_subject(tmp_path):
    table = []
    for s in range(10):  # several sessions per subject
        for session in range(1 + s % 3):
            table.append({"subject": f"s{s}", "path": f"v/s{s}-{session}.nii.gz", "session": str(session),
                          "split": "test" if s >= 8 else "train", "dx": str(s % 2)})
    manifest = read_manifest(write_manifest(tmp_path, table))
    split = subject_split(manifest)
    folds = subject_folds(manifest, split, k=4, seed=1, stratify=np.asarray([float(r["dx"]) for r in table]))
    pool = np.flatnonzero(split <= 1)
    assert len(folds) == 4
    seen = []
    for train, valid in folds:
        assert not set(manifest.subjects[train]) & set(manifest.subjects[valid])
        assert sorted(np.concatenate([train, valid])) == sorted(pool)
        seen += list(valid)
    assert sorted(seen) == sorted(pool)  # every train+valid row validates exactly once; test never
    assert subject_folds(manifest, split, 4, 1)[0][1].tolist() == subject_folds(manifest, split, 4, 1)[0][1].tolist()


def test_without_a_split_column_subjects_are_split_whole(tmp_path):
    table = [{"subject": f"s{i // 2}", "path": f"v/{i}.nii.gz", "dx": str(i % 2)} for i in range(20)]
    manifest = read_manifest(write_manifest(tmp_path, table))
    split = subject_split(manifest, seed=3)
    for subject in set(manifest.subjects):
        assert len(set(split[manifest.subjects == subject])) == 1
    assert set(split) == {0, 1, 2}


def test_manifest_not_found_and_bad_split_value(tmp_path):
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    table = rows()
    table[0]["split"] = "training"
    with pytest.raises(UserError, match="line 2: split 'training' is not one of"):
        read_manifest(write_manifest(tmp_path, table))
