"""Batched reads: CelebADataset.__getitems__ + `collate` give exactly what per-item reads + torch's
default_collate give (JPEG and cache paths, flips); in-place normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from covfuse.data import read_celeba
from covfuse.data.cache import build_cache
from covfuse.data.dataset import CelebADataset, SampleBatch, collate, collate_grouped
from covfuse.data.transforms import normalize
from covfuse.data.twins.faces import write_synth


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    out = tmp_path_factory.mktemp("twin") / "synth"
    write_synth(out, n=40, seed=3, image_size=(44, 54), progress=False)
    return read_celeba(out / "celeba")


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cached", [False, True])
def test_batched_read_equals_items_plus_default_collate(meta, cached):
    cache = build_cache(meta, 24, progress=False) if cached else None
    ds = CelebADataset(meta, np.arange(5, 35), "Smiling", ["Young", "Male"], image_size=24, cache=cache)
    items = [7, 0, 29, 7, -1]
    batch = ds.__getitems__(items)
    assert isinstance(batch, SampleBatch) and len(batch) == 5 and _equal(batch[2], ds[29])
    assert _equal(collate(batch), default_collate([ds[i] for i in items]))
    with pytest.raises(IndexError):
        ds.__getitems__([0, 30])
    # Through a DataLoader with workers' absence: batches equal the per-item reference.
    loader = DataLoader(ds, batch_size=8, collate_fn=collate)
    got = {k: torch.cat([b[k] for b in loader]) for k in ("image", "covariates", "target", "index")}
    assert _equal(got, default_collate([ds[i] for i in range(len(ds))]))


def test_training_flips_mirror_whole_images_in_the_jpeg_path(meta):
    plain = CelebADataset(meta, np.arange(16), "Smiling", image_size=24)
    train = CelebADataset(meta, np.arange(16), "Smiling", image_size=24, train=True)
    torch.manual_seed(0)
    flips = 0
    for _ in range(4):
        for j, s in enumerate(train.__getitems__(list(range(16)))):
            ref = plain[j]["image"]
            assert torch.equal(s["image"], ref) or torch.equal(s["image"], ref.flip(-1))
            flips += not torch.equal(s["image"], ref)
    assert 12 < flips < 52


def test_normalize_in_place_equals_the_formula_and_leaves_its_input_alone():
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    want = (x.double() / 255 - 0.5) / 0.5
    torch.testing.assert_close(normalize(x).double(), want, rtol=0, atol=1e-6)
    f = x.float()
    before = f.clone()
    torch.testing.assert_close(normalize(f).double(), want, rtol=0, atol=1e-6)
    assert torch.equal(f, before)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert normalize(cl).is_contiguous(memory_format=torch.channels_last)


def test_grouped_training_batches_keep_each_sample_whole(meta):
    ds = CelebADataset(meta, np.arange(40), "Smiling", ["Young", "Male"], image_size=16)
    items = list(range(0, 40, 3))
    plain, grouped = collate(ds.__getitems__(items)), collate_grouped(ds.__getitems__(items))
    inverse = torch.unique(grouped["covariates"], dim=0, return_inverse=True)[1]
    assert torch.all(inverse[1:] >= inverse[:-1])  # equal rows adjacent, in torch.unique's order
    assert sorted(grouped["index"].tolist()) == sorted(plain["index"].tolist())
    by_index = {int(i): j for j, i in enumerate(plain["index"])}
    for j, i in enumerate(grouped["index"].tolist()):  # every tensor moved together
        assert all(torch.equal(grouped[k][j], plain[k][by_index[i]]) for k in plain)
