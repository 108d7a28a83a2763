"""Your own data: one sample table for every source, checked against independent computations.

The face twin read as a manifest trains to the same predictions as the CelebA release it copies;
the encoder, the splits and the normalisation equal numbers computed here; bad manifests are one line.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from covfuse.cli.main import main as covfuse
from covfuse.data.cache import cache_paths
from covfuse.data.readers import read_table
from covfuse.data.table import CovariateEncoder, encode_target, subject_folds, subject_split
from covfuse.data.transforms import normalize
from covfuse.data.twins.faces import write_synth
from covfuse.errors import UserError


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    write_synth(base / "celeba", n=160, seed=3, image_size=(44, 54), progress=False)
    # the manifest form as docs/data.md's command writes it
    assert covfuse(["data", "synth", str(base / "manifest"), "--n", "160", "--seed", "3", "--image_size", "44x54",
                    "--format", "manifest"]) == 0
    return base / "celeba", base / "manifest" / "manifest.csv"


def _fit(root, runs, name, *extra):
    args = ["fit", "--data.root", str(root), "--data.image_size", "24", "--data.covariates", "[Young,Male]",
            "--data.batch_size", "32", "--trainer.max_epochs", "1", "--runs_dir", str(runs), "--name", name,
            "--bootstrap", "20", "--trainer.summary", "false", "--trainer.progress_every", "0",
            "--model.backbone", "vgg-mini", "--model.fusion", "hybrid", *extra]
    assert covfuse(args) == 0
    with open(runs / name / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_manifest_twin_trains_to_the_celeba_twins_predictions(twins, tmp_path):
    celeba, manifest = twins
    a = _fit(celeba, tmp_path, "celeba")
    b = _fit(manifest, tmp_path, "manifest", "--data.cache", "build")  # the manifest through its own cache
    built = cache_paths(read_table(manifest), 24, "center-crop")[0]
    assert built.parent == manifest.parent / ".covfuse-cache" and built.name.startswith(manifest.stem + "-")
    assert built.is_file()
    assert [r["id"] for r in a] == [r["id"].split("/")[-1] for r in b]
    assert [r["probability"] for r in a] == [r["probability"] for r in b]
    assert [r["group"] for r in a] == [r["group"].removeprefix("id") for r in b]


def test_tables_of_both_readers_agree(twins):
    celeba, manifest = map(read_table, twins)
    assert (celeba.kind, celeba.format, manifest.kind, manifest.format) == ("image", "celeba", "image", "manifest")
    assert len(celeba) == len(manifest) and (celeba.split == manifest.split).all()
    for name in ("Young", "Male", "Attractive"):
        assert np.array_equal(np.asarray(celeba.columns[name], dtype=float), np.asarray(manifest.columns[name], dtype=float))
    rows = np.flatnonzero(celeba.split == 0)
    assert np.array_equal(CovariateEncoder.fit(celeba, ["Young", "Male"], rows).transform(celeba),
                          CovariateEncoder.fit(manifest, ["young", "MALE"], rows).transform(manifest))


def _table(tmp_path, header, rows, name="m.csv"):
    (tmp_path / "img").mkdir(exist_ok=True)
    from PIL import Image

    for r in rows:
        Image.new("RGB", (12, 10), (int(r[0][-1]) * 40, 0, 0)).save(tmp_path / r[1])
    path = tmp_path / name
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return read_table(path)


def test_encoder_by_hand(tmp_path):
    header = ["subject", "path", "age", "site", "smoker", "y"]
    rows = [["s1", "img/a.png", "40", "arm", "1", "0"], ["s2", "img/b.png", "60", "leg", "0", "1"],
            ["s3", "img/c.png", "", "n/a", "1", "1"], ["s4", "img/d.png", "80", "head", "", "0"]]
    table = _table(tmp_path, header, rows)
    train = np.array([0, 1, 2])
    enc = CovariateEncoder.fit(table, ["age", "site", "smoker"], train)
    ages = np.array([40.0, 60.0])
    mean, sd = ages.mean(), ages.std()
    want = np.array([
        # age z, age_missing, site=arm, site=leg, site_missing, smoker (0/1 kept), smoker_missing
        [(40 - mean) / sd, 0, 1, 0, 0, 1, 0],
        [(60 - mean) / sd, 0, 0, 1, 0, 0, 0],
        [0.0, 1, 0, 0, 1, 1, 0],
        [(80 - mean) / sd, 0, 0, 0, 0, 2 / 3, 1],  # unseen level: no one-hot; missing smoker: training mean
    ], dtype=np.float32)
    assert enc.feature_names == ["age", "age_missing", "site=arm", "site=leg", "site_missing", "smoker", "smoker_missing"]
    np.testing.assert_allclose(enc.transform(table), want, rtol=1e-6)
    y, classes = encode_target(table, "y")
    assert classes == ["0", "1"] and y.tolist() == [0, 1, 1, 0]


def test_splits_come_from_the_split_seed_and_keep_subjects_together(tmp_path):
    header = ["subject", "path", "label"]
    rows = [[f"s{i % 7}", f"img/x{i}.png", str(i % 2)] for i in range(28)]
    table = _table(tmp_path, header, rows)
    split = subject_split(table, seed=5)
    for s in np.unique(table.subjects):
        assert len(set(split[table.subjects == s].tolist())) == 1
    assert np.array_equal(split, subject_split(table, seed=5))
    folds = subject_folds(table, split, 2, seed=0)
    for train, valid in folds:
        assert not set(table.subjects[train]) & set(table.subjects[valid])


@pytest.mark.parametrize("dtype,scale", [(torch.uint8, 255), (torch.uint16, 65535)])
def test_normalize_any_depth_and_grey_to_three_channels(dtype, scale):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, scale + 1, (2, 1, 5, 4), generator=g, dtype=torch.int64).to(dtype)
    out = normalize(x)
    want = ((x.double() / scale) - 0.5) / 0.5
    assert out.shape == (2, 3, 5, 4)
    for c in range(3):
        torch.testing.assert_close(out[:, c:c + 1].double(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rows,expect", [
    ([["s1", "img/a.png", "train"], ["s1", "img/b.png", "test"]], "subject s1 is in split test but line 2 puts it in train"),
    ([["s1", "img/a.png", "train"], ["s2", "img/v.nii.gz", "test"]], "one manifest holds one kind of file"),
    ([["s1", "img/a.png", "train"], ["s2", "img/v.txt", "test"]], "is neither a volume"),
])
def test_bad_manifests_are_one_line_naming_the_row(tmp_path, rows, expect):
    (tmp_path / "img").mkdir()
    from PIL import Image

    for r in rows:
        Image.new("L", (8, 8)).save(tmp_path / r[1], format="PNG")
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(",".join(r) for r in [["subject", "path", "split"], *rows]) + "\n")
    with pytest.raises(UserError, match="line 3") as exc:
        read_table(path)
    assert expect in str(exc.value) and "\n" not in str(exc.value)


def _photo_study_manifest(folder, n_subjects=30, per_subject=3, seed=0):
    """A dermoscopy-style manifest: PNG photos, age (some missing), sex, body site (words with spaces);
    the label is visible in the image (a bright patch) only for one site, so covariates matter."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    lines = ["subject,path,lesion,age,sex,site"]
    for s in range(n_subjects):
        age = "" if s % 7 == 3 else str(int(rng.integers(20, 80)))
        sex = ["female", "male"][s % 2]
        site = ["back", "lower extremity", "head"][s % 3]
        for k in range(per_subject):
            y = int(rng.integers(0, 2))
            pixels = rng.integers(0, 60, (20, 20, 3)).astype(np.uint8)
            if y and site != "head":
                pixels[5:15, 5:15] = 220
            name = f"img/s{s:02d}_{k}.png"
            Image.fromarray(pixels).save(folder / name)
            lines.append(f"P{s:03d},{name},{y},{age},{sex},{site}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def test_a_study_on_an_image_manifest_reports_subject_clustered_intervals(tmp_path, capsys):
    import json

    manifest = _photo_study_manifest(tmp_path / "photos")
    runs = tmp_path / "runs"
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  image_size: 16\n  batch_size: 16\n  target: lesion\n  covariates: [age, sex, site]\n"
                      "model:\n  backbone: vgg-mini\ntrainer:\n  max_epochs: 1\n  summary: false\n  progress_every: 0\n"
                      "bootstrap: 20\n")
    assert covfuse(["sweep", "--config", str(config), "--data.root", str(manifest), "--name", "photos",
                    "--runs_dir", str(runs), "--grid", "model.fusion=image-only,film", "--seeds", "0,1"]) == 0
    capsys.readouterr()
    assert covfuse(["report", "photos", "--runs_dir", str(runs), "--format", "json", "--bootstrap", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["setting"] for row in report["rows"]} == {"fusion=image-only", "fusion=film"}
    assert all(row["n_runs"] == 2 for row in report["rows"])
    # subgroup gaps are over the table's columns (age bins, sex, site), not the one-hot / standardised features
    assert all(set(row["gaps"]) == {"age", "sex", "site", "age&sex", "age&site", "sex&site"} for row in report["rows"])
    # Every run saw the same test subjects (splits from data.split_seed), grouped by subject.
    tests = []
    for pred in sorted(runs.glob("photos/*/s*/predictions.csv")):
        with open(pred, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
        tests.append(sorted(r["id"] for r in rows))
        assert {r["group"] for r in rows} <= {f"P{s:03d}" for s in range(30)}
        assert {"age", "age_missing", "sex=female", "site=lower extremity"} <= set(rows[0])
    assert len(tests) == 4 and all(t == tests[0] for t in tests)
    # The intervals resample the test split's subjects (3 photos each), not its photos.
    subjects = {row.split("/")[-1].split("_")[0] for row in tests[0]}
    assert all(row["clusters"] == len(subjects) < len(tests[0]) for row in report["rows"])


def _png16(path, pixels):
    """A 16-bit greyscale PNG written by Pillow (mode I;16), read back independently below."""
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint16)).save(path)


