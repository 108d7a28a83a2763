"""The demo: a study of the six fusion methods on a synthetic twin with a planted interaction.

The twin's target depends on a visible cue chosen by the invisible covariate Young (see
covfuse.data.twins.faces), so an image-only CNN is capped at the twin's image-only Bayes accuracy while a
model that conditions its convolutions on Young can reach the image+covariates Bayes accuracy.
``--effect null`` writes a twin where covariates carry nothing: then no method may beat image-only.
The demo is an ordinary study (:mod:`covfuse.studies.sweep` and :mod:`covfuse.studies.report`),
one cell per method, with the twin's Bayes accuracies added to the report.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from covfuse.data._workers import available_cpus
from covfuse.data.twins.brains import write_synth3d
from covfuse.data.twins.faces import write_synth
from covfuse.errors import UserError
from covfuse.io import atomic_write_text
from covfuse.layers.autotune import cache_home
from covfuse.studies.format import json_safe
from covfuse.studies.report import build_report, write_report
from covfuse.studies.sweep import grown, plan_study, prepare_study, run_status, run_study, write_study
from covfuse.training import runlog
from covfuse.training.config import default_monitor

METHODS = ("image-only", "covariates-only", "concat", "film", "daft", "hybrid")
BASELINE = "image-only"
MARKER = ".covfuse-demo"  # marks a folder the demo wrote, so a later demo continues it
CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"
VOLUME_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "volumes" / "demo.yaml"


@dataclass
class DemoOptions:
    out: Path = Path("demo-out")
    effect: str = "planted"
    n: int = 8000
    seed: int = 0
    epochs: int | None = None  # None: the config's trainer.max_epochs
    image_size: tuple[int, int] = (89, 109)
    data: Path | None = None  # None: the user cache folder (see twin_folder)
    methods: tuple[str, ...] = METHODS
    config: Path = CONFIG
    bootstrap: int = 1000
    overwrite: bool = False
    volumes: bool = False  # the 3D study: the MNI152 twin (covfuse.data.twins.brains), configs/volumes/demo.yaml
    size: int = 64  # volumes: cube side in voxels
    command: tuple[str, ...] = ()  # the command as typed (every option), printed to resume an interrupted demo


def say(text: str) -> None:
    """A progress line on stdout (and, through the tee, in log.txt)."""
    print(f"[demo] {text}", flush=True)


def twin_folder(o: DemoOptions) -> Path:
    if o.data is not None:
        return o.data
    if o.volumes:
        return Path(cache_home()) / f"synth3d-{o.effect}-n{o.n}-s{o.seed}-{o.size}"
    w, h = o.image_size
    return Path(cache_home()) / f"synth-{o.effect}-n{o.n}-s{o.seed}-{w}x{h}"


def data_root(o: DemoOptions) -> Path:
    """What data.root points at: the twin's manifest (volumes) or its CelebA folder."""
    return twin_folder(o) / ("manifest.csv" if o.volumes else "celeba")


def twin_reusable(o: DemoOptions) -> bool:
    """True when the twin folder already holds the wanted twin, False when it is to be written;
    a UserError when it may not be written (another twin under --data, or a foreign folder). Writes nothing."""
    folder = twin_folder(o)
    info = folder / "synth.json"
    wanted = {"effect": o.effect, "n": o.n, "seed": o.seed, "image_size": list(o.image_size), "images": True}
    if o.volumes:
        wanted = {"effect": o.effect, "n": o.n, "seed": o.seed, "size": o.size, "classes": ["CN", "AD"]}
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
    folder = twin_folder(o)
    if twin_reusable(o):
        say(f"reusing the synthetic twin in {folder}")
        return folder
    if o.volumes:
        say(f"writing a synthetic MRI twin ({o.n} subjects, effect {o.effect}, {o.size}^3 voxels) to {folder}")
        return write_synth3d(folder, n=o.n, seed=o.seed, effect=o.effect, size=o.size, overwrite=True, progress=True)
    say(f"writing a synthetic twin ({o.n} images, effect {o.effect}, {o.image_size[0]}x{o.image_size[1]} px) to {folder}")
    write_synth(folder, n=o.n, seed=o.seed, effect=o.effect, image_size=o.image_size, overwrite=True,
                workers=available_cpus(), progress=True)
    return folder


