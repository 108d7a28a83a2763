"""A synthetic brain-MRI twin built on the real MNI152 template, with the age x atrophy confound planted.

Every subject is the MNI152 2009 T1 template shipped inside the ``nilearn`` wheel (no download),
cropped to the brain and resampled to S^3, then: atrophy, a smooth random deformation, a global
intensity scale and noise. Atrophy is one latent amount ``a`` per subject applied as tissue loss
(darkening towards CSF) weighted towards the hippocampi / medial temporal lobes, around the lateral
ventricles and, weakly, in all grey matter:

    planted:  a = (age - 55) / 35 + 0.5 * D        D = 0 (CN), 1 (AD)  [or 0, 1, 2 for CN/MCI/AD]
    null:     a = u + 0.5 * D                      u ~ U(0, 1) independent of age

so ageing and disease make the same change: atrophy a = 0.75 means disease in a 62-year-old and
normal ageing in an 81-year-old. The image shows ``a`` but not its cause; image + age gives D
exactly. Labels are then flipped with probability ``noise``. Age ~ U(55, 90), sex and APOE4
(0/1/2 alleles, 15% missing) are independent of D. Bayes accuracies follow in closed form
(:func:`bayes_accuracies`, piecewise-constant densities integrated exactly).
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from covfuse.data.twins import survival as surv
from covfuse.errors import UserError

EFFECTS = ("planted", "null")
LAYOUTS = ("manifest", "bids")
CLASSES = {2: ["CN", "AD"], 3: ["CN", "MCI", "AD"]}
AGE_RANGE = (55.0, 90.0)
DISEASE_STEP = 0.5  # atrophy added per disease stage, in units of the whole age range's atrophy
APOE4_MISSING = 0.15
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
# Centres (MNI mm) and widths (sd, mm) of the atrophy regions.
HIPPOCAMPI = [((-26.0, -22.0, -14.0), (6.0, 12.0, 6.0)), ((26.0, -22.0, -14.0), (6.0, 12.0, 6.0))]
VENTRICLES = [((-14.0, -4.0, 18.0), (7.0, 16.0, 8.0)), ((14.0, -4.0, 18.0), (7.0, 16.0, 8.0))]
WEIGHTS = {"hippocampi": 0.5, "ventricles": 0.4, "grey_matter": 0.3}


def template_dir() -> Path:
    """nilearn's bundled data folder, found without importing nilearn (its import takes seconds)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("nilearn is not installed; it ships the MNI152 template the twin is built on (pip install nilearn)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


# ------------------------------------------------------------------------------------ Bayes
def bayes_accuracies(num_classes: int = 2, effect: str = "planted", noise: float = 0.05,
                     step: float = DISEASE_STEP) -> dict[str, float]:
    """Exact Bayes accuracies of the twin's label from (image, covariates), image, covariates.

    Given class k (prior 1/C) the image's atrophy is U(k*step, k*step + 1). The best guess from
    the atrophy alone picks the most probable noisy label on each interval between breakpoints,
    where every density is constant, so the integral is a finite sum. Planted: atrophy and age
    give the class exactly (accuracy 1 - noise); null: age adds nothing to the image.
    """
    c = num_classes
    prior = np.full(c, 1.0 / c)

    def noisy(p: np.ndarray) -> np.ndarray:
        return (1 - noise) * p + noise / (c - 1) * (1 - p)

    edges = sorted({k * step for k in range(c)} | {k * step + 1 for k in range(c)})
    image_only = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mid = (lo + hi) / 2
        density = prior * np.asarray([float(k * step <= mid <= k * step + 1) for k in range(c)])
        if density.sum() == 0:
            continue
        image_only += (hi - lo) * density.sum() * noisy(density / density.sum()).max()
    covariates_only = float(noisy(prior).max())
    both = (1 - noise) if effect == "planted" else image_only
    return {"image_and_covariates": round(float(both), 6), "image_only": round(float(image_only), 6),
            "covariates_only": round(covariates_only, 6)}


