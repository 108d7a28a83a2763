"""Compare finished runs: results.json (the contract shape), paired tests, figures and a Markdown report."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from covfuse.io import atomic_write_text, save_figure
from covfuse.studies.stats import align, mcnemar, paired_bootstrap

# Which Bayes accuracy of the synthetic twin bounds each method (covfuse.data.synth.bayes_accuracies).
BAYES_VIEW = {"image-only": "image_only", "covariates-only": "covariates_only"}
BASELINE = "image-only"


def read_predictions(run_dir: Path, split: str = "test") -> dict[str, np.ndarray]:
    """ids, labels and probabilities of one split from a run's predictions.csv."""
    ids, labels, probs = [], [], []
    with open(run_dir / "predictions.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == split:
                ids.append(row["id"])
                labels.append(int(row["label"]))
                probs.append(float(row["probability"]))
    return {"id": np.array(ids), "label": np.array(labels), "probability": np.array(probs)}


def compare(run_a: Path, run_b: Path, split: str = "test", *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap of the accuracy difference a - b and McNemar's test, on the same samples."""
    a, b = read_predictions(run_a, split), read_predictions(run_b, split)
    ia, ib = align(a["id"], b["id"])
    labels = a["label"][ia]
    out = paired_bootstrap(labels, a["probability"][ia], b["probability"][ib], "accuracy", n_boot=n_boot, seed=seed)
    out["mcnemar"] = mcnemar(labels, a["probability"][ia], b["probability"][ib])
    out["count"] = int(len(labels))
    return out


def collect(runs_dir: Path, methods: Sequence[str]) -> dict:
    """``{"methods": {name: {"valid": ..., "test": ...}}}`` from each run's metrics.json."""
    results: dict = {"methods": {}}
    for method in methods:
        metrics = json.loads((runs_dir / method / "metrics.json").read_text())
        results["methods"][method] = {split: metrics[split] for split in ("valid", "test")}
    return results


def _ci(lo_hi) -> str:
    lo, hi = lo_hi
    return "" if lo is None else f" [{lo:.3f}, {hi:.3f}]"


def _num(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _p(p: float, n_boot: int) -> str:
    """A bootstrap p-value: its resolution is 1 / n_boot."""
    return f"< {1 / n_boot:.0e}".replace("e-0", "e-") if p <= 1 / n_boot else f"{p:.3f}"


def overlap(a, b) -> bool:
    return not (a[1] < b[0] or b[1] < a[0])


def plot_results(results: dict, bayes: dict | None, out: Path) -> Path:
    """Test accuracy per method with 95% CI error bars; the twin's Bayes accuracies as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["methods"])
    acc = np.array([results["methods"][m]["test"]["accuracy"] for m in names])
    ci = np.array([results["methods"][m]["test"]["accuracy_ci"] for m in names], dtype=float)
    err = np.stack([acc - ci[:, 0], ci[:, 1] - acc])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.bar(names, acc, yerr=err, capsize=6, color=[f"C{i}" for i in range(len(names))], alpha=0.85)
    for i, a in enumerate(acc):
        ax.text(i, a + 0.01 + err[1, i], f"{a:.3f}", ha="center", va="bottom", fontsize=9)
    if bayes:
        labels = {"image_and_covariates": "Bayes: image + covariates", "image_only": "Bayes: image only",
                  "covariates_only": "Bayes: covariates only"}
        for j, (key, label) in enumerate(labels.items()):
            if key in bayes:
                ax.axhline(bayes[key], ls="--", lw=1, color=f"C{j + 5}", label=f"{label} ({bayes[key]:.3f})")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("test accuracy (95% bootstrap CI)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_loss_curves(runs_dir: Path, methods: Sequence[str], out: Path) -> Path:
    """Smoothed training loss per step and validation loss per epoch, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covfuse.training.callbacks import read_metrics_csv, smooth

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, method in enumerate(methods):
        path = runs_dir / method / "metrics.csv"
        if not path.is_file():
            continue
        rows = read_metrics_csv(path)
        train = [(r["step"], r["train/loss_step"]) for r in rows if "train/loss_step" in r]
        val = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
        if train:
            steps, losses = zip(*train)
            ax.plot(steps, smooth(list(losses)), color=f"C{i}", lw=1.6, label=f"{method} train (smoothed)")
        if val:
            ax.plot(*zip(*val), "o--", color=f"C{i}", ms=4, lw=1, label=f"{method} valid")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (BCE)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, out)


def _group_rows(results: dict, split: str = "test") -> list[str]:
    methods = list(results["methods"])
    first = results["methods"][methods[0]][split]
    keys = [k for k in first["groups"] if "&" not in k]
    pairs = [k for k in first["groups"] if "&" in k]
    lines = ["| group | n | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for key in keys + pairs:
        cells = [_num(results["methods"][m][split]["groups"].get(key, {}).get("accuracy")) for m in methods]
        lines.append(f"| {key} | {first['groups'][key]['count']} | " + " | ".join(cells) + " |")
    for gap in first["gaps"]:
        cells = [_num(results["methods"][m][split]["gaps"].get(gap, {}).get("accuracy")) for m in methods]
        lines.append(f"| gap over {gap} (max − min) | | " + " | ".join(cells) + " |")
    return lines


def write_demo_report(out: Path, methods: Sequence[str], synth: dict, config, timings: dict, *,
                      seed: int = 0, n_boot: int = 2000) -> dict:
    """results.json, figures/*.png and report.md for a finished demo; returns the comparison summary."""
    runs = out / "runs"
    results = collect(runs, methods)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
    bayes = synth.get("bayes_accuracy", {})
    comparisons = {m: compare(runs / m, runs / BASELINE, n_boot=n_boot, seed=seed) for m in methods if m != BASELINE}
    plot_results(results, bayes, out / "figures" / "results.png")
    plot_loss_curves(runs, methods, out / "figures" / "loss_curves.png")

    base = results["methods"][BASELINE]["test"]
    lines = [
        "# covfuse demo",
        "",
        f"Synthetic CelebA twin: {synth.get('n')} images of {synth['image_size'][0]}x{synth['image_size'][1]} px, "
        f"effect **{synth.get('effect')}**, seed {synth.get('seed')}.  ",
        f"Rule: {synth.get('rule')}.  ",
        f"Target {synth.get('target')}; covariates {', '.join(synth.get('covariates', []))}. "
        f"Model: {config.model.backbone} at {config.data.image_size} px, {config.trainer.max_epochs} epoch(s), "
        f"batch {config.data.batch_size}, {config.optim.optimizer} lr {config.optim.lr:g} ({config.optim.schedule}); "
        f"hybrid convs at `{config.model.hybrid_layers}`. Best checkpoint by {config.monitor}.",
        "",
        "## Test results (95% bootstrap CIs)",
        "",
        "| method | accuracy | balanced acc. | F1 | F1 macro | AUROC | valid accuracy | Bayes bound of its inputs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        t, v = results["methods"][m]["test"], results["methods"][m]["valid"]
        bound = bayes.get(BAYES_VIEW.get(m, "image_and_covariates"))
        lines.append(
            f"| {m} | {_num(t['accuracy'])}{_ci(t['accuracy_ci'])} | {_num(t['balanced_accuracy'])} | {_num(t['f1'])} | "
            f"{_num(t['f1_macro'])} | {_num(t['auroc'])}{_ci(t['auroc_ci'])} | {_num(v['accuracy'])} | {_num(bound)} |"
        )
    lines += [
        "",
        f"Test set: {base['count']} images. Bayes accuracies of this twin (best possible, exact): image + covariates "
        f"{_num(bayes.get('image_and_covariates'))}, image only {_num(bayes.get('image_only'))}, covariates only "
        f"{_num(bayes.get('covariates_only'))}.",
        "",
        "![test accuracy](figures/results.png)",
        "",
        f"## Paired comparisons with {BASELINE} (same test images)",
        "",
        "| method − image-only | accuracy difference [95% CI] | paired bootstrap p | McNemar (only a / only b right) p | CIs overlap |",
        "|---|---|---|---|---|",
    ]
    for m, c in comparisons.items():
        t = results["methods"][m]["test"]
        mc = c["mcnemar"]
        lines.append(
            f"| {m} | {c['difference']:+.3f}{_ci(c['ci'])} | {_p(c['p_value'], c['n_boot'])} | {mc['a_only']} / {mc['b_only']}: "
            f"{mc['p_value']:.2g} | {'yes' if overlap(t['accuracy_ci'], base['accuracy_ci']) else 'no'} |"
        )
    lines += ["", "Verdict (test accuracy, 95% CIs):", ""]
    for m, c in comparisons.items():
        t = results["methods"][m]["test"]
        if not overlap(t["accuracy_ci"], base["accuracy_ci"]):
            verdict = "better than" if t["accuracy"] > base["accuracy"] else "worse than"
            lines.append(f"- **{m}** is {verdict} image-only by {abs(c['difference']) * 100:.1f} points; the CIs do not overlap.")
        elif c["ci"][0] is not None and (c["ci"][0] > 0 or c["ci"][1] < 0):
            lines.append(f"- **{m}** differs from image-only by {c['difference'] * 100:+.1f} points in the paired test, "
                         "but the two CIs overlap.")
        else:
            lines.append(f"- **{m}** is not distinguishable from image-only ({c['difference'] * 100:+.1f} points).")
    lines += [
        "",
        "## Subgroups (test accuracy)",
        "",
        *_group_rows(results),
        "",
        "Per-group TPR, FPR, AUROC (where both classes occur) and CIs: `runs/<method>/metrics.json`.",
        "",
        "## Training curves",
        "",
        "![loss curves](figures/loss_curves.png)",
        "",
        *[f"- [{m}](runs/{m}/plots/loss.png): `runs/{m}/` (config, log, metrics, predictions, checkpoints)" for m in methods],
        "",
        "## Time",
        "",
        "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + ".",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"bayes_accuracy": bayes, "comparisons": comparisons, "timings": timings,
            "test_accuracy": {m: [results["methods"][m]["test"]["accuracy"], results["methods"][m]["test"]["accuracy_ci"]]
                              for m in methods}}
