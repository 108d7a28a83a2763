"""What a built model is: a layer table (shapes from a dry run, parameters, conditioning) and a diagram.

:func:`describe` runs the model once on a zero image (eval mode, no gradients) with forward hooks to
read each layer's output shape; :func:`format_table` prints it; :func:`draw_diagram` draws the
network as a column of blocks with the conditioned layers coloured (matplotlib, imported lazily);
:func:`parameter_table` counts what each fusion method adds to the image-only model, as the
markdown table docs/methods.md holds between its ``params`` markers.
"""
from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from covfuse.errors import UserError
from covfuse.io import atomic_write_text, save_figure
from covfuse.layers.cond_norm import ConditionalNorm
from covfuse.layers.daft import DAFT, DAFTAfter
from covfuse.layers.duanmu import DuanmuFactor, DuanmuGate
from covfuse.layers.film import FiLM, FiLMAfter
from covfuse.layers.hybrid_functional import rule_backend
from covfuse.layers.hyper import HYPER_TYPES
from covfuse.layers.mlpcat import MLPCatHead
from covfuse.layers.tab_attention import TabAttention, TabAttentionAfter
from covfuse.models.builder import build
from covfuse.models.fusion import CONDITIONING_KINDS, HYBRID_TYPES, ConcatHead, CovariateClassifier, FusionModel
from covfuse.models.registry import BACKBONES, FUSIONS, head_outputs

KIND_COLOURS = {"hybrid": "#f28e2b", "film": "#59a14f", "daft": "#b07aa1", "concat": "#4e79a7", "covariates": "#e15759",
                "hyper": "#d37295", "cond-norm": "#8cd17d", "tab-attention": "#499894", "duanmu": "#9d7660",
                "mlpcatmlp": "#79706e"}
KIND_LABELS = {"hybrid": "hybrid conv", "film": "FiLM", "daft": "DAFT", "concat": "concat head", "covariates": "covariates only",
               "hyper": "hyper conv", "cond-norm": "cond. norm", "tab-attention": "tab-attention", "duanmu": "Duanmu gate",
               "mlpcatmlp": "MLP-concat head"}
# Wrappers that put a conditioning layer next to a module of the unmodified network (kept as ``.module``):
# the attribute that holds the conditioning layer.
WRAPPERS = {FiLMAfter: "film", DAFTAfter: "daft", TabAttentionAfter: "attention", DuanmuGate: "factor"}


@dataclass
class LayerRow:
    """One layer of the table; ``output`` excludes the batch dimension (None: not called in the dry run)."""

    name: str
    type: str
    output: tuple[int, ...] | None
    params: int
    trainable: int
    conditioning: str = ""


@dataclass
class Description:
    rows: list[LayerRow]
    total: int
    trainable: int
    covariate: int
    input_shape: tuple[int, ...]
    config: dict = field(default_factory=dict)
    # hybrid layer name -> {"backend": set, "binary": auto's pick, "continuous": auto's pick}
    backends: dict[str, dict[str, str]] = field(default_factory=dict)


AUTO_BATCH = 32  # the batch `describe` assumes when it says what `auto` picks


def auto_backends(model: FusionModel, input_shape: tuple[int, ...], batch: int = AUTO_BATCH) -> dict[str, dict[str, str]]:
    """Per hybrid layer: its back-end setting and what the `auto` rule picks for a batch of ``batch``
    with binary covariates (min(2^K, batch) distinct rows) and continuous ones (all distinct). By
    default `auto` tunes on first use instead (see covfuse.layers.autotune); the run log says what."""
    inputs: dict[str, tuple[int, ...]] = {}
    layers = [(name, m) for name, m in model.network.named_modules() if isinstance(m, HYBRID_TYPES)]
    handles = [m.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, tuple(args[0].shape[1:])))
               for name, m in layers]
    try:
        dry_run_shapes(model, [], input_shape)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, m in layers:
        entry = {"backend": m.backend}
        if m.backend == "auto" and name in inputs:
            x = torch.empty(1, device=m.weight.device).expand(batch, *inputs[name])
            entry["binary"] = rule_backend(x, min(2 ** m.num_covariates, batch), m.weight, m.groups)
            entry["continuous"] = rule_backend(x, batch, m.weight, m.groups)
        out[name] = entry
    return out


