"""`covfuse explain`: counterfactual scoring against hand-edited covariates, the statistics against hand
computations, kernel norms, FiLM/DAFT recordings, cue-box shares, and the command's contract and errors."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

from covfuse.cli.main import main as covfuse
from covfuse.studies.explain import explain_run
from covfuse.studies.explain.attribution import box_share, input_boxes
from covfuse.studies.explain.counterfactual import plan_changes
from covfuse.studies.explain.kernels import AffineRecorder, weight_summaries
from data_fixtures import make_twin

FIT = ["--data.image_size", "32", "--data.covariates", "[Young,Male]", "--data.batch_size", "32",
       "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--bootstrap", "20", "--trainer.summary", "false", "--trainer.progress", "none"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A hybrid (last conv) run trained for one step from random covariate kernels, and an image-only run."""
    root = make_twin(tmp_path_factory, n=200, size=(44, 54))
    base = tmp_path_factory.mktemp("explain")
    for name, extra in (("hyb", ["--model.hybrid_layers", "last", "--model.options", "{hybrid_init: kaiming}"]),
                        ("img", ["--model.fusion", "image-only"])):
        assert covfuse(["fit", "--data.root", str(root), "--runs_dir", str(base / "runs"), "--name", name, *FIT, *extra]) == 0
    out = explain_run("hyb", runs_dir=base / "runs", n_boot=100, examples=2, mass_images=8, n_steps=2, progress=False)
    return base / "runs", root, out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_counterfactual_scores_equal_scoring_hand_edited_covariates(runs):
    from covfuse.data.decode import decode_image
    from covfuse.data.transforms import normalize
    from covfuse.training.module import load_module
    from covfuse.training.rundir import checkpoint_path

    runs_dir, root, out = runs
    table = _rows(out / "counterfactuals.csv")
    module = load_module(checkpoint_path(runs_dir / "hyb")).eval()
    images = [root / "celeba" / "img_align_celeba" / r["id"] for r in table]
    size, preset = module.hparams.image_size, module.hparams.preset
    x = normalize(torch.stack([torch.from_numpy(decode_image(p, size, preset)) for p in images]), preset)
    real = [[float(r["Young"]), float(r["Male"])] for r in table]
    young_flipped = [[1.0 - y, m] for y, m in real]  # edited by hand, not by the code under test
    male_flipped = [[y, 1.0 - m] for y, m in real]
    for rows, column in ((real, "probability"), (young_flipped, "probability_Young"), (male_flipped, "probability_Male")):
        with torch.no_grad():  # the model called by hand on the decoded images and the edited rows
            expected = torch.sigmoid(module.model(x, torch.tensor(rows, dtype=torch.float32))).numpy()
        np.testing.assert_allclose([float(r[column]) for r in table], expected, atol=2e-6)
    # the real-covariate probabilities are those `covfuse fit` wrote for the test split
    written = {r["id"]: float(r["probability"]) for r in _rows(runs_dir / "hyb" / "predictions.csv") if r["split"] == "test"}
    assert {r["id"] for r in table} == set(written)
    assert max(abs(float(r["probability"]) - written[r["id"]]) for r in table) < 2e-6
    # random covariate kernels: the counterfactuals really change something
    assert max(abs(float(r["probability_Young"]) - float(r["probability"])) for r in table) > 1e-3


def test_explain_json_numbers_are_the_hand_computed_rates(runs):
    _, _, out = runs
    table = _rows(out / "counterfactuals.csv")
    result = json.loads((out / "explain.json").read_text())
    p = np.array([float(r["probability"]) for r in table])
    for name in ("Young", "Male"):
        q = np.array([float(r[f"probability_{name}"]) for r in table])
        entry = result["covariates"][name]
        assert entry["mean_abs_change"] == pytest.approx(np.abs(q - p).mean(), abs=2e-6)
        assert entry["decision_flip_rate"] == pytest.approx(((q >= 0.5) != (p >= 0.5)).mean())
        assert entry["ci"][0] <= entry["decision_flip_rate"] <= entry["ci"][1]
        assert entry["mean_abs_change_ci"][0] <= entry["mean_abs_change"] <= entry["mean_abs_change_ci"][1]
        young = np.array([r["Young"] == "1" for r in table])
        group = entry["groups"]["Young=1"]
        assert group["count"] == young.sum()
        assert group["mean_abs_change"] == pytest.approx(np.abs(q - p)[young].mean(), abs=2e-6)
        assert group["clusters"] == len({r["group"] for r, y in zip(table, young) if y})
        assert {"cues_agree", "cues_disagree"} <= set(entry["groups"])  # the twin's truth is known
    assert result["clusters"] == len({r["group"] for r in table})
    layer = result["layers"]["features.12"]
    assert layer["kind"] == "hybrid" and set(layer["relative_norm"]) == {"Young", "Male"}
    assert all(v > 0 for v in layer["relative_norm"].values())  # kaiming-initialised covariate kernels
    for name in ("Young", "Male"):
        assert result["attribution"]["cue_mass"][name]["grad-cam"]["low"].keys() == {"mouth", "eyes"}
    for rel in [*result["figures"].values(), *(e["figure"] for e in result["attribution"]["examples"].values())]:
        assert (out / rel).is_file() and rel in (out / "explain.md").read_text()


