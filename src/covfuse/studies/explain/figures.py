"""The figures of ``covfuse explain``: changes of P(target), conditioning layers, attribution grids, cue mass."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from covfuse.io import save_figure

CUE_COLOURS = {"mouth": "#ff8c00", "eyes": "#00c8ff"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _rel(path: Path) -> str:
    return f"figures/{path.name}"


def plot_changes(path: Path, scored, plan, masks: dict, truth) -> str:
    """One histogram per covariate of P(counterfactual) - P(real); split by the twin's cue groups if known."""
    plt = _plt()
    names = list(plan)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.4), squeeze=False)
    bins = np.linspace(-1, 1, 41)
    for ax, name in zip(axes[0], names):
        delta = np.concatenate([c - scored.prob for c in scored.changed[name]])
        reps = len(scored.changed[name])
        if truth is not None:
            for key, colour in (("cues_disagree", "#d62728"), ("cues_agree", "#1f77b4")):
                m = np.concatenate([masks[key]] * reps)
                ax.hist(delta[m], bins=bins, alpha=0.6, color=colour, label=key.replace("_", " "))
        else:
            flips = np.concatenate([(c >= 0.5) != (scored.prob >= 0.5) for c in scored.changed[name]])
            ax.hist(delta[~flips], bins=bins, alpha=0.7, color="#1f77b4", label="decision kept")
            ax.hist(delta[flips], bins=bins, alpha=0.7, color="#d62728", label="decision flipped")
        ax.axvline(0, color="k", lw=0.8)
        flip_rate = np.mean(np.concatenate([(c >= 0.5) != (scored.prob >= 0.5) for c in scored.changed[name]]))
        ax.set_title(f"{' / '.join(e.label for e in plan[name])}\nmean |change| {np.abs(delta).mean():.3f}, "
                     f"flips {flip_rate:.1%}", fontsize=9)
        ax.set_xlabel("P(counterfactual) - P(real)")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return _rel(path)


def plot_layer(path: Path, lname: str, summary: dict, recorder, names: list[str], rows: np.ndarray) -> str | None:
    """A small plot per conditioning layer: per-channel relative kernel norms, or scale/shift per covariate value."""
    plt = _plt()
    kind = summary["kind"]
    if kind == "hybrid":
        fig, ax = plt.subplots(figsize=(6.4, 2.8))
        for name, per in summary["relative_norm_per_channel"].items():
            ax.plot(np.arange(len(per)), per, marker=".", lw=0.8,
                    label=f"{name} (layer {summary['relative_norm'][name] or 0:.3f})")
        ax.set_xlabel("output channel")
        ax.set_ylabel("||W_j|| / ||W_0||")
        ax.set_title(f"{lname}: size of each covariate's kernel relative to the base kernel", fontsize=9)
        ax.legend(fontsize=8)
    elif kind == "concat":
        fig, ax = plt.subplots(figsize=(4, 2.6))
        rel = summary["relative_norm"]
        ax.bar(list(rel), [v or 0 for v in rel.values()], color="#1f77b4")
        ax.set_ylabel("covariate column / image column norm")
        ax.set_title(f"{lname}: concatenation head", fontsize=9)
    else:
        scale, shift = recorder.samples(lname)
        groups = [(key, rows[:, names.index(key.split("=")[0])] == float(key.split("=")[1])) for key in summary["values"]]
        if not groups:
            return None
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        for ax, values, title in ((axes[0], scale, "scale"), (axes[1], shift, "shift")):
            ax.boxplot([values[m].ravel() for _, m in groups], showfliers=False)
            ax.set_xticks(range(1, len(groups) + 1), [k for k, _ in groups], fontsize=8, rotation=20)
            ax.set_title(f"{lname} ({kind}): predicted {title}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return _rel(path)


def _grey(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).mean(0) / 255.0


def _boxes(ax, boxes: dict | None, i: int) -> None:
    if boxes is None:
        return
    from matplotlib.patches import Rectangle

    for cue, b in boxes.items():
        x0, y0, x1, y1 = b[i]
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.0,
                               edgecolor=CUE_COLOURS.get(cue, "w")))


def plot_maps(path: Path, name: str, change, images, rows, p_real, p_cf, real_maps: dict, cf_maps: dict,
              boxes: dict | None, filenames: list[str]) -> str:
    """Rows: examples. Columns: the image, then per method the map with the real covariates, with the
    counterfactual, and their difference (counterfactual - real; red = more attribution)."""
    plt = _plt()
    methods = list(real_maps)
    n = len(images)
    cols = 1 + 3 * len(methods)
    fig, axes = plt.subplots(n, cols, figsize=(1.45 * cols, 1.5 * n + 0.9), squeeze=False)
    k = change.index
    titles = ["image"]
    for m in methods:
        titles += [f"{m}\nreal {name}", f"{m}\nflipped {name}" if change.kind == "flip" else f"{m}\n{change.label}",
                   f"{m}\ndifference"]
    for i in range(n):
        grey = _grey(images[i])
        ax = axes[i, 0]
        ax.imshow(np.asarray(images[i]).transpose(1, 2, 0))
        _boxes(ax, boxes, i)
        new = change.apply(rows[i : i + 1])[0, k]
        ax.set_ylabel(f"{name} {rows[i, k]:g}→{new:g}\nP {p_real[i]:.2f}→{p_cf[i]:.2f}", fontsize=7.5,
                      color="#d62728" if (p_real[i] >= 0.5) != (p_cf[i] >= 0.5) else "k")
        for j, m in enumerate(methods):
            a, b = real_maps[m][i], cf_maps[m][i]
            vmax = max(np.quantile(a, 0.995), np.quantile(b, 0.995), 1e-12)
            for c, (img, cmap, lo) in enumerate(((a, "inferno", 0), (b, "inferno", 0), (b - a, "RdBu_r", -vmax))):
                ax = axes[i, 1 + 3 * j + c]
                ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
                ax.imshow(img, cmap=cmap, vmin=lo, vmax=vmax, alpha=0.65 if c < 2 else 0.8)
                _boxes(ax, boxes, i)
    for j, t in enumerate(titles):
        axes[0, j].set_title(t, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    legend = "; boxes: mouth (orange), eyes (cyan)" if boxes is not None else ""
    fig.suptitle(f"Where the model looks with the real and the counterfactual {name}\n"
                 f"each row's maps share one colour scale; red row labels: the decision flips{legend}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (1.5 * n + 0.9)), h_pad=0.3, w_pad=0.2)
    save_figure(fig, path, dpi=100)
    return _rel(path)


def plot_cue_mass(path: Path, cue_mass: dict, truth) -> str:
    """Share of the attribution inside each cue box, with each binary covariate at its low and high value."""
    plt = _plt()
    methods = [m for m in next(iter(cue_mass.values())) if isinstance(next(iter(cue_mass.values()))[m], dict)]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.8 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        labels, x = [], 0
        for name, entry in cue_mass.items():
            for level in ("low", "high"):
                shares = entry[method][level]
                for j, cue in enumerate(shares):
                    ax.bar(x + 0.38 * j, float("nan") if shares[cue] is None else shares[cue], width=0.36, color=CUE_COLOURS.get(cue),
                           label=cue if x == 0 else None)
                labels.append((x + 0.19, f"{name}={entry[level]:g}"))
                x += 1
            x += 0.5
        ax.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=8)
        ax.set_ylabel("share of the map inside the box")
        ax.set_title(method, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"Attribution inside the cue boxes (twin: {truth.card.get('effect')})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return _rel(path)
