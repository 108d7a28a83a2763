"""Figures of calibration, precision-recall and net benefit: per run (``plots/``) and per study (``figures/``).

Each figure says what it shows without the code: axes with their units, a legend, the ideal line
or the default strategies, and ``n`` (samples, people, runs) in its title. Every text of a figure is
also written into the PNG's ``Description`` field (:func:`save`), so a test or a search reads what the
figure says. The numbers come from :mod:`covfuse.training.clinical`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from covfuse.io import save_figure
from covfuse.training import clinical

RUN_FIGURES = {"binary": ("reliability", "precision_recall", "decision_curve"),
               "multiclass": ("reliability", "precision_recall")}
"""The figures a run of each task writes into ``plots/`` (``<name>.png``), from its test split."""

STUDY_FIGURES = {"binary": ("reliability", "decision_curve"), "multiclass": ("reliability",)}
"""The figures a study report of each task writes into ``figures/``: one line per cell (method)."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_text(fig) -> str:
    """Every text the figure shows (titles, axis labels, tick labels, legend entries), one per line."""
    from matplotlib.text import Text

    seen = []
    for artist in fig.findobj(Text):
        text = artist.get_text().strip()
        if text and artist.get_visible() and text not in seen:
            seen.append(text)
    return "\n".join(seen)


def save(fig, path: Path) -> Path:
    """:func:`covfuse.io.save_figure` with the figure's texts in the PNG's Description field."""
    fig.tight_layout()
    return save_figure(fig, path, metadata={"Description": figure_text(fig)})


