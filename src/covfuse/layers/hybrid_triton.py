"""Per-sample-weight convolution as implicit GEMM in Triton: the `triton` back-end of the hybrid conv.

Sample n is convolved with kernel ``weights[index[n]]`` (one kernel per sample, or one per distinct
covariate row with ``index`` the row number), so a hybrid conv costs one plain conv's arithmetic
instead of `expand`'s (K+1)x or the batch-1 convs of the loop. Three kernels: forward, input
gradient (the transposed conv) and per-sample weight gradient; 1D and 2D run as 3D with unit depth,
and every tensor is addressed through its strides (channels_last needs no copy).

Written by hand because neither cuDNN nor torch has a conv whose weight changes along the batch.
Runs on CUDA; on a CPU only under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the
tests check it exactly without a GPU. Triton ships with torch's CUDA builds; without it
:func:`available` is False and `auto` never considers this back-end.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

_HAVE_TRITON = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run on the CPU interpreter in this process (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


# tl.dot with the kernels' float32 accumulator: float64 inputs give wrong values (checked under the
# interpreter), so the back-end refuses them and `auto` never times it for them.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def available(device: torch.device) -> bool:
    """Whether the `triton` back-end can run on ``device``: CUDA with Triton, or the interpreter on CPU."""
    if not _HAVE_TRITON:
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


if _HAVE_TRITON:
    import triton
    import triton.language as tl

    def _forward_kernel(
        x, w, index, y,
        C_G, O_G, D, H, W, OD, OH, OW, KD, KH, KW,
        SD, SH, SW, PD, PH, PW, DD, DH, DW, GROUPS,
        xs_n, xs_c, xs_d, xs_h, xs_w,
        ws_p, ws_o, ws_c, ws_d, ws_h, ws_w,
        ys_n, ys_c, ys_d, ys_h, ys_w,
        PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        # GEMM per (sample, group): M = output positions, N = output channels, reduction = C/g * k.
        pid_z = tl.program_id(2)
        n = (pid_z // GROUPS).to(tl.int64)
        g = pid_z % GROUPS
        p = tl.program_id(0) * BM + tl.arange(0, BM)
        o = tl.program_id(1) * BN + tl.arange(0, BN)
        od, oh, ow = p // (OH * OW), (p // OW) % OH, p % OW
        kk = KD * KH * KW
        red = C_G * kk
        kernel = w + tl.load(index + n).to(tl.int64) * ws_p
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for r0 in range(0, red, BK):
            r = r0 + tl.arange(0, BK)
            c, rr = r // kk, r % kk
            kd, kh, kw = rr // (KH * KW), (rr // KW) % KH, rr % KW
            i_d = od[:, None] * SD - PD + kd[None, :] * DD
            i_h = oh[:, None] * SH - PH + kh[None, :] * DH
            i_w = ow[:, None] * SW - PW + kw[None, :] * DW
            mask = ((p[:, None] < OD * OH * OW) & (r[None, :] < red) & (i_d >= 0) & (i_d < D)
                    & (i_h >= 0) & (i_h < H) & (i_w >= 0) & (i_w < W))
            a = tl.load(x + n * xs_n + (g * C_G + c[None, :]) * xs_c + i_d * xs_d + i_h * xs_h + i_w * xs_w,
                        mask=mask, other=0.0)
            b = tl.load(kernel + (g * O_G + o[None, :]) * ws_o + c[:, None] * ws_c + kd[:, None] * ws_d
                        + kh[:, None] * ws_h + kw[:, None] * ws_w,
                        mask=(r[:, None] < red) & (o[None, :] < O_G), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        out = y + n * ys_n + (g * O_G + o[None, :]) * ys_c + od[:, None] * ys_d + oh[:, None] * ys_h + ow[:, None] * ys_w
        tl.store(out, acc.to(y.dtype.element_ty), mask=(p[:, None] < OD * OH * OW) & (o[None, :] < O_G))

    def _input_grad_kernel(
        dy, w, index, dx,
        C_G, O_G, D, H, W, OD, OH, OW, KD, KH, KW,
        SD, SH, SW, PD, PH, PW, DD, DH, DW, GROUPS,
        ys_n, ys_c, ys_d, ys_h, ys_w,
        ws_p, ws_o, ws_c, ws_d, ws_h, ws_w,
        xs_n, xs_c, xs_d, xs_h, xs_w,
        PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        # The transposed conv: M = input positions, N = input channels, reduction = O/g * k; an output
        # position contributes only where (input + padding - tap * dilation) is a multiple of the stride.
        pid_z = tl.program_id(2)
        n = (pid_z // GROUPS).to(tl.int64)
        g = pid_z % GROUPS
        q = tl.program_id(0) * BM + tl.arange(0, BM)
        c = tl.program_id(1) * BN + tl.arange(0, BN)
        i_d, i_h, i_w = q // (H * W), (q // W) % H, q % W
        kk = KD * KH * KW
        red = O_G * kk
        kernel = w + tl.load(index + n).to(tl.int64) * ws_p
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for r0 in range(0, red, BK):
            r = r0 + tl.arange(0, BK)
            o, rr = r // kk, r % kk
            kd, kh, kw = rr // (KH * KW), (rr // KW) % KH, rr % KW
            t_d = i_d[:, None] + PD - kd[None, :] * DD
            t_h = i_h[:, None] + PH - kh[None, :] * DH
            t_w = i_w[:, None] + PW - kw[None, :] * DW
            # clamp before dividing so masked-off lanes never form negative offsets
            o_d, o_h, o_w = tl.maximum(t_d, 0) // SD, tl.maximum(t_h, 0) // SH, tl.maximum(t_w, 0) // SW
            mask = ((q[:, None] < D * H * W) & (r[None, :] < red) & (t_d >= 0) & (t_h >= 0) & (t_w >= 0)
                    & (t_d % SD == 0) & (t_h % SH == 0) & (t_w % SW == 0)
                    & (o_d < OD) & (o_h < OH) & (o_w < OW))
            a = tl.load(dy + n * ys_n + (g * O_G + o[None, :]) * ys_c + o_d * ys_d + o_h * ys_h + o_w * ys_w,
                        mask=mask, other=0.0)
            b = tl.load(kernel + (g * O_G + o[:, None]) * ws_o + c[None, :] * ws_c + kd[:, None] * ws_d
                        + kh[:, None] * ws_h + kw[:, None] * ws_w,
                        mask=(r[:, None] < red) & (c[None, :] < C_G), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        out = dx + n * xs_n + (g * C_G + c[None, :]) * xs_c + i_d[:, None] * xs_d + i_h[:, None] * xs_h + i_w[:, None] * xs_w
        tl.store(out, acc.to(dx.dtype.element_ty), mask=(q[:, None] < D * H * W) & (c[None, :] < C_G))

    def _weight_grad_kernel(
        x, dy, dw,
        C_G, O_G, D, H, W, OD, OH, OW, KD, KH, KW,
        SD, SH, SW, PD, PH, PW, DD, DH, DW, GROUPS,
        xs_n, xs_c, xs_d, xs_h, xs_w,
        ys_n, ys_c, ys_d, ys_h, ys_w,
        CHUNK, SPLIT,
        PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        # Sample n's kernel gradient: M = output channels, N = C/g * k, reduction = output positions,
        # split into SPLIT chunks of CHUNK positions (split-K: a large map alone would leave the GPU
        # with N * groups programs) whose partial sums are added atomically.
        # dw is (N, O, C/g * k) contiguous float32, zero-filled.
        pid_z = tl.program_id(2)
        split = pid_z % SPLIT
        pid_z = pid_z // SPLIT
        n = (pid_z // GROUPS).to(tl.int64)
        g = pid_z % GROUPS
        o = tl.program_id(0) * BM + tl.arange(0, BM)
        r = tl.program_id(1) * BN + tl.arange(0, BN)
        kk = KD * KH * KW
        red_c = C_G * kk
        c, rr = r // kk, r % kk
        kd, kh, kw = rr // (KH * KW), (rr // KW) % KH, rr % KW
        positions = OD * OH * OW
        stop = tl.minimum(positions, (split + 1) * CHUNK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for p0 in range(split * CHUNK, stop, BK):
            p = p0 + tl.arange(0, BK)
            od, oh, ow = p // (OH * OW), (p // OW) % OH, p % OW
            a = tl.load(dy + n * ys_n + (g * O_G + o[:, None]) * ys_c + od[None, :] * ys_d + oh[None, :] * ys_h
                        + ow[None, :] * ys_w, mask=(o[:, None] < O_G) & (p[None, :] < stop), other=0.0)
            i_d = od[:, None] * SD - PD + kd[None, :] * DD
            i_h = oh[:, None] * SH - PH + kh[None, :] * DH
            i_w = ow[:, None] * SW - PW + kw[None, :] * DW
            mask = ((p[:, None] < stop) & (r[None, :] < red_c) & (i_d >= 0) & (i_d < D)
                    & (i_h >= 0) & (i_h < H) & (i_w >= 0) & (i_w < W))
            b = tl.load(x + n * xs_n + (g * C_G + c[None, :]) * xs_c + i_d * xs_d + i_h * xs_h + i_w * xs_w,
                        mask=mask, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        out = dw + n * (GROUPS * O_G * red_c) + (g * O_G + o[:, None]) * red_c + r[None, :]
        mask = (o[:, None] < O_G) & (r[None, :] < red_c)
        if SPLIT == 1:
            tl.store(out, acc, mask=mask)
        else:
            tl.atomic_add(out, acc, mask=mask)


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """The three kernels, jitted for the GPU or wrapped for the interpreter (triton decides at decoration)."""
    del interpret  # part of the cache key only: triton.jit reads TRITON_INTERPRET itself
    return tuple(triton.jit(f) for f in (_forward_kernel, _input_grad_kernel, _weight_grad_kernel))


def _as_3d(t: Tensor) -> Tensor:
    """View a 1D/2D conv tensor (N, C, *s) as 3D with unit leading spatial dims (no copy)."""
    while t.dim() < 5:
        t = t.unsqueeze(2)
    return t


def _pad3(values: tuple[int, ...], fill: int) -> tuple[int, int, int]:
    return (fill,) * (3 - len(values)) + tuple(values)


def _block(size: int, low: int = 16, high: int = 64) -> int:
    """A power-of-two tile side at least ``low`` (tl.dot's minimum) and at most ``high``."""
    return max(low, min(high, triton.next_power_of_2(max(1, size))))


def _precision(dtype: torch.dtype) -> str:
    """float32 follows torch's conv setting (TF32 on Ampere+ by default, as cuDNN does); else exact."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"


def _geometry(x: Tensor, weights: Tensor, stride, padding, dilation) -> dict:
    dims = weights.dim() - 3
    ksize = _pad3(tuple(weights.shape[3:]), 1)
    s, p, d = _pad3(tuple(stride), 1), _pad3(tuple(padding), 0), _pad3(tuple(dilation), 1)
    spatial = _pad3(tuple(x.shape[2:]), 1)
    out = tuple((spatial[i] + 2 * p[i] - d[i] * (ksize[i] - 1) - 1) // s[i] + 1 for i in range(3))
    return dict(dims=dims, k=ksize, s=s, p=p, d=d, spatial=spatial, out=out)


def _scalars(geo: dict, c_g: int, o_g: int, groups: int) -> tuple:
    return (c_g, o_g, *geo["spatial"], *geo["out"], *geo["k"], *geo["s"], *geo["p"], *geo["d"], groups)


def _forward(x: Tensor, weights: Tensor, index: Tensor, geo: dict, groups: int) -> Tensor:
    n, o = x.shape[0], weights.shape[1]
    c_g, o_g = weights.shape[2], o // groups
    y = torch.empty((n, o, *geo["out"][3 - geo["dims"]:]), device=x.device, dtype=x.dtype)
    if y.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)
    x5, w6, y5 = _as_3d(x), weights.view(*weights.shape[:3], *geo["k"]), _as_3d(y)
    positions = geo["out"][0] * geo["out"][1] * geo["out"][2]
    bm, bn, bk = _block(positions, high=64), _block(o_g), 32
    grid = (triton.cdiv(positions, bm), triton.cdiv(o_g, bn), n * groups)
    _kernels(interpreting())[0][grid](
        x5, w6, index, y5, *_scalars(geo, c_g, o_g, groups), *x5.stride(), *w6.stride(), *y5.stride(),
        PRECISION=_precision(x.dtype), BM=bm, BN=bn, BK=bk)
    return y


def _input_grad(dy: Tensor, weights: Tensor, index: Tensor, x: Tensor, geo: dict, groups: int) -> Tensor:
    c_g, o_g = weights.shape[2], weights.shape[1] // groups
    dx = torch.empty_like(x)
    dy5, w6, dx5 = _as_3d(dy), weights.view(*weights.shape[:3], *geo["k"]), _as_3d(dx)
    positions = geo["spatial"][0] * geo["spatial"][1] * geo["spatial"][2]
    bm, bn, bk = _block(positions, high=64), _block(c_g), 32
    grid = (triton.cdiv(positions, bm), triton.cdiv(c_g, bn), x.shape[0] * groups)
    _kernels(interpreting())[1][grid](
        dy5, w6, index, dx5, *_scalars(geo, c_g, o_g, groups), *dy5.stride(), *w6.stride(), *dx5.stride(),
        PRECISION=_precision(dy.dtype), BM=bm, BN=bn, BK=bk)
    return dx


# Output positions per weight-gradient program (split-K); a multiple of the reduction tile (32).
WGRAD_CHUNK = 4096


def _weight_grad(x: Tensor, dy: Tensor, weight_shape: torch.Size, geo: dict, groups: int) -> Tensor:
    """Per-sample kernel gradients, (N, O, C/g, *k) in float32."""
    n, o, c_g = x.shape[0], weight_shape[1], weight_shape[2]
    o_g = o // groups
    red_c = c_g * geo["k"][0] * geo["k"][1] * geo["k"][2]
    positions = geo["out"][0] * geo["out"][1] * geo["out"][2]
    split = triton.cdiv(positions, WGRAD_CHUNK)
    dw = (torch.zeros if split > 1 else torch.empty)((n, o, red_c), device=x.device, dtype=torch.float32)
    x5, dy5 = _as_3d(x), _as_3d(dy)
    bm, bn, bk = _block(o_g), _block(red_c), 32
    grid = (triton.cdiv(o_g, bm), triton.cdiv(red_c, bn), n * groups * split)
    _kernels(interpreting())[2][grid](
        x5, dy5, dw, *_scalars(geo, c_g, o_g, groups), *x5.stride(), *dy5.stride(), WGRAD_CHUNK, split,
        PRECISION=_precision(x.dtype), BM=bm, BN=bn, BK=bk)
    return dw.view(n, *weight_shape[1:])


class PerSampleConv(torch.autograd.Function):
    """y[n] = conv(x[n], weights[index[n]]); gradients for ``x`` and ``weights`` (not ``index``)."""

    @staticmethod
    def forward(ctx, x: Tensor, weights: Tensor, index: Tensor, stride, padding, dilation, groups: int) -> Tensor:
        geo = _geometry(x, weights, stride, padding, dilation)
        ctx.save_for_backward(x, weights, index)
        ctx.geo, ctx.groups = geo, groups
        return _forward(x, weights.contiguous(), index, geo, groups)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weights, index = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _input_grad(dy, weights.contiguous(), index, x, ctx.geo, ctx.groups)
        if ctx.needs_input_grad[1]:
            per_sample = _weight_grad(x, dy, weights.shape, ctx.geo, ctx.groups)
            if weights.shape[0] == x.shape[0] and bool((index == torch.arange(x.shape[0], device=index.device)).all()):
                dw = per_sample
            else:  # samples sharing a kernel (one per distinct covariate row) add their gradients
                dw = per_sample.new_zeros(weights.shape).index_add_(0, index, per_sample)
            dw = dw.to(weights.dtype)
        return dx, dw, None, None, None, None, None


def per_sample_conv(x: Tensor, weights: Tensor, index: Tensor, stride, padding, dilation, groups: int) -> Tensor:
    """Convolve sample n of ``x`` with ``weights[index[n]]`` (weights (P, O, C/groups, *k), index (N,) int64)."""
    if not available(x.device):
        raise RuntimeError(
            "the 'triton' hybrid back-end runs on CUDA with Triton installed (or on the CPU under "
            "TRITON_INTERPRET=1, for tests); choose backend='auto' or another back-end")
    if x.dtype not in DTYPES or weights.dtype not in DTYPES:
        raise TypeError(
            f"the 'triton' hybrid back-end computes in float32, float16 or bfloat16, got {x.dtype}; "
            "choose backend='auto' or another back-end")
    return PerSampleConv.apply(x, weights, index, stride, padding, dilation, groups)