def test_existing_output_is_kept_without_overwrite_and_image_only_runs_are_refused(runs, capsys):
    runs_dir, _, out = runs
    before = (out / "explain.json").read_bytes()
    assert covfuse(["explain", "hyb", "--runs_dir", str(runs_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1
    assert (out / "explain.json").read_bytes() == before
    assert covfuse(["explain", "img", "--runs_dir", str(runs_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "image-only" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (runs_dir / "img" / "explain").exists()
    assert covfuse(["explain", "hyb", "--runs_dir", str(runs_dir), "--split", "tset", "--out", str(out.parent / "x")]) == 2
    assert "did you mean 'test'" in capsys.readouterr().err
    assert not (out.parent / "x").exists()


def test_relative_kernel_norms_are_zero_when_fresh_and_exact_when_hand_set():
    from covfuse.models import build

    model = build("vgg-mini", "hybrid", 2, hybrid_layers="all")
    summaries = weight_summaries(model.network, ["a", "b"])
    assert len(summaries) == 4
    for s in summaries.values():
        assert s["relative_norm"] == {"a": 0.0, "b": 0.0}
        assert all(v == 0 for per in s["relative_norm_per_channel"].values() for v in per)
    layer = model.network.features[0]
    with torch.no_grad():
        layer.covariate_weight[0] = 2 * layer.weight
        layer.covariate_weight[1, :3] = -0.5 * layer.weight[:3]
    s = weight_summaries(model.network, ["a", "b"])["features.0"]
    assert s["relative_norm"]["a"] == pytest.approx(2.0)
    assert s["relative_norm_per_channel"]["a"] == pytest.approx([2.0] * 16, rel=1e-5)
    assert s["relative_norm_per_channel"]["b"] == pytest.approx([0.5] * 3 + [0.0] * 13, rel=1e-5)


@pytest.mark.parametrize("fusion", ["film", "daft"])
def test_affine_recorder_sees_what_the_generator_predicts(fusion):
    from covfuse.layers.daft import DAFT
    from covfuse.layers.film import FiLM
    from covfuse.models import build

    torch.manual_seed(0)
    model = build("vgg-mini", fusion, 1).eval()
    layer = next(m for m in model.modules() if isinstance(m, (FiLM, DAFT)))
    gen = layer.generator if fusion == "film" else layer.mlp
    x, z = torch.randn(6, 3, 32, 32), torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0], [0.0]])
    recorder = AffineRecorder(model.network)
    with torch.no_grad(), recorder.recording():
        model(x, z)
    name = next(iter(recorder.layers))
    fresh = recorder.summaries({"z": z[:, 0].numpy()})[name]
    assert fresh["values"]["z=1"]["scale"]["mean"] == pytest.approx(1.0) and fresh["values"]["z=0"]["shift"]["sd"] == 0
    torch.nn.init.normal_([m for m in gen.modules() if isinstance(m, torch.nn.Linear)][-1].weight)
    seen = {}
    hook = gen.register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach()))
    recorder = AffineRecorder(model.network)
    with torch.no_grad(), recorder.recording():
        model(x, z)
    hook.remove()
    scale, shift = recorder.samples(name)
    np.testing.assert_allclose(scale, 1 + seen["out"].chunk(2, 1)[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(shift, seen["out"].chunk(2, 1)[1].numpy(), rtol=1e-6)
    d = recorder.summaries({"z": z[:, 0].numpy()})[name]["difference"]["z"]
    ones = z[:, 0].numpy() == 1
    assert d["scale"] == pytest.approx(np.abs(scale[ones].mean(0) - scale[~ones].mean(0)).mean(), rel=1e-6)


def test_plan_flips_binary_and_shifts_continuous_covariates():
    from covfuse.data.table import CovariateEncoder

    enc = CovariateEncoder([{"name": "a", "kind": "binary", "mean": 0.5, "missing": False},
                            {"name": "c", "kind": "numeric", "mean": 5.0, "std": 2.0, "missing": False}])
    plan = plan_changes(enc)
    rows = np.array([[0, 1.5], [1, -0.5]], dtype=np.float32)  # c is standardised: 8 and 4 in its units
    assert plan["a"][0].apply(rows)[:, 0].tolist() == [1, 0]
    # one training SD: +-1 in feature units, +-2 in the covariate's own
    assert [e.apply(rows)[:, 1].tolist() for e in plan["c"]] == [[2.5, 0.5], [0.5, -1.5]]
    assert [e.after("8") for e in plan["c"]] == ["10", "6"] and plan["a"][0].after("1") == "0"
    assert [e.label for e in plan["c"]] == ["c +2 (+1 SD)", "c -2 (-1 SD)"]
    assert rows.tolist() == [[0, 1.5], [1, -0.5]]  # the input is not edited in place


def test_box_share_counts_pixel_centres_and_boxes_follow_the_crop():
    maps = np.zeros((2, 8, 8))
    maps[0, 2:4, 1:5] = 1.0  # 8 pixels inside the box below, total 8 + 8 outside
    maps[0, 6:8, 0:4] = 1.0
    maps[1] = 1.0
    boxes = np.array([[1.0, 2.0, 5.0, 4.0], [0.0, 0.0, 4.0, 8.0]])
    np.testing.assert_allclose(box_share(maps, boxes), [0.5, 0.5])
    # a 40x60 image, centre crop 40x40 from y=10, resized to 20x20: halve, after shifting y by 10
    np.testing.assert_allclose(input_boxes(np.array([[4, 14, 20, 30]]), (0, 10, 40, 50), 20), [[2, 2, 10, 10]])


def test_covariate_gradients_of_a_run_model_match_the_reference_backend(runs):
    """Attribution to the covariates themselves: d log-odds / d covariates through the run's model, every back-end."""
    from covfuse.layers.hybrid import hybrid_layers
    from covfuse.studies.explain.attribution import LogOdds
    from covfuse.training.module import load_module
    from covfuse.training.rundir import checkpoint_path

    runs_dir, root, _ = runs
    module = load_module(checkpoint_path(runs_dir / "hyb")).eval()
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    z = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]] * 2, dtype=torch.float32)  # repeated rows: auto picks pattern
    f = LogOdds(module.model, module.head)
    layers = [layer for _, layer in hybrid_layers(module.model)]
    assert layers and all(layer.backend == "auto" for layer in layers)  # as trained and saved
    grads = {}
    for backend in ("auto", "pattern", "grouped", "expand", "reference"):
        for layer in layers:
            layer.backend = backend
        c = z.clone().requires_grad_(True)
        grads[backend], = torch.autograd.grad(f(x, c).sum(), c)
    assert grads["reference"].abs().max() > 0
    for backend in ("auto", "pattern", "grouped", "expand"):
        torch.testing.assert_close(grads[backend], grads["reference"], rtol=1e-4, atol=1e-6, msg=backend)


@pytest.mark.skipif(sys.platform == "win32", reason="sends itself SIGTERM with os.kill, which on Windows terminates "
                    "the process instead of running Python's handler")
def test_sigterm_mid_explain_exits_143_and_leaves_no_half_written_folder(runs, capsys, monkeypatch):
    # SIGTERM (kill, scancel) becomes an exception while a command runs, so explain's cleanup runs.
    import os
    import signal

    from covfuse.studies.explain import figures

    runs_dir, _, out = runs
    target = out.parent / "killed"

    def killed(*args, **kwargs):  # the first figure: the tmp folder exists, nothing is finished
        assert any(p.name.startswith(".killed.tmp-") for p in out.parent.iterdir())
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(figures, "plot_changes", killed)
    code = covfuse(["explain", "hyb", "--runs_dir", str(runs_dir), "--out", str(target), "--n-boot", "100"])
    assert code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "covfuse explain: terminated (SIGTERM)"
    assert not target.exists() and not any(p.name.startswith(".killed.tmp-") for p in out.parent.iterdir())
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back
