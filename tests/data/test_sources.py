"""One cache per source: manifests sharing a folder keep their own caches, built only after the table validates."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from covfuse.cli.main import main as covfuse
from covfuse.data.cache import cache_paths, open_cache
from covfuse.data.readers import read_table


def _images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` 12x12 grey PNGs under ``folder/img`` with random pixels; their relative paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L").save(folder / f"img/{i}.png")
        paths.append(f"img/{i}.png")
    return paths


def _manifest(path: Path, files: list[str], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    splits = ["train"] * (len(files) - 8) + ["valid"] * 4 + ["test"] * 4
    rows = [f"s{seed}-{i},{f},{splits[i]},{i % 2},{int(rng.integers(40, 80))}" for i, f in enumerate(files)]
    path.write_text("\n".join(["subject,path,split,label,age", *rows]) + "\n")
    return path


def _fit(root: Path, runs: Path, name: str, *extra: str) -> int:
    return covfuse(["fit", "--data.root", str(root), "--data.target", "label", "--data.covariates", "[age]",
                    "--data.image_size", "16", "--data.batch_size", "8", "--data.cache", "build",
                    "--model.backbone", "vgg-mini", "--model.fusion", "concat", "--trainer.max_epochs", "1",
                    "--trainer.summary", "false", "--trainer.progress", "none", "--bootstrap", "0",
                    "--runs_dir", str(runs), "--name", name, *extra])


def _state(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a cache folder: (inode and modification time in ns, content)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_two_manifests_in_one_folder_keep_their_caches_through_a_failed_build(tmp_path, caplog):
    files = _images(tmp_path, 28)
    a = _manifest(tmp_path / "train.csv", files[:24], 1)
    b = _manifest(tmp_path / "external.csv", files[4:], 2)
    caplog.set_level(logging.INFO)
    assert _fit(a, tmp_path / "runs", "a1") == 0
    assert _fit(b, tmp_path / "runs", "b1") == 0
    folder = tmp_path / ".covfuse-cache"
    caches = {m: cache_paths(read_table(m), 16, "center-crop") for m in (a, b)}
    assert caches[a] != caches[b] and all(p.is_file() for pair in caches.values() for p in pair)
    assert caches[a][0].name.startswith("train-") and caches[b][0].name.startswith("external-")
    before = _state(folder)

    # A third manifest in the same folder whose build fails on a damaged file.
    broken = files[:20] + ["img/bad.png"]
    (tmp_path / "img/bad.png").write_bytes((tmp_path / "img/0.png").read_bytes()[:30])
    c = _manifest(tmp_path / "broken.csv", broken, 3)
    assert _fit(c, tmp_path / "runs", "c1") == 2
    assert _state(folder) == before  # nothing of a's or b's touched, nothing of c's left behind
    assert not (tmp_path / "runs/c1").exists()

    caplog.clear()
    assert _fit(a, tmp_path / "runs", "a2") == 0
    assert _fit(b, tmp_path / "runs", "b2") == 0
    text = caplog.text
    assert "ignoring" not in text and "wrote image cache" not in text and "caching" not in text
    assert str(caches[a][0]) in text and str(caches[b][0]) in text
    assert _state(folder) == before  # no rebuild: same inodes, times and bytes

    # Each cache holds its own manifest's images, row for row (the decoder applied to each file).
    from covfuse.data.decoders import decode_file

    for manifest in (a, b):
        table = read_table(manifest)
        cache = open_cache(table, 16, "center-crop")
        expected = np.stack([decode_file(f, 16, "center-crop") for f in table.files])
        assert np.array_equal(cache.get_batch(np.arange(len(table))).numpy(), expected)


def test_the_cache_is_built_only_after_the_selection_validates(tmp_path):
    files = _images(tmp_path, 20)
    a = _manifest(tmp_path / "m.csv", files, 1)
    assert _fit(a, tmp_path / "runs", "x", "--data.target", "lable") == 2
    assert _fit(a, tmp_path / "runs", "y", "--data.covariates", "[agee]") == 2
    assert not (tmp_path / ".covfuse-cache").exists() and not (tmp_path / "runs").exists()


def test_a_cache_built_by_data_cache_in_its_own_folder_is_used_by_fit(tmp_path, caplog):
    files = _images(tmp_path, 20)
    a = _manifest(tmp_path / "m.csv", files, 1)
    assert covfuse(["data", "cache", str(a), "--size", "16", "--cache_dir", str(tmp_path / "shared")]) == 0
    built = _state(tmp_path / "shared")
    caplog.set_level(logging.INFO)
    assert _fit(a, tmp_path / "runs", "r", "--data.cache", "auto", "--data.cache_dir", str(tmp_path / "shared")) == 0
    assert "using image cache at " + str(tmp_path / "shared") in caplog.text
    assert _state(tmp_path / "shared") == built and not (tmp_path / ".covfuse-cache").exists()


def test_the_cache_names_the_decoder_that_read_the_files(tmp_path):
    import pydicom
    from data.test_decoders import _write_dicom

    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        _write_dicom(tmp_path / f"img/{i}.dcm", rng.integers(0, 4000, (10, 10)).astype(np.uint16))
    (tmp_path / "m.csv").write_text("subject,path,label\n" + "".join(f"s{i},img/{i}.dcm,{i % 2}\n" for i in range(3)))
    assert covfuse(["data", "cache", str(tmp_path / "m.csv"), "--size", "8"]) == 0
    info = json.loads(cache_paths(read_table(tmp_path / "m.csv"), 8, "center-crop")[1].read_text())
    assert info["decoder"] == f"DICOM (pydicom {pydicom.__version__})"


@pytest.mark.parametrize("name", ["my.data.csv", "sp ace.csv"])
def test_cache_names_are_plain_file_names(tmp_path, name):
    files = _images(tmp_path, 20)
    table = read_table(_manifest(tmp_path / name, files, 1))
    data, info = cache_paths(table, 16, "center-crop")
    assert data.name.count(".") == 1 and " " not in data.name and data.stem == info.stem


def _ages(manifest: Path, ages: list[int]) -> None:
    """Give the manifest's rows ages cycling through ``ages`` (a cohort with few distinct values)."""
    lines = manifest.read_text().splitlines()
    rows = [line.rsplit(",", 1)[0] + f",{ages[i % len(ages)]}" for i, line in enumerate(lines[1:])]
    manifest.write_text("\n".join([lines[0], *rows]) + "\n")


