"""Functional core of the hybrid convolution: sample i is convolved with W_0 + sum_j s_ij W_j.

Six exact back-ends compute the same function (outputs and gradients):

- ``reference``: the per-sample loop, kept as the ground truth for tests.
- ``expand``: linearity, conv(x, W_0 + sum s W) = conv(x, W_0) + sum s conv(x, W_j); one dense conv
  with (K+1)x output channels, then a per-sample weighted sum. (K+1)x FLOPs, no batch loop.
- ``grouped``: per-sample kernels mixed by a matmul and applied by one grouped conv with
  ``groups = N * groups`` (CondConv's trick, Yang et al. 2019). 1x FLOPs; speed depends on how well
  the library handles large group counts.
- ``pattern``: one dense conv per distinct covariate row (binary covariates give at most 2**K
  patterns), the batch permuted so each pattern is contiguous. 1x FLOPs, P small convs.
- ``unfold``: im2col per sample and one batched GEMM with each sample's kernel. 1x FLOPs, no batch
  loop, columns C*k^d times the input's size; traceable for any shapes (torch.compile).
- ``triton``: an implicit-GEMM Triton kernel whose weight pointer follows the sample or its
  distinct row (:mod:`covfuse.layers.hybrid_triton`). 1x FLOPs, no copies; CUDA only.

``auto`` times the candidates once per call signature and machine and keeps the fastest
(:mod:`covfuse.layers.autotune`: on by default on every device, remembered on disk), or, with
tuning off, follows the rule in :func:`rule_backend` (docs/performance.md). Row grouping has no
derivative in the covariates, so when they require grad (attribution to covariates) `pattern`
and `auto` compute the same function with a per-row back-end; while tracing for torch.compile or
capturing a CUDA graph `auto` does too, since grouping rows needs a host sync.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from covfuse.layers import autotune, hybrid_triton

BACKENDS = ("reference", "expand", "grouped", "pattern", "unfold", "triton", "auto")
_CONV: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# `auto` uses `pattern` when the batch has at most this many distinct covariate rows
# (2**3 binary covariates) and each pattern gets a few samples on average.
MAX_AUTO_PATTERNS = 8


def _mix(base: Tensor, covariate_part: Tensor, coefficients: Tensor) -> Tensor:
    """base + sum_j coefficients[..., j] * covariate_part[j], for a (K,) or (N, K) coefficient tensor."""
    mixed = (coefficients @ covariate_part.flatten(1)).view(*coefficients.shape[:-1], *base.shape)
    return base + mixed


def _reference(x, c, w, cw, b, cb, conv, kwargs) -> Tensor:
    outs = []
    for i in range(x.shape[0]):
        bias = None if b is None else _mix(b, cb, c[i])
        outs.append(conv(x[i : i + 1], _mix(w, cw, c[i]), bias, **kwargs))
    return torch.cat(outs)


def _expand(x, c, w, cw, b, cb, conv, kwargs) -> Tensor:
    k, groups = cw.shape[0], kwargs["groups"]
    out_ch = w.shape[0]
    # Stack [W_0, W_1..W_K] so each conv group keeps its own K+1 blocks of O/groups filters.
    stacked = torch.cat([w.unsqueeze(0), cw]).unflatten(1, (groups, out_ch // groups))
    weight = stacked.transpose(0, 1).reshape((k + 1) * out_ch, *w.shape[1:])
    bias = None
    if b is not None:
        bias = torch.cat([b.unsqueeze(0), cb]).unflatten(1, (groups, out_ch // groups)).transpose(0, 1).flatten()
    y = conv(x, weight, bias, **kwargs)
    y = y.unflatten(1, (groups, k + 1, out_ch // groups))  # (N, g, K+1, O/g, *spatial)
    coef = torch.cat([c.new_ones(c.shape[0], 1), c], dim=1).to(y.dtype)
    coef = coef.view(c.shape[0], 1, k + 1, *([1] * (y.dim() - 3)))
    return (y * coef).sum(dim=2).flatten(1, 2)


def _grouped(x, c, w, cw, b, cb, conv, kwargs) -> Tensor:
    n, groups = x.shape[0], kwargs["groups"]
    weights = _mix(w, cw, c)  # (N, O, C/g, *k)
    y = conv(x.reshape(1, -1, *x.shape[2:]), weights.flatten(0, 1), None, **{**kwargs, "groups": n * groups})
    y = y.view(n, w.shape[0], *y.shape[2:])
    if b is not None:
        y = y + _mix(b, cb, c).view(n, -1, *([1] * (y.dim() - 2))).to(y.dtype)
    return y


class _GatherChunks(torch.autograd.Function):
    """Split ``x`` into the row sets ``index[k]`` (one gather per chunk, one copy of ``x`` in all).

    Written by hand because autograd's backward of ``index_select`` zero-fills a full-size tensor
    per chunk and scatter-adds into it; here the row sets partition the batch, so backward writes
    each chunk's gradient straight into its rows of one uninitialised tensor.
    """

    @staticmethod
    def forward(ctx, x: Tensor, *index: Tensor):
        ctx.save_for_backward(*index)
        ctx.shape = x.shape
        return tuple(x.index_select(0, i) for i in index)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        out = grads[0].new_empty(ctx.shape)
        for i, g in zip(ctx.saved_tensors, grads):
            out.index_copy_(0, i, g)
        return (out, *([None] * len(grads)))


class _ScatterChunks(torch.autograd.Function):
    """Inverse of :class:`_GatherChunks`: place chunk k at rows ``index[k]`` of one output tensor."""

    @staticmethod
    def forward(ctx, index: tuple[Tensor, ...], *chunks: Tensor) -> Tensor:
        ctx.index = index
        n = sum(c.shape[0] for c in chunks)
        out = torch.empty((n, *chunks[0].shape[1:]), dtype=chunks[0].dtype, device=chunks[0].device,
                          memory_format=_memory_format(chunks[0]))
        for i, c in zip(index, chunks):
            out.index_copy_(0, i, c)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (None, *(grad.index_select(0, i) for i in ctx.index))


def _memory_format(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _pattern(x, c, w, cw, b, cb, conv, kwargs, rows: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    patterns, inverse, counts = unique_rows(c) if rows is None else rows
    # All pattern kernels in one matmul; unbind's backward stacks the P gradients in one op.
    weights = _mix(w, cw, patterns).unbind(0)
    biases = [None] * len(weights) if b is None else _mix(b, cb, patterns).unbind(0)
    if len(weights) == 1:
        return conv(x, weights[0], biases[0], **kwargs)
    if bool((inverse[1:] >= inverse[:-1]).all()):  # rows already grouped by pattern: no copies
        chunks = x.split(counts.tolist())
        return torch.cat([conv(chunk, wp, bp, **kwargs) for chunk, wp, bp in zip(chunks, weights, biases)])
    rows = tuple(torch.argsort(inverse, stable=True).split(counts.tolist()))
    chunks = _GatherChunks.apply(x, *rows)
    outs = [conv(chunk, wp, bp, **kwargs) for chunk, wp, bp in zip(chunks, weights, biases)]
    return _ScatterChunks.apply(rows, *outs)


def _explicit_padding(x: Tensor, w: Tensor, kwargs: dict) -> tuple[Tensor, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``x`` (padded on the far side where 'same' needs an odd total) and the stride, symmetric
    padding and dilation as tuples, for back-ends that compute the conv geometry themselves."""
    dims = w.dim() - 2
    tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims  # noqa: E731
    stride, dilation, padding = tup(kwargs["stride"]), tup(kwargs["dilation"]), kwargs["padding"]
    if padding == "valid":
        padding = (0,) * dims
    elif padding == "same":  # torch's rule: total d*(k-1), the odd extra on the far side
        totals = [d * (k - 1) for d, k in zip(dilation, w.shape[2:])]
        extra = [t % 2 for t in totals]
        if any(extra):
            x = F.pad(x, [v for e in reversed(extra) for v in (0, e)])
        padding = tuple(t // 2 for t in totals)
    return x, stride, tup(padding), dilation


def _unfold(x, c, w, cw, b, cb, conv, kwargs) -> Tensor:
    """im2col per sample, then one batched GEMM with each sample's mixed kernel (1x FLOPs, no loop);
    the columns cost C*k^d times the input's memory, so it pays at small maps and narrow layers."""
    n, groups, dims = x.shape[0], kwargs["groups"], w.dim() - 2
    x, stride, padding, dilation = _explicit_padding(x, w, kwargs)
    weights = _mix(w, cw, c)  # (N, O, C/g, *k)
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    cols = F.pad(x, [v for p in reversed(padding) for v in (p, p)]).to(dtype)
    for axis, (k, s, d) in enumerate(zip(w.shape[2:], stride, dilation)):
        # a window of the dilated extent, then every d-th tap: (N, C, *out, *k)
        cols = cols.unfold(2 + axis, (k - 1) * d + 1, s)
        if d > 1:
            cols = cols[..., ::d]
    out_spatial = cols.shape[2 : 2 + dims]
    # (N, C, *out, *k) -> (N, g, C/g * k, L)
    cols = cols.movedim(tuple(range(2, 2 + dims)), tuple(range(2 + dims, 2 + 2 * dims)))
    cols = cols.reshape(n, groups, -1, out_spatial.numel())
    y = torch.matmul(weights.to(dtype).reshape(n, groups, w.shape[0] // groups, -1), cols)
    y = y.reshape(n, w.shape[0], *out_spatial)
    if b is not None:
        y = y + _mix(b, cb, c).view(n, -1, *([1] * dims)).to(y.dtype)
    return y


def _triton(x, c, w, cw, b, cb, conv, kwargs, rows: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """The Triton implicit-GEMM conv (:mod:`covfuse.layers.hybrid_triton`): one kernel per distinct
    covariate row when ``rows`` are given (binary covariates), else one per sample."""
    dims = w.dim() - 2
    x, stride, padding, dilation = _explicit_padding(x, w, kwargs)
    if rows is None:
        coefficients, index = c, torch.arange(x.shape[0], device=x.device)
    else:
        coefficients, index = rows[0], rows[1]
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    weights = _mix(w, cw, coefficients).to(dtype)
    y = hybrid_triton.per_sample_conv(x.to(dtype), weights, index, stride, padding, dilation, kwargs["groups"])
    if b is not None:
        bias = _mix(b, cb, coefficients).index_select(0, index) if rows is not None else _mix(b, cb, c)
        y = y + bias.view(x.shape[0], -1, *([1] * dims)).to(y.dtype)
    return y


_IMPLEMENTATIONS = {"reference": _reference, "expand": _expand, "grouped": _grouped, "pattern": _pattern,
                    "unfold": _unfold, "triton": _triton}


def available_backends(device: torch.device) -> tuple[str, ...]:
    """The explicit back-ends that run natively on ``device`` (`triton` on CUDA only: on a CPU it runs
    only under Triton's interpreter, for tests), the ones `auto` and `covfuse bench` consider."""
    return tuple(b for b in BACKENDS if b != "auto"
                 and (b != "triton" or (device.type == "cuda" and hybrid_triton.available(device))))


def unique_rows(covariates: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct covariate rows, each sample's row number among them, and how often each occurs."""
    return torch.unique(covariates, dim=0, return_inverse=True, return_counts=True)


def choose_backend(x: Tensor, covariates: Tensor, weight: Tensor, groups: int = 1) -> str:
    """The back-end the measured rule picks for this call (what `auto` uses when it does not tune)."""
    return rule_backend(x, unique_rows(covariates)[0].shape[0], weight, groups)


def rule_backend(x: Tensor, num_patterns: int, weight: Tensor, groups: int) -> str:
    """`auto`'s fallback where it does not time (tuning off, tracing, covariates that need gradients), from CPU
    measurements: float32 fwd+bwd, batch 32, K=3, VGG16 shapes (docs/performance.md). Measured at
    1 thread on the 2-core development VM of earlier sessions (CPU model not recorded) and checked
    at 2 threads (torch's default there, as in training) on an AMD EPYC with AVX-512, 2 cores,
    2026-12, where it matched the tuned choice at every shape down to 256@14 except, in some runs,
    the 3-channel input. It does not know the machine's load: on busy cores, or CPUs where batch-1 convs are slow
    (another EPYC, AVX2, issue 35), the back-ends that split the batch (pattern, the loop) lose by
    up to 5x, which is why `auto` tunes by default.

    With few distinct covariate rows (binary covariates, K <= 3) the pattern form is about 1x a
    plain conv down to 14x14 maps. With continuous covariates every row is distinct; then on CPU
    the grouped conv (CondConv's trick) is fastest at mid-sized layers, the per-sample loop at wide
    layers on small maps and im2col + one batched GEMM (`unfold`) at narrow inputs. On GPUs grouped
    convs with thousands of groups are known to be slow in cuDNN for wide layers, so there the rule
    uses expand (dense, (K+1)x FLOPs) beyond narrow inputs.
    """
    n = x.shape[0]
    if n > 1 and num_patterns <= min(MAX_AUTO_PATTERNS, max(1, n // 2)):
        return "pattern"
    in_channels = weight.shape[1] * groups
    if x.device.type == "cpu":
        # Every row distinct, 2D: the per-sample loop beats the many-group conv at wide layers on
        # small maps (old VM, 1 thread: 1.8x vs 2.4x a plain conv at 256@14, 2.8x vs 3.6x at 512@7;
        # EPYC, 2 threads: 1.9-2.0x vs 2.7-2.9x at 256@14). At the 3-channel input `unfold` and the
        # loop trade places from run to run on the EPYC at 2 threads (1.1x vs 1.7x, then 0.6-0.7x vs
        # 0.55-0.6x; the old VM's loop: 0.6x at 1 thread), and on issue 35's AVX2 EPYC the loop lost
        # 4.7x to unfold's 0.63x, so the rule takes `unfold`, never far from the best. Grouped wins
        # in between. On maps of at most 4x4 all lose to dense expand (4.8x vs 8.5-9.7x at 512@3, old VM).
        positions = x.shape[2] * x.shape[3] if x.dim() == 4 else None
        if positions is not None and positions <= 16 and in_channels > 16:
            return "expand"
        if positions is not None and in_channels <= 16:
            return "unfold"
        if positions is not None and in_channels >= 256 and positions <= 196:
            return "reference"
        return "grouped"
    return "grouped" if in_channels <= 16 else "expand"


def traced_backend(x: Tensor, w: Tensor, groups: int) -> str:
    """`auto`'s back-end while tracing for torch.compile or capturing a CUDA graph: no host sync
    (torch.unique, .tolist()) and no timing, so one that treats every row on its own (exact for any
    covariates), chosen by the rule. Not the per-sample loop, which a tracer would unroll into one
    conv per sample, and not `grouped`: once the batch size changes, torch.compile retraces with a
    symbolic batch, and inductor cannot order the strides of grouped's (1, N*C, ...) input
    ("InductorError: cannot determine truth value of Relational"; a Python check cannot tell a
    symbolic batch from a fixed one while dynamo traces). `unfold` (im2col + batched GEMM, 1x FLOPs)
    has no batch-dependent conv groups and compiles for any shapes."""
    backend = rule_backend(x, x.shape[0], w, groups)
    return "unfold" if backend in ("reference", "grouped") else backend


def _signature(x: Tensor, w: Tensor, kwargs: dict, num_patterns: int, layer: str = "HybridConv") -> str:
    dims = w.dim() - 2
    spatial = "x".join(map(str, x.shape[2:]))
    stride = kwargs["stride"] if isinstance(kwargs["stride"], (tuple, list)) else (kwargs["stride"],) * dims
    text = (f"{layer}{dims}d {w.shape[1] * kwargs['groups']}->{w.shape[0]} k{'x'.join(map(str, w.shape[2:]))}"
            f"{'' if set(stride) == {1} else ' stride ' + 'x'.join(map(str, stride))} @{spatial}, "
            f"batch {x.shape[0]}, {num_patterns} distinct rows, "
            f"{x.device.type} {str(x.dtype).removeprefix('torch.')}")
    if torch.is_autocast_enabled(x.device.type):
        text += f" autocast {str(torch.get_autocast_dtype(x.device.type)).removeprefix('torch.')}"
    return text + ("" if torch.is_grad_enabled() else ", no grad")


def auto_candidates(device: torch.device, batch: int, num_patterns: int, loop: bool = True,
                    dtype: torch.dtype = torch.float32) -> list[str]:
    """The back-ends `auto` times for a call: every exact one that runs natively on ``device``
    (`triton` only on CUDA), `pattern` only when rows repeat, and the per-sample loop unless the
    caller rules it out (``loop=False``), since batch-1 convs can win (small maps on CPU, the 3D stem
    on a GPU). Timing them all is what keeps `auto` within noise of the best."""
    names = [b for b in available_backends(device) if b != "reference"
             and (b != "triton" or dtype in hybrid_triton.DTYPES)]  # float64 stays off triton
    if num_patterns >= batch:
        names.remove("pattern")
    return names + (["reference"] if loop else [])


# Back-ends that split the batch into several convs (slow where small batches are): timed last,
# and dropped after their warm-up when that is already far behind (autotune.measure).
SPLITS_BATCH = frozenset({"pattern", "reference"})


def _tune(args: tuple, rows: tuple[Tensor, Tensor, Tensor], candidates: list[str]) -> autotune.Timing:
    """Each candidate's time per call (forward, + backward under grad mode) on detached copies."""
    x, c, w, cw, b, cb, conv, kwargs = args
    grad = torch.is_grad_enabled()
    leaves = [t.detach().requires_grad_(grad and t.requires_grad) for t in (x, w, cw, b, cb) if t is not None]
    wanted = [t for t in leaves if t.requires_grad]
    xd, wd, cwd = leaves[0], leaves[1], leaves[2]
    bd, cbd = (leaves[3], leaves[4]) if b is not None else (None, None)
    targs = (xd, c.detach(), wd, cwd, bd, cbd, conv, kwargs)
    grad_out: list[Tensor] = []

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            out = _call(name, targs, rows)
            if wanted:
                if not grad_out:  # not random: tuning must leave the caller's random stream alone
                    grad_out.append(torch.ones_like(out))
                torch.autograd.grad(out, wanted, grad_out[0])
        return run

    # 1x-FLOP back-ends first, so the early drops can save the (K+1)x-FLOP expand and the splitters
    order = sorted(candidates, key=lambda n: (n in SPLITS_BATCH, n == "expand"))
    return autotune.measure({name: step(name) for name in order}, x.device, SPLITS_BATCH)


def _layout(x: Tensor) -> str:
    if x.is_contiguous():
        return "contiguous"
    for fmt, name in ((torch.channels_last, "channels_last"), (torch.channels_last_3d, "channels_last_3d")):
        if x.dim() == (4 if name == "channels_last" else 5) and x.is_contiguous(memory_format=fmt):
            return name
    return "strided"


def _auto(args: tuple, rows: tuple[Tensor, Tensor, Tensor] | None = None, layer: str = "HybridConv",
          loop: bool = True) -> tuple[str, tuple[Tensor, Tensor, Tensor] | None]:
    """`auto`'s back-end for this call and, when it needed them, the distinct covariate rows
    (``rows``: given by a caller whose mixing coefficients are a function of other rows, as hyper's;
    ``loop=False``: never the per-sample loop, whose rule choice becomes `grouped`)."""
    x, c, w, cw, b, cb, conv, kwargs = args
    groups = kwargs["groups"]
    if not autotune.can_tune():
        return traced_backend(x, w, groups), None
    rows = unique_rows(c) if rows is None else rows
    num_patterns = rows[0].shape[0]
    key = (conv, tuple(x.shape), x.dtype, x.device, x.is_contiguous(), tuple(w.shape), cw.shape[0], loop, w.dtype,
           repr(kwargs), b is not None, num_patterns, torch.is_grad_enabled(), torch.is_autocast_enabled(x.device.type),
           torch.get_autocast_dtype(x.device.type))
    choice = autotune.lookup(key)
    if choice is None:
        signature = _signature(x, w, kwargs, num_patterns, layer)
        note = "tuning off"
        if autotune.autotune_enabled(x.device):
            autocast = torch.is_autocast_enabled(x.device.type)
            dtype = torch.get_autocast_dtype(x.device.type) if autocast else torch.promote_types(x.dtype, w.dtype)
            candidates = auto_candidates(x.device, x.shape[0], num_patterns, loop, dtype)
            disk_key = (f"{signature} | {_layout(x)} | K {cw.shape[0]} | {sorted(kwargs.items())} | "
                        f"bias {b is not None} | weight {str(w.dtype).removeprefix('torch.')} | loop {loop}")
            rows_d = tuple(r.detach() for r in rows)
            choice = autotune.decide(x.device, disk_key, signature, candidates, lambda: _tune(args, rows_d, candidates))
            note = "every candidate failed"
        if choice is None:
            backend = rule_backend(x, num_patterns, w, groups)
            choice = autotune.AutoChoice("grouped" if backend == "reference" and not loop else backend, "rule", signature,
                                         note=note)
        autotune.remember(key, choice)
    return choice.backend, rows


def hybrid_conv(
    x: Tensor,
    covariates: Tensor,
    weight: Tensor,
    covariate_weight: Tensor,
    bias: Tensor | None = None,
    covariate_bias: Tensor | None = None,
    stride: tuple[int, ...] | int = 1,
    padding: tuple[int, ...] | int | str = 0,
    dilation: tuple[int, ...] | int = 1,
    groups: int = 1,
    backend: str = "auto",
) -> Tensor:
    """Convolve sample i of ``x`` with ``weight + sum_j covariates[i, j] * covariate_weight[j]``.

    ``weight`` is (O, C/groups, *k), ``covariate_weight`` (K, O, C/groups, *k); biases (O,) and
    (K, O) or None. The number of spatial dims (1, 2, 3) follows from ``weight``.
    """
    dims = weight.dim() - 2
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    c = covariates.to(weight.dtype)
    args = (x, c, weight, covariate_weight, bias, covariate_bias, _CONV[dims], kwargs)
    if backend in ("pattern", "auto") and c.requires_grad and torch.is_grad_enabled():
        # Grouping rows (torch.unique) has no derivative in the covariates, and a per-pattern kernel
        # would pool the gradients of all samples sharing a row. When gradients w.r.t. the
        # covariates are asked for (attribution), compute the same function with a back-end that
        # treats each row on its own; the ordinary (covariates without grad) path is unchanged.
        backend = rule_backend(x, x.shape[0], weight, groups)
    if backend == "auto":
        backend, rows = _auto(args)
        return _call(backend, args, rows)
    return _IMPLEMENTATIONS[backend](*args)


def _call(backend: str, args: tuple, rows: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
    """Run ``backend``, handing the distinct rows to the back-ends that use them (when rows repeat)."""
    if backend == "pattern" or (backend == "triton" and rows is not None and rows[0].shape[0] < args[0].shape[0]):
        return _IMPLEMENTATIONS[backend](*args, rows=rows)
    return _IMPLEMENTATIONS[backend](*args)