def covariate_parameters(module: nn.Module) -> int:
    """Parameters on the covariates' path ("covariate-specific"): hybrid W_j and b_j, a hyper conv's
    generators and embedding, the FiLM/DAFT/cond-norm generators, the tab-attention and Duanmu modules,
    a concat head's covariate columns, the MLP-concat head's covariate MLP and block, a covariates-only
    classifier. Not counted: what a method adds to the image path (concat-2fc's fresh head apart from
    its covariate columns, a hyper conv's constant bias b_0 where the wrapped conv had none)."""
    if isinstance(module, HYBRID_TYPES):
        return sum(p.numel() for p in (module.covariate_weight, module.covariate_bias) if p is not None)
    if isinstance(module, HYPER_TYPES):
        return sum(p.numel() for p in (module.hyper_weight, module.hyper_bias, *module.embed.parameters()) if p is not None)
    if isinstance(module, ConcatHead):
        return module.covariates.weight.numel()
    if isinstance(module, MLPCatHead):
        return module.covariates.weight.numel() + sum(p.numel() for p in module.mlp.parameters())
    if isinstance(module, ConditionalNorm):
        return sum(p.numel() for p in (*module.gamma.parameters(), *module.beta.parameters()))
    if isinstance(module, (FiLM, DAFT, CovariateClassifier, TabAttention, DuanmuFactor)):
        return sum(p.numel() for p in module.parameters())
    return 0