def test_16bit_grey_manifest_keeps_16_bits_through_the_cache(tmp_path):
    from covfuse.data.decoders import decode_file
    from covfuse.data.samples import Settings, build_cache, make_dataset, open_cache

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    lines = ["subject,path,split,y"]
    for i in range(6):
        _png16(tmp_path / f"img/{i}.png", rng.integers(0, 65536, (20, 24)))
        lines.append(f"s{i},img/{i}.png,{['train', 'valid', 'test'][i % 3]},{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    table = read_table(tmp_path / "m.csv")
    s = Settings(size=12, preset="center-crop")
    rows = np.arange(len(table))
    fresh = make_dataset(table, rows, np.zeros((6, 0)), np.zeros(6), s)
    cache = build_cache(table, s)
    assert cache.path.suffix == ".u16" and cache.array.dtype == np.uint16 and cache.shape == (6, 1, 12, 12)
    cached = make_dataset(table, rows, np.zeros((6, 0)), np.zeros(6), s, cache=open_cache(table, s))
    for i in rows:
        want = decode_file(table.files[i], 12, "center-crop")
        assert want.dtype == np.uint16 and want.shape == (1, 12, 12)
        assert np.array_equal(fresh[i]["image"].numpy(), want) and np.array_equal(cached[i]["image"].numpy(), want)
    batch = cached.__getitems__([0, 1, 2]).tensors["image"]
    assert batch.dtype == torch.uint16 and normalize(batch).shape == (3, 3, 12, 12)


def test_a_mixed_manifest_is_read_in_its_richest_layout(tmp_path):
    from PIL import Image

    from covfuse.data.chunks import conform
    from covfuse.data.decode import decode_image
    from covfuse.data.samples import Settings, make_dataset

    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    grey = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    rgb = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "img/g.png")
    Image.fromarray(rgb).save(tmp_path / "img/c.png")
    (tmp_path / "m.csv").write_text("subject,path,y\ns1,img/g.png,0\ns2,img/c.png,1\ns3,img/g.png,1\n")
    table = read_table(tmp_path / "m.csv")
    data = make_dataset(table, np.arange(3), np.zeros((3, 0)), np.zeros(3), Settings(size=16, preset="research"))
    # grey first, yet the RGB file keeps its colour (issue 24: the first file's layout made it grey)
    assert data.__getitems__([0, 1]).tensors["image"].shape == (2, 3, 16, 16)
    assert np.array_equal(data[1]["image"].numpy(), decode_image(tmp_path / "img/c.png", 16, "research"))
    grey_decoded = data[0]["image"].numpy()
    assert np.array_equal(grey_decoded[0], grey_decoded[1]) and np.array_equal(grey_decoded[0], grey_decoded[2])
    # RGB made grey (conform's other direction) is PIL's own luma
    want = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.int16)
    got = conform(decode_image(tmp_path / "img/c.png", 16, "research"), 1, "uint8")[0].astype(np.int16)
    assert np.abs(got - want).max() <= 1
    # and the other way: grey repeated into RGB, 8 -> 16 bits by x257
    colour = decode_image(tmp_path / "img/c.png", 16, "research")
    assert np.array_equal(conform(colour[:1], 3, "uint8"), np.repeat(colour[:1], 3, axis=0))
    assert conform(np.array([[[0, 1, 255]]], np.uint8), 1, "uint16").tolist() == [[[0, 257, 65535]]]


