"""What the best checkpoint of a run scored, as files: predictions.csv and metrics.json (plus, for a
head scored against the training split, the files of :mod:`covfuse.training.survival_run`; for a
classifier, the calibration, precision-recall and decision-curve plots of
:mod:`covfuse.training.clinical_plots`), and the one-line summary of metrics.json.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from covfuse.errors import RunDiverged, UserError
from covfuse.survival.loss import cox_loss
from covfuse.training import clinical, clinical_plots, survival_run
from covfuse.training.config import RunConfig
from covfuse.training.datamodule import TRAIN_EVAL, CovfuseDataModule
from covfuse.training.metrics import PRIMARY, log_loss, split_metrics
from covfuse.training.rundir import write_text
from covfuse.training.tasks import Task, task_of

log = logging.getLogger("covfuse.training")

EVAL_SPLITS = ("valid", "test")
"""The splits a run's best checkpoint is scored on unless told otherwise."""

THRESHOLD_SPLIT = "valid"
"""The split a binary run's decision threshold is chosen on (``metrics.threshold``), before test is scored."""

log = logging.getLogger("covfuse.training")


def decision_threshold(config: RunConfig, labels, probs) -> dict:
    """metrics.json's ``threshold`` of a binary run: ``metrics.threshold`` chosen on the validation split's
    labels and P(positive) (:func:`covfuse.training.clinical.choose_threshold`), with the split it came from."""
    choice = clinical.choose_threshold(clinical.parse_threshold(config.metrics.threshold), labels, probs)
    if choice.get("note"):
        log.warning("metrics.threshold: %s", choice["note"])
    return {**choice, "split": THRESHOLD_SPLIT}


def recorded_threshold(run_dir: Path, config: RunConfig) -> dict:
    """The decision threshold a binary run chose (metrics.json's ``threshold``), for ``covfuse predict``;
    a run scored before thresholds were recorded used 0.5. A rule not yet applied (no metrics.json) is a UserError."""
    path = Path(run_dir) / "metrics.json"
    if path.is_file():
        return json.loads(path.read_text()).get("threshold") or {"rule": "0.5", "value": 0.5}
    rule = clinical.parse_threshold(config.metrics.threshold)
    if rule[0] != "fixed":
        raise UserError(f"{run_dir}: no metrics.json, so metrics.threshold {clinical.threshold_text(rule)} has not been "
                        f"chosen on the valid split yet; score the run first: covfuse test {run_dir}")
    return {"rule": clinical.threshold_text(rule), "value": rule[1]}


def scored_splits(config: RunConfig, splits: Sequence[str]) -> list[str]:
    """The splits the best checkpoint scores: ``splits``, and for a head whose scores need the training
    split (survival: the Breslow baseline) also the training split without augmentation (``TRAIN_EVAL``)."""
    return [*splits, TRAIN_EVAL] if task_of(config.model.head).reference else list(splits)


def split_loss(task: Task, config: RunConfig, labels: np.ndarray, outputs: np.ndarray) -> float | None:
    """metrics.json's ``loss`` of one split, the head's training loss over the whole split at once: the
    cross-entropy of the probabilities (binary, multi-class), the Cox partial likelihood per event with
    one risk set for the split and the run's tie rule (survival; NaN without an event); None for
    regression (its loss is on the standardised target). A search monitoring ``val/loss`` ranks trials
    by it."""
    if task.log_loss:
        return log_loss(labels, outputs)
    if task.loss == "cox":
        y = torch.from_numpy(np.asarray(labels, dtype=np.float64).reshape(-1, 2))
        if not (y[:, 1] > 0.5).any():
            return float("nan")
        return float(cox_loss(torch.from_numpy(np.asarray(outputs, dtype=np.float64)), y[:, 0], y[:, 1],
                              ties=config.model.ties))
    return None


def log_missing(split: str, entry: dict) -> None:
    """One line naming the scores of a split metrics.json writes as null, each with its reason."""
    missing = [f"{key[:-len('_reason')]} ({why})" for key, why in entry.items()
               if key.endswith("_reason") and not key.endswith("_ci_reason")]
    if missing:
        log.warning("%s: no %s", split, "; no ".join(missing))