def check_out(out: Path) -> None:
    """``out`` may hold nothing, or a previous demo (its finished methods are kept); anything else is refused."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MARKER).is_file() and not (out / "study.json").is_file():
            raise UserError(f"{out} exists and was not written by `covfuse demo`; choose another --out "
                            "(the demo never deletes a folder)")


def prepare_out(out: Path) -> None:
    """Create ``out`` (kept as it is when a previous demo wrote it) and mark it as the demo's."""
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `covfuse demo`; a later demo with the same options continues it "
                              "(finished methods are kept)\n")


def plan(o: DemoOptions):
    """The demo's study: one cell per method, all on the same twin, seed and settings."""
    if not o.config.is_file():
        raise UserError(f"{o.config}: the demo config is missing (it ships in configs/ of a source checkout); "
                        "pass --config FILE")
    overrides = ["--data.root", str(data_root(o)), "--bootstrap", str(o.bootstrap), "--trainer.summary", "false"]
    if o.volumes:
        overrides += ["--data.image_size", str(o.size)]
    if o.epochs is not None:
        overrides += ["--trainer.max_epochs", str(o.epochs)]
    # check_data=False: the demo writes its twin after planning
    return plan_study(name="demo", check_data=False, configs=[str(o.config)], overrides=overrides, seeds=[o.seed],
                      cells={m: {"model.fusion": m} for m in o.methods}, baseline=BASELINE, study_dir=o.out,
                      argv=list(o.command) or ["covfuse", "demo", *(["--volumes"] if o.volumes else []), "--out", str(o.out)])


def context_lines(synth: dict, config) -> list[str]:
    """The twin and the shared training settings, for the top of report.md."""
    bayes = synth.get("bayes_accuracy", {})
    if "size" in synth:  # the MRI twin (covfuse.data.twins.brains)
        twin = [
            f"Synthetic brain-MRI twin on the MNI152 template: {synth.get('n')} subjects, {synth['size']}^3 voxels, "
            f"effect **{synth.get('effect')}**, seed {synth.get('seed')}. Rule: {synth.get('rule')}. "
            f"Target {synth.get('target')} ({'/'.join(synth.get('classes', []))}); covariates "
            f"{', '.join(config.data.covariates)} (encoded: standardised with training statistics, one-hot, "
            "missing-value indicators).",
            "",
            f"Every method: {config.model.backbone} at {config.data.image_size}^3, {config.trainer.max_epochs} epoch(s), "
            f"batch {config.data.batch_size}, {config.optim.optimizer} lr {config.optim.lr:g} ({config.optim.schedule}); "
            f"hybrid convs at `{config.model.hybrid_layers}`, FiLM and DAFT after conv1-BN of the last stage "
            "(`layer4.bn1`: where DAFT's scripts put DAFT, and covfuse's default for FiLM too; docs/methods.md); best "
            f"checkpoint by {default_monitor(config)}. Intervals resample subjects.",
        ]
        return twin + ["", _bayes_line(bayes)]
    return [
        f"Synthetic CelebA twin: {synth.get('n')} images of {synth['image_size'][0]}x{synth['image_size'][1]} px, "
        f"effect **{synth.get('effect')}**, seed {synth.get('seed')}. Rule: {synth.get('rule')}. "
        f"Target {synth.get('target')}; covariates {', '.join(config.data.covariates)}.",
        "",
        f"Every method: {config.model.backbone} at {config.data.image_size} px, {config.trainer.max_epochs} epoch(s), "
        f"batch {config.data.batch_size}, {config.optim.optimizer} lr {config.optim.lr:g} ({config.optim.schedule}); "
        f"hybrid convs at `{config.model.hybrid_layers}`; best checkpoint by {default_monitor(config)}. These settings were "
        "chosen by measuring hybrid; `covfuse sweep --tune` gives every method the same search (docs/studies.md).",
        "",
        _bayes_line(bayes),
    ]