def test_a_study_on_a_bids_dataset(tmp_path, capsys):
    import json

    root = tmp_path / "study"  # the brain twin in BIDS form: participants.tsv with n/a APOE4 values
    assert covfuse(["data", "synth3d", str(root), "--n", "24", "--size", "16", "--format", "bids"]) == 0
    runs = tmp_path / "runs"
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  image_size: 16\n  batch_size: 4\n  cache: 'off'\n  target: diagnosis\n"
                      "  covariates: [age, sex, APOE4]\nmodel:\n  backbone: resnet3d-compact\n"
                      "trainer:\n  max_epochs: 1\n  summary: false\n  progress_every: 0\nbootstrap: 20\n")
    table = read_table(root)
    assert (table.kind, table.format) == ("volume", "bids") and "n/a" in table.columns["APOE4"]
    assert covfuse(["sweep", "--config", str(config), "--data.root", str(root), "--name", "mri",
                    "--runs_dir", str(runs), "--grid", "model.fusion=image-only,daft", "--seeds", "0,1"]) == 0
    capsys.readouterr()
    assert covfuse(["report", "mri", "--runs_dir", str(runs), "--format", "json", "--bootstrap", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["n_runs"] for r in report["rows"]] == [2, 2]
    with open(runs / "mri" / "fusion=daft" / "s1" / "predictions.csv", newline="") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    assert all(r["clusters"] == len({t["group"] for t in test}) for r in report["rows"])
    split = subject_split(table, seed=0)  # data.split_seed's default: the same test subjects for every seed
    assert sorted({t["group"] for t in test}) == sorted(set(table.subjects[split == 2]))


def test_multiclass_and_regression_heads_on_an_image_manifest(tmp_path):
    from sklearn.metrics import balanced_accuracy_score, mean_absolute_error

    manifest = _photo_study_manifest(tmp_path / "photos")
    text = manifest.read_text().replace(",,", ",50,")  # regression needs every target present
    manifest.write_text(text)
    runs = tmp_path / "runs"
    common = ["fit", "--data.root", str(manifest), "--data.image_size", "16", "--data.batch_size", "16",
              "--trainer.max_epochs", "1", "--runs_dir", str(runs), "--bootstrap", "20", "--trainer.summary", "false",
              "--trainer.progress_every", "0", "--model.backbone", "vgg-mini", "--model.fusion", "concat"]
    assert covfuse([*common, "--name", "site", "--model.head", "multiclass", "--data.target", "site",
                    "--data.covariates", "[age,sex]", "--monitor", "val/loss"]) == 0
    assert covfuse([*common, "--name", "age", "--model.head", "regression", "--data.target", "age",
                    "--data.covariates", "[sex,site]", "--monitor", "val/loss"]) == 0
    import json

    for name, score, key in (("site", balanced_accuracy_score, "balanced_accuracy"), ("age", mean_absolute_error, "mae")):
        metrics = json.loads((runs / name / "metrics.json").read_text())
        with open(runs / name / "predictions.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
        y = [float(r["label"]) for r in rows]
        p = [float(r["prediction"]) for r in rows]
        assert metrics["test"][key] == pytest.approx(score(y, p), rel=1e-5)  # predictions.csv keeps 6 digits
    assert json.loads((runs / "site" / "metrics.json").read_text())["classes"] == ["back", "head", "lower extremity"]


def test_two_processes_building_one_volume_cache_both_get_it(tmp_path):
    """Two runs of a study starting at once: one builds the cache under a lock, the other waits and reads it."""
    import threading

    import nibabel as nib

    from covfuse.data.cache import build_volume_cache
    from covfuse.data.decoders.volume import Preprocessing, load_volume, transform

    files = []
    for i in range(4):
        data = np.random.default_rng(i).normal(size=(10, 10, 10)).astype(np.float32)
        files.append(tmp_path / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(files[-1]))
    settings = Preprocessing(size=8)
    results, errors = [], []

    def build():
        try:
            results.append(build_volume_cache(files, settings, tmp_path / "cache", progress=False))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2
    assert not list((tmp_path / "cache").glob("*.partial"))
    pipeline = transform(settings)
    for cache in results:
        for i, f in enumerate(files):
            want = load_volume(f, settings, pipeline).half()
            assert torch.equal(cache[i], want)


def test_a_volume_cache_built_from_a_relative_root_is_found_from_an_absolute_one(tmp_path, monkeypatch):
    """The volume cache's name comes from what the files are (resolved paths, sizes, mtimes), not from how
    data.root was typed: built through a relative path, it is the one an absolute path (or a symlink) opens."""
    import nibabel as nib

    from covfuse.data import samples

    (tmp_path / "v").mkdir()
    lines = ["subject,path,split,label"]
    for i, split in enumerate(["train", "train", "valid", "test"]):
        nib.save(nib.Nifti1Image(np.random.default_rng(i).normal(size=(6, 6, 6)).astype(np.float32), np.eye(4)),
                 str(tmp_path / f"v/s{i}.nii.gz"))
        lines.append(f"s{i},v/s{i}.nii.gz,{split},{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "link").symlink_to(tmp_path)
    s = samples.Settings(size=8)
    monkeypatch.chdir(tmp_path)
    built = samples.build_cache(read_table("m.csv"), s)
    stamp = built.path.stat().st_mtime_ns
    for root in (tmp_path / "m.csv", tmp_path / "link" / "m.csv"):
        found = samples.open_cache(read_table(root), s, cache_dir=tmp_path / ".covfuse-cache")
        assert found is not None and found.path.resolve() == built.path.resolve()
        assert found.path.stat().st_mtime_ns == stamp