def test_a_number_with_few_values_is_a_range_for_predict_unless_declared_categorical(tmp_path, capsys):
    import torch

    from covfuse.training.datamodule import read_state
    from covfuse.training.module import load_module
    from covfuse.training.rundir import checkpoint_path

    files = _images(tmp_path, 24)
    m = _manifest(tmp_path / "m.csv", files, 1)
    _ages(m, [55, 60, 70, 80, 90])  # five distinct ages in training, spanning 55..90
    assert _fit(m, tmp_path / "runs", "num") == 0
    state = read_state(tmp_path / "runs/num")
    assert state["encoder"]["specs"][0]["kind"] == "numeric"  # encoded as a number, not one-hot levels
    capsys.readouterr()
    image = str(tmp_path / files[0])
    argv = ["predict", "num", image, "--runs_dir", str(tmp_path / "runs")]
    assert covfuse([*argv, "--covariates", "age=66"]) == 0
    out = capsys.readouterr().out.splitlines()
    # The model's output for the image with age 66 encoded by the saved statistics, computed by hand.
    spec = state["encoder"]["specs"][0]
    module = load_module(checkpoint_path(tmp_path / "runs/num", "best")).eval()
    from covfuse.data.decoders import decode_file
    from covfuse.data.transforms import normalize

    x = normalize(torch.from_numpy(decode_file(image, 16, "center-crop").copy())[None])
    z = torch.tensor([[(66 - spec["mean"]) / spec["std"]]], dtype=torch.float32)
    with torch.no_grad():
        expected = torch.sigmoid(module.model(x, z)).item()
    column = next(i for i, name in enumerate(out[0].split(",")) if name.startswith("P("))  # then predicted_<target>
    assert float(out[1].split(",")[column]) == pytest.approx(expected, abs=1e-5)
    assert covfuse([*argv, "--covariates", "age=95"]) == 2
    assert "age=95 lies outside the training range [55, 90]" in capsys.readouterr().err

    assert _fit(m, tmp_path / "runs", "cat", "--data.categorical", "[age]") == 0
    capsys.readouterr()
    assert covfuse(["predict", "cat", image, "--runs_dir", str(tmp_path / "runs"), "--covariates", "age=66"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "age=66 was never seen in training, which had age in {55, 60, 70, 80, 90}" in err[0]


def _predictions(run: Path) -> list[str]:
    return (run / "predictions.csv").read_text().splitlines()


def test_a_run_is_tested_and_explained_from_anywhere_and_after_its_data_moved(tmp_path, monkeypatch, capsys):
    import shutil

    import yaml

    work = tmp_path / "work"
    files = _images(work / "data", 24)
    _ages(_manifest(work / "data/m.csv", files, 1), [55, 60, 70, 80, 90])
    monkeypatch.chdir(work)
    assert _fit(Path("data/m.csv"), Path("runs"), "r") == 0  # data.root given relative
    run = work / "runs/r"
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]
    state = json.loads((run / "data_state.json").read_text())["root"]
    assert saved == str(work / "data/m.csv") and state["given"] == "data/m.csv" and state["absolute"] == saved
    before = _predictions(run)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    explain = ["explain", str(run), "--steps", "2", "--mass-images", "8", "--n-boot", "20", "--examples", "2"]
    assert covfuse(["test", str(run)]) == 0 and _predictions(run) == before
    assert covfuse(explain) == 0
    assert json.loads((run / "explain/explain.json").read_text())["covariates"]["age"]

    # The data moves: the run names it with --data.root NEW, checked against the table's fingerprint.
    shutil.move(work / "data", tmp_path / "moved")
    capsys.readouterr()
    metrics = (run / "metrics.json").read_bytes()
    assert covfuse(["test", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run's data is not there any more" in err[0] and "--data.root NEW" in err[0]
    new = str(tmp_path / "moved/m.csv")
    assert covfuse(["test", str(run), "--data.root", new]) == 0 and _predictions(run) == before
    assert covfuse([*explain, "--overwrite", "--data.root", new]) == 0

    # Other data at the new place (one label changed) is refused, and nothing is written.
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "moved", other)
    text = (other / "m.csv").read_text().replace(f"{files[0]},train,0", f"{files[0]},train,1")
    assert text != (other / "m.csv").read_text()
    (other / "m.csv").write_text(text)
    capsys.readouterr()
    metrics = (run / "metrics.json").read_bytes()
    for argv in (["test", str(run)], [*explain, "--overwrite"]):
        assert covfuse([*argv, "--data.root", str(other / "m.csv")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "other data than the run was trained on" in err[0], err
    assert (run / "metrics.json").read_bytes() == metrics and _predictions(run) == before


def test_a_study_is_reported_from_anywhere_and_not_rerun_for_its_absolute_root(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    files = _images(work / "data", 24)
    _manifest(work / "data/m.csv", files, 1)
    (work / "tiny.yaml").write_text("data:\n  image_size: 16\n  batch_size: 8\n  target: label\n  covariates: [age]\n"
                                    "model:\n  backbone: vgg-mini\ntrainer:\n  max_epochs: 1\n  summary: false\n"
                                    "  progress: none\nbootstrap: 0\n")
    monkeypatch.chdir(work)
    sweep = ["sweep", "--config", "tiny.yaml", "--data.root", "data/m.csv", "--name", "st",
             "--grid", "model.fusion=image-only,concat", "--seeds", "0"]
    assert covfuse(sweep) == 0
    metrics = sorted(work.glob("runs/st/*/s0/metrics.json"))
    assert len(metrics) == 2
    times = [p.stat().st_mtime_ns for p in metrics]
    assert covfuse(sweep) == 0  # the runs recorded data.root absolute: the same data, nothing to rerun
    assert [p.stat().st_mtime_ns for p in metrics] == times
    capsys.readouterr()
    assert covfuse(["report", "runs/st", "--format", "json", "--bootstrap", "100"]) == 0
    here = json.loads(capsys.readouterr().out)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert covfuse(["report", str(work / "runs/st"), "--format", "json", "--bootstrap", "100"]) == 0
    assert json.loads(capsys.readouterr().out) == here
