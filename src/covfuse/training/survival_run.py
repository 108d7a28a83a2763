"""What a survival run writes besides predictions.csv: the training-split reference, survival.csv and figures.

Before training, :func:`check_times` holds ``data.eval_times`` and ``metrics.tau`` against the
training split's follow-up. After the best checkpoint has scored the training split (without
augmentation, ``TRAIN_EVAL``),
:func:`reference` estimates the Breslow baseline, the censoring distribution, the evaluation grid,
Uno's tau and the risk-group cut-offs on it (saved as ``survival_baseline.json``);
:func:`survival_table` writes S(t | x) at the grid for every evaluated sample (``survival.csv``,
**contract**: ``id, split, time, event, S@<t>...``); :func:`figures` draws the Kaplan-Meier curves
of the test split by predicted risk group and the calibration at each grid time.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from covfuse.io import save_figure
from covfuse.survival import kaplan_meier
from covfuse.training.datamodule import TRAIN_EVAL
from covfuse.training.survival_reference import Reference, column_name, follow_up
from covfuse.training.survival_reference import check_times as check_times_of

log = logging.getLogger("covfuse.training")

GROUPS = ("low", "middle", "high")
"""Risk groups: tertiles of the training split's predicted risk."""

CALIBRATION_BINS = 10
"""Calibration: samples binned by quantiles of predicted risk, at most this many bins (deciles) and at
least 5 samples per bin on average (fewer bins when a split is small); the figure says how many."""


def scale_labels(config, data) -> np.ndarray | None:
    """The labels the default grid and tau come from when they must be one for several runs: in k-fold
    cross-validation every fold's train + valid (the same people for every fold), so all folds of a
    study are scored at the same times and τ; None otherwise (the training split's own)."""
    if not config.data.folds:
        return None
    return data.labels[np.concatenate([data.indices["train"], data.indices["valid"]])]


def check_times(config, data) -> None:
    """Before training: ``data.eval_times`` and ``metrics.tau`` against the training split's follow-up
    (:func:`covfuse.training.survival_reference.check_times`: a UserError where nothing usable is left),
    and one warning naming the grid times left out."""
    train = data.labels[data.indices["train"]]
    left_out = check_times_of(train, config.data.eval_times, config.metrics.tau, scale_labels(config, data))
    if left_out:
        first, last = follow_up(train)
        log.warning("data.eval_times %s lie outside the training split's follow-up (%g <= t < %g): left out",
                    ", ".join(f"{t:g}" for t in left_out), first, last)


def reference(config, data, outputs: dict) -> Reference:
    """The training split's :class:`Reference`, from the best checkpoint's risks on it (``outputs[TRAIN_EVAL]``,
    removed from ``outputs`` so only evaluated splits remain)."""
    out = outputs.pop(TRAIN_EVAL)
    index = out["index"].numpy().astype(np.int64)
    risk = out["output"].numpy().astype(np.float64)
    ref = Reference.from_training(data.labels[index], risk, grid=config.data.eval_times, tau=config.metrics.tau,
                                  scale_labels=scale_labels(config, data))
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
    """Per bin of predicted risk (quantiles of this split's risk, :data:`CALIBRATION_BINS`): its size,
    the mean predicted S(t) and the Kaplan-Meier S(t) observed in the bin. Empty bins (tied risks) are
    left out."""
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


def round_ticks(end: float) -> list[float]:
    """Time-axis ticks at round numbers from 0 to ``end`` (matplotlib's MaxNLocator: steps of 1, 2, 2.5
    or 5 times a power of ten), where the Kaplan-Meier figure also counts the numbers at risk."""
    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib, only where a run draws its figures

    end = float(end) if end > 0 else 1.0
    ticks = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3).tick_values(0.0, end)
    return [float(t) for t in ticks if -1e-12 <= t <= end * (1 + 1e-12)]


def at_risk(time: np.ndarray, ticks) -> list[int]:
    """How many are still under observation (time >= t) at each tick."""
    time = np.asarray(time, dtype=np.float64)
    return [int((time >= t).sum()) for t in ticks]


