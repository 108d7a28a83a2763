"""`trainer.compile`: a torch.compile'd (inductor, CPU) training step equals the eager step, across two
batch sizes (the recompile with a symbolic batch used to fail in inductor with grouped's input)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from covfuse.layers import FiLM, HybridConv2d, convert
from covfuse.training.config import TrainerConfig
from covfuse.training.module import compile_model

from layers.test_hybrid import per_sample_reference


class Tiny(nn.Module):
    """Two convs (made hybrid), batch norm, FiLM on the pooled features, a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        return self.head(self.features(x)).squeeze(1)


def _step(model, opt, x, c, y):
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.binary_cross_entropy_with_logits(model(x, c), y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return loss.detach(), grads


def test_compiled_step_equals_eager_across_batch_sizes():
    torch.manual_seed(0)
    eager = convert(Tiny(), "all", 2, init="kaiming")
    compiled = compile_model(copy.deepcopy(eager))
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints unchanged
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled)]
    for n, kind in ((6, "binary"), (4, "continuous"), (5, "binary")):  # a last smaller batch recompiles
        x, y = torch.randn(n, 3, 8, 8), torch.randint(0, 2, (n,)).float()
        c = torch.randint(0, 2, (n, 2)).float() if kind == "binary" else torch.randn(n, 2)
        want_loss, want_grads = _step(eager, opts[0], x, c, y)
        got_loss, got_grads = _step(compiled, opts[1], x, c, y)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        for got, want in zip(got_grads, want_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(compiled.parameters(), eager.parameters()):  # three steps later, still the same
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [6, 3])
def test_compiled_film_and_hybrid_without_graph_breaks_match_the_loop(n):
    """fullgraph: no graph break in the hybrid conv or FiLM; compiled output equals the per-sample loop."""
    torch.manual_seed(n)
    hybrid = HybridConv2d(3, 4, 3, 2, padding=1, covariate_init="kaiming")
    film = FiLM(4, 2)
    with torch.no_grad():
        for p in film.parameters():
            p.normal_()
    x, c = torch.randn(n, 3, 6, 6), torch.randn(n, 2)
    f = torch.compile(lambda x, c: film(hybrid(x, c), c), fullgraph=True, backend="aot_eager", dynamic=True)
    torch.testing.assert_close(f(x, c), film(per_sample_reference(hybrid, x, c), c), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", ["hybrid", "film", "daft", "hyper", "duanmu", "mlpcatmlp"])
def test_built_models_trace_in_one_graph(fusion):
    """What `trainer.compile` compiles: a built model with the method at every conv it allows, one graph."""
    from covfuse.models import build

    model = build("vgg-mini", fusion, 2, hybrid_layers="all", hybrid_init="kaiming")
    explained = torch._dynamo.explain(model)(torch.randn(4, 3, 16, 16), torch.randint(0, 2, (4, 2)).float())
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_trainer_compile_is_a_config_key_off_by_default():
    assert TrainerConfig().compile is False and TrainerConfig(compile=True).compile is True
