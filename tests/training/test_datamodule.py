"""The data module's splits and the covariate controls (real / zeros / ones / shuffled)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from covfuse.data import read_celeba
from covfuse.data.twins.faces import write_synth
from covfuse.errors import UserError
from covfuse.training.config import DataConfig
from covfuse.training.datamodule import CovfuseDataModule


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("twin") / "synth"
    write_synth(out, n=200, seed=1, effect="planted", image_size=(44, 54), progress=False)
    return out / "celeba"


def _load(root, mode, seed=0, split="train", **kw):
    dm = CovfuseDataModule(DataConfig(root=str(root), covariates=["Young", "Male"], image_size=32,
                                      batch_size=16, covariates_mode=mode, **kw), seed=seed)
    dm.setup()
    loader = {"train": dm._loader("train"), "valid": dm.val_dataloader(), "test": dm.test_dataloader()}[split]
    batches = list(loader)
    return dm, {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("split,code", [("train", 0), ("valid", 1), ("test", 2)])
def test_real_mode_feeds_the_metadata_values_of_the_official_split(root, split, code):
    meta = read_celeba(root)
    dm, b = _load(root, "real", split=split)
    idx = b["index"].numpy()
    assert sorted(idx) == sorted(np.flatnonzero(meta.split == code))
    cols = [meta.column("Young"), meta.column("Male")]
    assert np.array_equal(b["covariates"].numpy(), meta.attrs[idx][:, cols].astype(np.float32))
    assert np.array_equal(b["target"].numpy(), meta.attrs[idx, meta.column("Attractive")].astype(np.float32))
    assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("mode,value", [("zeros", 0.0), ("ones", 1.0)])
def test_constant_modes_replace_only_the_covariates(root, mode, value):
    _, real = _load(root, "real", split="valid")
    dm, b = _load(root, mode, split="valid")
    assert (b["covariates"] == value).all() and b["covariates"].shape == real["covariates"].shape
    assert torch.equal(b["image"], real["image"]) and torch.equal(b["target"], real["target"])
    assert np.array_equal(dm.covariates_real, _load(root, "real")[0].covariates_real)  # metrics still see the real ones


@pytest.mark.parametrize("split", ["train", "test"])
def test_shuffled_permutes_rows_within_the_split_seeded(root, split):
    _, real = _load(root, "real", split=split)
    _, a = _load(root, "shuffled", seed=0, split=split)
    _, again = _load(root, "shuffled", seed=0, split=split)
    _, other = _load(root, "shuffled", seed=1, split=split)
    order = np.argsort(real["index"].numpy())
    ra, aa = real["covariates"].numpy()[order], a["covariates"].numpy()[np.argsort(a["index"].numpy())]
    # same rows (as a multiset) within the split, not the same assignment to images
    assert sorted(map(tuple, ra)) == sorted(map(tuple, aa))
    assert (ra != aa).any(axis=1).mean() > 0.2
    assert torch.equal(a["covariates"], again["covariates"])
    assert not torch.equal(a["covariates"][np.argsort(a["index"].numpy())],
                           other["covariates"][np.argsort(other["index"].numpy())])
    assert torch.equal(a["target"][np.argsort(a["index"].numpy())], real["target"][order])


def test_train_loader_shuffles_and_drops_a_last_partial_batch(root):
    dm = CovfuseDataModule(DataConfig(root=str(root), covariates=["Young"], image_size=32, batch_size=16), seed=0)
    dm.setup()
    sizes = [len(b["target"]) for b in dm.train_dataloader()]
    assert set(sizes) == {16} and len(sizes) == len(dm.indices["train"]) // 16


def test_kfold_splits_train_and_valid_and_keep_the_official_test(root):
    meta = read_celeba(root)
    dm = CovfuseDataModule(DataConfig(root=str(root), covariates=["Young"], image_size=32, folds=3, fold=1), seed=0)
    dm.setup()
    train, valid, test = (set(dm.indices[s].tolist()) for s in ("train", "valid", "test"))
    assert not train & valid and not (train | valid) & test
    assert test == set(np.flatnonzero(meta.split == 2).tolist())
    assert not set(meta.identity[list(train)]) & set(meta.identity[list(valid)])  # grouped by identity


def test_bad_settings_are_user_errors(root, tmp_path):
    with pytest.raises(UserError, match="data.root"):
        CovfuseDataModule(DataConfig(root="")).setup()
    with pytest.raises(UserError, match="did you mean 'Young'"):
        CovfuseDataModule(DataConfig(root=str(root), covariates=["Yuong"])).setup()
    with pytest.raises(UserError, match="fold"):
        CovfuseDataModule(DataConfig(root=str(root), folds=3, fold=3)).setup()
