"""Official splits against the partition file read by hand; identity-grouped, stratified k folds."""
from __future__ import annotations

import numpy as np
import pytest

from covfuse.data.readers.celeba_release import read_celeba
from covfuse.data.splits import kfold_indices, official_indices
from covfuse.errors import UserError

try:
    from data_fixtures import make_twin
except ImportError:  # tests/ imported as a package
    from tests.data_fixtures import make_twin


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return read_celeba(make_twin(tmp_path_factory, n=3000, images=False), check_images=False)


def test_official_indices_follow_the_partition_file(meta):
    lines = (meta.root / "list_eval_partition.txt").read_text().split()
    codes = [int(code) for code in lines[1::2]]
    for code, split in enumerate(("train", "valid", "test")):
        idx = official_indices(meta, split)
        assert idx.dtype == np.int64
        assert idx.tolist() == [i for i, c in enumerate(codes) if c == code]
    with pytest.raises(UserError, match="did you mean 'valid'"):
        official_indices(meta, "validation")


@pytest.mark.parametrize("k", [2, 5])
def test_kfold_partitions_train_valid_by_identity(meta, k):
    folds = kfold_indices(meta, k, seed=3, target="attractive")
    pool = set(np.flatnonzero(meta.split <= 1).tolist())
    assert len(folds) == k
    seen: list[int] = []
    for train, val in folds:
        assert set(train.tolist()) | set(val.tolist()) == pool and not set(train.tolist()) & set(val.tolist())
        assert not set(meta.identity[train].tolist()) & set(meta.identity[val].tolist())  # no person on both sides
        assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
        seen += val.tolist()
    assert sorted(seen) == sorted(pool)  # every image validated exactly once, test split never used


def test_kfold_is_stratified_and_deterministic(meta):
    y = meta.attrs[:, meta.column("Attractive")]
    folds = kfold_indices(meta, 5, seed=0, target="Attractive")
    overall = y[meta.split <= 1].mean()
    for _, val in folds:
        assert abs(y[val].mean() - overall) < 0.05
    again = kfold_indices(meta, 5, seed=0, target="Attractive")
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = kfold_indices(meta, 5, seed=1, target="Attractive")
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_kfold_rejects_bad_k(meta):
    with pytest.raises(UserError, match="k >= 2"):
        kfold_indices(meta, 1, seed=0, target="Attractive")
    with pytest.raises(UserError, match="identities in train\\+valid"):
        kfold_indices(meta, 10_000, seed=0, target="Attractive")
    with pytest.raises(UserError, match="did you mean 'Attractive'"):
        kfold_indices(meta, 3, seed=0, target="Atractive")
