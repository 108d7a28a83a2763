"""`covfuse cv --config BASE.yaml --name STUDY --folds K [--seeds 0,1] [--grid KEY=V1,V2 ...] [overrides]`:
k-fold cross-validation over train+valid, grouped by person (CelebA identity, manifest subject; test stays
held out), one run per fold in runs/STUDY/<cell>/s<seed>-fold<k>/; `covfuse report STUDY` scores the out-of-fold
predictions and tests differences across folds with the Nadeau-Bengio correction.
"""
from __future__ import annotations

from covfuse.cli import sweep


def parser():
    """cv's own options; every other flag is a config key (:func:`covfuse.cli.fit.parser` lists them)."""
    return sweep.parser("covfuse cv", __doc__, cv=True)


def main(argv: list[str]) -> int:
    return sweep.main(argv, cv=True, prog="covfuse cv", doc=__doc__)