def _bayes_line(bayes: dict) -> str:
    return (f"Bayes accuracies of this twin (the best any model can do with those inputs): image + covariates "
            f"{bayes.get('image_and_covariates', float('nan')):.3f}, image only {bayes.get('image_only', float('nan')):.3f}, "
            f"covariates only {bayes.get('covariates_only', float('nan')):.3f}. Image-only is bounded by the second, "
            "covariates-only by the third.")


def run_demo(o: DemoOptions) -> dict:
    """Write the twin (if needed), run the study, write results.json, report.md and figures."""
    from covfuse.studies.check import check_study  # lazy: torch and Lightning (`covfuse demo --help` reads METHODS)

    unknown = [m for m in o.methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown demo method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if BASELINE not in o.methods:
        raise UserError("the demo compares every method with image-only; keep image-only in --methods")
    # Every check that can fail on the user's input runs before anything is written: the configs
    # (every run's), the twin folder, the output folder, a finished method with other settings;
    # once the twin exists (it is needed to build the data), every run's data and model too.
    study = plan(o)
    twin_reusable(o)
    check_out(o.out)
    prepare_study(study, overwrite=o.overwrite, other="choose another --out")
    start = time.monotonic()
    root = ensure_twin(o)
    twin_seconds = time.monotonic() - start
    check_study(grown(study))
    prepare_out(o.out)
    write_study(grown(study))
    with runlog.capture(o.out / "log.txt"):
        done = [r.cell for r in grown(study).runs if r.cell in o.methods and run_status(Path(r.dir)) == "done"]
        say(f"training {len(o.methods)} methods: {', '.join(o.methods)}"
            + (f" ({', '.join(done)} finished already, kept)" if done else ""))
        run_study(study, overwrite=o.overwrite, other="choose another --out")
        synth = json.loads((root / "synth.json").read_text())
        report = build_report(study, baseline=BASELINE, n_boot=max(o.bootstrap, 1000), seed=o.seed)
        bayes = synth.get("bayes_accuracy", {})
        reference = {"Bayes: image + covariates": bayes.get("image_and_covariates"),
                     "Bayes: image only": bayes.get("image_only")}
        write_report(study, report, context=context_lines(synth, study.run_config(study.runs[0])),
                     reference={k: v for k, v in reference.items() if v is not None})
        results, fit_seconds = results_json(study, report)
        atomic_write_text(o.out / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
        wall = time.monotonic() - start
        summary = {
            "bayes_accuracy": bayes,
            "comparisons": results["comparisons"],
            "timings": {"twin": round(twin_seconds, 1), **fit_seconds},
            "test_accuracy": {m: [results["methods"][m]["test"]["accuracy"], results["methods"][m]["test"]["accuracy_ci"]]
                              for m in o.methods},
            "wall_seconds": round(wall, 1),
        }
        atomic_write_text(o.out / "demo.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
        say(f"done in {_clock(wall)}: {o.out / 'report.md'}")
    return summary


def results_json(study, report: dict) -> tuple[dict, dict[str, float]]:
    """results.json (**contract**): each method's valid/test metrics and its comparison with image-only;
    and the seconds each method trained."""
    methods: dict = {}
    seconds: dict[str, float] = {}
    for run in study.runs:
        metrics = json.loads((Path(run.dir) / "metrics.json").read_text())
        methods[run.cell] = {"valid": metrics["valid"], "test": metrics["test"]}
        seconds[run.cell] = metrics.get("fit_seconds")
    comparisons = {r["setting"]: json_safe({"difference": r["difference"], "ci": r["difference_ci"],
                                            "p_value": r["p_value"], "p_adjusted": r["p_adjusted"], "verdict": r["verdict"]})
                   for r in report["rows"] if r["setting"] != report["baseline"]}
    return {"methods": methods, "comparisons": comparisons}, seconds


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
