"""`covfuse bench [layers|models|data|all]`: speed ratios measured in one run, printed as tables
(median and min-max of interleaved rounds) and written as one JSON record (--json)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from covfuse.cli._common import Parser
from covfuse.errors import UserError

WHAT = ("layers", "models", "data", "all")
NETS = ("vgg16", "resnet50", "resnet3d")


def _list(text: str, cast=str) -> list:
    try:
        return [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"expected a comma-separated list, got {text!r}") from None


def parser() -> Parser:
    p = Parser(prog="covfuse bench", description=__doc__)
    p.add_argument("what", nargs="?", default="all", choices=WHAT, help="which benchmark (default all)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on CPU: steadier on a shared machine; with --tune "
                        "torch's default, the count training uses)")
    p.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                   help="how CPU runs are timed: this process's CPU time (cpu: steady on a shared machine, "
                        "every thread's time added up), wall time, or auto (CPU time with 1 thread, else wall)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5 on CPU layers, 3 otherwise)")
    p.add_argument("--json", type=Path, default=None, help="also write the record to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    g = p.add_argument_group("layers")
    g.add_argument("--nets", default="vgg16,resnet50,resnet3d", help="shape sets: vgg16, resnet50, resnet3d")
    g.add_argument("--size", type=int, default=None, help="2D input side the shapes follow (default 224 GPU, 56 CPU)")
    g.add_argument("--size3d", type=int, default=None, help="3D input side (default 96 GPU, 32 CPU)")
    g.add_argument("--batch", type=int, default=None, help="2D batch (default 64 GPU, 32 CPU)")
    g.add_argument("--batch3d", type=int, default=None, help="3D batch (default 8 GPU, 4 CPU)")
    g.add_argument("--k", default="3", help="numbers of covariates, e.g. 1,3,8 (default 3)")
    g.add_argument("--kinds", default="binary,continuous", help="binary and/or continuous covariates")
    g.add_argument("--dtypes", default=None, help="float32 and/or bfloat16 (autocast) (default float32 CPU, bfloat16 GPU)")
    g.add_argument("--shapes", default=None, help="keep shapes whose label contains one of these, e.g. '512->512 k3x3 @14'")
    g.add_argument("--no-loop", action="store_true", help="skip the per-sample loop (slow on large shapes)")
    g.add_argument("--autotune", choices=("default", "on", "off"), default="default",
                   help="how `auto` chooses: by tuning, or this machine's earlier tuning from the cache "
                        "(default; COVFUSE_AUTOTUNE=0 switches it off), on, or off (the rule)")
    g.add_argument("--tune", action="store_true",
                   help="measure `auto`'s choice for every shape anew and store it in this machine's tuning "
                        "cache (for the thread count of the run), replacing what it held")
    g = p.add_argument_group("models")
    g.add_argument("--backbones", default="vgg16_bn,resnet50", help="torchvision backbones")
    g.add_argument("--model-size", type=int, default=None, help="input side (default 224 GPU, 112 CPU)")
    g.add_argument("--model-batch", type=int, default=None, help="batch (default 64 GPU, 8 CPU)")
    g.add_argument("--model-size3d", type=int, default=None, help="volume side for 3D backbones (default 64)")
    g.add_argument("--model-batch3d", type=int, default=None, help="batch for 3D backbones (default 16)")
    g.add_argument("--variants", default=None, help="comma-separated variant labels (default all)")
    g.add_argument("--channels-last", action="store_true",
                   help="NHWC layout for 2D models and inputs (default: on CUDA only)")
    g.add_argument("--ungrouped", action="store_true",
                   help="covariate rows in random order (default: grouped, as the training loader delivers them)")
    g = p.add_argument_group("data")
    g.add_argument("--images", type=int, default=512, help="JPEGs in the twin (default 512)")
    g.add_argument("--sizes", default="64,128,224", help="image sides")
    g.add_argument("--cores", default=None, help="loader cores to try, e.g. 1,2,16 (default 1, 2 and all)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    bad = [n for n in _list(args.nets) if n not in NETS]
    if bad:
        raise UserError(f"unknown --nets entry {bad[0]!r}; choose from {', '.join(NETS)}")
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise UserError(f"{args.json} exists; pass --overwrite to replace it or choose another --json path")
    import torch

    from covfuse.bench.timing import environment, header, use_cpu_time
    from covfuse.layers.autotune import set_autotune

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    gpu = device.startswith("cuda")
    if args.tune and args.autotune == "off":
        raise UserError("--tune measures `auto`'s choices; it cannot go with --autotune off")
    if args.clock == "cpu" and gpu:
        raise UserError("--clock cpu times CPU runs; on a GPU the benchmark uses wall time")
    if args.threads is not None or not (gpu or args.tune):
        torch.set_num_threads(args.threads or 1)
    use_cpu_time({"auto": None, "cpu": True, "wall": False}[args.clock])
    if args.autotune != "default" or args.tune:
        set_autotune(args.autotune != "off", refresh=args.tune)
    env = environment(device)
    print(f"covfuse bench {args.what}: {header(env)}", flush=True)
    record: dict = {"environment": env, "command": "covfuse bench " + " ".join(argv)}
    echo = lambda line: print(line, flush=True)  # noqa: E731
    what = WHAT[:3] if args.what == "all" else (args.what,)
    if "layers" in what:
        from covfuse.bench import layers

        nets = _list(args.nets)
        record["layers"] = layers.run(
            nets, args.size or (224 if gpu else 56), args.batch or (64 if gpu else 32), _list(args.k, int),
            _list(args.kinds), _list(args.dtypes or ("bfloat16" if gpu else "float32")), device,
            args.rounds or (3 if gpu else 5), args.batch3d or (8 if gpu else 4), args.size3d or (96 if gpu else 32),
            loop=not args.no_loop, only=_list(args.shapes) if args.shapes else None, echo=echo)
    if "models" in what:
        from covfuse.bench import models

        record["models"] = models.run(
            _list(args.backbones), args.model_size or (224 if gpu else 112), args.model_batch or (64 if gpu else 8),
            device, args.rounds or 3, autocast=gpu, channels_last=gpu or args.channels_last,
            variants=_list(args.variants) if args.variants else None, grouped=not args.ungrouped, echo=echo,
            size3d=args.model_size3d or 64, batch3d=args.model_batch3d or 16)
    if "data" in what:
        from covfuse.bench import data

        record["data"] = data.run(args.images, _list(args.sizes, int),
                                  _list(args.cores, int) if args.cores else data.default_cores(),
                                  args.rounds or 3, echo=echo)
    text = json.dumps(record, indent=1)
    if args.json is not None:
        from covfuse.io import atomic_write_text

        atomic_write_text(args.json, text + "\n")
        print(f"\nrecord written to {args.json}", file=sys.stderr)
    return 0