def write_results(run_dir: Path, config: RunConfig, data: CovfuseDataModule,
                  outputs: dict[str, dict[str, torch.Tensor]], extra: dict | None = None) -> dict:
    """predictions.csv and metrics.json from the per-sample outputs of the scored splits; returns metrics.json's content.

    predictions.csv has ``id, group, split``, the label columns, the prediction columns and the raw
    covariates (**contract**): ``label`` and, for binary heads, ``probability`` (P(target = 1)); for a
    multi-class head ``prediction`` (the argmax class index; names in metrics.json ``classes``) and
    one ``probability_<class>`` column per class; for regression ``prediction`` in target units; for
    survival ``time``, ``event`` and ``risk`` (higher = earlier event) in place of ``label``
    (:mod:`covfuse.training.tasks`). A survival run also writes survival_baseline.json, survival.csv
    and the plots of :mod:`covfuse.training.survival_run`, and scores every split against the
    training split's reference.
    """
    task = task_of(config.model.head)
    reference = None
    if task.reference:
        outputs = dict(outputs)
        reference = survival_run.reference(config, data, outputs)
    classes = list(getattr(data, "classes", []) or [])
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", "group", "split", *task.label_columns, *task.columns(classes), *data.covariate_names])
    known = {"classes": classes, "event": config.data.event}
    metrics: dict[str, Any] = {
        "run": config.name,
        "task": task.name,
        "target": data.target_name,
        **{key: known[key] for key in task.recorded},
        "covariates": data.covariate_names,
        "covariates_mode": config.data.covariates_mode,
        **(extra or {}),
    }
    threshold = 0.5
    if task.name == "binary":  # chosen on valid before any other split is scored, then applied unchanged
        if THRESHOLD_SPLIT not in outputs:
            raise UserError(f"metrics.threshold is chosen on the {THRESHOLD_SPLIT} split, which was not scored")
        out = outputs[THRESHOLD_SPLIT]
        index = out["index"].numpy().astype(np.int64)
        metrics["threshold"] = decision_threshold(config, data.labels[index], out["output"].numpy().astype(np.float64))
        threshold = metrics["threshold"]["value"]
    scored = {}
    for split, out in outputs.items():
        index = out["index"].numpy().astype(np.int64)
        value = out["output"].numpy().astype(np.float64)
        bad = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
        if bad.any():  # never a predictions.csv with NaN (a checkpoint whose weights diverged)
            raise RunDiverged(f"the model's output is NaN/Inf for {int(bad.sum())} of {len(value)} {split} sample(s) "
                              f"(first: {data.filenames(index[bad][:1])[0]}); nothing written. Check the inputs for "
                              "NaN/Inf (`covfuse data info ROOT`, data.nonfinite) and the checkpoint (--ckpt last|best)")
        label = data.labels[index].astype(task.label_dtype)
        real = data.covariates_real[index]
        clusters = data.groups(index)  # identity / subject: intervals resample people, not images
        for name, group, y, v, covs in zip(data.filenames(index), clusters, label, value, real):
            writer.writerow([name, group, split, *task.label_cells(y), *task.cells(v), *(f"{c:g}" for c in covs)])
        subgroups = data.covariate_groups(index)  # in the table's units: age bins, levels, "missing"
        metrics[split] = split_metrics(label, value, subgroups, loss=split_loss(task, config, label, value),
                                       clusters=clusters if config.bootstrap_unit == "group" else None,
                                       n_boot=config.bootstrap, seed=config.seed, task=task.name, reference=reference,
                                       threshold=threshold)
        log_missing(split, metrics[split])
        scored[split] = (label, value, clusters)
    if reference is not None:
        metrics["survival"] = {"eval_times": reference.grid, "tau": reference.tau, **reference.sources}
        reference.save(run_dir)
        write_text(run_dir / "survival.csv", survival_run.survival_table(reference, data, outputs))
        survival_run.figures(run_dir, reference, data, outputs)
    write_text(run_dir / "predictions.csv", table.getvalue())
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    shown = "test" if "test" in scored else next(iter(scored), None)  # a search trial scores valid only
    if shown is not None:
        label, value, clusters = scored[shown]
        clinical_plots.run_figures(run_dir, task.name, label, value, split=shown, groups=clusters,
                                   threshold=metrics.get("threshold", {}).get("value"), classes=classes)
    return metrics


def summary(run_dir: Path) -> str:
    """One line: the task's primary score with CI per split (and AUROC for binary runs), and a chosen
    decision threshold, from metrics.json; a score that could not be computed as — with its reason."""
    m = json.loads((run_dir / "metrics.json").read_text())
    name = PRIMARY[m.get("task", "binary")]
    parts = []
    for split in EVAL_SPLITS:
        if split in m:
            s = m[split]
            lo, hi = s[f"{name}_ci"]
            ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
            auroc = f", auroc {s['auroc']:.3f}" if s.get("auroc") is not None else ""
            value = f"{s[name]:.3f}" if s[name] is not None else f"— ({s.get(f'{name}_reason', 'undefined')})"
            parts.append(f"{split} {name.replace('_', ' ')} {value}{ci}{auroc}")
    rule = m.get("threshold") or {}
    if rule and rule.get("rule") != f"{rule.get('value'):g}":
        parts.append(f"threshold {rule['value']:.4g} ({rule['rule']} on {rule.get('split', 'valid')})")
    return "; ".join(parts)
