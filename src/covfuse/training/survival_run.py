"""What a survival run writes besides predictions.csv: the training-split reference, survival.csv and figures.

After the best checkpoint has scored the training split (without augmentation, ``TRAIN_EVAL``),
:func:`reference` estimates the Breslow baseline, the censoring distribution, the evaluation grid,
Uno's tau and the risk-group cut-offs on it (saved as ``survival_baseline.json``);
:func:`survival_table` writes S(t | x) at the grid for every evaluated sample (``survival.csv``,
**contract**: ``id, split, time, event, S@<t>...``); :func:`figures` draws the Kaplan-Meier curves
of the test split by predicted risk group and the calibration at each grid time.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from covfuse.io import save_figure
from covfuse.survival import kaplan_meier
from covfuse.training.datamodule import TRAIN_EVAL
from covfuse.training.survival_reference import Reference, column_name

GROUPS = ("low", "middle", "high")
"""Risk groups: tertiles of the training split's predicted risk."""

CALIBRATION_BINS = 10
"""Calibration: samples binned by deciles of predicted risk (fewer when a split is small)."""


def reference(config, data, outputs: dict) -> Reference:
    """The training split's :class:`Reference`, from the best checkpoint's risks on it (``outputs[TRAIN_EVAL]``,
    removed from ``outputs`` so only evaluated splits remain)."""
    out = outputs.pop(TRAIN_EVAL)
    index = out["index"].numpy().astype(np.int64)
    risk = out["output"].numpy().astype(np.float64)
    ref = Reference.from_training(data.labels[index], risk, grid=config.data.eval_times, tau=config.metrics.tau)
    ref.sources["risk_group_cutoffs"] = [float(v) for v in np.quantile(risk, [1 / 3, 2 / 3])]
    return ref


def risk_groups(ref: Reference, risk: np.ndarray) -> np.ndarray:
    """0/1/2 (low/middle/high) by the training split's risk tertiles."""
    return np.searchsorted(np.asarray(ref.sources["risk_group_cutoffs"]), np.asarray(risk, dtype=np.float64),
                           side="right")


def survival_table(ref: Reference, data, outputs: dict) -> str:
    """survival.csv: one row per evaluated sample, ``id, split, time, event`` and ``S@<t>`` at every grid time."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", "split", "time", "event", *(column_name(t) for t in ref.grid)])
    for split, out in outputs.items():
        index = out["index"].numpy().astype(np.int64)
        risk = out["output"].numpy().astype(np.float64)
        s = ref.baseline.survival(risk, ref.grid)
        for name, y, row in zip(data.filenames(index), data.labels[index], s):
            # repr: the shortest text that reads back as the same float64 (scikit-survival on this file = metrics.json)
            writer.writerow([name, split, repr(float(y[0])), int(y[1]), *(repr(float(v)) for v in row)])
    return table.getvalue()


def calibration(ref: Reference, labels: np.ndarray, risk: np.ndarray, t: float,
                bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per bin of predicted risk (deciles of this split's risk): the mean predicted S(t) and the
    Kaplan-Meier S(t) observed in the bin."""
    labels = np.asarray(labels, dtype=np.float64)
    risk = np.asarray(risk, dtype=np.float64)
    k = int(max(1, min(bins, len(risk) // 5)))
    edges = np.quantile(risk, np.linspace(0, 1, k + 1)[1:-1])
    member = np.searchsorted(edges, risk, side="right")
    predicted = ref.baseline.survival(risk, [t])[:, 0]
    out = []
    for b in range(k):
        mask = member == b
        if not mask.any():
            continue
        times, s = kaplan_meier(labels[mask, 0], labels[mask, 1] > 0.5)
        observed = float(s[np.searchsorted(times, t, side="right") - 1]) if (times <= t).any() else 1.0
        out.append({"count": int(mask.sum()), "predicted": float(predicted[mask].mean()), "observed": observed})
    return out


def figures(run_dir: Path, ref: Reference, data, outputs: dict, split: str = "test") -> list[Path]:
    """plots/km_risk_groups.png (Kaplan-Meier of ``split`` by predicted risk group, numbers at risk
    below) and plots/calibration.png (predicted vs observed S(t) per risk decile at each grid time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if split not in outputs:
        return []
    out = outputs[split]
    index = out["index"].numpy().astype(np.int64)
    risk = out["output"].numpy().astype(np.float64)
    labels = np.asarray(data.labels[index], dtype=np.float64)
    group = risk_groups(ref, risk)
    written = []
    fig, (ax, table) = plt.subplots(2, 1, figsize=(6.4, 5.2), gridspec_kw={"height_ratios": [4, 1]}, sharex=True)
    end = float(labels[:, 0].max()) if len(labels) else 1.0
    ticks = np.linspace(0, end, 6)
    for g, name in enumerate(GROUPS):
        mask = group == g
        if not mask.any():
            continue
        times, s = kaplan_meier(labels[mask, 0], labels[mask, 1] > 0.5)
        ax.step(np.r_[0.0, times], np.r_[1.0, s], where="post", label=f"{name} risk (n={int(mask.sum())})")
        at_risk = [int((labels[mask, 0] >= t).sum()) for t in ticks]
        for t, n in zip(ticks, at_risk):
            table.text(t, 2 - g, str(n), ha="center", va="center", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Kaplan-Meier S(t)")
    ax.set_title(f"{split} split by predicted risk group (training tertiles)")
    ax.legend(loc="lower left", fontsize=8)
    table.set_ylim(-0.5, 2.5)
    table.set_yticks([2, 1, 0], [f"{name}" for name in GROUPS], fontsize=8)
    table.set_xlabel(f"{data.target_name}; numbers at risk above")
    table.set_xticks(ticks)
    for side in ("top", "right", "left"):
        table.spines[side].set_visible(False)
    fig.tight_layout()
    written.append(save_figure(fig, Path(run_dir) / "plots" / "km_risk_groups.png"))
    plt.close(fig)

    grid = list(ref.grid)
    if grid:
        fig, axes = plt.subplots(1, len(grid), figsize=(3.2 * len(grid), 3.2), squeeze=False)
        for ax, t in zip(axes[0], grid):
            points = calibration(ref, labels, risk, t)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            ax.scatter([p["predicted"] for p in points], [p["observed"] for p in points], s=14)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"t = {t:g}", fontsize=9)
            ax.set_xlabel("predicted S(t)")
        axes[0][0].set_ylabel("Kaplan-Meier S(t) per risk decile")
        fig.suptitle(f"calibration on the {split} split (risk deciles)", fontsize=10)
        fig.tight_layout()
        written.append(save_figure(fig, Path(run_dir) / "plots" / "calibration.png"))
        plt.close(fig)
    return written
