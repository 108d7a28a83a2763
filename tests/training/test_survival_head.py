"""Survival head: the Cox loss against independent implementations, Harrell's and Uno's C against lifelines
and scikit-survival, a tiny 3D study whose metrics.json and report agree with lifelines on its own
predictions.csv, the twin's planted hazard, and one-line errors for bad time/event columns."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from lifelines.utils import concordance_index
from sksurv.linear_model.coxph import CoxPHOptimizer
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.util import Surv

from covfuse.cli.main import main as covfuse
from covfuse.survival import concordance, uno_tau
from covfuse.survival.loss import cox_loss
from covfuse.training.survival_reference import survival_scores

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "survival.yaml"
DOCS = Path(__file__).resolve().parents[2] / "docs"
TINY = ["--data.image_size", "16", "--data.batch_size", "8", "--data.cache", "off", "--trainer.max_epochs", "1",
        "--trainer.summary", "false", "--trainer.progress", "none", "--bootstrap", "50"]


# -- the loss ------------------------------------------------------------------------------
def loop_breslow(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """-sum over events of (risk_i - log sum_{time_j >= time_i} exp(risk_j)) / events, one event at a time."""
    total, events = 0.0, 0
    for i in range(len(risk)):
        if event[i]:
            at_risk = [np.exp(risk[j]) for j in range(len(risk)) if time[j] >= time[i]]
            total -= risk[i] - np.log(sum(at_risk))
            events += 1
    return total / events


CASES = {
    "untied": (np.arange(1.0, 13.0), np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1])),
    "tied-events": (np.array([1, 2, 2, 3, 3, 3, 4, 5, 5, 6, 7, 7.0]), np.array([1, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0])),
    # no two events share a time, but an event shares its time with censored people (torchsurv 0.2.0 errs here)
    "event-tied-with-censored": (np.array([5, 4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1.0]),
                                 np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cox_loss_equals_a_loop_and_scikit_survivals_breslow_likelihood(case):
    time, event = CASES[case]
    rng = np.random.default_rng(3)
    for scale in (0.5, 40.0):  # large risks: logcumsumexp keeps the sums finite
        risk = rng.normal(0, scale, len(time))
        got = float(cox_loss(torch.tensor(risk, dtype=torch.float64), torch.tensor(time), torch.tensor(event)))
        assert got == pytest.approx(loop_breslow(risk, time, event), rel=1e-5)
        if scale < 1:  # scikit-survival's Breslow likelihood (mean over samples) of a Cox model with one coefficient 1
            opt = CoxPHOptimizer(risk[:, None], event.astype(bool), time, alpha=np.zeros(1), ties="breslow")
            assert got == pytest.approx(opt.nlog_likelihood(np.ones(1)) * len(time) / event.sum(), rel=1e-6)


def test_cox_loss_gradient_matches_the_loop_and_a_batch_without_events_is_a_connected_zero():
    time, event = CASES["tied-events"]
    risk = torch.tensor(np.random.default_rng(0).normal(size=12), requires_grad=True)
    cox_loss(risk, torch.tensor(time), torch.tensor(event)).backward()
    eps, numeric = 1e-6, []
    for i in range(12):
        up, down = risk.detach().numpy().copy(), risk.detach().numpy().copy()
        up[i] += eps
        down[i] -= eps
        numeric.append((loop_breslow(up, time, event) - loop_breslow(down, time, event)) / (2 * eps))
    np.testing.assert_allclose(risk.grad.numpy(), numeric, atol=1e-5)
    r = torch.randn(4, requires_grad=True)
    loss = cox_loss(r, torch.ones(4), torch.zeros(4))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(r.grad, torch.zeros(4))


# -- the C-indices -------------------------------------------------------------------------
def _data(seed: int, n: int = 90):
    rng = np.random.default_rng(seed)
    time = np.round(rng.exponential(2.0, n), 1)  # rounded: tied times, events tied with censored ones
    event = rng.random(n) < 0.6
    risk = np.round(rng.normal(size=n) - 0.4 * time, 1)  # rounded: tied risks
    return time, event, risk


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_harrell_and_uno_c_match_lifelines_and_scikit_survival_with_ties_and_weights(seed):
    time, event, risk = _data(seed)
    labels = np.c_[time, event]
    c = concordance(labels, risk)[0]
    assert c == pytest.approx(concordance_index(time, -risk, event))
    assert c == pytest.approx(concordance_index_censored(event, time, risk)[0])
    y, tau = Surv.from_arrays(event, time), uno_tau(labels)
    assert survival_scores(labels, risk)["uno_c"][0] == pytest.approx(concordance_index_ipcw(y, y, risk, tau=tau)[0])
    w = np.random.default_rng(seed + 10).integers(0, 3, (4, len(time))).astype(float)  # a bootstrap's repeat counts
    scores = survival_scores(labels, risk, w)
    for b in range(4):
        k = np.repeat(np.arange(len(time)), w[b].astype(int))
        yb = Surv.from_arrays(event[k], time[k])
        assert scores["c_index"][b] == pytest.approx(concordance_index(time[k], -risk[k], event[k]))
        assert scores["uno_c"][b] == pytest.approx(concordance_index_ipcw(yb, yb, risk[k], tau=tau)[0])


def test_censoring_is_respected_where_ignoring_it_gives_another_c():
    # the censored person at time 1 has the highest risk: ignoring censoring calls that a correct ranking
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    event = np.array([0, 1, 1, 0, 1])
    risk = np.array([9.0, 1.0, 3.0, 2.0, 0.0])
    c = concordance(np.c_[time, event], risk)[0]
    assert c == pytest.approx(concordance_index(time, -risk, event))
    ignored = concordance_index(time, -risk, np.ones(5))
    assert abs(c - ignored) > 0.1
    # by hand: comparable pairs (i event first): (2,3) (2,4) (2,5) (3,4) (3,5) (5: none); concordant: (2,5) (3,4) (3,5)
    assert c == pytest.approx(3 / 5)


# -- models --------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone,shape", [("vgg-mini", (4, 3, 32, 32)), ("resnet3d-compact", (4, 1, 16, 16, 16))])
def test_every_fusion_trains_a_survival_head_on_2d_and_3d_backbones(backbone, shape):
    from covfuse.models import build, list_fusions

    x, s = torch.randn(*shape), torch.randn(shape[0], 3)
    time, event = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 0.0, 1.0])
    for fusion in list_fusions():
        model = build(backbone, fusion, 3, head="survival", hybrid_layers="last")
        risk = model(x, s)
        assert risk.shape == (4,), fusion
        cox_loss(risk, time, event).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), fusion


# -- the twin ------------------------------------------------------------------------------
def test_twin_card_cindices_come_from_the_generating_model():
    from covfuse.data.twins import brains as s3
    from covfuse.data.twins import survival as sv

    for effect in ("planted", "null"):
        draw = lambda n, seed: s3.draw_subjects(n, seed, effect, 2, 0.05)  # noqa: E731
        card = sv.population_cindex(effect, 2, s3.DISEASE_STEP, draw, seed=0, pairs=200_000)
        # an independent estimate: lifelines' Harrell C on one finite sample of fresh subjects
        subjects = draw(6000, 7)
        time, event = sv.draw_times(sv.log_hazard(subjects, effect, s3.DISEASE_STEP), np.random.default_rng(8))
        for name, sees in (("true_risk", None), ("image_only", "image"), ("covariates_only", "covariates")):
            score = (sv.log_hazard(subjects, effect, s3.DISEASE_STEP) if sees is None
                     else sv.predicted_hazard(subjects, effect, 2, s3.DISEASE_STEP, sees))
            assert concordance_index(time, -score, event) == pytest.approx(card[name], abs=0.02), (effect, name)
        if effect == "planted":  # the covariates carry what the image cannot show
            assert card["image_and_covariates"] > card["image_only"] + 0.05
        else:
            assert card["image_and_covariates"] == card["image_only"] and card["covariates_only"] == 0.5


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("survtwin") / "t"
    assert covfuse(["data", "synth3d", str(out), "--n", "48", "--size", "16", "--seed", "1", "--survival"]) == 0
    return out


def test_synth3d_survival_writes_time_and_event_and_a_card(twin):
    rows = list(csv.DictReader(open(twin / "manifest.csv")))
    assert {"time", "event"} <= set(rows[0])
    assert all(float(r["time"]) >= 0 and r["event"] in ("0", "1") for r in rows)
    assert max(float(r["time"]) for r in rows) <= 5.0
    for split in ("train", "valid", "test"):
        assert any(r["event"] == "1" for r in rows if r["split"] == split)
    card = json.loads((twin / "synth.json").read_text())["survival"]
    assert card["events"] == sum(r["event"] == "1" for r in rows)
    assert "true risk (ceiling)" in (twin / "README.txt").read_text()


# -- a tiny study ----------------------------------------------------------------------------
def test_a_survival_study_scores_c_as_lifelines_does_on_its_predictions_and_reports_higher_is_better(twin, tmp_path,
                                                                                                     capsys):
    study = tmp_path / "runs"
    assert covfuse(["sweep", "--config", str(CONFIG), "--data.root", str(twin / "manifest.csv"), *TINY,
                    "--grid", "model.fusion=image-only,concat", "--seeds", "0", "--runs_dir", str(study),
                    "--name", "surv"]) == 0
    run = next(p.parent for p in (study / "surv").glob("*concat*/s0/metrics.json"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "survival" and metrics["event"] == "event" and "classes" not in metrics
    table = list(csv.DictReader(open(run / "predictions.csv")))
    assert {"time", "event", "risk"} <= set(table[0]) and "label" not in table[0]
    train = [r for r in csv.DictReader(open(twin / "manifest.csv")) if r["split"] == "train"]
    y_train = Surv.from_arrays(np.asarray([r["event"] == "1" for r in train]), np.asarray([float(r["time"]) for r in train]))
    for split in ("valid", "test"):
        rows = [r for r in table if r["split"] == split]
        t = np.asarray([float(r["time"]) for r in rows])
        e = np.asarray([int(r["event"]) for r in rows])
        risk = np.asarray([float(r["risk"]) for r in rows])
        assert metrics[split]["c_index"] == pytest.approx(concordance_index(t, -risk, e), abs=1e-12)
        y = Surv.from_arrays(e.astype(bool), t)
        # Uno's C: censoring weights from the training split, one tau (the training split's) for every split
        assert metrics[split]["uno_c_tau"] == metrics["survival"]["tau"]
        assert metrics[split]["uno_c"] == pytest.approx(
            concordance_index_ipcw(y_train, y, risk, tau=metrics[split]["uno_c_tau"])[0], abs=1e-9)
        assert metrics[split]["events"] == e.sum() and metrics[split]["clusters"] == len({r["group"] for r in rows})
        lo, hi = metrics[split]["c_index_ci"]
        assert lo is None or lo <= metrics[split]["c_index"] <= hi
    config = (run / "config.yaml").read_text()
    assert "monitor: val/c_index" in config  # no --monitor: the head's own score picks the checkpoint
    assert covfuse(["test", str(run)]) == 0  # re-evaluating the checkpoint gives the same C
    again = json.loads((run / "metrics.json").read_text())
    assert again["test"]["c_index"] == pytest.approx(metrics["test"]["c_index"], abs=1e-6)
    capsys.readouterr()  # `covfuse predict` writes the same risk
    assert covfuse(["predict", str(run), "--csv", str(twin / "manifest.csv"), "--extrapolate"]) == 0
    predicted = {Path(r["path"]).relative_to(twin).as_posix(): r for r in csv.DictReader(capsys.readouterr().out.splitlines())}
    assert all(abs(float(predicted[r["id"]]["risk"]) - float(r["risk"])) < 1e-4 for r in table)
    # the report puts IBS and td-AUC beside C, each run scored against its own training-split baseline
    assert covfuse(["report", str(study / "surv"), "--format", "json", "--bootstrap", "100"]) == 0
    report = json.loads(capsys.readouterr().out)
    for row in report["rows"]:
        folder = next(p.parent for p in (study / "surv").glob(f"*{row['setting'].split('=')[-1]}*/s0/metrics.json"))
        own = json.loads((folder / "metrics.json").read_text())["test"]
        assert set(row["also"]) == {"ibs", "td_auc"}
        for name in ("ibs", "td_auc"):
            got = row["also"][name]["estimate"]
            assert (got is None and own[name] is None) or got == pytest.approx(own[name], abs=1e-6)
    assert covfuse(["report", str(study / "surv"), "--bootstrap", "100"]) == 0
    markdown = (study / "surv" / "report.md").read_text()
    assert "## C-index, integrated Brier score and time-dependent AUC" in markdown
    assert "| ibs | fusion=concat |" in markdown and "| td_auc | fusion=concat |" in markdown  # one row per score and cell
    assert covfuse(["report", str(study / "surv"), "--bootstrap", "100", "--format", "html"]) == 0
    page = (study / "surv" / "report.html").read_text()
    assert '<h2 id="also">C-index, integrated Brier score and time-dependent AUC</h2>' in page
    assert "<td>td_auc</td><td>fusion=concat</td>" in page
    capsys.readouterr()
    # concat ranks test perfectly (risk = -time), image-only backwards: the report must call higher C better
    baseline = next(p.parent for p in (study / "surv").glob("*image-only*/s0/metrics.json"))
    for folder, sign in ((run, -1.0), (baseline, 1.0)):
        rows = list(csv.DictReader(open(folder / "predictions.csv")))
        for r in rows:
            if r["split"] == "test":
                r["risk"] = str(sign * float(r["time"]))
        with open(folder / "predictions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    assert covfuse(["report", str(study / "surv"), "--format", "json", "--bootstrap", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "c_index" and report["task"] == "survival"
    row = next(r for r in report["rows"] if "concat" in r["setting"])
    assert row["estimate"] == pytest.approx(1.0) and row["difference"] == pytest.approx(1.0, abs=0.05)
    assert row["verdict"] == "better"


# -- bad input -------------------------------------------------------------------------------
BAD = {
    "survival-no-event": ("no data.event", None, "model.head survival needs data.event"),
    "survival-time-missing": ("a missing time", ("time", ""), "the survival time 'time' is missing"),
    "survival-time-negative": ("a negative time", ("time", "-1.5"), "the survival time 'time' is negative (-1.5)"),
    "survival-time-word": ("a non-numeric time column", "diagnosis", "the survival time 'diagnosis' must be a number"),
    "survival-event-value": ("an event other than 0/1", ("event", "2"), "must be 1 (event observed) or 0 (censored), got '2'"),
    "survival-split-no-events": ("a split without events", "test-censored", "the test split has no events"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_survival_input_is_one_line_and_writes_nothing(case, twin, tmp_path, capsys):
    what, change, expect = BAD[case]
    rows = list(csv.DictReader(open(twin / "manifest.csv")))
    args = ["--data.target", "time", "--data.event", "event"]
    if isinstance(change, tuple):
        rows[3][change[0]] = change[1]
    elif change == "diagnosis":
        args = ["--data.target", "diagnosis", "--data.event", "event"]
    elif change == "test-censored":
        for r in rows:
            if r["split"] == "test":
                r["event"] = "0"
    elif change is None:
        args = ["--data.target", "time", "--data.event", ""]
    manifest = twin / f"bad-{case}.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    code = covfuse(["fit", "--config", str(CONFIG), "--data.root", str(manifest), *TINY, *args,
                    "--runs_dir", str(tmp_path / "runs"), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert expect in err, err
    assert not (tmp_path / "runs").exists()
    if os.environ.get("COVFUSE_PRINT_ERRORS"):  # the rows of docs/errors.md's survival table
        message = err.strip().split(": error: ", 1)[1].replace(str(twin) + "/", "").replace(str(CONFIG), "survival.yaml")
        print(f"\n| `{case}` | {what} | {message} |")
    row = next((line for line in (DOCS / "errors.md").read_text().splitlines() if line.startswith(f"| `{case}` |")), None)
    assert row is not None and expect in row, f"docs/errors.md has no row for {case} with its message"


def test_folds_of_a_survival_table_balance_the_events(twin):
    from covfuse.training.config import DataConfig
    from covfuse.training.datamodule import CovfuseDataModule

    cfg = DataConfig(root=str(twin / "manifest.csv"), target="time", event="event", covariates=["age"],
                     image_size=16, cache="off", folds=3, fold=1)
    data = CovfuseDataModule(cfg, seed=0, head="survival")
    data.setup("fit")
    assert data.labels.shape == (48, 2) and data.classes == []
    rows = list(csv.DictReader(open(twin / "manifest.csv")))
    assert np.allclose(data.labels[:, 0], [float(r["time"]) for r in rows])
    events = data.labels[:, 1]
    assert events[data.indices["valid"]].sum() > 0 and events[data.indices["train"]].sum() > 0
    pool = np.concatenate([data.indices["train"], data.indices["valid"]])
    share = events[data.indices["valid"]].mean()
    assert abs(share - events[pool].mean()) < 0.2  # stratified on the event indicator


def test_the_survival_twin_as_bids_carries_time_and_event(tmp_path):
    """`data synth3d --survival --format bids` crashed writing its data card (StopIteration) and dropped time and
    event from participants.tsv; they must equal the manifest twin's of the same seed and read back as a table."""
    from covfuse.data.readers import read_table

    args = ["--n", "30", "--size", "8", "--seed", "2", "--survival"]
    assert covfuse(["data", "synth3d", str(tmp_path / "m"), *args]) == 0
    assert covfuse(["data", "synth3d", str(tmp_path / "b"), *args, "--format", "bids"]) == 0
    manifest = {r["subject"]: r for r in csv.DictReader(open(tmp_path / "m/manifest.csv"))}
    participants = list(csv.DictReader(open(tmp_path / "b/participants.tsv"), delimiter="\t"))
    assert [(r["time"], r["event"]) for r in participants] == \
        [(manifest[r["participant_id"]]["time"], manifest[r["participant_id"]]["event"]) for r in participants]
    table = read_table(tmp_path / "b")
    assert sorted(table.values("event")) == sorted(r["event"] for r in manifest.values())
    assert "time, event" in (tmp_path / "b/README.txt").read_text()
