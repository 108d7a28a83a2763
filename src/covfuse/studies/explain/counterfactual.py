"""Counterfactual covariates: score every sample again with one covariate changed, the rest held fixed.

Binary covariates (two distinct values) are swapped; continuous ones move by plus and minus one
standard deviation (of the training split). Per covariate we report the mean absolute change of
P(target) and the share of decisions (threshold 0.5) that flip, overall and per subgroup, each with
an interval that resamples groups of samples (people), never single images
(:func:`covfuse.studies.stats.cluster_bootstrap_mean`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from covfuse.studies.stats import cluster_bootstrap_mean
from covfuse.training.metrics import MAX_GROUP_VALUES


@dataclass(frozen=True)
class Change:
    """One counterfactual edit of covariate ``index``: ``kind`` "flip" (lo <-> hi) or "shift" (+ ``amount``)."""

    name: str
    index: int
    kind: str
    lo: float = 0.0
    hi: float = 1.0
    amount: float = 0.0

    @property
    def label(self) -> str:
        if self.kind == "flip":
            return f"{self.name}: {self.lo:g} <-> {self.hi:g}"
        return f"{self.name} {'+' if self.amount >= 0 else '-'}1 SD ({self.amount:+.3g})"

    @property
    def column(self) -> str:
        """Its column in counterfactuals.csv: ``probability_<name>`` (flip) or ``probability_<name>+1sd`` / ``-1sd``."""
        if self.kind == "flip":
            return f"probability_{self.name}"
        return f"probability_{self.name}{'+' if self.amount >= 0 else '-'}1sd"

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """A copy of ``rows`` (n, K) with this covariate changed."""
        out = np.array(rows, dtype=np.float32, copy=True)
        col = out[:, self.index]
        if self.kind == "flip":
            out[:, self.index] = np.where(col == self.lo, self.hi, self.lo)
        else:
            out[:, self.index] = col + self.amount
        return out


def plan_changes(names: list[str], train_rows: np.ndarray) -> dict[str, list[Change]]:
    """{covariate: its counterfactual edits}: a flip for two-valued covariates, +-1 SD otherwise."""
    plan: dict[str, list[Change]] = {}
    for k, name in enumerate(names):
        values = np.unique(train_rows[:, k])
        if len(values) == 2 or (len(values) == 1 and values[0] in (0.0, 1.0)):
            # two values, or a 0/1 covariate constant in training (its other value is still 0/1)
            lo, hi = (float(values[0]), float(values[-1])) if len(values) == 2 else (0.0, 1.0)
            plan[name] = [Change(name, k, "flip", lo, hi)]
        else:
            sd = float(np.std(train_rows[:, k]))
            plan[name] = [Change(name, k, "shift", amount=sd), Change(name, k, "shift", amount=-sd)]
    return plan


@torch.no_grad()
def score(forward, images: torch.Tensor, rows: np.ndarray, device: torch.device) -> np.ndarray:
    """P(target) for one batch: ``forward(uint8 images, float covariates) -> probabilities``."""
    covariates = torch.as_tensor(rows, dtype=torch.float32, device=device)
    return forward(images.to(device), covariates).float().cpu().numpy().astype(np.float64)


def _within(stat: dict, lo: float = 0.0, hi: float = 1.0) -> dict:
    """Clip an interval of a rate or a mean absolute change of probability to [0, 1] (the t interval is not)."""
    a, b = stat["ci"]
    if a is not None:
        stat = {**stat, "ci": [max(a, lo), min(b, hi)]}
    return stat


def summarise(real: np.ndarray, changed: list[np.ndarray], groups: np.ndarray, *, threshold: float = 0.5,
              n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean absolute change, mean signed change and decision flip rate, with group-resampled CIs.

    ``changed`` holds one probability array per edit (two for +-1 SD); they are pooled, each sample
    contributing once per edit, and the sample's group repeated.
    """
    delta = np.concatenate([c - real for c in changed])
    flips = np.concatenate([(c >= threshold) != (real >= threshold) for c in changed]).astype(np.float64)
    g = np.concatenate([groups] * len(changed))
    mac = _within(cluster_bootstrap_mean(np.abs(delta), g, n_boot=n_boot, seed=seed))
    flip = _within(cluster_bootstrap_mean(flips, g, n_boot=n_boot, seed=seed))
    signed = cluster_bootstrap_mean(delta, g, n_boot=n_boot, seed=seed)
    return {
        "count": int(len(real)),
        "clusters": mac["clusters"],
        "mean_abs_change": mac["estimate"],
        "mean_abs_change_ci": mac["ci"],
        "decision_flip_rate": flip["estimate"],
        "ci": flip["ci"],
        "mean_change": signed["estimate"],
        "mean_change_ci": signed["ci"],
    }


def subgroups(names: list[str], rows: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """{"Young=1": mask, ...} for each value of every covariate with few values, plus ``extra`` masks."""
    out: dict[str, np.ndarray] = {}
    for k, name in enumerate(names):
        values = np.unique(rows[:, k])
        if len(values) <= MAX_GROUP_VALUES:
            for v in values:
                out[f"{name}={v:g}"] = rows[:, k] == v
    out.update(extra or {})
    return out
