"""What tuning `auto` costs: per VGG16 shape, the first fwd+bwd of a HybridConv2d (which tunes: every
candidate warmed up and timed) against a steady fwd+bwd, in this process's CPU time, with an empty
tuning cache (a temporary COVFUSE_CACHE_DIR, so nothing is read from or written to the user's).

    PYTHONPATH=src python benchmarks/autotune_cost.py --size 56 --batch 32 --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from covfuse.bench.layers import shapes
from covfuse.layers import HybridConv2d
from covfuse.layers.autotune import auto_choices, clear_choices, cpu_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, as training)")
    p.add_argument("--shapes", default="3->64,64->64,128->128,256->256", help="label substrings to keep")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["COVFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="covfuse-tune-cost-")
    os.environ.pop("COVFUSE_AUTOTUNE", None)
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU time; batch {args.batch}, "
          f"K={args.k}\n")
    print("| shape | covariates | steady fwd+bwd ms | first call ms | tuning cost / steady step | choice (runs per candidate) |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    keep = args.shapes.split(",")
    for shape in [s for s in shapes("vgg16", args.size) if any(k in s.label for k in keep)]:
        for kind in ("binary", "continuous"):
            layer = HybridConv2d(shape.cin, shape.cout, 3, args.k, padding=1, covariate_init="kaiming")
            x = torch.randn(args.batch, shape.cin, shape.spatial, shape.spatial, requires_grad=shape.cin > 3)
            c = (torch.randint(0, 2, (args.batch, args.k)) if kind == "binary" else torch.randn(args.batch, args.k)).float()

            def step() -> float:
                start = time.process_time()
                layer(x, c).sum().backward()
                return (time.process_time() - start) * 1e3

            clear_choices()
            first = step()
            steady = statistics.median(step() for _ in range(3))
            (choice,) = auto_choices()
            runs = ", ".join(f"{b} {n}" for b, n in choice.runs.items())
            print(f"| {shape.label} | {kind} | {steady:.1f} | {first:.1f} | {(first - steady) / steady:.1f} | "
                  f"{choice.backend} ({runs}) |", flush=True)


if __name__ == "__main__":
    main()