# --------------------------------------------------------------------------------- template
def _gaussian(shape, affine: np.ndarray, centre, sd) -> np.ndarray:
    """exp(-d^2/2) with d the sd-scaled distance to ``centre`` (mm), on the voxel grid of ``affine``."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    mm = affine[:3, :3] @ idx + affine[:3, 3:4]
    d2 = sum(((mm[i] - centre[i]) / sd[i]) ** 2 for i in range(3))
    return np.exp(-0.5 * d2).reshape(shape).astype(np.float32)


def base_template(size: int) -> dict[str, np.ndarray]:
    """T1 (0..1), grey-matter probability, the atrophy weight map and the affine, at ``size``^3."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    folder = template_dir()
    maps = {}
    for name in ("t1", "gm"):
        path = folder / TEMPLATE.format(name)
        if not path.is_file():
            raise UserError(f"{path} not found: the MNI152 template ships inside the nilearn wheel; reinstall nilearn")
        image = nib.load(str(path))
        maps[name] = np.asanyarray(image.dataobj).astype(np.float32) / 255.0
        affine = image.affine
    mask = maps["t1"] > 0
    lo, hi = np.argwhere(mask).min(0), np.argwhere(mask).max(0) + 1
    side = int((hi - lo).max()) + 4
    start = ((lo + hi) // 2 - side // 2).astype(int)
    cube = {}
    for name, volume in maps.items():
        padded = np.zeros((side,) * 3, np.float32)
        src = [slice(max(s, 0), min(s + side, n)) for s, n in zip(start, volume.shape)]
        dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start)]
        padded[tuple(dst)] = volume[tuple(src)]
        resized = F.interpolate(torch.from_numpy(padded)[None, None], size=(size,) * 3, mode="area")
        cube[name] = np.clip(resized[0, 0].numpy(), 0, 1)
    voxel = side / size
    out_affine = np.diag([voxel, voxel, voxel, 1.0])
    out_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3] + (voxel - 1) / 2
    shape = (size,) * 3
    hippo = sum(_gaussian(shape, out_affine, c, s) for c, s in HIPPOCAMPI)
    vent = sum(_gaussian(shape, out_affine, c, s) for c, s in VENTRICLES)
    brain = (cube["t1"] > 0.02).astype(np.float32)
    weight = brain * (WEIGHTS["hippocampi"] * hippo + WEIGHTS["ventricles"] * vent + WEIGHTS["grey_matter"] * cube["gm"])
    return {"t1": cube["t1"] * brain, "weight": weight.astype(np.float32), "affine": out_affine}


def _warp(volume: np.ndarray, rng: np.random.Generator, amplitude: float, coarse: int = 6) -> np.ndarray:
    """``volume`` resampled through a smooth random displacement (``amplitude`` voxels, sd): random
    vectors on a coarse grid, upsampled trilinearly, applied by torch's grid_sample (trilinear)."""
    import torch
    import torch.nn.functional as F

    size = volume.shape[0]
    coarse_field = torch.from_numpy(rng.normal(0.0, amplitude * 2 / size, size=(1, 3, coarse, coarse, coarse)).astype(np.float32))
    field = F.interpolate(coarse_field, size=volume.shape, mode="trilinear", align_corners=True)
    axis = torch.linspace(-1, 1, size)
    # grid_sample's grid holds (x, y, z) = (last, middle, first) array axis.
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")[::-1], dim=-1)[None]
    grid = grid + field.permute(0, 2, 3, 4, 1).flip(-1)
    out = F.grid_sample(torch.from_numpy(volume)[None, None], grid, mode="bilinear", align_corners=True)
    return out[0, 0].numpy()


def subject_volume(base: dict[str, np.ndarray], atrophy: float, rng: np.random.Generator) -> np.ndarray:
    """One subject: tissue loss ``atrophy * weight``, a smooth deformation, intensity scale and noise."""
    size = base["t1"].shape[0]
    loss = np.clip(atrophy * base["weight"], 0.0, 0.9)
    volume = (base["t1"] * (1.0 - loss)).astype(np.float32)
    volume = _warp(volume, rng, amplitude=0.02 * size)
    inside = volume > 0.02
    volume = volume * rng.uniform(0.9, 1.1) + inside * rng.normal(0.0, 0.02, size=volume.shape).astype(np.float32)
    return np.clip(volume, 0.0, None) * inside


