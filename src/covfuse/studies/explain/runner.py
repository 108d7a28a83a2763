"""``explain_run``: load a trained run, score its split with real and counterfactual covariates,
summarise the conditioning layers, make attribution maps, and write ``explain.json``,
``explain.md`` and ``figures/`` (default ``RUN/explain/``).

The run is reloaded the way ``covfuse test`` and ``covfuse predict`` do it (find_run, the run's
config.yaml, load_module, CovfuseDataModule, model_covariates), so the probabilities here are the
ones ``predictions.csv`` holds for the real covariates.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from covfuse.errors import RunDiverged, UserError, suggest
from covfuse.io import atomic_write_text
from covfuse.studies.explain import attribution as attr
from covfuse.studies.explain import counterfactual as cf
from covfuse.studies.explain import figures, report, twin
from covfuse.studies.explain.kernels import AffineRecorder, weight_summaries
from covfuse.studies.format import json_safe
from covfuse.training import config as cfgmod
from covfuse.training.datamodule import CovfuseDataModule, read_state
from covfuse.training.module import load_module
from covfuse.training.predict import model_covariates
from covfuse.training.rundir import checkpoint_path, find_run

log = logging.getLogger("covfuse.explain")
SPLITS = ("train", "valid", "test")


@dataclass
class Scored:
    """Per-sample results over the split, in loader order."""

    index: np.ndarray
    real_rows: np.ndarray  # (n, K) real covariate values
    labels: np.ndarray
    groups: np.ndarray  # identity per sample: what intervals resample
    prob: np.ndarray  # P(target) with the real covariates
    changed: dict[str, list[np.ndarray]] = field(default_factory=dict)  # covariate -> P per edit
    applies: dict[str, list[np.ndarray]] = field(default_factory=dict)  # covariate -> per edit, the samples it edits

    def pooled(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(change of P, decision flipped, group) over the (sample, edit) pairs of covariate ``name``."""
        return cf.pooled(self.prob, self.changed[name], self.applies[name], self.groups)


def _device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise UserError(f"--accelerator must be auto, cpu or gpu, got {accelerator!r}")
    return torch.device("cpu")


def load(run: str, runs_dir: str | os.PathLike = "runs", ckpt: str = "best", root: str | None = None, split: str = "test"):
    """(run folder, module, data module) for an explainable run; a UserError says why a run is not."""
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}{suggest(split, SPLITS)}")
    run_dir = find_run(str(run), runs_dir)
    config = cfgmod.load(run_dir / "config.yaml")
    if root:
        config.data.root = root
    module = load_module(checkpoint_path(run_dir, ckpt))
    fusion = module.hparams.model.get("fusion")
    if fusion == "image-only" or not module.hparams.covariates:
        raise UserError(f"run {run_dir.name!r} is image-only (fusion {fusion!r}, no covariates): there is no covariate "
                        "to change; explain a run trained with covariates (concat, film, daft, hybrid, ...)")
    if config.model.head not in ("binary", "two-class"):
        raise UserError(f"run {run_dir.name!r} has a {config.model.head} head; covfuse explain reads the log-odds of a "
                        "binary head (binary or two-class)")
    data = CovfuseDataModule(config.data, seed=config.seed, state=read_state(run_dir))
    data.setup("test")
    if data.covariate_names != list(module.hparams.covariates):
        raise UserError(f"{run_dir} was trained with covariates {module.hparams.covariates}, its config now says "
                        f"{data.covariate_names}")
    return run_dir, module, data


def score_split(module, data, split: str, plan: dict[str, list[cf.Change]], device: torch.device,
                recorder: AffineRecorder | None = None, progress: bool = True) -> Scored:
    """P(target) for every sample of ``split`` with its real covariates and with each planned edit."""
    def forward(images, covariates):
        return module.predictions(module(images, covariates))

    loader = data.eval_dataloaders((split,))[0]
    parts: dict[str, list] = {"index": [], "prob": []}
    changed: dict[str, list[list[np.ndarray]]] = {name: [[] for _ in edits] for name, edits in plan.items()}
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"scoring {split}", unit="batch", disable=not progress):
            index = batch["index"].numpy()
            real = data.covariates_real[index]
            if recorder is not None:
                with recorder.recording():
                    p = cf.score(forward, batch["image"], model_covariates(module, real), device)
            else:
                p = cf.score(forward, batch["image"], model_covariates(module, real), device)
            parts["index"].append(index)
            parts["prob"].append(p)
            for name, edits in plan.items():
                for k, change in enumerate(edits):
                    changed[name][k].append(cf.score(forward, batch["image"], model_covariates(module, change.apply(real)), device))
    index = np.concatenate(parts["index"])
    real = data.covariates_real[index]
    return Scored(
        index=index, real_rows=real, labels=data.labels[index].astype(np.int64),
        groups=np.asarray(data.groups(index)), prob=np.concatenate(parts["prob"]),
        changed={name: [np.concatenate(p) for p in per] for name, per in changed.items()},
        applies={name: [e.applies(real) for e in edits] for name, edits in plan.items()},
    )


