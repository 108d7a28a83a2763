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
        delta, flips, _ = scored.pooled(name)
        flips = flips.astype(bool)
        if truth is not None:
            for key, colour in (("cues_disagree", "#d62728"), ("cues_agree", "#1f77b4")):
                m = np.concatenate([masks[key][on] for on in scored.applies[name]])
                ax.hist(delta[m], bins=bins, alpha=0.6, color=colour, label=key.replace("_", " "))
        else:
            ax.hist(delta[~flips], bins=bins, alpha=0.7, color="#1f77b4", label="decision kept")
            ax.hist(delta[flips], bins=bins, alpha=0.7, color="#d62728", label="decision flipped")
        ax.axvline(0, color="k", lw=0.8)
        edits = plan[name]
        what = " / ".join(e.label for e in edits) if len(edits) <= 2 else f"{name} set to each other level"
        ax.set_title(f"{what}\nmean |change| {np.abs(delta).mean() if len(delta) else 0:.3f}, "
                     f"flips {flips.mean() if len(flips) else 0:.1%}", fontsize=9)
        ax.set_xlabel("P(counterfactual) - P(real)")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return _rel(path)


def plot_layer(path: Path, lname: str, summary: dict, recorder, masks: dict[str, np.ndarray]) -> str | None:
    """A small plot per conditioning layer: per-channel relative kernel norms, or scale/shift per covariate value."""
    plt = _plt()
    kind = summary["kind"]
    if kind == "hybrid":
        fig, ax = plt.subplots(figsize=(6.4, 2.8))
        for name, per in summary["relative_norm_per_channel"].items():  # each sorted: a profile, not channel ids
            ax.plot(np.arange(len(per)), sorted(per, reverse=True), lw=1.5,
                    label=f"{name} (whole layer {summary['relative_norm'][name] or 0:.3f})")
        ax.set_xlabel("output channels, sorted by the ratio (each covariate separately)")
        ax.set_ylabel("||W_j|| / ||W_0||")
        ax.set_title(f"{lname}: size of each covariate's kernel relative to the base kernel", fontsize=9)
        ax.legend(fontsize=8)
    elif kind in ("concat", "mlpcatmlp"):
        fig, ax = plt.subplots(figsize=(4, 2.6))
        rel = summary["relative_norm"]
        ax.bar(list(rel), [v or 0 for v in rel.values()], color="#1f77b4")
        ax.set_ylabel("covariate column / image column norm" if kind == "concat" else "covariate path / image column norm")
        ax.set_title(f"{lname}: {'concatenation' if kind == 'concat' else 'MLP-concat'} head", fontsize=9)
    else:
        scale, shift = recorder.samples(lname)
        groups = [(key, masks[key]) for key in summary["values"] if key in masks]  # subgroups in the table's units
        if not groups:
            return None
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        for ax, values, title in zip(axes, (scale, shift), summary.get("quantities", ("scale", "shift"))):
            ax.boxplot([values[m].ravel() for _, m in groups], showfliers=False)
            ax.set_xticks(range(1, len(groups) + 1), [k for k, _ in groups], fontsize=7, rotation=35, ha="right")
            ax.set_title(f"{lname} ({kind}): {title}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return _rel(path)


def middle_slice(maps: np.ndarray) -> np.ndarray:
    """(n, H, W) maps unchanged; (n, D, H, W) volume maps -> their middle slice along D."""
    return maps[:, maps.shape[1] // 2] if maps.ndim == 4 else maps


def to_display(images) -> np.ndarray:
    """(n, H, W, 3) floats in [0, 1]: uint8 photos scaled, float volumes sliced in the middle and min-max scaled."""
    a = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    if a.dtype == np.uint8:
        return a.transpose(0, 2, 3, 1).astype(np.float64) / 255.0
    a = a.astype(np.float64)
    if a.ndim == 5:  # (n, C, D, H, W)
        a = a[:, :, a.shape[2] // 2]
    a = a.mean(1)
    lo = a.reshape(len(a), -1).min(1)[:, None, None]
    hi = a.reshape(len(a), -1).max(1)[:, None, None]
    a = (a - lo) / np.where(hi > lo, hi - lo, 1)
    return np.repeat(a[..., None], 3, axis=3)


def _boxes(ax, boxes: dict | None, i: int) -> None:
    if boxes is None:
        return
    from matplotlib.patches import Rectangle

    for cue, b in boxes.items():
        x0, y0, x1, y1 = b[i]
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.0,
                               edgecolor=CUE_COLOURS.get(cue, "w")))


def plot_maps(path: Path, name: str, change, images, shown_values: list[tuple[str, str]], p_real, p_cf,
              real_maps: dict, cf_maps: dict, boxes: dict | None) -> str:
    """Rows: examples. Columns: the image, then per method the map with the real covariates, with the
    counterfactual, and their difference (counterfactual - real; red = more attribution). Volumes
    show their middle slice. ``shown_values``: per example, the covariate's value and its counterfactual
    as the table spells them."""
    plt = _plt()
    shown = to_display(images)
    real_maps = {m: middle_slice(v) for m, v in real_maps.items()}
    cf_maps = {m: middle_slice(v) for m, v in cf_maps.items()}
    methods = list(real_maps)
    n = len(images)
    cols = 1 + 3 * len(methods)
    fig, axes = plt.subplots(n, cols, figsize=(1.45 * cols, 1.5 * n + 0.9), squeeze=False)
    titles = ["image"]
    for m in methods:
        titles += [f"{m}\nreal {name}", f"{m}\nflipped {name}" if change.kind == "flip" else f"{m}\n{change.label}",
                   f"{m}\ndifference"]
    for i in range(n):
        grey = shown[i].mean(2)
        ax = axes[i, 0]
        ax.imshow(shown[i])
        _boxes(ax, boxes, i)
        before, after = shown_values[i]
        ax.set_ylabel(f"{name} {before}→{after}\nP {p_real[i]:.2f}→{p_cf[i]:.2f}", fontsize=7.5,
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
    methods = [m for m, v in next(iter(cue_mass.values())).items() if isinstance(v, dict) and "low" in v]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.8 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        labels, x = [], 0
        for name, entry in cue_mass.items():
            for level in ("low", "high"):
                shares = entry[method][level]
                for j, cue in enumerate(shares):
                    ax.bar(x + 0.38 * j, shares[cue] or 0.0, width=0.36, color=CUE_COLOURS.get(cue),
                           label=cue if x == 0 else None)
                labels.append((x + 0.19, f"{name}={entry[level]:g}"))
                x += 1
            x += 0.5
        area = next(iter(cue_mass.values())).get("area", {})
        for cue, share in area.items():
            ax.axhline(share, color=CUE_COLOURS.get(cue), ls=":", lw=1, label=f"{cue} box area share")
        ax.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=8)
        ax.set_ylabel("share of the map inside the box")
        ax.set_title(method, fontsize=9)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.35)
        ax.legend(fontsize=7, ncol=2, loc="upper center")
    fig.suptitle(f"Attribution inside the cue boxes (twin: {truth.card.get('effect')})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return _rel(path)
