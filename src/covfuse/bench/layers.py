"""Layer benchmark: each hybrid back-end vs a plain conv and vs the per-sample loop, forward + backward,
and `auto` against the best of them on this machine (``auto/best``: above 1, `auto` chose badly).

Shapes are the conv layers of VGG16, ResNet-50 (3x3 and 1x1 bottleneck convs, the 7x7 stem) and a
3D ResNet, at an input side ``size`` (224 on a GPU; smaller on a CPU so one run stays short).
Covariates are binary (few distinct rows: `pattern` applies) or continuous (every row distinct).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from covfuse.bench.timing import interleaved, median_ms, ratio
from covfuse.layers import auto_choices
from covfuse.layers.autotune import clear_choices
from covfuse.layers.hybrid_functional import available_backends
from covfuse.layers.hybrid import HYBRID_FOR_CONV
from covfuse.layers.hyper import HYPER_FOR_CONV


@dataclass(frozen=True)
class Shape:
    net: str
    cin: int
    cout: int
    kernel: int
    stride: int
    spatial: int
    dims: int = 2

    @property
    def label(self) -> str:
        k = "x".join([str(self.kernel)] * self.dims)
        s = f"/{self.stride}" if self.stride > 1 else ""
        return f"{self.net} {self.cin}->{self.cout} k{k}{s} @{self.spatial}{'^3' if self.dims == 3 else ''}"


def shapes(net: str, size: int) -> list[Shape]:
    """The distinct conv shapes of ``net`` at input side ``size`` (one per stage and kind)."""
    if net == "vgg16":
        return [Shape(net, 3, 64, 3, 1, size)] + [
            Shape(net, c, c, 3, 1, max(1, size // f)) for c, f in ((64, 1), (128, 2), (256, 4), (512, 8), (512, 16))
        ]
    if net == "resnet50":
        return [Shape(net, 3, 64, 7, 2, size)] + [
            Shape(net, c, c, 3, 1, max(1, size // f)) for c, f in ((64, 4), (128, 8), (256, 16), (512, 32))
        ] + [Shape(net, 256, 64, 1, 1, max(1, size // 4)), Shape(net, 1024, 256, 1, 1, max(1, size // 16))]
    if net == "resnet3d":
        return [Shape(net, 1, 64, 7, 2, size, 3)] + [
            Shape(net, c, c, 3, 1, max(1, size // f), 3) for c, f in ((64, 4), (128, 8), (256, 16))
        ]
    raise ValueError(f"unknown net {net!r}")


def _step(module: nn.Module, x: torch.Tensor, c: torch.Tensor | None, autocast: torch.dtype | None) -> None:
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        y = module(x) if c is None else module(x, c)
    y.float().sum().backward()


def run(nets: list[str], size: int, batch: int, ks: list[int], kinds: list[str], dtypes: list[str],
        device: str, rounds: int, batch3d: int, size3d: int, loop: bool = True, only: list[str] | None = None,
        echo=print) -> list[dict]:
    """Measure every (shape, K, kind, dtype); print a markdown row per shape, return the JSON rows."""
    torch.manual_seed(0)
    dev = torch.device(device)
    rows = []
    for dtype_name in dtypes:
        autocast = torch.bfloat16 if dtype_name == "bfloat16" else None
        for kind in kinds:
            for k in ks:
                # every back-end that runs natively here (triton on CUDA only), then auto
                backends = [b for b in available_backends(dev) if b != "reference" and (kind == "binary" or b != "pattern")]
                backends.append("auto")
                echo(f"\n{kind} covariates, K={k}, {dtype_name}{' (autocast)' if autocast else ''}, fwd+bwd, "
                     f"ratio to the plain conv: median [min-max] of {rounds} interleaved rounds\n")
                echo("| shape | batch | plain ms | " + " | ".join(backends)
                     + " | auto picks | best | auto/best | loop / auto | hyper / hybrid |")
                echo("|---|---|---|" + "---|" * len(backends) + "---|---|---|---|---|")
                chosen = [s for net in nets for s in shapes(net, size3d if net == "resnet3d" else size)
                          if not only or any(part in s.label for part in only)]
                for shape in chosen:
                    n = batch3d if shape.dims == 3 else batch
                    rows.append(_measure(shape, n, k, kind, dtype_name, autocast, dev, rounds, backends, loop, echo))
    return rows


def _measure(shape: Shape, n: int, k: int, kind: str, dtype_name: str, autocast, dev, rounds: int,
             backends: list[str], loop: bool, echo) -> dict:
    conv_type = {2: nn.Conv2d, 3: nn.Conv3d}[shape.dims]
    conv = conv_type(shape.cin, shape.cout, shape.kernel, stride=shape.stride, padding=shape.kernel // 2).to(dev)
    x = torch.randn(n, shape.cin, *([shape.spatial] * shape.dims), device=dev, requires_grad=shape.cin > 3)
    c = (torch.randint(0, 2, (n, k)) if kind == "binary" else torch.randn(n, k)).float().to(dev)
    variants = {"plain": lambda: _step(conv, x, None, autocast)}
    names = backends + (["reference"] if loop else [])
    layers = {b: HYBRID_FOR_CONV[conv_type].from_conv(conv, k, init="kaiming", backend=b) for b in names}
    for b in names:
        variants[b] = (lambda layer: lambda: _step(layer, x, c, autocast))(layers[b])
    # hyper at the same placement and back-end setting: the hypernetwork (K -> 8 -> kernels) in place of W_j
    hyper = HYPER_FOR_CONV[conv_type].from_conv(conv, k, width=8, depth=1).to(dev)
    with torch.no_grad():
        hyper.hyper_weight.normal_(0, 0.01)
    variants["hyper"] = lambda: _step(hyper, x, c, autocast)
    failed = {}
    for b in names:  # a back-end that fails here (e.g. a Triton kernel the GPU cannot build) is a row note, not a crash
        if b == "auto":
            continue
        try:
            variants[b]()
        except Exception as e:  # noqa: BLE001 - any failure of one candidate must not end the benchmark
            failed[b] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            del variants[b]
    names = [b for b in names if b not in failed]
    clear_choices()
    samples = interleaved(variants, rounds, dev)
    picked = [ch for ch in auto_choices() if ch.signature.startswith("HybridConv")]
    auto = picked[-1].backend if picked else "?"
    how = picked[-1].how if picked else "?"
    ratios = {b: ratio(samples, b, "plain") for b in names}
    # the fastest explicit back-end here (the loop included when timed), and auto against it
    best = min((b for b in names if b != "auto"), key=lambda b: ratios[b].median)
    auto_over_best = ratio(samples, "auto", best)
    loop_over_auto = ratio(samples, "reference", "auto") if loop and "reference" in samples else None
    hyper_over_hybrid = ratio(samples, "hyper", "auto")
    hyper_picks = [ch.backend for ch in auto_choices() if ch.signature.startswith("HyperConv")]
    cells = " | ".join(ratios[b].spread() if b in ratios else "failed" for b in backends)
    for b, why in failed.items():
        echo(f"  ({b} failed at {shape.label}: {why})")
    echo(f"| {shape.label} | {n} | {median_ms(samples['plain']):.1f} | {cells} | {auto} ({how}) | {best} | "
         f"{auto_over_best.spread()} | "
         f"{'' if loop_over_auto is None else loop_over_auto.spread()} | {hyper_over_hybrid.spread()} "
         f"({hyper_picks[-1] if hyper_picks else '?'}) |")
    return {
        "shape": shape.label, "net": shape.net, "in": shape.cin, "out": shape.cout, "kernel": shape.kernel,
        "stride": shape.stride, "spatial": shape.spatial, "dims": shape.dims, "batch": n, "k": k, "kind": kind,
        "dtype": dtype_name, "plain_ms": round(median_ms(samples["plain"]), 3),
        "ratio_to_plain": {b: r.as_dict() for b, r in ratios.items()}, "failed": failed,
        "auto_choice": auto, "auto_how": how, "best": best, "auto_over_best": auto_over_best.as_dict(),
        "loop_over_auto": None if loop_over_auto is None else loop_over_auto.as_dict(),
        "hyper_over_hybrid": hyper_over_hybrid.as_dict(), "hyper_choice": hyper_picks[-1] if hyper_picks else None,
    }
