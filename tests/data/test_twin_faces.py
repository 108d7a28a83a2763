"""The synthetic twin: exact release format, determinism, safe output, visible cues, a real planted effect."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import GroupKFold, cross_val_score
from threadpoolctl import threadpool_limits

from covfuse.cli.main import main as cli
from covfuse.data.twins import faces as synth
from covfuse.data.readers.celeba_release import ATTR_NAMES, read_celeba
from covfuse.data.twins.faces import bayes_accuracies, draw_face, generate_labels, split_sizes, write_synth

from data_fixtures import make_twin


def test_files_have_the_release_format(tmp_path_factory):
    root = make_twin(tmp_path_factory) / "celeba"
    n = 200
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt",
                 "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt"):
        data = (root / name).read_bytes()
        assert data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n"), name  # CRLF throughout
    attr = (root / "list_attr_celeba.txt").read_bytes().decode().split("\r\n")
    assert attr[0] == str(n) and attr[1] == " ".join(ATTR_NAMES) + " " and attr[-1] == ""
    row = re.compile(r"^\d{6}\.jpg(  1| -1){40}$")
    assert all(row.match(line) for line in attr[2:-1]) and len(attr) == n + 3
    assert attr[2].startswith("000001.jpg") and attr[n + 1].startswith("000200.jpg")
    part = (root / "list_eval_partition.txt").read_text().split()
    codes = [int(c) for c in part[1::2]]
    assert codes == sorted(codes)  # contiguous ranges: train, then valid, then test
    assert tuple(np.bincount(codes)) == split_sizes(n) == (161, 20, 19)  # 162770:19867:19962 scaled
    assert sorted(p.name for p in (root / "img_align_celeba").iterdir()) == [f"{i:06d}.jpg" for i in range(1, n + 1)]
    with Image.open(root / "img_align_celeba" / "000001.jpg") as img:
        assert img.format == "JPEG" and img.size == (44, 54)


def test_identities_have_several_images_and_stay_in_one_split(tmp_path_factory):
    meta = read_celeba(make_twin(tmp_path_factory, n=3000, images=False), check_images=False)
    ids, counts = np.unique(meta.identity, return_counts=True)
    assert counts.mean() >= 4 and (counts >= 2).mean() > 0.8
    for i in ids[:200]:
        assert len(np.unique(meta.split[meta.identity == i])) == 1
    # identity-level attributes are shared by all of a person's images
    male = meta.attrs[:, meta.column("Male")]
    assert all(len(np.unique(male[meta.identity == i])) == 1 for i in ids[:200])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def digest(out: Path) -> dict[str, str]:
        return {str(p.relative_to(out)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}

    a = digest(write_synth(tmp_path / "a", n=24, seed=5, image_size=(32, 40), progress=False))
    b = digest(write_synth(tmp_path / "b", n=24, seed=5, image_size=(32, 40), workers=2, progress=False))
    c = digest(write_synth(tmp_path / "c", n=24, seed=6, image_size=(32, 40), progress=False))
    assert a == b
    assert a["celeba/list_attr_celeba.txt"] != c["celeba/list_attr_celeba.txt"]


def test_refuses_to_overwrite_and_leaves_nothing_on_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert cli(["data", "synth", str(out), "--n", "10", "--image-size", "32x40"]) == 2
    assert "already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "draw_face", broken)
    with pytest.raises(RuntimeError):
        write_synth(out, n=10, image_size=(32, 40), overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "keep.txt").is_file()
    monkeypatch.undo()
    assert cli(["data", "synth", str(out), "--n", "10", "--image-size", "32x40", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "celeba" / "img_align_celeba" / "000010.jpg").is_file()
    assert "image+covariates 0.950, image only 0.725, covariates only 0.500" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--image-size", "178"], "WIDTHxHEIGHT"), (["--effect", "strong"], "--effect strong: choose from planted, null"),
    (["--n", "2"], "at least 3"), (["--noise", "0.6"], "noise must be in"),
])
def test_bad_synth_options_exit_2(tmp_path, capsys, args, message):
    assert cli(["data", "synth", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_young_is_never_drawn_and_the_cues_are(tmp_path):
    labels = generate_labels(12, seed=1, image_size=(89, 109))
    for i in range(12):
        a = dict(zip(ATTR_NAMES, labels.attrs[i].astype(bool).tolist()))
        style = {k: v[i] for k, v in labels.style.items()}
        base = np.asarray(draw_face(a, style, (89, 109)))
        assert np.array_equal(base, np.asarray(draw_face({**a, "Young": not a["Young"]}, style, (89, 109))))
        for cue in ("Smiling", "Eyeglasses", "Wearing_Hat", "Bangs" if not a["Bald"] else "Smiling"):
            other = np.asarray(draw_face({**a, cue: not a[cue]}, style, (89, 109)))
            assert (np.abs(base.astype(int) - other).sum(-1) > 60).sum() > 40, cue  # > 40 clearly changed pixels


@pytest.fixture
def one_blas_thread():
    """Small linear algebra is 20x slower when BLAS threads fight pytest-xdist's workers for 2 cores."""
    with threadpool_limits(1):
        yield


