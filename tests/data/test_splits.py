"""CelebA's official split against the partition file read by hand; identity-grouped, stratified k folds."""
from __future__ import annotations

import numpy as np
import pytest

from covfuse.data.readers.celeba import read_celeba_table
from covfuse.data.table import subject_folds, subject_split
from covfuse.errors import UserError

from data_fixtures import make_twin


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return read_celeba_table(make_twin(tmp_path_factory, n=3000, images=False), check_images=False)


def _folds(table, k, seed, target):
    """k folds as the data module makes them: over the official train+valid rows, stratified by ``target``."""
    return subject_folds(table, subject_split(table), k, seed, stratify=table.values(target))


def test_the_split_follows_the_partition_file(table):
    lines = (table.root / "list_eval_partition.txt").read_text().split()
    codes = [int(code) for code in lines[1::2]]
    split = subject_split(table, seed=5)  # the release's own split, whatever the seed
    assert split.tolist() == codes
    for code in range(3):
        idx = np.flatnonzero(split == code)
        assert idx.tolist() == [i for i, c in enumerate(codes) if c == code]


@pytest.mark.parametrize("k", [2, 5])
def test_kfold_partitions_train_valid_by_identity(table, k):
    folds = _folds(table, k, seed=3, target="attractive")
    pool = set(np.flatnonzero(table.split <= 1).tolist())
    assert len(folds) == k
    seen: list[int] = []
    for train, val in folds:
        assert train.dtype == val.dtype == np.int64
        assert set(train.tolist()) | set(val.tolist()) == pool and not set(train.tolist()) & set(val.tolist())
        assert not set(table.subjects[train].tolist()) & set(table.subjects[val].tolist())  # no person on both sides
        assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
        seen += val.tolist()
    assert sorted(seen) == sorted(pool)  # every image validated exactly once, test split never used


def test_kfold_is_stratified_and_deterministic(table):
    y = table.values("Attractive")
    folds = _folds(table, 5, seed=0, target="Attractive")
    overall = y[table.split <= 1].mean()
    for _, val in folds:
        assert abs(y[val].mean() - overall) < 0.05
    again = _folds(table, 5, seed=0, target="Attractive")
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = _folds(table, 5, seed=1, target="Attractive")
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_kfold_rejects_bad_k(table):
    with pytest.raises(UserError, match="k >= 2"):
        _folds(table, 1, seed=0, target="Attractive")
    with pytest.raises(UserError, match="identities in train\\+valid"):
        _folds(table, 10_000, seed=0, target="Attractive")
    with pytest.raises(UserError, match="did you mean 'Attractive'"):
        _folds(table, 3, seed=0, target="Atractive")
