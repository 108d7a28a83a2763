"""Counterfactual covariates: score every sample again with one covariate changed, the rest held fixed.

Edits are planned per covariate of the user's table, from the run's fitted encoder
(:class:`covfuse.data.table.CovariateEncoder`), and named in the table's units: a 0/1 covariate
is flipped (``Male: 0 <-> 1``); a number moves by plus and minus one training-split standard
deviation, printed in its own units (``age +10.1 years (+1 SD)``); a categorical covariate with two
levels swaps them (``sex: F <-> M``), one with more levels is set to each other level in turn
(``site -> B``). A sample whose value is missing (or a level unseen in training) is left out of its
covariate's edits: there is no value to change. Per covariate we report the mean absolute change of
P(target) and the share of decisions (threshold 0.5) that flip, overall and per subgroup, each with
an interval that resamples groups of samples (people), never single images
(:func:`covfuse.studies.stats.cluster_bootstrap_mean`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from covfuse.data.groups import format_number, level_name
from covfuse.studies.stats import cluster_bootstrap_mean


@dataclass(frozen=True)
class Change:
    """One counterfactual edit of covariate ``name``, which occupies feature ``columns`` (and ``indicator``).

    ``kind``: "flip" (a 0/1 value, lo <-> hi), "shift" (+ ``amount`` feature units, ``step`` in the
    table's units), "swap" (the two one-hot columns of a two-level category exchanged) or "level"
    (set to the one-hot level ``columns[target]``). ``label`` says it in the table's units.
    """

    name: str
    kind: str
    columns: tuple[int, ...]
    label: str
    column: str
    indicator: int | None = None
    lo: float = 0.0
    hi: float = 1.0
    amount: float = 0.0
    target: int = 0
    step: float = 0.0
    levels: tuple[str, ...] = ()

    def after(self, value: str) -> str:
        """The counterfactual of a value as the table spells it ("" for a missing value stays "")."""
        if value == "":
            return ""
        if self.kind == "flip":
            return "1" if float(value) == self.lo else "0"
        if self.kind == "shift":
            return format_number(float(value) + self.step, 4)
        if self.kind == "swap":
            return self.levels[1] if value == self.levels[0] else self.levels[0]
        return self.levels[self.target]

    @property
    def index(self) -> int:
        """The covariate's (first) feature column."""
        return self.columns[0]

    def applies(self, rows: np.ndarray) -> np.ndarray:
        """Which samples the edit changes: their value is known (and, for "level", not already that level)."""
        rows = np.asarray(rows)
        known = np.ones(len(rows), dtype=bool) if self.indicator is None else rows[:, self.indicator] == 0
        if self.kind == "flip":
            return known & np.isin(rows[:, self.index], (self.lo, self.hi))
        if self.kind in ("swap", "level"):
            onehot = rows[:, list(self.columns)]
            known &= onehot.sum(1) == 1  # a training level (an unseen level is all zero)
            if self.kind == "level":
                known &= onehot[:, self.target] != 1
        return known

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """A copy of ``rows`` (n, F) with this covariate changed where :meth:`applies`, unchanged elsewhere."""
        out = np.array(rows, dtype=np.float32, copy=True)
        on = self.applies(out)
        col = out[:, self.index]
        if self.kind == "flip":
            out[on, self.index] = np.where(col == self.lo, self.hi, self.lo)[on]
        elif self.kind == "shift":
            out[on, self.index] = col[on] + self.amount
        elif self.kind == "swap":
            a, b = self.columns
            out[np.ix_(on, [a, b])] = out[np.ix_(on, [b, a])]
        else:
            cols = list(self.columns)
            out[np.ix_(on, cols)] = np.eye(len(cols), dtype=np.float32)[self.target]
        return out


def _unit(units: dict[str, str], name: str) -> str:
    unit = units.get(name, "")
    return f" {unit}" if unit else ""


def unchangeable(encoder, constant: Sequence[str] = ()) -> dict[str, str]:
    """{covariate: why it gets no counterfactual}: a category with one training level, a number the
    training split holds one value of (``constant``; the encoder then keeps an SD of 1, not the real 0)."""
    out = {}
    for spec in encoder.specs:
        if spec["kind"] == "categorical" and len(spec["levels"]) < 2:
            out[spec["name"]] = f"one level in the training split ({spec['levels'][0]}): nothing to change it to"
        elif spec["kind"] == "numeric" and spec["name"] in constant:
            out[spec["name"]] = "one value in the training split: the model never saw it vary"
    return out


def plan_changes(encoder, units: dict[str, str] | None = None, constant: Sequence[str] = (),
                 levels: dict[str, dict[str, str]] | None = None) -> dict[str, list[Change]]:
    """{covariate: its counterfactual edits}, from the run's fitted encoder; ``units`` and ``levels`` (BIDS
    ``participants.json``: ``Units``, ``Levels``) name each number's unit and each coded level's meaning in
    the labels. Covariates in :func:`unchangeable` have none."""
    units, levels = units or {}, levels or {}
    skip = unchangeable(encoder, constant)
    plan: dict[str, list[Change]] = {}
    for spec, columns, indicator in encoder.layout():
        name = spec["name"]
        if name in skip:
            continue
        if spec["kind"] == "binary":
            plan[name] = [Change(name, "flip", tuple(columns), f"{name}: 0 <-> 1", f"probability_{name}", indicator)]
        elif spec["kind"] == "numeric":
            plan[name] = [Change(name, "shift", tuple(columns), f"{name} {sign}{spec['std']:.3g}{_unit(units, name)} "
                                 f"({sign}1 SD)", f"probability_{name}{sign}1sd", indicator, amount=amount,
                                 step=amount * spec["std"])
                          for sign, amount in (("+", 1.0), ("-", -1.0))]  # features are in training SDs
        elif len(spec["levels"]) == 2:
            a, b = spec["levels"]
            shown = [level_name(v, levels.get(name)) for v in (a, b)]
            plan[name] = [Change(name, "swap", tuple(columns), f"{name}: {shown[0]} <-> {shown[1]}", f"probability_{name}",
                                 indicator, levels=(a, b))]
        else:
            plan[name] = [Change(name, "level", tuple(columns), f"{name} -> {level_name(level, levels.get(name))}",
                                 f"probability_{name}={level}",
                                 indicator, target=k, levels=tuple(spec["levels"])) for k, level in enumerate(spec["levels"])]
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


def pooled(real: np.ndarray, changed: list[np.ndarray], applies: list[np.ndarray], groups: np.ndarray,
           threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(change of P, decision flipped, group) over every (sample, edit) pair the edit applies to."""
    delta = np.concatenate([(c - real)[m] for c, m in zip(changed, applies)])
    flips = np.concatenate([((c >= threshold) != (real >= threshold))[m] for c, m in zip(changed, applies)])
    return delta, flips.astype(np.float64), np.concatenate([groups[m] for m in applies])


def summarise(real: np.ndarray, changed: list[np.ndarray], groups: np.ndarray, applies: list[np.ndarray] | None = None,
              *, threshold: float = 0.5, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean absolute change, mean signed change and decision flip rate, with group-resampled CIs.

    ``changed`` holds one probability array per edit (two for +-1 SD, one per other level of a
    category); ``applies`` one mask per edit (default: every sample). They are pooled, each sample
    contributing once per edit that applies to it, with its group repeated. ``count`` is the number
    of samples with at least one edit.
    """
    applies = applies if applies is not None else [np.ones(len(real), dtype=bool)] * len(changed)
    delta, flips, g = pooled(real, changed, applies, groups, threshold)
    count = int(np.logical_or.reduce(applies).sum()) if applies else 0
    if len(delta) == 0:
        return {"count": 0, "clusters": 0, "mean_abs_change": None, "mean_abs_change_ci": [None, None],
                "decision_flip_rate": None, "ci": [None, None], "mean_change": None, "mean_change_ci": [None, None]}
    mac = _within(cluster_bootstrap_mean(np.abs(delta), g, n_boot=n_boot, seed=seed))
    flip = _within(cluster_bootstrap_mean(flips, g, n_boot=n_boot, seed=seed))
    signed = cluster_bootstrap_mean(delta, g, n_boot=n_boot, seed=seed)
    return {
        "count": count,
        "clusters": mac["clusters"],
        "mean_abs_change": mac["estimate"],
        "mean_abs_change_ci": mac["ci"],
        "decision_flip_rate": flip["estimate"],
        "ci": flip["ci"],
        "mean_change": signed["estimate"],
        "mean_change_ci": signed["ci"],
    }
