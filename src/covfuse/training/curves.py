"""Loss curves from a run's metrics.csv: read, smooth, plot. Free of Lightning, so reports import it cheaply."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from covfuse.io import save_figure


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a Lightning metrics.csv with empty cells dropped and numbers parsed."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing); weight from the length if None."""
    if not values:
        return []
    if weight is None:
        weight = min(0.98, max(0.0, 1 - 5 / len(values)))
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i) if weight > 0 else v)
    return out


def plot_losses(metrics_csv: str | Path, out: str | Path, title: str = "") -> Path | None:
    """Train loss per step (raw and smoothed) with val loss per epoch; val accuracy (regression: MAE; survival:
    C-index) per epoch beside it."""
    metrics_csv, out = Path(metrics_csv), Path(out)
    if not metrics_csv.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics_csv(metrics_csv)
    train = [(r["step"], r["train/loss_step"]) for r in rows if "train/loss_step" in r]
    score, label = next(((k, name) for k, name in (("val/mae", "MAE"), ("val/c_index", "C-index"))
                         if any(k in r for r in rows)), ("val/acc", "accuracy"))
    val = [(r["step"], r.get("epoch", math.nan), r["val/loss"], r.get(score, math.nan)) for r in rows if "val/loss" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        steps, losses = zip(*train)
        ax_loss.plot(steps, losses, color="C0", alpha=0.25, lw=0.8, label="train (per step)")
        ax_loss.plot(steps, smooth(list(losses)), color="C0", lw=1.8, label="train (smoothed)")
    if val:
        ax_loss.plot([v[0] for v in val], [v[2] for v in val], "o-", color="C1", label="valid (per epoch)")
        ax_acc.plot([v[1] + 1 for v in val], [v[3] for v in val], "o-", color="C2", label=f"valid {label}")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_acc.set_xlabel("epoch")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_ylabel(label)
    ax_acc.grid(alpha=0.3)
    if val:
        ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)
