"""Forward+backward time of HybridConv2d back-ends relative to nn.Conv2d and to the per-sample loop.

Run: .venv/bin/python benchmarks/layers.py [--batch 32] [--k 3] [--device cpu] [--continuous]
Prints a markdown table measured in one run (VGG16 layer shapes, 3x3 convs, padding 1).
Ratios are what matter: hybrid/plain (target for auto: <= 1.15 at every shape) and loop/hybrid.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils import benchmark

from covfuse.layers import HybridConv2d, choose_backend

SHAPES = [(3, 64, 112), (64, 64, 56), (128, 128, 28), (256, 256, 14)]  # (in, out, spatial)
BACKENDS = ["expand", "grouped", "pattern", "auto"]


def _step(layer: nn.Module, x: torch.Tensor, c: torch.Tensor | None) -> None:
    y = layer(x) if c is None else layer(x, c)
    y.sum().backward()


def _time(layer: nn.Module, x: torch.Tensor, c: torch.Tensor | None, number: int) -> float:
    """Seconds per forward+backward, averaged over ``number`` calls (one sample of a round)."""
    timer = benchmark.Timer(stmt="step(layer, x, c)", globals={"step": _step, "layer": layer, "x": x, "c": c})
    return timer.timeit(number).mean


def _measure(variants: dict[str, tuple[nn.Module, torch.Tensor | None]], x: torch.Tensor, rounds: int, number: int) -> dict[str, float]:
    """Best-of-``rounds`` time per variant, the variants interleaved within each round, so that a
    slow spell of a shared machine hits all of them rather than one (ratios stay comparable)."""
    for layer, c in variants.values():
        _step(layer, x, c)  # warm-up (allocator, oneDNN primitive cache)
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, (layer, c) in variants.items():
            best[name] = min(best[name], _time(layer, x, c, number))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--continuous", action="store_true", help="Gaussian covariates instead of binary")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of them counts")
    parser.add_argument("--number", type=int, default=2, help="calls averaged per round")
    args = parser.parse_args()
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    kind = "continuous" if args.continuous else "binary"
    print(f"HybridConv2d fwd+bwd / nn.Conv2d, batch {args.batch}, K={args.k} {kind}, {device}, "
          f"{dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| shape | plain ms | " + " | ".join(BACKENDS) + " | auto picks | loop / auto |")
    print("|---|---|" + "---|" * len(BACKENDS) + "---|---|")
    for cin, cout, size in SHAPES:
        x = torch.randn(args.batch, cin, size, size, device=device, dtype=dtype, requires_grad=True)
        c = torch.randn(args.batch, args.k) if args.continuous else torch.randint(0, 2, (args.batch, args.k))
        c = c.to(device=device, dtype=torch.float32)
        conv = nn.Conv2d(cin, cout, 3, padding=1).to(device, dtype)
        variants: dict[str, tuple[nn.Module, torch.Tensor | None]] = {"plain": (conv, None)}
        for backend in [*BACKENDS, "reference"]:
            variants[backend] = (HybridConv2d.from_conv(conv, args.k, init="kaiming", backend=backend), c)
        times = _measure(variants, x, args.rounds, args.number)
        plain = times["plain"]
        ratios = [times[b] / plain for b in BACKENDS]
        picked = choose_backend(x, c, conv.weight, 1)
        cells = " | ".join(f"{r:.2f}x" for r in ratios)
        print(f"| {cin}->{cout} @{size} | {plain * 1e3:.1f} | {cells} | {picked} | {times['reference'] / times['auto']:.1f}x |")


if __name__ == "__main__":
    main()
