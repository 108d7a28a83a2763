"""The report's test across runs, through `covfuse report` on hand-made runs, against scipy and hand formulas:
paired t over seeds (used only from 3 runs on), Nadeau-Bengio over folds."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from covfuse.cli.main import main as covfuse
from covfuse.studies.sweep import Run, Study, write_study

N, PEOPLE = 120, 40


def _run(folder: Path, ids, groups, labels, probs, split: str) -> None:
    folder.mkdir(parents=True)
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "group", "split", "label", "probability"])
        w.writerows([i, g, split, y, f"{p:.6f}"] for i, g, y, p in zip(ids, groups, labels, probs))
    (folder / "metrics.json").write_text(json.dumps({"task": "binary", "test": {}, "valid": {}}))


def _study(tmp_path, kind: str, seeds, folds: int, accuracy) -> tuple[Study, dict]:
    """Cells a (baseline) and b; run (seed, fold) of cell c is right on the first accuracy[c][k] * n samples."""
    rng = np.random.default_rng(0)
    ids = np.array([f"img{i:03d}" for i in range(N)])
    groups = np.array([f"p{i % PEOPLE}" for i in range(N)])
    labels = rng.integers(0, 2, N)
    root = tmp_path / kind
    runs, per_run = [], {"a": [], "b": []}
    parts = np.array_split(rng.permutation(N), folds) if folds else [np.arange(N)]
    for cell in ("a", "b"):
        for seed in seeds:
            for fold, part in enumerate(parts):
                part = np.sort(part)
                right = int(round(accuracy[cell][len(per_run[cell]) % len(accuracy[cell])] * len(part)))
                correct = np.arange(len(part)) < right
                probs = np.where(correct == (labels[part] == 1), 0.8, 0.2)
                per_run[cell].append(right / len(part))
                leaf = f"s{seed}" + (f"-fold{fold}" if folds else "")
                _run(root / cell / leaf, ids[part], groups[part], labels[part], probs, "valid" if folds else "test")
                runs.append(Run(len(runs), cell, seed, str(root / cell / leaf), {"model.fusion": cell},
                                fold=fold if folds else None))
    study = Study("s", kind, str(root), [], {"a": {"model.fusion": "a"}, "b": {"model.fusion": "b"}}, list(seeds),
                  {}, folds, "a", runs, [])
    write_study(study)
    return study, {c: np.array(v) for c, v in per_run.items()}


def _report(capsys, study) -> dict:
    capsys.readouterr()
    assert covfuse(["report", study.study_dir, "--format", "json", "--bootstrap", "200"]) == 0
    return {r["setting"]: r for r in json.loads(capsys.readouterr().out)["rows"]}


@pytest.mark.parametrize("seeds", [[0, 1], [0, 1, 2]])
def test_the_test_across_seeds_is_scipys_paired_t_and_counts_from_three_runs(tmp_path, capsys, seeds):
    accuracy = {"a": [0.70, 0.72, 0.69], "b": [0.78, 0.74, 0.80]}
    study, per_run = _study(tmp_path, "sweep", seeds, 0, accuracy)
    b = _report(capsys, study)["b"]
    expected = sps.ttest_rel(per_run["b"], per_run["a"]).pvalue
    assert b["seed_test"]["p_value"] == pytest.approx(expected) and b["seed_test"]["method"] == "paired-t"
    assert b["seed_test"]["n"] == len(seeds)
    if len(seeds) >= 3:  # the larger of the two p-values: seeds are a second source of variation
        assert b["p_value"] == pytest.approx(max(b["bootstrap_p"], expected))
        assert expected > b["bootstrap_p"]  # this case exercises the rule: the seeds decide
    else:  # two runs: too few for a t-test to mean anything; the bootstrap decides alone
        assert b["p_value"] == b["bootstrap_p"]


def test_the_test_across_folds_is_nadeau_bengio_by_hand(tmp_path, capsys):
    accuracy = {"a": [0.70, 0.65, 0.72, 0.68], "b": [0.75, 0.77, 0.71, 0.80]}
    study, per_run = _study(tmp_path, "cv", [0], 4, accuracy)
    b = _report(capsys, study)["b"]
    d = per_run["b"] - per_run["a"]
    n_test = N / 4
    t = d.mean() / np.sqrt((1 / 4 + n_test / (N - n_test)) * d.var(ddof=1))
    expected = 2 * sps.t.sf(abs(t), 3)
    assert b["seed_test"]["method"] == "nadeau-bengio"
    assert b["seed_test"]["t"] == pytest.approx(t) and b["seed_test"]["p_value"] == pytest.approx(expected)
    plain = sps.ttest_rel(per_run["b"], per_run["a"]).pvalue
    assert expected > plain  # the correction widens: folds share training data
    assert b["p_value"] == pytest.approx(max(b["bootstrap_p"], expected))