def _outcome(task: str, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a reliability diagram compares: the 0/1 outcome and P(positive) (binary), or whether the top class
    was right and its probability (multi-class)."""
    if task == "multiclass":
        return clinical.top_class(labels, probs)
    return np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)


def draw_reliability(curve_ax, count_ax, series: Sequence[tuple[str, list[dict]]], what: str) -> None:
    """Observed outcome rate against mean prediction per bin (one line per series), the ideal diagonal, and the
    samples per bin below (one bar per series and bin)."""
    curve_ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="ideal (perfect calibration)")
    width = 1.0 / clinical.ECE_BINS / (len(series) + 1)
    for i, (label, points) in enumerate(series):
        colour = f"C{i % 10}"
        curve_ax.plot([q["predicted"] for q in points], [q["observed"] for q in points], "o-", ms=4, lw=1.4,
                      color=colour, label=label)
        left = np.array([q["bin"][0] for q in points]) + width * (i + 0.5)
        bars = count_ax.bar(left, [q["count"] for q in points], width=width, align="edge", color=colour, alpha=0.8)
        if len(series) == 1:
            count_ax.bar_label(bars, fontsize=7, padding=1)
    curve_ax.set_xlim(0, 1)
    curve_ax.set_ylim(0, 1)
    curve_ax.set_ylabel(f"observed {what} (fraction per bin)")
    curve_ax.legend(fontsize=7, loc="upper left")
    curve_ax.grid(alpha=0.3)
    count_ax.set_xlim(0, 1)
    count_ax.set_xticks(np.linspace(0, 1, clinical.ECE_BINS + 1))
    count_ax.set_xlabel(f"mean predicted probability per bin ({clinical.ECE_BINS} equal-width bins)")
    count_ax.set_ylabel("samples per bin")


def draw_decision(ax, series: Sequence[tuple[str, np.ndarray]], prevalence: float,
                  thresholds: np.ndarray = clinical.DECISION_THRESHOLDS) -> None:
    """Net benefit against the threshold probability, one line per series, with treat-all and treat-none."""
    t = np.asarray(thresholds, dtype=np.float64)
    ax.plot(t, clinical.treat_all(prevalence, t), color="grey", lw=1.2, label=f"treat all (prevalence {prevalence:.3f})")
    ax.axhline(0, color="black", lw=1, label="treat none")
    top = prevalence
    for i, (label, nb) in enumerate(series):
        ax.plot(t, nb, lw=1.6, color=f"C{i % 10}", label=label)
        top = max(top, float(np.nanmax(nb)))
    ax.set_xlim(float(t[0]), float(t[-1]))
    ax.set_ylim(-0.05 - 0.1 * top, 1.1 * top + 0.02)
    ax.set_xlabel(f"threshold probability p_t (treat if predicted probability >= p_t; {t[0]:g} to {t[-1]:g})")
    ax.set_ylabel("net benefit (true positives per patient, net of harm)")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)


def _n_text(n: int, people: int | None, runs: int = 1) -> str:
    who = f" of {people} people" if people is not None and people != n else ""
    return f"n = {n} samples{who}" + (f" x {runs} runs" if runs > 1 else "")


def run_figures(run_dir: Path, task: str, labels: np.ndarray, probs: np.ndarray, *, split: str,
                groups: np.ndarray | None = None, threshold: float | None = None,
                classes: Sequence[str] = ()) -> list[Path]:
    """``plots/reliability.png``, ``plots/precision_recall.png`` and (binary) ``plots/decision_curve.png``
    of one split of a run (:data:`RUN_FIGURES`; ``classes``: a multi-class head's class names, for the
    legend); nothing for other tasks or an empty split."""
    if task not in RUN_FIGURES or len(labels) == 0:
        return []
    plt = _plt()
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    people = None if groups is None else len(np.unique(groups))
    n = _n_text(len(y), people)
    plots = Path(run_dir) / "plots"
    written = []

    outcome, confidence = _outcome(task, y, p)
    what = "outcome rate" if task == "binary" else "accuracy of the top class"
    fig, (curve, counts) = plt.subplots(2, 1, figsize=(6.0, 6.4), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ece = float(clinical.ece(outcome, confidence, np.ones((1, len(y))))[0])
    draw_reliability(curve, counts, [(f"{split} split (ECE {ece:.3f})", clinical.reliability(outcome, confidence))],
                     what)
    curve.set_title(f"Reliability diagram, {split} split: {n}", fontsize=10)
    written.append(save(fig, plots / "reliability.png"))

    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(6.0, 4.6))
    columns = [(None, y.astype(bool), p)] if task == "binary" else \
        [(k, y.astype(np.int64) == k, p[:, k]) for k in range(p.shape[1])]
    for i, (k, positive, score) in enumerate(columns):
        if not positive.any():
            continue
        precision, recall, _ = precision_recall_curve(positive, score)
        ap = float(clinical.average_precision(positive, score, np.ones((1, len(score))))[0])
        label = str(classes[k]) if k is not None and k < len(classes) else str(k)
        name = "model" if k is None else f"{label} vs rest"
        ax.step(recall, precision, where="post", color=f"C{i % 10}", lw=1.5,
                label=f"{name}: AUPRC {ap:.3f} ({int(positive.sum())} positives)")
        ax.axhline(positive.mean(), color=f"C{i % 10}", ls=":", lw=1,
                   label=f"{'no skill' if k is None else label}: prevalence {positive.mean():.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (sensitivity): share of positives found")
    ax.set_ylabel("precision (PPV): share of flagged that are positive")
    ax.set_title(f"Precision-recall curve, {split} split: {n}", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    written.append(save(fig, plots / "precision_recall.png"))

    if task == "binary":
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        label = "model" + (f" (its threshold {threshold:.3g} marked)" if threshold is not None else "")
        draw_decision(ax, [(label, clinical.net_benefit(y, p))], float(np.mean(y)))
        if threshold is not None and 0 < threshold < 1:
            ax.axvline(threshold, color="C0", ls=":", lw=1)
        ax.set_title(f"Decision curve, {split} split: {n}", fontsize=10)
        written.append(save(fig, plots / "decision_curve.png"))
    return written


def study_curves(cells: Mapping[str, tuple[np.ndarray, np.ndarray, object]], task: str) -> dict | None:
    """report.json's ``curves``: per cell (its runs' predictions pooled) the reliability points and (binary)
    the net benefit at :data:`covfuse.training.clinical.DECISION_THRESHOLDS`; None for other tasks.
    ``cells`` maps a cell to ``(labels (N,), outputs (runs, N) or (runs, N, C), thresholds)``."""
    if task not in STUDY_FIGURES or not cells:
        return None
    out: dict = {"bins": clinical.ECE_BINS, "reliability": {}, "runs": {}}
    labels = None
    for name, (y, runs, _) in cells.items():
        runs = np.asarray(runs, dtype=np.float64)
        pooled_y = np.tile(np.asarray(y), len(runs))
        pooled_p = runs.reshape(len(runs) * runs.shape[1], *runs.shape[2:])
        out["runs"][name] = int(len(runs))
        out["reliability"][name] = clinical.reliability(*_outcome(task, pooled_y, pooled_p))
        if task == "binary":
            out.setdefault("net_benefit", {})[name] = [float(v) for v in clinical.net_benefit(pooled_y, pooled_p)]
        labels = y
    out["n"] = int(len(labels))
    if task == "binary":
        out["prevalence"] = float(np.mean(labels))
        out["thresholds"] = [float(t) for t in clinical.DECISION_THRESHOLDS]
        out["treat_all"] = [float(v) for v in clinical.treat_all(out["prevalence"])]
    return out


def study_figures(report: dict, folder: Path) -> list[Path]:
    """``figures/reliability.png`` and (binary) ``figures/decision_curve.png``: one line per cell of the
    report (:data:`STUDY_FIGURES`), from its ``curves``."""
    curves = report.get("curves")
    task = report.get("task", "binary")
    if not curves or task not in STUDY_FIGURES:
        return []
    plt = _plt()
    runs = sorted(set(curves["runs"].values()))
    n = _n_text(curves["n"], report.get("clusters"), max(runs))
    if len(runs) > 1:
        n += " (cells differ in runs)"
    written = []
    fig, (curve, counts) = plt.subplots(2, 1, figsize=(7.0, 7.0), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    what = "outcome rate" if task == "binary" else "accuracy of the top class"
    draw_reliability(curve, counts, list(curves["reliability"].items()), what)
    curve.set_title(f"Reliability per method, {report['split']} split: {n}; runs pooled", fontsize=10)
    written.append(save(fig, Path(folder) / "reliability.png"))
    if task == "binary":
        fig, ax = plt.subplots(figsize=(7.0, 4.8))
        draw_decision(ax, [(name, np.asarray(nb)) for name, nb in curves["net_benefit"].items()], curves["prevalence"],
                      np.asarray(curves["thresholds"]))
        ax.set_title(f"Decision curve per method, {report['split']} split: {n}; runs pooled", fontsize=10)
        written.append(save(fig, Path(folder) / "decision_curve.png"))
    return written