# ---------------------------------------------------------------------------------- subjects
def draw_subjects(n: int, seed: int, effect: str, num_classes: int, noise: float) -> dict[str, np.ndarray]:
    """Covariates, latent disease stage, atrophy and (noisy) label for ``n`` subjects."""
    rng = np.random.default_rng([seed, 1])
    age = np.round(rng.uniform(*AGE_RANGE, size=n), 1)
    sex = rng.choice(np.array(["F", "M"]), size=n)
    apoe4 = rng.choice(3, size=n, p=surv.APOE4_P).astype(float)
    apoe4_true = apoe4.copy()  # the survival twin's hazard uses the allele count the manifest may hide
    apoe4[rng.random(n) < APOE4_MISSING] = np.nan
    stage = rng.integers(0, num_classes, size=n)
    age_part = (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0]) if effect == "planted" else rng.uniform(0, 1, size=n)
    atrophy = age_part + DISEASE_STEP * stage
    label = stage.copy()
    flip = rng.random(n) < noise
    shift = rng.integers(1, num_classes, size=n)  # to one of the other classes, uniformly
    label[flip] = (stage[flip] + shift[flip]) % num_classes
    return {"age": age, "sex": sex, "apoe4": apoe4, "apoe4_true": apoe4_true, "stage": stage, "atrophy": atrophy,
            "label": label}


def _split_codes(n: int, seed: int) -> np.ndarray:
    """60 / 20 / 20 train / valid / test, one subject per volume, shuffled."""
    rng = np.random.default_rng([seed, 2])
    n_train, n_valid = int(round(0.6 * n)), int(round(0.2 * n))
    codes = np.array(["train"] * n_train + ["valid"] * n_valid + ["test"] * (n - n_train - n_valid))
    return codes[rng.permutation(n)]


def data_card(info: dict) -> str:
    b = info["bayes_accuracy"]
    classes = "/".join(info["classes"])
    lines = [
        "covfuse synthetic brain-MRI twin (covfuse data synth3d)",
        "",
        f"{info['n']} subjects, one T1 volume each ({info['size']}^3 voxels of {info['voxel_mm']:.2f} mm, RAS, int16 NIfTI),",
        "built from the MNI152 2009a symmetric T1 template and grey-matter map shipped inside nilearn.",
        f"Target: diagnosis ({classes}); covariates: age (years), sex (F/M), APOE4 (alleles; ~15% missing).",
        f"Effect: {info['effect']}. Rule: {info['rule']}",
        f"Labels flipped to another class with probability {info['noise']}.",
        "",
        "Atrophy = tissue loss (darkening towards CSF) weighted towards the hippocampi, around the",
        "lateral ventricles and weakly in all grey matter; ageing and disease produce the SAME change,",
        "so the image alone cannot tell a young patient from an old control with the same atrophy.",
        "",
        "Exact Bayes accuracies (covfuse.data.twins.brains.bayes_accuracies):",
        f"  image + covariates  {b['image_and_covariates']:.3f}",
        f"  image only          {b['image_only']:.3f}",
        f"  covariates only     {b['covariates_only']:.3f}",
        "",
        f"Splits (by subject): train {info['splits']['train']}, valid {info['splits']['valid']}, test {info['splits']['test']}.",
        (f"Files (BIDS): dataset_description.json, participants.tsv/.json (diagnosis, age, sex, APOE4"
         f"{', time, event' if 'survival' in info else ''}; no split:\n"
         "BIDS has none, covfuse splits subjects by seed), sub-*/anat/sub-*_T1w.nii.gz, synth.json."
         if info.get("format") == "bids" else
         "Files: manifest.csv (subject,path,split,diagnosis,age,sex,APOE4), volumes/*.nii.gz, synth.json."),
        f"Seed {info['seed']}: same seed, same files.",
    ]
    if "survival" in info:
        s, c = info["survival"], info["survival"]["c_index"]
        lines += [
            "",
            f"Survival (columns time, event; {s['events']} of {info['n']} converted): {s['rule']}.",
            "C-index (Harrell) from the generating model, Monte Carlo over "
            f"{s['monte_carlo_pairs']:,} pairs of fresh subjects (covfuse.data.twins.survival), of E[eta | what a model sees]:",
            f"  true risk (ceiling)  {c['true_risk']:.3f}",
            f"  image + covariates   {c['image_and_covariates']:.3f}",
            f"  image only           {c['image_only']:.3f}",
            f"  covariates only      {c['covariates_only']:.3f}",
        ]
        if info.get("format") != "bids":  # the BIDS card already names participants.tsv's columns
            lines[lines.index(next(x for x in lines if x.startswith("Files: manifest.csv")))] = (
                "Files: manifest.csv (subject,path,split,diagnosis,age,sex,APOE4,time,event), volumes/*.nii.gz, "
                "synth.json.")
    return "\n".join(lines) + "\n"