def test_cues_are_learnable_from_pixels(tmp_path_factory, one_blas_thread):
    """A linear model on 16x16 crops, evaluated on unseen people, reads Smiling, Eyeglasses and Male."""
    from covfuse.data.decode import decode_image

    root = make_twin(tmp_path_factory, n=400, size=(44, 54), seed=2)
    meta = read_celeba(root)
    x = np.stack([decode_image(meta.image_dir / f, 16).ravel() / 255 for f in meta.filenames])
    for name, floor in (("Smiling", 0.9), ("Eyeglasses", 0.9), ("Male", 0.75)):
        y = meta.attrs[:, meta.column(name)]
        acc = cross_val_score(RidgeClassifier(alpha=10.0), x, y, groups=meta.identity, cv=GroupKFold(3)).mean()
        assert acc > floor, (name, acc)


def _features(meta, names):
    cols = {n: meta.attrs[:, meta.column(n)].astype(float) for n in ("Young", "Male", "Smiling", "Eyeglasses")}
    feats = [cols[n] for n in names]
    if "Young" in names and "Smiling" in names:  # the interaction a linear model needs for the rule
        feats += [cols["Young"] * cols["Smiling"], cols["Young"] * cols["Eyeglasses"]]
    if "Young" not in names and "Smiling" in names:
        feats += [cols["Smiling"] * cols["Eyeglasses"]]
    return np.stack(feats, 1)


@pytest.mark.parametrize("effect", ["planted", "null"])
def test_stated_bayes_accuracy_is_reached_from_the_label_files(tmp_path_factory, effect, one_blas_thread):
    root = make_twin(tmp_path_factory, n=10_000, seed=11, effect=effect, images=False)
    card = json.loads((root / "synth.json").read_text())
    assert card["target"] == "Attractive" and card["covariates"] == ["Young", "Male"] and card["n"] == 10_000
    assert card["effect"] == effect and card["seed"] == 11 and card["noise"] == 0.05
    assert card["bayes_accuracy"] == bayes_accuracies(effect, 0.05)
    meta = read_celeba(root, check_images=False)
    y = meta.attrs[:, meta.column("Attractive")]
    views = {
        "image_and_covariates": ["Young", "Male", "Smiling", "Eyeglasses"],
        "image_only": ["Male", "Smiling", "Eyeglasses"],
        "covariates_only": ["Young", "Male"],
    }
    for view, names in views.items():
        stated = card["bayes_accuracy"][view]
        x = _features(meta, names)
        acc = cross_val_score(LogisticRegression(max_iter=1000), x, y, cv=5).mean()
        assert abs(acc - stated) < 0.02, (view, acc, stated)
        # model-free check: the majority label within each cell of the visible inputs
        keys = x[:, : len(names)] @ (2 ** np.arange(len(names)))
        best = sum(max(np.sum(y[keys == k]), np.sum(1 - y[keys == k])) for k in np.unique(keys)) / len(y)
        assert abs(best - stated) < 0.02, (view, best, stated)
    assert abs(card["bayes_accuracy"]["image_and_covariates"] - 0.95) < 1e-9
    if effect == "planted":
        assert card["bayes_accuracy"]["image_only"] == pytest.approx(0.725)  # 0.75 * 0.95 + 0.25 * 0.05
    else:
        assert card["bayes_accuracy"]["image_only"] == pytest.approx(0.95)
    assert (root / "README.txt").read_text().count("0.9500") >= 1


def test_marginal_rates_match_between_effects_and_look_like_celeba(tmp_path_factory):
    planted = generate_labels(20_000, seed=3, effect="planted").attrs.mean(0)
    null = generate_labels(20_000, seed=3, effect="null").attrs.mean(0)
    assert np.abs(planted - null).max() < 0.02
    rates = dict(zip(ATTR_NAMES, planted))
    assert abs(rates["Attractive"] - 0.5) < 0.02 and abs(rates["Male"] - 0.42) < 0.05
    assert 0.7 < rates["No_Beard"] < 0.95 and rates["Bald"] < 0.05 and 0.3 < rates["Wearing_Lipstick"] < 0.6
