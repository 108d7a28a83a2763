"""Train/valid/test rows: the official partition, or identity-grouped stratified k folds."""
from __future__ import annotations

import numpy as np

from covfuse.data.readers.celeba_release import SPLIT_NAMES, CelebAMeta
from covfuse.errors import UserError, suggest


def official_indices(meta: CelebAMeta, split: str) -> np.ndarray:
    """Rows (int64, ascending) of ``split`` ("train", "valid" or "test") in list_eval_partition.txt."""
    if split not in SPLIT_NAMES:
        raise UserError(f"unknown split {split!r}{suggest(str(split), SPLIT_NAMES)}; choose from {', '.join(SPLIT_NAMES)}")
    return np.flatnonzero(meta.split == SPLIT_NAMES.index(split)).astype(np.int64)


def kfold_indices(meta: CelebAMeta, k: int, seed: int, target: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train rows, validation rows) pairs over the official train+valid images.

    Folds are grouped by identity (no person is in both parts of a pair, so a model cannot score
    by recognising people) and stratified by ``target`` (sklearn's StratifiedGroupKFold, groups
    shuffled with ``seed``: the same seed gives the same folds). The official test split is never
    used. Rows are ascending within each part.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    pool = np.flatnonzero(meta.split <= 1)
    y = meta.attrs[pool, meta.column(target)]
    groups = meta.identity[pool]
    num_groups = len(np.unique(groups))
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise UserError(f"k-fold needs k >= 2 folds, got {k!r}")
    if num_groups < k:
        raise UserError(f"{meta.root}: only {num_groups} identities in train+valid; cannot make {k} identity-grouped folds")
    splitter = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=int(seed))
    return [
        (pool[np.sort(tr)].astype(np.int64), pool[np.sort(va)].astype(np.int64))
        for tr, va in splitter.split(np.zeros(len(pool)), y, groups)
    ]