def _write_bids(folder: Path, manifest_csv: str, classes: list[str]) -> None:
    """The BIDS files around the volumes: the twin's manifest rows become participants.tsv (its split
    column is dropped: BIDS has none), with participants.json declaring levels and units. The twin has
    one scan per subject, so there are no sessions."""
    rows = list(csv.DictReader(io.StringIO(manifest_csv)))
    columns = ["diagnosis", "age", "sex", "APOE4", *(["time", "event"] if rows and "time" in rows[0] else [])]
    lines = ["\t".join(["participant_id", *columns])]
    lines += ["\t".join([r["subject"], *(r[c] or "n/a" for c in columns)]) for r in rows]
    (folder / "participants.tsv").write_text("\n".join(lines) + "\n")
    sidecar = {
        "diagnosis": {"Description": "diagnosis (synthetic)", "Levels": {c: c for c in classes}},
        "age": {"Description": "age at scan", "Units": "years"},
        "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
        "APOE4": {"Description": "number of APOE e4 alleles (n/a: not genotyped)"},
    }
    if "time" in columns:  # the survival twin: time to conversion and whether it was observed
        sidecar["time"] = {"Description": "time from the scan to conversion, or to the last visit when censored",
                           "Units": "years"}
        sidecar["event"] = {"Description": "1: converted at time; 0: censored (event-free then)"}
    (folder / "participants.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    description = {"Name": "covfuse synthetic brain-MRI twin", "BIDSVersion": "1.10.0", "DatasetType": "raw",
                   "GeneratedBy": [{"Name": "covfuse data synth3d"}]}
    (folder / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    (folder / ".bidsignore").write_text("synth.json\n")


def write_synth3d(out: str | Path, *, n: int = 600, seed: int = 0, effect: str = "planted", size: int = 64,
                  num_classes: int = 2, noise: float = 0.05, overwrite: bool = False, progress: bool = False,
                  layout: str = "manifest", survival: bool = False) -> Path:
    """Write the twin to ``out`` (through a temporary sibling folder, renamed at the end), as ``manifest.csv``
    + ``volumes/`` (``layout="manifest"``) or as a BIDS dataset (``"bids"``, see :func:`_write_bids`);
    ``survival`` adds ``time`` and ``event`` columns (:mod:`covfuse.data.twins.survival`)."""
    import nibabel as nib
    from tqdm import tqdm

    out = Path(out)
    if effect not in EFFECTS:
        raise UserError(f"unknown effect {effect!r}; choose from {', '.join(EFFECTS)}")
    if layout not in LAYOUTS:
        raise UserError(f"unknown --format {layout!r}; choose from {', '.join(LAYOUTS)}")
    if num_classes not in CLASSES:
        raise UserError(f"--classes must be 2 (CN/AD) or 3 (CN/MCI/AD), got {num_classes}")
    if n < 3 * num_classes:
        raise UserError(f"--n must be at least {3 * num_classes} (every split needs subjects), got {n}")
    if not 8 <= size <= 256:
        raise UserError(f"--size must be between 8 and 256 voxels, got {size}")
    if not 0 <= noise < 1 - 1 / num_classes:
        raise UserError(f"--noise must be in [0, {1 - 1 / num_classes:.2f}), got {noise}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite to replace it")
    base = base_template(size)
    subjects = draw_subjects(n, seed, effect, num_classes, noise)
    splits = _split_codes(n, seed)
    classes = CLASSES[num_classes]
    times = None
    if survival:
        eta = surv.log_hazard(subjects, effect, DISEASE_STEP)
        times = surv.draw_times(eta, np.random.default_rng([seed, 4]))
        if not all(times[1][splits == s].any() for s in ("train", "valid", "test")):
            raise UserError(f"--n {n}: a split drew no conversion; use a larger --n (or another --seed)")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["subject", "path", "split", "diagnosis", "age", "sex", "APOE4",
                         *(["time", "event"] if survival else [])])
        for i in tqdm(range(n), desc="drawing subjects", unit="vol", disable=not progress, mininterval=2):
            rng = np.random.default_rng([seed, 3, i])
            volume = subject_volume(base, float(subjects["atrophy"][i]), rng)
            image = nib.Nifti1Image(np.round(volume * 1000).astype(np.int16), base["affine"])
            image.header.set_xyzt_units("mm")
            subject = f"sub-{i + 1:04d}"
            rel = f"{subject}/anat/{subject}_T1w.nii.gz" if layout == "bids" else f"volumes/{subject}.nii.gz"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            nib.save(image, str(tmp / rel))
            apoe = subjects["apoe4"][i]
            writer.writerow([subject, rel, splits[i], classes[int(subjects["label"][i])], f"{subjects['age'][i]:.1f}",
                             subjects["sex"][i], "" if np.isnan(apoe) else str(int(apoe)),
                             *([f"{times[0][i]:.2f}", int(times[1][i])] if survival else [])])
        if layout == "bids":
            _write_bids(tmp, table.getvalue(), classes)
        else:
            (tmp / "manifest.csv").write_text(table.getvalue())
        step = DISEASE_STEP
        rule = (f"atrophy = (age - 55) / 35 + {step} * stage" if effect == "planted"
                else f"atrophy = u + {step} * stage, u ~ U(0, 1) independent of age")
        info = {
            "bayes_accuracy": bayes_accuracies(num_classes, effect, noise),
            "target": "diagnosis", "classes": classes, "covariates": ["age", "sex", "APOE4"],
            "rule": rule + f"; stage uniform over {'/'.join(classes)}", "noise": noise, "effect": effect,
            "seed": seed, "n": n, "size": size, "voxel_mm": float(base["affine"][0, 0]), "format": layout,
            "splits": {s: int((splits == s).sum()) for s in ("train", "valid", "test")},
            "template": f"nilearn/datasets/data/{TEMPLATE.format('t1')} (+ gm)",
            "atrophy_weights": WEIGHTS, "stage_rates": [float((subjects['stage'] == k).mean()) for k in range(num_classes)],
        }
        if survival:
            draw = lambda m, s: draw_subjects(m, s, effect, num_classes, noise)  # noqa: E731
            info["survival"] = {
                "rule": surv.RULES[effect] + f"; conversion rate {surv.BASE_HAZARD}/year * exp(eta); censored at "
                        f"{surv.FOLLOW_UP:g} years (end of follow-up) and by drop-out at {surv.DROPOUT}/year",
                "time": "time", "event": "event", "events": int(times[1].sum()),
                "c_index": surv.population_cindex(effect, num_classes, DISEASE_STEP, draw, seed=seed),
                "monte_carlo_pairs": surv.MONTE_CARLO_PAIRS,
            }
        (tmp / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.txt").write_text(data_card(info))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