def atomic_modules(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaves of the module tree, with conditioning modules kept whole (their inner Linears are theirs)."""
    out: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, name: str) -> None:
        if type(module) in CONDITIONING_KINDS or not any(True for _ in module.children()):
            out.append((name, module))
            return
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name)

    walk(network, "")
    return out


def dry_run_shapes(model: FusionModel, modules: list[tuple[str, nn.Module]], input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of each module in one eval-mode call on zeros; modes restored after."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
               for name, m in modules]
    modes = {m: m.training for m in model.modules()}
    first = next(model.parameters())
    try:
        model.eval()
        x = torch.zeros(1, *input_shape, dtype=first.dtype, device=first.device)
        z = torch.zeros(1, max(model.num_covariates, 0), dtype=first.dtype, device=first.device)
        with torch.no_grad():
            model(x, z if model.uses_covariates else None)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return shapes


def describe(model: FusionModel, input_size: int | None = None, in_channels: int | None = None) -> Description:
    """The layer table and parameter counts of ``model`` for a square (3D backbones: cubic) input of side ``input_size``."""
    backbone = model.config.get("backbone")
    spec = BACKBONES.get(backbone)
    size = input_size or (spec.input_size if spec else 224)
    channels = in_channels or (spec.in_channels if spec else 3)
    input_shape = (channels, *(size,) * (spec.spatial_dims if spec else 2))
    modules = atomic_modules(model.network)
    shapes = dry_run_shapes(model, modules, input_shape)
    total, covariate = parameter_counts(model)
    rows = [
        LayerRow(name or "(covariates)", type(m).__name__, shapes.get(name),
                 sum(p.numel() for p in m.parameters()), sum(p.numel() for p in m.parameters() if p.requires_grad),
                 CONDITIONING_KINDS.get(type(m), ""))
        for name, m in modules
    ]
    return Description(
        rows=rows,
        total=total,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        covariate=covariate,
        input_shape=input_shape,
        config=dict(model.config),
        backends=auto_backends(model, input_shape),
    )


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape))


def _train_flag(row: LayerRow) -> str:
    if row.params == 0:
        return ""
    return "yes" if row.trainable == row.params else "no" if row.trainable == 0 else "part"


def summary_line(desc: Description) -> str:
    c = desc.config
    return (f"{c.get('backbone')} + {c.get('fusion')}, {c.get('num_covariates')} covariate(s), regime {c.get('regime')}, "
            f"head {c.get('head')}, input {_shape(desc.input_shape)}")


def format_table(desc: Description) -> str:
    """The layer table followed by the parameter counts, as plain text."""
    header = ("name", "type", "output", "params", "trains", "conditioning")
    lines = [(r.name, r.type, _shape(r.output), f"{r.params:,}", _train_flag(r), r.conditioning) for r in desc.rows]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{'>' if i == 3 else '<'}{w}}}" for i, w in enumerate(widths))
    out = [summary_line(desc), "", fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row).rstrip() for row in lines]
    conditioned = [f"{r.name} ({r.conditioning})" for r in desc.rows if r.conditioning]
    out += [
        "",
        f"conditioned layers: {', '.join(conditioned) if conditioned else 'none'}",
        f"parameters: total {desc.total:,}; trainable {desc.trainable:,}; covariate-specific {desc.covariate:,}",
    ]
    if desc.backends:
        out.append(f"hybrid back-ends (what `auto`'s fallback rule picks at batch {AUTO_BATCH}; by default it tunes "
                   "on first use, or reuses this machine's earlier tuning, and logs its choice):")
        out += [f"  {name}: {b['backend']}" + (f" -> {b['binary']} (binary covariates), {b['continuous']} (continuous)"
                                               if "binary" in b else "") for name, b in desc.backends.items()]
    return "\n".join(out)


# ---- what each fusion method adds (the table of docs/methods.md) ---------------------------------

TABLE_BEGIN, TABLE_END = "<!-- params:begin -->", "<!-- params:end -->"


def table_methods() -> list[str]:
    """The fusion methods of the parameter table: every registered one that uses the image, not a '+' combination."""
    return [name for name, spec in FUSIONS.items() if spec.uses_image and spec.components and "+" not in name]


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters of ``model``, its covariate-specific ones: :func:`covariate_parameters` over its modules)."""
    return sum(p.numel() for p in model.parameters()), sum(covariate_parameters(m) for m in model.modules())


def parameter_table_command(backbones: list[str], fusions: list[str] | None = None, num_covariates: int = 3,
                            head: str = "binary", num_classes: int | None = None, hybrid_layers="first",
                            **options) -> str:
    """The `covfuse describe` command that prints :func:`parameter_table` for these arguments."""
    words = ["covfuse describe --parameter_table", f"--backbone {','.join(backbones)}"]
    if fusions is not None:
        words.append(f"--fusion {','.join(fusions)}")
    words.append(f"--num_covariates {num_covariates}")
    if hybrid_layers != "first":
        words.append(f"--hybrid_layers {hybrid_layers if isinstance(hybrid_layers, str) else json.dumps(hybrid_layers)}")
    if head != "binary":
        words.append(f"--head {head}")
    if num_classes is not None:
        words.append(f"--num_classes {num_classes}")
    words += [f"-o {key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in options.items()]
    return " ".join(words)


def parameter_table(backbones: list[str], fusions: list[str] | None = None, num_covariates: int = 3,
                    head: str = "binary", num_classes: int | None = None, hybrid_layers="first", **options) -> str:
    """Markdown: one row per fusion method (default :func:`table_methods`), one column per backbone,
    each cell the parameters the method adds to the image-only model and, in brackets where it differs,
    :func:`describe`'s covariate-specific count; the first row is the image-only model's own total."""
    methods = table_methods() if fusions is None else fusions
    outputs = head_outputs(head, num_classes)
    command = parameter_table_command(backbones, fusions, num_covariates, head, num_classes, hybrid_layers, **options)
    changed = ", the options of that command" if options or hybrid_layers != "first" else ", default options"
    caption = (f"Parameters each method adds to the image-only model with the same backbone and head: "
               f"K = {num_covariates} covariates, head {head} ({outputs} output{'s' * (outputs > 1)}){changed}; in "
               "brackets, where it differs, the covariate-specific count of `describe` (the parameters on the "
               "covariates' path). Generated by")
    lines = [*textwrap.wrap(caption, 100, break_on_hyphens=False), "", f"    {command}", "",
             f"| method | {' | '.join(backbones)} |", "|---|" + "---|" * len(backbones)]

    def counts(backbone: str, fusion: str) -> tuple[int, int]:
        return parameter_counts(build(backbone, fusion, num_covariates, head=head, num_classes=num_classes,
                                      hybrid_layers=hybrid_layers, **options))

    base = [counts(backbone, "image-only")[0] for backbone in backbones]
    lines.append(f"| image-only (its own total) | {' | '.join(f'{n:,}' for n in base)} |")
    for fusion in methods:
        cells = []
        for backbone, image_only in zip(backbones, base):
            total, covariate = counts(backbone, fusion)
            added = total - image_only
            cells.append(f"{added:,}" + ("" if covariate == added else f" ({covariate:,})"))
        lines.append(f"| {fusion} | {' | '.join(cells)} |")
    return "\n".join(lines)


def write_parameter_table(path: str | os.PathLike, table: str) -> Path:
    """Replace what stands between the ``params`` markers of the text file ``path`` with ``table``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if text.count(TABLE_BEGIN) != 1 or text.count(TABLE_END) != 1 or text.index(TABLE_BEGIN) > text.index(TABLE_END):
        raise UserError(f"{str(path)!r} needs one {TABLE_BEGIN} line and, after it, one {TABLE_END} line "
                        "around the table to replace")
    before, rest = text.split(TABLE_BEGIN)
    after = rest.split(TABLE_END)[1]
    return atomic_write_text(path, f"{before}{TABLE_BEGIN}\n{table}\n{TABLE_END}{after}")


# ---- diagram -------------------------------------------------------------------------------------

_SECONDARY = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.Dropout, nn.Flatten, FiLM, ConditionalNorm, TabAttention)


def _units(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """Blocks to draw: Sequentials are opened, and each wrapper of :data:`WRAPPERS` (FiLM, DAFT,
    tab-attention, Duanmu) becomes its module and its conditioning layer, in data-flow order."""
    if type(module) in CONDITIONING_KINDS or not any(True for _ in module.children()):
        return [(prefix, module)]
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            out += _units(child, full)
        elif type(child) in WRAPPERS:
            attr = WRAPPERS[type(child)]
            inner = _units(child.module, f"{full}.module") if isinstance(child.module, nn.Sequential) else [(f"{full}.module", child.module)]
            gate = [(f"{full}.{attr}", getattr(child, attr))]
            out += gate + inner if getattr(child, "before", False) else inner + gate
        else:
            out.append((full, child))
    return out


def _label(m: nn.Module) -> str:
    if isinstance(m, (nn.Conv2d, *HYBRID_TYPES)):
        k = "x".join(map(str, m.kernel_size))
        stride = f", stride {m.stride[0]}" if max(m.stride) > 1 else ""
        return f"{'Hybrid conv' if isinstance(m, HYBRID_TYPES) else 'Conv'} {k}, {m.in_channels}->{m.out_channels}{stride}"
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return "BN"
    if isinstance(m, FiLM):
        return "FiLM"
    if isinstance(m, HYPER_TYPES):
        k = "x".join(map(str, m.kernel_size))
        return f"Hyper conv {k}, {m.in_channels}->{m.out_channels}: kernel W_0 + MLP(z) (width {m.width}, depth {m.depth})"
    if isinstance(m, ConditionalNorm):
        return f"Conditional {type(m.norm).__name__}: scale, shift + MLP(z)"
    if isinstance(m, TabAttention):
        return f"Tab-attention: channel + spatial gates from features and z ({m.num_channels} ch)"
    if isinstance(m, DuanmuFactor):
        return f"Duanmu gate {m.index + 1}: channels x (1 + a_{m.index + 1}(z))"
    if isinstance(m, MLPCatHead):
        return f"MLP-concat head [{m.image.in_features} + ReLU(Linear {m.mlp.in_features}->{m.mlp.out_features})] -> FC"
    if isinstance(m, DAFT):
        return f"DAFT: pooled features + z -> scale, shift ({m.num_channels} ch)"
    if isinstance(m, ConcatHead):
        two = m.out is not None
        return f"Concat head [{m.image.in_features} + {m.covariates.in_features} covariates] -> {'FC-ReLU-FC' if two else 'FC'}"
    if isinstance(m, CovariateClassifier):
        return "Logistic regression on covariates" if isinstance(m.net, nn.Linear) else "MLP on covariates"
    if isinstance(m, nn.Linear):
        return f"Linear {m.in_features}->{m.out_features}"
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return f"{type(m).__name__[:3]}Pool /{m.stride if isinstance(m.stride, int) else m.stride[0]}"
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return f"AdaptiveAvgPool -> {m.output_size}"
    convs = [c for c in m.modules() if isinstance(c, (nn.Conv2d, *HYBRID_TYPES))]
    if convs:  # a residual block
        return f"{type(m).__name__} {convs[0].in_channels}->{convs[-1].out_channels}"
    return type(m).__name__


def diagram_blocks(model: FusionModel, desc: Description) -> list[dict]:
    """Blocks of the diagram: a main layer with the secondary layers after it (:data:`_SECONDARY`: norms,
    ReLU, Dropout, Flatten, FiLM, conditional norms, tab-attention) folded in."""
    shapes = {r.name: r.output for r in desc.rows}
    blocks: list[dict] = []
    for name, m in _units(model.network, ""):
        inner = [(f"{name}.{n}" if n else name, c) for n, c in m.named_modules() if type(c) in CONDITIONING_KINDS]
        kinds = [CONDITIONING_KINDS[type(c)] for _, c in inner]
        params = list(m.parameters())
        frozen = bool(params) and not any(p.requires_grad for p in params)
        key = name or "(covariates)"
        out = [s for n, s in shapes.items() if s is not None and (n == key or n.startswith(key + "."))]
        if isinstance(m, _SECONDARY) and blocks:
            block = blocks[-1]
            block["label"] += f" + {_label(m)}"
        else:
            block = {"name": name or "(covariates)", "label": _label(m), "kinds": [], "notes": [], "frozen": frozen,
                     "output": None}
            blocks.append(block)
        block["kinds"] = list(dict.fromkeys(block["kinds"] + kinds))
        block["notes"] += [n.rsplit(".", 1)[0] if isinstance(c, (FiLM, DAFT, TabAttention, DuanmuFactor)) else n
                           for n, c in inner if n != name]
        block["output"] = out[-1] if out else block["output"]
    return blocks


def draw_diagram(model: FusionModel, desc: Description, path: str | os.PathLike) -> Path:
    """Draw ``model`` as a column of blocks (conditioned ones coloured, covariates wired in) into a PNG."""
    import matplotlib  # lazy: matplotlib only for the diagram (describe --diagram)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch  # lazy: as above

    blocks = diagram_blocks(model, desc)
    step = 1.0
    height = (len(blocks) + 4) * step
    fig, ax = plt.subplots(figsize=(13, 1.6 + 0.42 * (len(blocks) + 4)))
    ax.set_xlim(0, 14.2)
    ax.set_ylim(-height, 1.2)
    ax.axis("off")
    ax.set_title(f"covfuse model: {summary_line(desc)}", fontsize=10, loc="left")
    x0, w, bh = 2.4, 7.0, 0.72

    def box(y, text, colour="#f0f0f0", edge="#555555", bold=False, hatch=None):
        ax.add_patch(FancyBboxPatch((x0, y - bh / 2), w, bh, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    fc=colour, ec=edge, lw=1.6 if bold else 0.8, hatch=hatch))
        ax.text(x0 + 0.15, y, text, va="center", ha="left", fontsize=8.5, fontweight="bold" if bold else "normal")

    def arrow(y_from, y_to, x=x0 + w / 2):
        ax.add_patch(FancyArrowPatch((x, y_from), (x, y_to), arrowstyle="-|>", mutation_scale=8, lw=0.7, color="#555555"))

    uses_image = desc.config.get("fusion") != "covariates-only"
    y = 0.0
    box(y, f"image {_shape(desc.input_shape)}" if uses_image else "image (ignored)", colour="#ffffff")
    ys = []
    for i, block in enumerate(blocks):
        y_prev, y = y, -(i + 1) * step
        arrow(y_prev - bh / 2, y + bh / 2)
        kind = block["kinds"][0] if block["kinds"] else None
        colour = KIND_COLOURS[kind] if kind else ("#e4e4e4" if block["frozen"] else "#f7f7f7")
        text = f"{block['name']}:  {block['label']}"
        if block["notes"]:
            more = len(block["notes"]) - 2
            text += f"   [{', '.join(block['notes'][:2])}{f' +{more}' if more > 0 else ''}]"
        if block["frozen"]:
            text += "   (frozen)"
        box(y, text, colour=colour + ("" if not kind else "55"), edge=KIND_COLOURS.get(kind, "#555555"), bold=bool(kind))
        for j, k in enumerate(block["kinds"]):  # one tag per kind, beside the box
            ax.text(x0 + w + 0.15 + 1.2 * j, y, KIND_LABELS[k], ha="left", va="center", fontsize=7, color="white",
                    fontweight="bold", bbox={"boxstyle": "round,pad=0.25", "fc": KIND_COLOURS[k], "ec": "none"})
        ax.text(x0 + w + 2.5, y, _shape(block["output"]), va="center", ha="left", fontsize=8, color="#333333")
        if kind:
            ys.append((y, block["kinds"]))
    y_out = y - step
    arrow(y - bh / 2, y_out + bh / 2)
    outputs = "logit (N,)" if model.out_features == 1 else f"logits (N, {model.out_features})"
    box(y_out, outputs, colour="#ffffff")

    if ys:  # the covariate input and its wires to every conditioned block
        k = desc.config.get("num_covariates")
        ax.add_patch(FancyBboxPatch((0.1, -0.36), 1.9, 0.72, boxstyle="round,pad=0.02", fc="#fff4d6", ec="#b8860b", lw=1.4))
        ax.text(1.05, 0.0, f"covariates z\n(N, {k})", ha="center", va="center", fontsize=8.5, fontweight="bold")
        bus = 1.05
        ax.plot([bus, bus], [-0.36, ys[-1][0]], color="#b8860b", lw=1.2)
        for yy, kinds in ys:
            ax.add_patch(FancyArrowPatch((bus, yy), (x0, yy), arrowstyle="-|>", mutation_scale=10, lw=1.2, color=KIND_COLOURS[kinds[0]]))
    used = sorted({k for _, kinds in ys for k in kinds})
    handles = [Patch(fc=KIND_COLOURS[k] + "55", ec=KIND_COLOURS[k], label=KIND_LABELS[k]) for k in used]
    if any(block["frozen"] for block in blocks):
        handles.append(Patch(fc="#e4e4e4", ec="#555555", label="frozen by the regime"))
    ax.text(0.1, y_out - 0.9, f"parameters: total {desc.total:,}   trainable {desc.trainable:,}   "
            f"covariate-specific {desc.covariate:,}", fontsize=9, va="center")
    if handles:  # an image-only model has no conditioned or frozen blocks, hence no legend
        ax.legend(handles=handles, loc="center left", fontsize=8, frameon=False, ncol=len(handles),
                  bbox_to_anchor=(0.1, y_out - 1.6), bbox_transform=ax.transData)
    ax.set_ylim(y_out - 2.0, 1.2)

    return save_figure(fig, Path(path), bbox_inches="tight", format="png")