def km_figure(labels: np.ndarray, group: np.ndarray, split: str, target: str):
    """Kaplan-Meier curves per risk group: censoring marked (+), round time ticks with the numbers at
    risk at them underneath, the legend outside the plot so it hides no curve."""
    import matplotlib  # lazy: matplotlib, only where a run draws its figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels, dtype=np.float64)
    end = float(labels[:, 0].max()) if len(labels) else 1.0
    ticks = round_ticks(end)
    fig, (ax, table) = plt.subplots(2, 1, figsize=(7.6, 5.2), gridspec_kw={"height_ratios": [4, 1]}, sharex=True)
    for g, name in enumerate(GROUPS):
        mask = group == g
        colour = f"C{g}"
        if mask.any():
            time, event = labels[mask, 0], labels[mask, 1] > 0.5
            times, s = kaplan_meier(time, event)
            ax.step(np.r_[0.0, times], np.r_[1.0, s], where="post", color=colour,
                    label=f"{name} risk (n={int(mask.sum())})")
            censored = time[~event]
            marks = s[np.searchsorted(times, censored, side="right") - 1] if len(censored) else censored
            ax.plot(censored, marks, "+", color=colour, ms=7, mew=1.2, clip_on=False)
        for t, n in zip(ticks, at_risk(labels[mask, 0], ticks)):
            table.text(t, 2 - g, str(n), ha="center", va="center", fontsize=8, color=colour)
    ax.plot([], [], "+", color="0.3", label="censored")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, max(end, ticks[-1]) * 1.02)
    ax.set_ylabel("Kaplan-Meier S(t)")
    ax.set_title(f"{split} split by predicted risk group (training tertiles)", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)
    table.set_ylim(-0.5, 2.5)
    table.set_yticks([2, 1, 0], list(GROUPS), fontsize=8)
    table.set_xticks(ticks, [f"{t:g}" for t in ticks])
    table.set_xlabel(f"{target}; numbers at risk above")
    for side in ("top", "right", "left"):
        table.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def calibration_figure(ref: Reference, labels: np.ndarray, risk: np.ndarray, split: str):
    """Predicted against observed S(t) per bin of predicted risk at each grid time: every point drawn
    (no clipping at 0 or 1) with its bin size beside it, the number of bins in the titles."""
    import matplotlib  # lazy: matplotlib, only where a run draws its figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = list(ref.grid)
    fig, axes = plt.subplots(1, len(grid), figsize=(3.4 * len(grid), 3.6), squeeze=False)
    counts = set()
    for ax, t in zip(axes[0], grid):
        points = calibration(ref, labels, risk, t)
        counts.add(len(points))
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.scatter([p["predicted"] for p in points], [p["observed"] for p in points], s=16, clip_on=False, zorder=3)
        for p in points:
            ax.annotate(f"{p['count']}", (p["predicted"], p["observed"]), textcoords="offset points", xytext=(4, -9),
                        fontsize=7, color="0.35", annotation_clip=False)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"t = {t:g}: {len(points)} bin{'' if len(points) == 1 else 's'}", fontsize=9)
        ax.set_xlabel("mean predicted S(t)")
    axes[0][0].set_ylabel("Kaplan-Meier S(t) in the bin")
    bins = counts.pop() if len(counts) == 1 else None
    what = f"{bins} bin{'' if bins == 1 else 's'}" if bins is not None else "bins"
    fig.suptitle(f"calibration on the {split} split: {what} of predicted risk (quantiles; bin size beside each point)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def figures(run_dir: Path, ref: Reference, data, outputs: dict, split: str = "test") -> list[Path]:
    """plots/km_risk_groups.png (:func:`km_figure` of ``split`` by predicted risk group) and
    plots/calibration.png (:func:`calibration_figure` at each grid time)."""
    if split not in outputs:
        return []
    out = outputs[split]
    index = out["index"].numpy().astype(np.int64)
    risk = out["output"].numpy().astype(np.float64)
    labels = np.asarray(data.labels[index], dtype=np.float64)
    written = [save_figure(km_figure(labels, risk_groups(ref, risk), split, data.target_name),
                           Path(run_dir) / "plots" / "km_risk_groups.png")]
    if ref.grid:
        written.append(save_figure(calibration_figure(ref, labels, risk, split), Path(run_dir) / "plots" / "calibration.png"))
    return written
