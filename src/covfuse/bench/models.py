"""Model benchmark: one optimiser step (forward, BCE loss, backward, AdamW) of a whole network, each
fusion variant relative to image-only, plus its peak memory.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the step; on CPU (no allocator
statistics), the bytes of the distinct tensors autograd saves for backward (activation memory,
the part that grows with batch and resolution).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from covfuse.bench.timing import interleaved, median_ms, ratio
from covfuse.layers import hybrid_layers
from covfuse.layers.autotune import auto_choices, clear_choices
from covfuse.models import build
from covfuse.training.module import to_channels_last

# (label, fusion, hybrid_layers, K)
VARIANTS = [
    ("image-only", "image-only", "first", 0),
    ("hybrid first K=1", "hybrid", "first", 1),
    ("hybrid first K=3", "hybrid", "first", 3),
    ("hybrid last K=3", "hybrid", "last", 3),
    ("hybrid all K=1", "hybrid", "all", 1),
    ("hybrid all K=3", "hybrid", "all", 3),
    ("concat K=3", "concat", "first", 3),
    ("film K=3", "film", "first", 3),
    ("daft K=3", "daft", "first", 3),
    # methods from the literature (docs/methods.md), each at its reference's place
    ("concat-2fc K=3", "concat-2fc", "first", 3),
    ("mlpcatmlp K=3", "mlpcatmlp", "first", 3),
    ("duanmu K=3", "duanmu", "first", 3),
    ("tab-attention K=3", "tab-attention", "first", 3),
    ("cond-norm K=3", "cond-norm", "first", 3),
    ("hyper K=3", "hyper", "first", 3),
    # the seed's way in the very same layers: one conv per sample with its own kernel (backend="reference")
    ("loop first K=3", "hybrid", "first", 3),
    ("loop all K=3", "hybrid", "all", 3),
]
CELEBA_TRAIN = 162_770  # images in CelebA's official training split: one epoch


def _saved_bytes(model, x, c) -> int:
    """Bytes of the distinct tensors saved for backward in one forward pass."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = (t.untyped_storage().data_ptr(), t.device.type)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. functional wrappers)
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, c)
    del out
    return sum(seen.values())


def run(backbones: list[str], size: int, batch2d: int, device: str, rounds: int, autocast: bool,
        channels_last: bool, variants: list[str] | None = None, grouped: bool = True, echo=print,
        size3d: int | None = None, batch3d: int | None = None) -> list[dict]:
    """One row per (backbone, variant); 3D backbones (resnet3d-compact, monai-*) take volumes of side
    ``size3d`` in batches of ``batch3d`` (default: ``size`` and ``batch2d``)."""
    from covfuse.models.registry import backbone_spec

    dev = torch.device(device)
    chosen = [v for v in VARIANTS if variants is None or v[0] in variants]
    rows = []
    for backbone in backbones:
        torch.manual_seed(0)
        spec = backbone_spec(backbone)
        volumes = spec.spatial_dims == 3
        side, batch = (size3d or size, batch3d or batch2d) if volumes else (size, batch2d)
        x = torch.randn(batch, spec.in_channels, *(side,) * spec.spatial_dims, device=dev)
        if channels_last and not volumes:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch,), device=dev).float()
        c3 = torch.randint(0, 2, (batch, 3), device=dev).float()
        if grouped:  # as the training loader delivers them (covfuse.data.dataset.collate_grouped)
            c3 = c3[torch.argsort(torch.unique(c3, dim=0, return_inverse=True)[1], stable=True)]
        steps, memory = {}, {}
        clear_choices()
        for label, fusion, where, k in chosen:
            model = build(backbone, fusion, k, hybrid_layers=where, hybrid_init="kaiming").to(dev)
            if label.startswith("loop "):
                for _, layer in hybrid_layers(model):
                    layer.backend = "reference"
            if channels_last and not volumes:
                # not model.to(memory_format=...): that fails on the 5-D covariate weights of hybrid convs
                model = to_channels_last(model)
            # AdamW (what training uses) on a GPU; plain SGD on a CPU, where nine vgg16_bn copies with
            # two AdamW state tensors each would need ~20 GB of RAM (the step's arithmetic is the same
            # for every variant; the optimiser's share is small either way).
            opt = (torch.optim.AdamW(model.parameters(), lr=1e-5) if dev.type == "cuda"
                   else torch.optim.SGD(model.parameters(), lr=1e-5))
            c = c3[:, :k] if k else torch.zeros(batch, 0, device=dev)

            def step(model=model, opt=opt, c=c) -> None:
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = model(x, c)
                F.binary_cross_entropy_with_logits(logits.float(), y).backward()
                opt.step()

            steps[label] = step
            if dev.type == "cuda":
                step()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                step()
                memory[label] = torch.cuda.max_memory_allocated()
            else:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                    memory[label] = _saved_bytes(model, x, c)
        samples = interleaved(steps, rounds, dev)
        base = "image-only"
        what = "peak MiB (CUDA allocator)" if dev.type == "cuda" else "activation MiB (saved for backward)"
        echo(f"\n{backbone}, {side} {'voxels' if volumes else 'px'}, batch {batch}, {'bf16 autocast' if autocast else 'float32'}"
             f"{', channels_last' if channels_last else ''}{', batch grouped by covariate row' if grouped else ''}: one optimiser step, ratio to image-only, "
             f"median [min-max] of {rounds} interleaved rounds\n")
        echo(f"| variant | step ms | ratio | {what} | min per CelebA epoch |")
        echo("|---|---|---|---|---|")
        for label, *_ in chosen:
            r = ratio(samples, label, base)
            epoch_min = CELEBA_TRAIN / batch * median_ms(samples[label]) / 60_000
            echo(f"| {label} | {median_ms(samples[label]):.0f} | {r.spread()} | {memory[label] / 2**20:.0f} | "
                 f"{epoch_min:,.1f} |")
            rows.append({"backbone": backbone, "variant": label, "size": side, "batch": batch, "device": dev.type,
                         "autocast_bf16": autocast, "channels_last": channels_last, "grouped_batch": grouped,
                         "optimizer": type(opt).__name__,
                         "step_ms": round(median_ms(samples[label]), 2), "ratio_to_image_only": r.as_dict(),
                         "memory_bytes": memory[label], "memory_kind": what,
                         "projected_minutes_per_celeba_epoch": round(epoch_min, 2)})
        choices = [f"{ch.signature}: {ch.backend} ({ch.how})" for ch in auto_choices() if f"batch {batch}," in ch.signature]
        if choices:
            echo("\nauto back-ends chosen:\n" + "\n".join(f"- {line}" for line in choices))
    return rows