def counterfactual_table(scored: Scored, plan: dict[str, list[cf.Change]], values: dict[str, list[str]],
                         ids: list[str], split: str) -> str:
    """counterfactuals.csv: per sample its id, group, label, its covariates as the table has them, P with the
    real covariates and with each edit (empty where the edit does not apply: a missing value)."""
    edits = [(e, scored.changed[name][k], scored.applies[name][k]) for name, per in plan.items() for k, e in enumerate(per)]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", "split", "group", "label", "probability", *values, *(e.column for e, _, _ in edits)])
    for i in range(len(scored.index)):
        writer.writerow([ids[i], split, scored.groups[i], int(scored.labels[i]), f"{scored.prob[i]:.6f}",
                         *(v[i] for v in values.values()), *(f"{c[i]:.6f}" if on[i] else "" for _, c, on in edits)])
    return table.getvalue()


def map_edit(scored: Scored, name: str) -> int:
    """Which of a covariate's edits the maps show: the one that applies to the most samples (the first
    of ties: +1 SD, the flip, the swap; for a larger category the level fewest samples are at)."""
    return int(np.argmax([on.sum() for on in scored.applies[name]]))


def pick_examples(scored: Scored, name: str, count: int, seed: int, edit: int = 0) -> np.ndarray:
    """Positions of ``count`` samples the ``edit`` applies to, for the maps: half whose decision it flips,
    half it does not."""
    first, on = scored.changed[name][edit], scored.applies[name][edit]
    flipped = np.flatnonzero(on & ((first >= 0.5) != (scored.prob >= 0.5)))
    kept = np.flatnonzero(on & ((first >= 0.5) == (scored.prob >= 0.5)))
    rng = np.random.default_rng(seed)
    take_f = min(len(flipped), (count + 1) // 2)
    take_k = min(len(kept), count - take_f)
    take_f = min(len(flipped), count - take_k)
    chosen = np.concatenate([rng.choice(flipped, take_f, replace=False), rng.choice(kept, take_k, replace=False)])
    return chosen[np.argsort(-np.abs(first[chosen] - scored.prob[chosen]), kind="stable")]


def _images(data, split: str, index: np.ndarray) -> torch.Tensor:
    """uint8 images for metadata rows ``index`` (any order), read through the split's dataset."""
    dataset = data.datasets[split]
    position = {int(r): i for i, r in enumerate(data.indices[split])}
    return torch.stack([dataset[position[int(r)]]["image"] for r in index])


def _maps(module, layer, images: torch.Tensor, rows: np.ndarray, device, n_steps: int, chunk: int = 64):
    """Attribution maps (method -> (n, *spatial)) for ``images`` (uint8 photos or float volumes) fed ``rows``."""
    f = attr.LogOdds(module.model, module.head)
    out: dict[str, list[np.ndarray]] = {m: [] for m in attr.METHODS}
    fed = model_covariates(module, rows)
    for start in range(0, len(images), chunk):
        x = module.prepare(images[start : start + chunk].to(device)).detach()
        c = torch.as_tensor(fed[start : start + chunk], dtype=torch.float32, device=device)
        for method, m in attr.attribution_maps(f, layer, x, c, n_steps).items():
            out[method].append(m)
    return {m: np.concatenate(v) for m, v in out.items()}


def _attribution(module, data, split: str, scored: Scored, plan: dict[str, list[cf.Change]], truth, layer_name,
                 uses_image: bool, tmp: Path, figs: dict, values: dict[str, list[str]], *, examples: int,
                 mass_images: int, n_steps: int, n_boot: int, seed: int, device) -> dict:
    """Attribution grids per covariate and, on a twin, the cue-box shares; figures go into ``tmp/figures``."""
    attribution: dict = {"layer": layer_name, "methods": list(attr.METHODS), "steps": n_steps}
    if layer_name is None:
        attribution["skipped"] = ("the model does not look at the image (covariates-only)" if not uses_image
                                  else "--examples 0 and --mass-images 0")
    else:
        target_layer = module.model.network.get_submodule(layer_name)
        attribution["examples"] = {}
        for name, edits in plan.items():
            if examples == 0:
                break
            k = map_edit(scored, name)
            edit = edits[k]
            pos = pick_examples(scored, name, examples, seed, k)
            if len(pos) == 0:
                attribution["examples"][name] = {"skipped": f"no sample of the {split} split has a value of {name} to change"}
                continue
            log.info("attribution maps for %s: %d images, real and counterfactual (%s)", name, len(pos), edit.label)
            rows = scored.real_rows[pos]
            images = _images(data, split, scored.index[pos])
            real_maps = _maps(module, target_layer, images, rows, device, n_steps)
            cf_maps = _maps(module, target_layer, images, edit.apply(rows), device, n_steps)
            boxes = truth.input_boxes(scored.index[pos]) if truth is not None else None
            rel = f"figures/maps_{name}.png"
            shown = values[name]
            figures.plot_maps(tmp / rel, name, edit, images, [(shown[p], edit.after(shown[p])) for p in pos],
                              scored.prob[pos], scored.changed[name][k][pos], real_maps, cf_maps, boxes)
            attribution["examples"][name] = {"figure": rel, "images": data.filenames(scored.index[pos])}
        if truth is not None and mass_images > 0:
            rng = np.random.default_rng(seed)
            pos = np.sort(rng.choice(len(scored.index), min(mass_images, len(scored.index)), replace=False))
            images = _images(data, split, scored.index[pos])
            attribution["cue_mass"] = {}
            for name, edits in plan.items():
                if edits[0].kind != "flip":
                    continue
                rows = scored.real_rows[pos].copy()
                lo_rows, hi_rows = rows.copy(), rows.copy()
                lo_rows[:, edits[0].index], hi_rows[:, edits[0].index] = edits[0].lo, edits[0].hi
                log.info("cue-box mass for %s: %d images at %s=%g and %g", name, len(pos), name, edits[0].lo,
                         edits[0].hi)
                lo = _maps(module, target_layer, images, lo_rows, device, n_steps)
                hi = _maps(module, target_layer, images, hi_rows, device, n_steps)
                attribution["cue_mass"][name] = truth.mass_shift(scored.index[pos], scored.groups[pos], edits[0], lo, hi,
                                                                 n_boot=n_boot, seed=seed)
            figs["cue_mass"] = figures.plot_cue_mass(tmp / "figures" / "cue_mass.png", attribution["cue_mass"], truth)
    return attribution


def explain_run(run: str, *, runs_dir: str | os.PathLike = "runs", split: str = "test", examples: int = 16,
                out: str | os.PathLike | None = None, ckpt: str = "best", layer: str | None = None,
                by: Sequence[str] = (), n_boot: int = 2000, seed: int = 0, n_steps: int = 32,
                mass_images: int = 256, accelerator: str = "auto", root: str | None = None,
                overwrite: bool = False, progress: bool = True) -> Path:
    """Explain one run; returns the output folder (written whole, or not at all)."""
    if examples < 0 or mass_images < 0 or n_boot < 1 or n_steps < 1:
        raise UserError("--examples and --mass-images must be >= 0, --n-boot and --steps >= 1")
    start = time.monotonic()
    out_dir = Path(out) if out else find_run(str(run), runs_dir) / "explain"
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:  # before any loading
        raise UserError(f"{out_dir} already exists; pass --overwrite to replace it or --out to write elsewhere")
    run_dir, module, data = load(run, runs_dir, ckpt, root, split)
    names = list(module.hparams.covariates)
    celeba = hasattr(data.meta, "attrs")  # volumes have a manifest instead
    if by and not celeba:
        raise UserError("--by names CelebA attributes; this run's data is a manifest, whose covariates are grouped "
                        "by their values already (drop --by)")
    by_cols = {data.meta.canonical(b): data.meta.attrs[:, data.meta.column(b)] for b in by}
    device = _device(accelerator)
    module.to(device).eval()
    network = module.model.network
    uses_image = module.hparams.model.get("fusion") != "covariates-only"
    layer_name = None
    if uses_image and examples + mass_images > 0:
        modules = dict(network.named_modules())
        layer_name = layer or attr.default_layer(network)
        if layer_name not in modules or not layer_name:
            convs = [n for n, m in modules.items() if isinstance(m, torch.nn.modules.conv._ConvNd) or hasattr(m, "covariate_weight")]
            raise UserError(f"--layer {layer_name!r} is not a module of this model{suggest(layer_name, convs)}; "
                            f"convolutions: {', '.join(convs[-6:])}")
    truth = twin.load_twin(data.meta, module.hparams.preset, module.hparams.image_size) if celeba else None

    constant = data.constant_covariates()
    plan = cf.plan_changes(data.encoder, getattr(data.table, "units", {}), constant, getattr(data.table, "levels", {}))
    unchanged = cf.unchangeable(data.encoder, constant)
    recorder = AffineRecorder(network)
    scored = score_split(module, data, split, plan, device, recorder if recorder.layers else None, progress)
    bad = ~np.isfinite(scored.prob)
    if bad.any():  # weights that diverged: no report of NaN numbers (nor a crash formatting them)
        raise RunDiverged(f"the model's output is NaN/Inf for {int(bad.sum())} of {len(bad)} {split} sample(s) "
                          f"(first: {data.filenames(scored.index[bad][:1])[0]}); nothing written. The checkpoint "
                          f"({ckpt}) holds NaN weights or the inputs NaN values: try --ckpt best or last, and "
                          "`covfuse data info` on the inputs")
    log.info("scored %d %s samples (%d groups) with real and counterfactual covariates", len(scored.prob), split,
             len(np.unique(scored.groups)))

    extra = {f"{b}={v}": col[scored.index] == v for b, col in by_cols.items() for v in (0, 1)}
    if truth is not None:
        extra.update(truth.groups(scored.index))
    groupings = data.covariate_groups(scored.index)  # in the table's units: levels, age bins, "missing"
    values = data.covariate_values(scored.index)
    masks = {key: m for name, g in groupings.items() for key, m in g.masks(name).items()}
    masks.update(extra)
    kinds = {"flip": "binary", "shift": "continuous", "swap": "categorical", "level": "categorical"}
    covariates: dict[str, dict] = {}
    for name, edits in plan.items():
        changed, applies = scored.changed[name], scored.applies[name]
        entry = {"kind": kinds[edits[0].kind],
                 "counterfactual": " and ".join(e.label for e in edits) if len(edits) <= 2
                 else f"{name} set to each other level in turn ({', '.join(e.levels[e.target] for e in edits)})",
                 **cf.summarise(scored.prob, changed, scored.groups, applies, n_boot=n_boot, seed=seed)}
        entry["groups"] = {g: cf.summarise(scored.prob[m], [c[m] for c in changed], scored.groups[m],
                                           [a[m] for a in applies], n_boot=n_boot, seed=seed)
                           for g, m in masks.items() if any((a & m).any() for a in applies)}
        covariates[name] = entry

    layers = weight_summaries(network, names)
    layers.update(recorder.summaries(groupings))

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "figures").mkdir(parents=True)
    try:
        figs: dict[str, str] = {}
        figs["changes"] = figures.plot_changes(tmp / "figures" / "changes.png", scored, plan, masks, truth)
        for lname, summary in layers.items():
            path = figures.plot_layer(tmp / "figures" / f"layer_{lname}.png", lname, summary, recorder, masks)
            if path:
                summary["figure"] = path
        attribution = _attribution(module, data, split, scored, plan, truth, layer_name, uses_image, tmp, figs,
                                   values, examples=examples, mass_images=mass_images, n_steps=n_steps, n_boot=n_boot,
                                   seed=seed, device=device)
        result = {
            "run": str(run_dir), "checkpoint": ckpt, "split": split, "count": int(len(scored.prob)),
            "clusters": int(len(np.unique(scored.groups))),
            "resampled": "identities (identity_CelebA.txt)" if celeba else "subjects (the manifest's subject column)",
            "volume_slices": "maps show the middle slice along the first spatial axis" if data.table.kind == "volume"
            else None,
            "n_boot": n_boot, "seed": seed, "threshold": 0.5,
            "target": module.hparams.target, "fusion": module.hparams.model.get("fusion"),
            "covariates_mode": module.hparams.get("covariates_mode", "real"),
            "accuracy": float(((scored.prob >= 0.5) == scored.labels).mean()),
            "covariates": covariates, "not_changed": unchanged, "layers": layers, "attribution": attribution,
            "twin": truth.describe() if truth is not None else None,
            "figures": figs, "seconds": round(time.monotonic() - start, 1),
        }
        atomic_write_text(tmp / "counterfactuals.csv",
                          counterfactual_table(scored, plan, values, data.filenames(scored.index), split))
        result = json_safe(result)  # undefined numbers (e.g. an all-zero map has no shares) become null
        atomic_write_text(tmp / "explain.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
        atomic_write_text(tmp / "explain.md", report.markdown(result))
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("explained %s in %.1f s: %s", run_dir.name, time.monotonic() - start, out_dir)
    return out_dir
