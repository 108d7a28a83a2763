"""The `triton` hybrid back-end against the per-sample loop on this machine's device: fp32 (TF32 off, so
exact to rounding) and bf16 autocast, outputs and gradients, at small shapes of every kind (2D/3D,
stride, padding, dilation, groups, bias, binary and continuous). Prints one line per case and exits 1
on a mismatch. On a CPU it needs TRITON_INTERPRET=1 (the dry run of benchmarks/gpu_check.sh).

    python benchmarks/triton_check.py [--device cuda]
    TRITON_INTERPRET=1 python benchmarks/triton_check.py --device cpu --dry --batch 3
"""
from __future__ import annotations

import argparse
import sys

import torch

from covfuse.layers import HybridConv2d, HybridConv3d

CASES = [  # (class, in, out, kernel, options, input spatial)
    (HybridConv2d, 16, 32, 3, dict(padding=1), (20, 18)),
    (HybridConv2d, 3, 64, 7, dict(stride=2, padding=3), (33, 33)),
    (HybridConv2d, 32, 32, 3, dict(padding=2, dilation=2, groups=4, bias=False), (15, 15)),
    (HybridConv2d, 64, 16, 1, dict(), (9, 9)),
    (HybridConv3d, 1, 16, 7, dict(stride=2, padding=3), (17, 17, 17)),
    (HybridConv3d, 8, 8, 3, dict(padding=1, stride=(1, 2, 2)), (7, 9, 9)),
]


# the interpreter's dry run (CPU): narrow layers, small maps, float32 only (it emulates bf16 very slowly)
DRY_CASES = [
    (HybridConv2d, 4, 8, 3, dict(padding=1), (9, 8)),
    (HybridConv2d, 3, 8, 7, dict(stride=2, padding=3), (11, 11)),
    (HybridConv2d, 8, 8, 3, dict(padding=2, dilation=2, groups=4, bias=False), (7, 7)),
    (HybridConv3d, 1, 8, 7, dict(stride=2, padding=3), (7, 7, 7)),
]


def check(device: str, batch: int, k: int, dry: bool = False) -> bool:
    ok = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as fp32
    for cls, cin, cout, ks, opts, spatial in DRY_CASES if dry else CASES:
        for kind in ("binary", "continuous"):
            for autocast in (False,) if dry else (False, True):
                torch.manual_seed(0)
                ref = cls(cin, cout, ks, k, covariate_init="kaiming", backend="reference", **opts).to(device)
                tri = cls(cin, cout, ks, k, covariate_init="kaiming", backend="triton", **opts).to(device)
                tri.load_state_dict(ref.state_dict())
                x = torch.randn(batch, cin, *spatial, device=device, requires_grad=True)
                c = (torch.randint(0, 2, (batch, k)) if kind == "binary" else torch.randn(batch, k)).float().to(device)
                outs = []
                for layer in (ref, tri):
                    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                        y = layer(x, c)
                    g = torch.autograd.grad(y.float().square().sum(), [x, *layer.parameters()])
                    outs.append([y.float(), *g])
                tol = 3e-2 if autocast else 1e-3
                errs = [((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item() for a, b in zip(outs[1], outs[0])]
                good = max(errs) <= tol
                ok &= good
                print(f"{'ok  ' if good else 'FAIL'} {cls.__name__} {cin}->{cout} k{ks} {opts} {kind} "
                      f"{'bf16' if autocast else 'fp32'}: max relative error {max(errs):.1e} (tolerance {tol:.0e})",
                      flush=True)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--dry", action="store_true", help="small float32 cases only (the CPU interpreter)")
    args = p.parse_args()
    return 0 if check(args.device, args.batch, args.k, args.dry) else 1


if __name__ == "__main__":
    sys.exit(main())
