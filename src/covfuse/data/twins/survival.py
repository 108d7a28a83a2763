"""Time to conversion for the brain-MRI twin (``covfuse data synth3d OUT --survival``), with a planted hazard.

Each subject of :mod:`covfuse.data.twins.brains` gets a log hazard ``eta`` (per year, exponential times):

    planted:  eta = 4 * e * (1 + 0.5 * APOE4)      e = atrophy - (age - 55) / 35 = 0.5 * stage
    null:     eta = (8 / 3) * atrophy

In the planted twin conversion depends on the atrophy *beyond what age explains* (the interaction of
atrophy and age: the image alone cannot tell a young converter from an old non-converter) and on
its interaction with APOE4 (the true allele count, also where the manifest hides it); in the null
twin on the atrophy the image shows, and nothing else. Times are censored administratively at
:data:`FOLLOW_UP` years and at random by drop-out (exponential, :data:`DROPOUT` per year), and
rounded to 0.01 year. The C-indices on the data card come from this generating model by Monte
Carlo over independent pairs of fresh subjects (no training): of the true ``eta`` (the ceiling)
and of the best prediction of ``eta`` from what each kind of model sees, ``E[eta | X]`` with X the
image's atrophy, the covariates (age, sex, APOE4 as the manifest gives it), or both.
"""
from __future__ import annotations

import numpy as np

BASE_HAZARD = 0.05  # conversions per year at eta = 0
FOLLOW_UP = 5.0     # administrative censoring: the study ends after 5 years
DROPOUT = 0.1       # random censoring: people leave the study at this rate per year
APOE4_P = np.array([0.6, 0.3, 0.1])  # P(0, 1, 2 alleles): the brain twin draws APOE4 from it
MONTE_CARLO_PAIRS = 1_000_000
RULES = {"planted": "eta = 4 * (atrophy - (age - 55) / 35) * (1 + 0.5 * APOE4)",
         "null": "eta = (8 / 3) * atrophy"}


def log_hazard(subjects: dict[str, np.ndarray], effect: str, step: float) -> np.ndarray:
    """The true log hazard ``eta`` of each subject (see the module docstring)."""
    if effect == "planted":
        return 4.0 * step * subjects["stage"] * (1.0 + 0.5 * subjects["apoe4_true"])
    return (8.0 / 3.0) * subjects["atrophy"]


def stage_posterior(atrophy: np.ndarray, num_classes: int, step: float) -> np.ndarray:
    """P(stage = k | atrophy) (N, C): atrophy given stage k is uniform on [k * step, k * step + 1]
    (age part or u ~ U(0, 1)), stages equally likely."""
    k = np.arange(num_classes)
    inside = (atrophy[:, None] >= k * step) & (atrophy[:, None] <= k * step + 1)
    return inside / np.maximum(inside.sum(1, keepdims=True), 1)


def predicted_hazard(subjects: dict[str, np.ndarray], effect: str, num_classes: int, step: float,
                     sees: str) -> np.ndarray:
    """``E[eta | X]`` for X = the image's atrophy (``image``), the manifest's covariates
    (``covariates``) or both (``both``); a hidden APOE4 is replaced by its mean."""
    apoe = subjects["apoe4"]
    apoe_mean = float(APOE4_P @ np.arange(3))
    apoe_seen = np.where(np.isnan(apoe), apoe_mean, apoe)
    k = np.arange(num_classes)
    if effect == "null":
        if sees == "covariates":  # atrophy is u + step * stage, independent of every covariate
            return np.full(len(apoe), (8.0 / 3.0) * (0.5 + step * k.mean()))
        return (8.0 / 3.0) * subjects["atrophy"]
    if sees == "covariates":  # stage independent of the covariates: E[stage] = mean of 0..C-1
        return 4.0 * step * k.mean() * (1.0 + 0.5 * apoe_seen)
    if sees == "image":  # APOE4 independent of the image
        stage = stage_posterior(subjects["atrophy"], num_classes, step) @ k
        return 4.0 * step * stage * (1.0 + 0.5 * apoe_mean)
    stage = np.rint((subjects["atrophy"] - (subjects["age"] - 55.0) / 35.0) / step)  # exact from image + age
    return 4.0 * step * stage * (1.0 + 0.5 * apoe_seen)


def draw_times(eta: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Observed (time in years, event 0/1): exponential conversion at ``BASE_HAZARD * exp(eta)``,
    censored by drop-out and by the end of follow-up, rounded to 0.01 year."""
    n = len(eta)
    conversion = rng.exponential(1.0, size=n) / (BASE_HAZARD * np.exp(eta))
    dropout = rng.exponential(1.0 / DROPOUT, size=n)
    seen = np.minimum(dropout, FOLLOW_UP)
    event = conversion <= seen
    time = np.round(np.where(event, conversion, seen), 2)
    return time, event.astype(np.int64)


def pair_concordance(time: np.ndarray, event: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Harrell's C of each score over the pairs (i, i + N/2): independent pairs of independent
    subjects, so the ratio estimates the population C-index (comparable and concordant as in
    :func:`covfuse.survival.concordance`: ties in risk count one half)."""
    half = len(time) // 2
    a, b = slice(0, half), slice(half, 2 * half)
    out = {}
    for name, s in scores.items():
        num = den = 0.0
        for i, j in ((a, b), (b, a)):  # i had the event first
            comparable = (event[i] == 1) & ((time[j] > time[i]) | ((time[j] == time[i]) & (event[j] == 0)))
            num += float((comparable * ((s[i] > s[j]) + 0.5 * (s[i] == s[j]))).sum())
            den += float(comparable.sum())
        out[name] = num / den
    return out


def population_cindex(effect: str, num_classes: int, step: float, draw, seed: int = 0,
                      pairs: int = MONTE_CARLO_PAIRS) -> dict[str, float]:
    """C-index of the true risk and of the image-only, covariates-only and image + covariates optima,
    by Monte Carlo of the generating model (``draw(n, seed)`` draws subjects as the twin does); the
    Monte Carlo standard error is about 0.001 with the default million pairs."""
    subjects = draw(2 * pairs, seed)
    eta = log_hazard(subjects, effect, step)
    time, event = draw_times(eta, np.random.default_rng([seed, 5]))
    scores = {"true_risk": eta}
    for name, sees in (("image_and_covariates", "both"), ("image_only", "image"), ("covariates_only", "covariates")):
        scores[name] = predicted_hazard(subjects, effect, num_classes, step, sees)
    return {k: round(v, 3) for k, v in pair_concordance(time, event, scores).items()}
