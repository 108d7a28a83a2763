"""Self-tuning `auto`: one timing per call signature, the choice remembered and visible, results exact;
and the hybrid layer under torch.compile (no graph break on the common path, compiled == eager)."""
from __future__ import annotations

import logging

import pytest
import torch

from covfuse.layers import HybridConv2d, auto_choices, autotune, set_autotune
from covfuse.layers.autotune import clear_choices
from covfuse.layers.hybrid_functional import rule_backend

from layers.test_hybrid import per_sample_reference


@pytest.fixture(autouse=True)
def fresh_autotune():
    clear_choices()
    yield
    set_autotune(None)
    clear_choices()


def _layer_and_batch(seed: int = 0, n: int = 8):
    torch.manual_seed(seed)
    layer = HybridConv2d(3, 4, 3, 2, padding=1, covariate_init="kaiming").double()
    x = torch.randn(n, 3, 6, 6, dtype=torch.float64)
    c = torch.tensor([[0.0, 1.0], [1.0, 1.0]] * (n // 2), dtype=torch.float64)
    return layer, x, c


def test_tuned_choice_is_timed_once_remembered_and_exact(monkeypatch, caplog):
    set_autotune(True)
    calls = []
    real = autotune.time_candidates
    monkeypatch.setattr(autotune, "time_candidates", lambda steps, device, repeats=3: calls.append(sorted(steps)) or real(steps, device, 1))
    layer, x, c = _layer_and_batch()
    with caplog.at_level(logging.INFO, logger="covfuse.layers"):
        out = layer(x, c)
        assert layer.weight.grad is None  # timing ran on detached copies
        out2 = layer(x, c)
    # 2 distinct rows < batch: pattern is a candidate; the per-sample loop always is; triton not off CUDA
    assert calls == [["expand", "grouped", "pattern", "reference", "unfold"]]
    (choice,) = auto_choices()
    assert choice.how == "tuned" and choice.backend in choice.times_ms and len(choice.times_ms) == 5
    assert "batch 8, 2 distinct rows" in choice.signature
    assert choice.backend in caplog.text and "tuned" in caplog.text
    want = per_sample_reference(layer, x, c)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out2, want, rtol=1e-10, atol=1e-10)
    grad = torch.autograd.grad(layer(x, c).sum(), layer.covariate_weight)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(want.sum(), layer.covariate_weight)[0])
    # A new signature (another number of distinct rows, no grad) is tuned on its own.
    with torch.no_grad():
        layer(x, torch.randn(8, 2, dtype=torch.float64))
    assert len(auto_choices()) == 2 and calls[1] == ["expand", "grouped", "reference", "unfold"]
    assert "8 distinct rows" in auto_choices()[1].signature and "no grad" in auto_choices()[1].signature


def test_candidates_include_the_loop_and_only_back_ends_that_run_here(monkeypatch):
    from covfuse.layers import hybrid_functional as hf

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # the interpreter (on in the test session) does not make triton a CPU candidate: it is for tests only
    assert hf.auto_candidates(cpu, 8, 2) == ["expand", "grouped", "pattern", "unfold", "reference"]
    assert hf.auto_candidates(cpu, 8, 8) == ["expand", "grouped", "unfold", "reference"]
    assert "reference" not in hf.auto_candidates(cpu, 8, 2, loop=False)  # hyper: never the loop
    monkeypatch.setattr(hf.hybrid_triton, "_HAVE_TRITON", True)
    assert hf.auto_candidates(cuda, 64, 8) == ["expand", "grouped", "pattern", "unfold", "triton", "reference"]
    monkeypatch.setattr(hf.hybrid_triton, "_HAVE_TRITON", False)  # a CUDA build without Triton
    assert "triton" not in hf.auto_candidates(cuda, 64, 8)


def test_tuning_picks_the_fastest_and_never_an_unavailable_back_end(monkeypatch):
    """With fake timings the loop is fastest and wins; a candidate that cannot run is dropped, not picked."""
    from covfuse.layers import hybrid_functional as hf

    set_autotune(True)
    fake = {"expand": 3.0, "grouped": 2.0, "pattern": 1.5, "unfold": 4.0, "reference": 1.0, "triton": 0.1}
    monkeypatch.setattr(autotune, "time_candidates", lambda steps, device, repeats=3: {n: fake[n] for n in steps})
    monkeypatch.setattr(hf, "auto_candidates", lambda *a, **k: ["expand", "triton", "grouped", "reference"])
    monkeypatch.delenv("TRITON_INTERPRET")  # triton cannot run on this CPU: its trial call raises
    layer, x, c = _layer_and_batch()
    out = layer(x, c)
    (choice,) = auto_choices()
    assert choice.backend == "reference" and "triton" not in choice.times_ms
    torch.testing.assert_close(out, per_sample_reference(layer, x, c), rtol=1e-10, atol=1e-10)


def test_rule_when_tuning_is_off(monkeypatch):
    set_autotune(False)
    monkeypatch.setattr(autotune, "time_candidates", lambda *a, **k: pytest.fail("tuned while off"))
    layer, x, c = _layer_and_batch()
    layer(x, c)
    (choice,) = auto_choices()
    assert choice.how == "rule" and choice.times_ms == {}
    assert choice.backend == rule_backend(x, 2, layer.weight, 1) == "pattern"


def test_default_is_off_on_cpu_and_the_environment_switches_it(monkeypatch):
    monkeypatch.delenv("COVFUSE_AUTOTUNE", raising=False)
    assert not autotune.autotune_enabled(torch.device("cpu"))
    assert autotune.autotune_enabled(torch.device("cuda"))
    monkeypatch.setenv("COVFUSE_AUTOTUNE", "1")
    assert autotune.autotune_enabled(torch.device("cpu"))
    set_autotune(False)
    assert not autotune.autotune_enabled(torch.device("cpu"))


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_compiled_layer_equals_eager_without_graph_breaks(kind):
    """fullgraph=True fails on any graph break, e.g. the host syncs of grouping rows."""
    torch.manual_seed(9)
    layer = HybridConv2d(3, 4, 3, 2, padding=1, covariate_init="kaiming")
    x = torch.randn(6, 3, 8, 8)
    c = torch.randint(0, 2, (6, 2)).float() if kind == "binary" else torch.randn(6, 2)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = compiled(x, c)
    torch.testing.assert_close(got, layer(x, c), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, per_sample_reference(layer, x, c), rtol=1e-5, atol=1e-5)
    got.square().sum().backward()
    compiled_grad = layer.covariate_weight.grad.clone()
    layer.zero_grad()
    per_sample_reference(layer, x, c).square().sum().backward()
    torch.testing.assert_close(compiled_grad, layer.covariate_weight.grad, rtol=1e-4, atol=1e-5)
