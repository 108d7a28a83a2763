"""Candidate CPU back-ends for the hybrid conv that keep the batch in one conv, measured against the
existing ones (issue 35, item 5): fwd+bwd, float32, ratio to the plain conv, median of interleaved
rounds, this process's CPU time. Each prototype is checked against the per-sample loop first.
None of them beat the best existing back-end at the VGG16 shapes on the 2-core EPYC
(docs/performance.md), so none is a back-end; they stay here so the comparison can be rerun.

    PYTHONPATH=src python benchmarks/hybrid_cpu_prototypes.py --threads 2 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from covfuse.layers.autotune import cpu_name
from covfuse.layers.hybrid_functional import _IMPLEMENTATIONS, _expand, _mix, unique_rows


def stacked(x, c, w, cw, b, cb, conv, kwargs):
    """expand with the accumulation fused into the conv: [x, s_1 x, ..., s_K x] (N, (K+1)C) convolved
    with [W_0 | W_1 | ... | W_K] (O, (K+1)C) -- (K+1)x FLOPs, no (K+1)O-channel output to sum."""
    n, k = x.shape[0], cw.shape[0]
    coef = torch.cat([c.new_ones(n, 1), c], 1).view(n, k + 1, 1, 1, 1)
    xs = (x.unsqueeze(1) * coef).flatten(1, 2)
    ws = torch.cat([w.unsqueeze(0), cw]).transpose(0, 1).flatten(1, 2)
    return conv(xs, ws, None, **kwargs) + _mix(b, cb, c).view(n, -1, 1, 1)


def expand_bmm(x, c, w, cw, b, cb, conv, kwargs):
    """expand whose per-sample weighted sum of the K+1 outputs is one batched matmul."""
    n, k, out = x.shape[0], cw.shape[0], w.shape[0]
    y = conv(x, torch.cat([w.unsqueeze(0), cw]).flatten(0, 1), None, **kwargs)
    coef = torch.cat([c.new_ones(n, 1), c], 1).unsqueeze(1)
    return torch.bmm(coef, y.reshape(n, k + 1, -1)).view(n, out, *y.shape[2:]) + _mix(b, cb, c).view(n, -1, 1, 1)


def expand_channels_last(x, c, w, cw, b, cb, conv, kwargs):
    return _expand(x.contiguous(memory_format=torch.channels_last), c, w, cw, b, cb, conv, kwargs)


def grouped_channels_last(x, c, w, cw, b, cb, conv, kwargs):
    n = x.shape[0]
    weights = _mix(w, cw, c).flatten(0, 1).contiguous(memory_format=torch.channels_last)
    xi = x.reshape(1, -1, *x.shape[2:]).contiguous(memory_format=torch.channels_last)
    y = conv(xi, weights, None, **{**kwargs, "groups": n}).reshape(n, w.shape[0], *x.shape[2:])
    return y + _mix(b, cb, c).view(n, -1, 1, 1)


def pattern_groups(x, c, w, cw, b, cb, conv, kwargs):
    """Binary rows: pattern p's samples in conv group p, each group padded to the largest count
    (one grouped conv over the patterns, ~1.75x FLOPs at batch 32, K=3)."""
    patterns, inverse, counts = unique_rows(c)
    n, p, m = x.shape[0], patterns.shape[0], int(counts.max())
    order = torch.argsort(inverse, stable=True)
    slot = torch.empty_like(inverse)
    slot[order] = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[inverse[order]]
    pos = slot * p + inverse
    xs = x.new_zeros(m * p, *x.shape[1:]).index_copy(0, pos, x).view(m, p * x.shape[1], *x.shape[2:])
    y = conv(xs, _mix(w, cw, patterns).flatten(0, 1), _mix(b, cb, patterns).flatten(), **{**kwargs, "groups": p})
    return y.view(m * p, w.shape[0], *y.shape[2:]).index_select(0, pos)


def im2col_unfold(x, c, w, cw, b, cb, conv, kwargs):
    """unfold with F.unfold's im2col (backward: F.fold) instead of Tensor.unfold views."""
    n = x.shape[0]
    cols = F.unfold(x, w.shape[2:], padding=kwargs["padding"])
    y = torch.bmm(_mix(w, cw, c).flatten(2), cols).view(n, w.shape[0], *x.shape[2:])
    return y + _mix(b, cb, c).view(n, -1, 1, 1)


def loop_one_matmul(x, c, w, cw, b, cb, conv, kwargs):
    """The per-sample loop with every kernel mixed in one matmul (its gradient: one matmul too)."""
    ws, bs = _mix(w, cw, c).unbind(0), _mix(b, cb, c).unbind(0)
    return torch.cat([conv(xi, wi, bi, **kwargs) for xi, wi, bi in zip(x.split(1), ws, bs)])


PROTOTYPES = {"stacked": stacked, "expand_bmm": expand_bmm, "expand_cl": expand_channels_last,
              "grouped_cl": grouped_channels_last, "pattern_groups": pattern_groups, "im2col": im2col_unfold,
              "loop_1mm": loop_one_matmul}
EXISTING = ("expand", "grouped", "pattern", "unfold", "reference")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, as training)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--shapes", default="64@56,128@28,256@14", help="CHANNELS@SIDE, comma-separated")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU time, batch {args.batch}, "
          f"K={args.k}, median of {args.rounds} interleaved rounds; ratio to the plain conv\n")
    names = list(EXISTING) + list(PROTOTYPES)
    print("| shape | covariates | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    impl = {**_IMPLEMENTATIONS, **PROTOTYPES}
    torch.manual_seed(0)
    for spec in args.shapes.split(","):
        ch, side = map(int, spec.split("@"))
        x = torch.randn(args.batch, ch, side, side, requires_grad=True)
        w = (torch.randn(ch, ch, 3, 3) * 0.02).requires_grad_()
        cw = (torch.randn(args.k, ch, ch, 3, 3) * 0.02).requires_grad_()
        b, cb = torch.randn(ch, requires_grad=True), torch.randn(args.k, ch, requires_grad=True)
        kw = dict(stride=1, padding=1, dilation=1, groups=1)
        for kind in ("binary", "continuous"):
            c = (torch.randint(0, 2, (args.batch, args.k)) if kind == "binary" else torch.randn(args.batch, args.k)).float()
            chosen = [n for n in names if kind == "binary" or n not in ("pattern", "pattern_groups")]
            want = _IMPLEMENTATIONS["reference"](x, c, w, cw, b, cb, F.conv2d, kw)
            steps = {"plain": lambda: F.conv2d(x, w, b, padding=1).sum().backward()}
            for n in chosen:
                got = impl[n](x, c, w, cw, b, cb, F.conv2d, kw)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)  # exact up to float32 rounding
                steps[n] = (lambda f: lambda: f(x, c, w, cw, b, cb, F.conv2d, kw).sum().backward())(impl[n])
            for step in steps.values():
                step()
            times = {n: [] for n in steps}
            for _ in range(args.rounds):
                for n, step in steps.items():
                    start = time.process_time()
                    step()
                    times[n].append(time.process_time() - start)
            ratio = {n: statistics.median(t / p for t, p in zip(times[n], times["plain"])) for n in chosen}
            print(f"| {ch}->{ch} @{side} | {kind} | " + " | ".join(f"{ratio[n]:.2f}x" if n in ratio else "" for n in names)
                  + " |", flush=True)


if __name__ == "__main__":
    main()
