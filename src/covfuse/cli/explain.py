"""`covfuse explain RUN`: what each covariate changes in a trained run, in numbers and pictures.

Writes RUN/explain/ (or --out DIR): explain.json, explain.md and figures/. See docs/explain.md.
"""
from __future__ import annotations

import argparse
import logging

from covfuse.cli._common import Parser


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="covfuse explain", description="Explain what each covariate changes in a trained run.")
    p.add_argument("run", help="run name (under --runs_dir) or path to a run folder")
    p.add_argument("--split", default="test", help="split to explain: train, valid or test (default: test)")
    p.add_argument("--examples", type=int, default=16, help="images per attribution grid (default: 16)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/explain)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--runs_dir", default="runs", help="folder holding run folders (default: runs)")
    p.add_argument("--ckpt", default="best", help="best, last, or a path to a .ckpt (default: best)")
    p.add_argument("--layer", default=None, help="module for Grad-CAM, e.g. features.12 (default: the last conv)")
    p.add_argument("--by", default="", help="more subgroups (CelebA runs): attribute names from the data, e.g. Smiling,Eyeglasses")
    p.add_argument("--n-boot", dest="n_boot", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed for examples and bootstrap (default: 0)")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (default: 32)")
    p.add_argument("--mass-images", dest="mass_images", type=int, default=256,
                   help="twin only: images for the attribution-in-cue-box numbers (default: 256)")
    p.add_argument("--data.root", "--root", dest="root", default=None,
                   help="the run's data at its new place, if it moved (checked against the table's fingerprint)")
    p.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (default: auto; one device)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from covfuse.studies.explain import explain_run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = explain_run(
        args.run, runs_dir=args.runs_dir, split=args.split, examples=args.examples, out=args.out, ckpt=args.ckpt,
        layer=args.layer, by=[b.strip() for b in args.by.split(",") if b.strip()], n_boot=args.n_boot, seed=args.seed,
        n_steps=args.steps, mass_images=args.mass_images, accelerator=args.accelerator, root=args.root,
        overwrite=args.overwrite,
    )
    print(f"wrote {out / 'explain.json'}, {out / 'explain.md'} and {out / 'figures'}/")
    return 0
