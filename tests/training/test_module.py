"""The LightningModule's pieces: losses and probabilities per head, optimisers and schedules, channels_last."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from covfuse.training.module import CovfuseModule, to_channels_last


def module(head="binary", fusion="hybrid", **optim):
    return CovfuseModule(model={"backbone": "vgg-mini", "fusion": fusion, "head": head, "hybrid_layers": "all"},
                         covariates=["Young", "Male"], image_size=32, optim=optim)


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            "covariates": torch.randint(0, 2, (n, 2), generator=g).float(),
            "target": torch.randint(0, 2, (n,), generator=g).float(), "index": torch.arange(n)}


@pytest.mark.parametrize("head", ["binary", "two-class"])
def test_loss_and_probability_follow_the_head(head):
    m = module(head).eval()
    b = batch()
    x = (b["image"].float() / 127.5 - 1)  # the preset's normalisation, by hand
    logits = m.model(x, b["covariates"])
    assert torch.allclose(m(b["image"], b["covariates"]), logits, atol=1e-6)
    if head == "binary":
        assert logits.shape == (6,)
        ref_loss, ref_p = F.binary_cross_entropy_with_logits(logits, b["target"]), torch.sigmoid(logits)
    else:
        assert logits.shape == (6, 2)
        ref_loss, ref_p = F.cross_entropy(logits, b["target"].long()), torch.softmax(logits, 1)[:, 1]
    assert torch.allclose(m.loss(logits, b["target"]), ref_loss)
    assert torch.allclose(m.predictions(logits), ref_p)


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimisers(name, cls):
    m = module(optimizer=name, lr=0.05, weight_decay=0.01)
    m._trainer = SimpleNamespace(estimated_stepping_batches=100, max_epochs=4)
    opt = m.configure_optimizers()
    assert type(opt) is cls and opt.defaults["lr"] == 0.05 and opt.defaults["weight_decay"] == 0.01
    n_params = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_params


def _multipliers(m, steps):
    m._trainer = SimpleNamespace(estimated_stepping_batches=steps, max_epochs=4)
    config = m.configure_optimizers()
    lam = config["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert config["lr_scheduler"]["interval"] == "step"
    return [lam(s) for s in range(steps)]


def test_schedules():
    cosine = _multipliers(module(schedule="cosine"), 100)
    assert cosine[0] == 1.0 and cosine[50] == pytest.approx(0.5) and cosine[99] == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.99)))
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    step = _multipliers(module(schedule="step", step_size=1, gamma=0.1), 100)  # 25 steps per epoch
    assert step[24] == 1.0 and step[25] == pytest.approx(0.1) and step[99] == pytest.approx(1e-3)
    warm = _multipliers(module(schedule="cosine", warmup_steps=10), 100)
    assert warm[0] == pytest.approx(0.1) and warm[9] == pytest.approx(1.0) and warm[55] == pytest.approx(0.5)
    assert module(schedule="none").configure_optimizers().__class__ is torch.optim.Adam


def test_channels_last_keeps_outputs_and_skips_5d_covariate_weights():
    m = module().eval()
    b = batch()
    before = m(b["image"], b["covariates"])
    to_channels_last(m.model)
    four_d = [p for p in m.parameters() if p.dim() == 4]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    assert any(p.dim() == 5 for p in m.parameters())  # hybrid covariate weights exist and were left alone
    m.channels_last = True
    assert torch.allclose(m(b["image"], b["covariates"]), before, atol=1e-5)


def test_test_outputs_are_collected_per_split_and_deduplicated():
    m = module().eval()
    m._trainer = SimpleNamespace(world_size=1)
    m.eval_splits = ["valid", "test"]
    m.on_test_epoch_start()
    b = batch(4)
    for split in ("valid", "test"):
        m._collect[split] = [{"index": b["index"], "probability": torch.rand(4), "target": b["target"]}] * 2
    m.on_test_epoch_end()
    assert set(m.outputs) == {"valid", "test"}
    assert m.outputs["valid"]["index"].tolist() == [0, 1, 2, 3]  # a distributed sampler's padding repeats samples
