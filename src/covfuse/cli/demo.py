"""`covfuse demo [--out DIR]`: the main job. A study of image-only, covariates-only, concat, FiLM, DAFT
and hybrid on a synthetic CelebA twin with a planted interaction; writes DIR/results.json, report.md
(CIs and paired tests that resample people) and figures, with each run in DIR/<method>/s<seed>/.

With --volumes, the same study runs on a synthetic brain-MRI twin built on the MNI152 template
(NIfTI + manifest; the same atrophy means disease when young and ageing when old) with 3D ResNets
and configs/volumes/demo.yaml.

Rerunning the same command continues DIR (default demo-out/): finished methods are kept and
skipped, an interrupted one resumes from its checkpoint; a method trained with other settings is
refused (the keys named) unless --overwrite, which retrains only those. Nothing is ever deleted;
a foreign non-empty DIR is refused. The twin is written once into ~/.cache/covfuse/
($COVFUSE_CACHE_DIR if set; or --data DIR) and reused.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from covfuse.cli._common import Parser
from covfuse.errors import UserError


def parser() -> argparse.ArgumentParser:
    from covfuse.studies.demo import METHODS

    p = Parser(prog="covfuse demo", description=__doc__.split(": ", 1)[1],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--effect", default="planted", choices=["planted", "null"],
                   help="planted: the target needs a covariate (Young; --volumes: age); null: covariates carry nothing")
    p.add_argument("--volumes", action="store_true", help="the 3D study: brain-MRI twin, 3D ResNets (configs/volumes/demo.yaml)")
    p.add_argument("--n", type=int, default=None, help="images in the twin (default: 8000; --volumes: 600 subjects)")
    p.add_argument("--size", type=int, default=64, help="--volumes: cube side in voxels (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the twin, the weights and the bootstrap (default: 0)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per method (default: configs/demo.yaml)")
    p.add_argument("--image-size", default="89x109", help="twin image size WIDTHxHEIGHT (default: 89x109)")
    p.add_argument("--data", default=None, help="folder for the twin (default: ~/.cache/covfuse/synth-...)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default: {','.join(METHODS)})")
    p.add_argument("--config", default=None, help="training settings (default: configs/demo.yaml; --volumes: configs/volumes/demo.yaml)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default: 1000)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain the methods in --out that were trained with other settings (others are kept)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from covfuse.data.twins.faces import parse_image_size
    from covfuse.studies.demo import CONFIG, VOLUME_CONFIG, DemoOptions, run_demo

    n = args.n if args.n is not None else (600 if args.volumes else 8000)
    least = 30 if args.volumes else 300
    if n < least:
        raise UserError(f"--n must be at least {least} so that every split holds enough {'subjects' if args.volumes else 'images'}, got {n}")
    if args.volumes and (args.size < 16 or args.size % 4):
        raise UserError(f"--size must be a multiple of 4 and at least 16 (the compact 3D ResNet's stride-4 stem), got {args.size}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    options = DemoOptions(
        out=Path(args.out), effect=args.effect, n=n, seed=args.seed, epochs=args.epochs, volumes=args.volumes, size=args.size,
        image_size=parse_image_size(args.image_size), data=Path(args.data) if args.data else None,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), config=Path(args.config or (VOLUME_CONFIG if args.volumes else CONFIG)),
        bootstrap=args.bootstrap, overwrite=args.overwrite, command=("covfuse", "demo", *argv),
    )
    summary = run_demo(options)
    print()
    print(f"{'method':<16} test accuracy [95% CI]   vs image-only [95% CI]   verdict (Holm)")
    for method, (acc, (lo, hi)) in summary["test_accuracy"].items():
        c = summary["comparisons"].get(method)
        versus = f"{c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]   {c['verdict']}" if c else "(baseline)"
        print(f"{method:<16} {acc:.3f} [{lo:.3f}, {hi:.3f}]     {versus}")
    bayes = summary["bayes_accuracy"]
    print(f"Bayes: image+covariates {bayes['image_and_covariates']:.3f}, image only {bayes['image_only']:.3f}, "
          f"covariates only {bayes['covariates_only']:.3f}")
    print(f"wall time {summary['wall_seconds']:.0f} s; report: {options.out / 'report.md'}")
    return 0
