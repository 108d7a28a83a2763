"""Survival analysis on numpy/scipy: estimators (Kaplan-Meier, censoring, Breslow's baseline) and scores.

:mod:`covfuse.survival.estimators` holds the nonparametric estimates, :mod:`covfuse.survival.scores`
the weighted scores built on them (as scikit-survival's metrics import its nonparametric module),
and :mod:`covfuse.survival.loss` the Cox partial likelihood a survival head trains with (imported
from there: it needs torch, the rest does not). This package imports no other part of covfuse.
"""
from covfuse.survival.estimators import Censoring, breslow, censoring_km, kaplan_meier, km_median, uno_tau
from covfuse.survival.scores import brier, concordance, cumulative_dynamic_auc, integrated_brier

__all__ = ["Censoring", "breslow", "brier", "censoring_km", "concordance", "cumulative_dynamic_auc", "integrated_brier",
           "kaplan_meier", "km_median", "uno_tau"]
