"""`covfuse describe`: build a model by name, print its layer table and parameter counts, draw its diagram;
or (--parameter_table) tabulate what each fusion method adds to the image-only model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from covfuse.cli._common import Parser
from covfuse.errors import UserError


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, null, lists), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def parser() -> argparse.ArgumentParser:
    from covfuse.models.registry import HEADS, REGIMES, list_backbones, list_fusions

    p = Parser(prog="covfuse describe", description=__doc__)
    p.add_argument("--backbone", required=True,
                   help=f"one of {', '.join(list_backbones())}; with --parameter_table, several comma-separated")
    p.add_argument("--fusion", default=None, help=f"one of {', '.join(list_fusions())} (default image-only); with "
                   "--parameter_table, several comma-separated (default: every method that uses the image alone)")
    p.add_argument("--num_covariates", type=int, default=1, help="K, the number of covariates (default 1)")
    p.add_argument("--hybrid_layers", default="first",
                   help="conv names or indices, comma-separated (features.0,features.40 or 0,-1), or first/last/all "
                        "(last: the last conv wider than 1x1, e.g. a ResNet's last 3x3, never a 1x1 shortcut)")
    p.add_argument("--weights", default=None, help="imagenet (from the torch hub cache) or a state-dict file")
    p.add_argument("--regime", default="finetune", help=", ".join(REGIMES))
    p.add_argument("--head", default="binary", help=", ".join(HEADS))
    p.add_argument("--num_classes", type=int, default=None, help="outputs of a multiclass head (3 or more)")
    p.add_argument("--option", "-o", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="model option, e.g. film_layers=all, daft_layer=layer3, concat_hidden=32 (repeatable)")
    p.add_argument("--input_size", type=int, default=None, help="input side in pixels (default: the backbone's, 224 or 64)")
    p.add_argument("--diagram", type=Path, default=None, help="write an architecture diagram to this PNG file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --diagram file")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text table or JSON")
    p.add_argument("--parameter_table", action="store_true",
                   help="instead of one model's layers, a markdown table of the parameters each --fusion adds to "
                        "the image-only model on each --backbone (the table of docs/methods.md)")
    p.add_argument("--update", type=Path, default=None, metavar="FILE",
                   help="with --parameter_table: write the table between FILE's <!-- params:begin --> and "
                        "<!-- params:end --> lines instead of printing it")
    return p


def print_parameter_table(args: argparse.Namespace) -> int:
    """--parameter_table: print the table, or write it into --update's file."""
    unused = [flag for flag, value, default in (("--weights", args.weights, None), ("--regime", args.regime, "finetune"),
                                                ("--input_size", args.input_size, None), ("--diagram", args.diagram, None),
                                                ("--format", args.format, "text")) if value != default]
    if unused:
        raise UserError(f"--parameter_table counts parameters of freshly built models; leave out {', '.join(unused)}")
    from covfuse.models.describe import parameter_table, write_parameter_table

    table = parameter_table(args.backbone.split(","), None if args.fusion is None else args.fusion.split(","),
                            args.num_covariates, args.head, args.num_classes, args.hybrid_layers, **dict(args.option))
    if args.update is None:
        print(table)
    else:
        write_parameter_table(args.update, table)
        print(f"updated the parameter table in {args.update}")
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.parameter_table:
        return print_parameter_table(args)
    if args.update is not None:
        raise UserError("--update writes the table of --parameter_table; add --parameter_table")
    if args.input_size is not None and args.input_size < 16:
        raise UserError(f"--input_size must be at least 16 pixels, got {args.input_size}")
    if args.diagram is not None:
        if args.diagram.suffix.lower() != ".png":
            raise UserError(f"--diagram must name a .png file, got {str(args.diagram)!r}")
        if args.diagram.exists() and not args.overwrite:
            raise UserError(f"{str(args.diagram)!r} exists; pass --overwrite to replace it")
        if not args.diagram.parent.is_dir():
            raise UserError(f"folder {str(args.diagram.parent)!r} for --diagram does not exist")

    from covfuse.models import build
    from covfuse.models.describe import describe, draw_diagram, format_table

    model = build(args.backbone, args.fusion or "image-only", args.num_covariates, hybrid_layers=args.hybrid_layers,
                  weights=args.weights, regime=args.regime, head=args.head,
                  num_classes=args.num_classes, **dict(args.option))
    try:
        desc = describe(model, args.input_size)
    except RuntimeError as exc:  # e.g. an input too small for the backbone's pooling
        raise UserError(f"dry run at input size {args.input_size} failed: {str(exc).splitlines()[0]}") from None
    if args.format == "json":
        print(json.dumps({
            "config": desc.config,
            "input_shape": list(desc.input_shape),
            "layers": [{"name": r.name, "type": r.type, "output": None if r.output is None else list(r.output),
                        "params": r.params, "trainable": r.trainable, "conditioning": r.conditioning or None}
                       for r in desc.rows],
            "parameters": {"total": desc.total, "trainable": desc.trainable, "covariate": desc.covariate},
            "hybrid_backends": desc.backends,
        }, indent=2))
    else:
        print(format_table(desc))
        hybrid = [name for name, m in model.named_modules() if type(m).__name__.startswith("HybridConv")]
        if hybrid:
            kernels = {name: "x".join(map(str, m.kernel_size)) for name, m in model.named_modules() if name in hybrid}
            print(f"hybrid convs ({args.hybrid_layers}): " + ", ".join(f"{n} ({kernels[n]})" for n in hybrid))
    if args.diagram is not None:
        draw_diagram(model, desc, args.diagram)
        if args.format == "text":
            print(f"diagram: {args.diagram}")
    return 0
