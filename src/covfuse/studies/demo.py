"""The demo: a synthetic twin with a planted interaction, four fusion methods trained and compared.

The twin's target depends on a visible cue chosen by the invisible covariate Young (see
covfuse.data.synth), so an image-only CNN is capped at the twin's image-only Bayes accuracy while a
model that conditions its convolutions on Young can reach the image+covariates Bayes accuracy.
``--effect null`` writes a twin where covariates carry nothing: then no method may beat image-only.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from covfuse.errors import UserError
from covfuse.io import atomic_write_text
from covfuse.training import config as cfgmod
from covfuse.training import runlog

METHODS = ("image-only", "covariates-only", "concat", "hybrid")
MARKER = ".covfuse-demo"  # marks a folder the demo wrote, so it may replace it without --overwrite
CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"


@dataclass
class DemoOptions:
    out: Path = Path("demo-out")
    effect: str = "planted"
    n: int = 8000
    seed: int = 0
    epochs: int | None = None  # None: configs/demo.yaml's trainer.max_epochs
    image_size: tuple[int, int] = (89, 109)
    data: Path | None = None  # None: the user cache folder (see twin_folder)
    methods: tuple[str, ...] = METHODS
    config: Path = CONFIG
    bootstrap: int = 1000
    overwrite: bool = False


def say(text: str) -> None:
    """A progress line on stdout (and, through the tee, in log.txt)."""
    print(f"[demo] {text}", flush=True)


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/covfuse`` or ``~/.cache/covfuse``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "covfuse"


def twin_folder(o: DemoOptions) -> Path:
    w, h = o.image_size
    return o.data if o.data is not None else cache_home() / f"synth-{o.effect}-n{o.n}-s{o.seed}-{w}x{h}"


def twin_reusable(o: DemoOptions) -> bool:
    """True when the twin folder already holds the wanted twin, False when it is to be written;
    a UserError when it may not be written (another twin under --data, or a foreign folder). Writes nothing."""
    folder = twin_folder(o)
    info = folder / "synth.json"
    wanted = {"effect": o.effect, "n": o.n, "seed": o.seed, "image_size": list(o.image_size), "images": True}
    if info.is_file():
        try:
            have = json.loads(info.read_text())
        except (OSError, ValueError):
            have = {}
        if isinstance(have, dict) and all(have.get(k) == v for k, v in wanted.items()):
            return True
        if o.data is not None:
            have = have if isinstance(have, dict) else {}
            raise UserError(f"{folder} holds a different twin ({', '.join(f'{k}={have.get(k)}' for k in wanted)}); "
                            "choose another --data folder or remove it")
    elif folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder} exists and is not a synthetic twin (no synth.json); choose another --data folder")
    return False


def ensure_twin(o: DemoOptions) -> Path:
    """The twin for these options: reused when its synth.json matches, written otherwise."""
    from covfuse.data import write_synth
    from covfuse.data._workers import available_cpus

    folder = twin_folder(o)
    if twin_reusable(o):
        say(f"reusing the synthetic twin in {folder}")
        return folder
    say(f"writing a synthetic twin ({o.n} images, effect {o.effect}, {o.image_size[0]}x{o.image_size[1]} px) to {folder}")
    write_synth(folder, n=o.n, seed=o.seed, effect=o.effect, image_size=o.image_size, overwrite=True,
                workers=available_cpus(), progress=True)
    return folder


def prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``; a previous demo output (marked) is replaced, anything else only with --overwrite."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MARKER).is_file() and not overwrite:
            raise UserError(f"{out} exists and was not written by `covfuse demo`; pass --overwrite to replace it "
                            "or choose another --out")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by `covfuse demo`; the next demo run replaces this folder\n")


def method_config(o: DemoOptions, root: Path, method: str) -> cfgmod.RunConfig:
    if not o.config.is_file():
        raise UserError(f"{o.config}: the demo config is missing (it ships in configs/ of a source checkout); "
                        "pass --config FILE")
    args = ["--config", str(o.config), "--data.root", str(root / "celeba"), "--model.fusion", method,
            "--name", method, "--runs_dir", str(o.out / "runs"), "--seed", str(o.seed),
            "--bootstrap", str(o.bootstrap), "--trainer.summary", "false"]
    if o.epochs is not None:
        args += ["--trainer.max_epochs", str(o.epochs)]
    return cfgmod.parse(args, prog="covfuse demo")[0]


def run_demo(o: DemoOptions) -> dict:
    """Write the twin (if needed), train and test every method, write results.json, report.md and figures."""
    from covfuse.studies.report import write_demo_report
    from covfuse.training.run import fit_run, summary

    unknown = [m for m in o.methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown demo method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if "image-only" not in o.methods:
        raise UserError("the demo compares every method with image-only; keep image-only in --methods")
    # Every check that can fail on the user's input runs before anything is deleted or written:
    # the configs, the twin folder, then the output folder's policy.
    configs = {m: method_config(o, twin_folder(o), m) for m in o.methods}
    twin_reusable(o)
    start = time.monotonic()
    prepare_out(o.out, o.overwrite)
    with runlog.capture(o.out / "log.txt"):
        root = ensure_twin(o)
        timings: dict[str, float] = {"twin": round(time.monotonic() - start, 1)}
        for i, method in enumerate(o.methods, 1):
            say(f"[{i}/{len(o.methods)}] {method}: training ({_clock(time.monotonic() - start)} elapsed)")
            t = time.monotonic()
            run_dir = fit_run(configs[method], overwrite=True)
            timings[method] = round(time.monotonic() - t, 1)
            say(f"[{i}/{len(o.methods)}] {method} done in {timings[method]:.0f} s: {summary(run_dir)}")
        timings["total_before_report"] = round(time.monotonic() - start, 1)
        synth = json.loads((root / "synth.json").read_text())
        summary = write_demo_report(o.out, list(o.methods), synth, configs["image-only"], timings,
                                    seed=o.seed, n_boot=max(o.bootstrap, 1000))
        wall = time.monotonic() - start
        summary["wall_seconds"] = round(wall, 1)
        atomic_write_text(o.out / "demo.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
        say(f"done in {_clock(wall)}: {o.out / 'report.md'}")
    return summary


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
