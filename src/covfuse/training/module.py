"""The LightningModule: a model built by covfuse.models.build, its loss, optimiser and per-sample outputs,
and the losses and running scores the heads of :mod:`covfuse.training.tasks` name.

Training, validation and test share :meth:`CovfuseModule._common_step`. Images arrive as uint8 and
are normalised on the device (a quarter of the host-to-device bytes of float32). The checkpoint
carries everything needed to rebuild the model and feed it: the build arguments, the covariate
names, the target, the image preset and size (``save_hyperparameters``), so ``covfuse test`` and
``covfuse predict`` need nothing but the .ckpt file (:func:`load_module`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, Metric
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy
from torchmetrics.utilities import dim_zero_cat

from covfuse.data.transforms import model_input
from covfuse.errors import UserError
from covfuse.io import load_trusted
from covfuse.models import build
from covfuse.survival.loss import cox_loss
from covfuse.survival.scores import concordance
from covfuse.training.survival_reference import Reference, survival_scores
from covfuse.training.tasks import task_of


class CovfuseModule(L.LightningModule):
    """Wraps ``covfuse.models.build(**model, num_covariates=len(covariates))`` for training.

    Args:
        model: keyword arguments of covfuse.models.build except num_covariates (backbone, fusion, ...).
        covariates: covariate names, in the order of the model's covariate vector.
        target: name of the predicted attribute.
        preset: image preset, for covfuse.data.transforms.normalize.
        image_size: input side in pixels (for predict).
        optim: OptimConfig fields as a dict.
        channels_last: convert model and inputs to NHWC memory format.
        covariates_mode: the data control the model was trained under (recorded for predict).
        covariate_values: per covariate, the values the training split held ({"values": [...]} or
            {"min", "max"}); ``covfuse predict`` refuses values outside them.
        classes: the class names of a classification target, in output order.
        target_stats: regression: ``{"mean", "sd"}`` of the training targets; the network predicts the
            standardised target (so one learning rate suits targets of any scale) and
            :meth:`predictions` returns values in target units.

    What differs between heads (loss, predictions, running scores) comes from the head's entry in
    :data:`covfuse.training.tasks.TASKS` (``self.task``).
    """

    def __init__(
        self,
        model: dict[str, Any],
        covariates: list[str],
        target: str = "Attractive",
        preset: str = "center-crop",
        image_size: int = 64,
        optim: dict[str, Any] | None = None,
        channels_last: bool = False,
        covariates_mode: str = "real",
        covariate_values: dict[str, dict] | None = None,
        classes: list[str] | None = None,
        target_stats: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        options = dict(model)
        extra = options.pop("options", None) or {}
        self.ties = options.pop("ties", None) or "breslow"  # survival: how the Cox loss handles tied times
        self.model = build(num_covariates=len(covariates), **options, **extra)
        self.head = options.get("head", "binary")
        self.task = task_of(self.head)
        self.optim = dict(optim or {})
        self.channels_last = channels_last
        stats = target_stats or {"mean": 0.0, "sd": 1.0}
        self.target_mean, self.target_sd = float(stats["mean"]), float(stats["sd"]) or 1.0
        # The head's running scores: the first (val/acc, val/mae or val/c_index) is also shown in the
        # progress line and logged per training epoch; survival adds val/ibs, a monitor choice.
        num_classes = int(model.get("num_classes") or 0)
        self.score_name, first = next(iter(self.task.scores.items()))
        self.train_score = RUNNING_METRICS[first](num_classes)
        self.val_scores = torch.nn.ModuleDict({name: RUNNING_METRICS[key](num_classes)
                                               for name, key in self.task.scores.items()})
        self.eval_splits: list[str] = ["valid"]  # names of the test dataloaders, in order
        self.outputs: dict[str, dict[str, torch.Tensor]] = {}
        self._collect: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.loaded_from: dict[str, int] = {}
        if channels_last:
            to_channels_last(self.model)

    # -- forward ---------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) on the device -> normalised float input; volumes come normalised (float16)."""
        x = model_input(images, self.hparams.preset)  # volumes come normalised by their preprocessing
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images: torch.Tensor, covariates: torch.Tensor) -> torch.Tensor:
        """Logits for uint8 images and float covariates."""
        return self.model(self.prepare(images), covariates.float())

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """What a prediction is, per head, in float32: P(target = 1) (N,) for binary heads, class
        probabilities (N, C) for multiclass, the predicted value (N,) in target units for regression,
        the risk score (N,) for survival."""
        return self.task.predict(self, logits.float())

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The head's training loss of a batch (:data:`LOSSES`)."""
        return LOSSES[self.task.loss](self, logits.float(), target)

    # -- steps -----------------------------------------------------------------------------
    def _common_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"], batch["covariates"])
        target = batch["target"]
        loss = self.loss(logits, target)
        out = self.predictions(logits).detach()
        score_target = target.to(getattr(torch, self.task.target_dtype))  # survival times stay float64
        n = len(target)
        if stage == "train":
            self.train_score(out, score_target)
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n, sync_dist=True)
            self.log(f"train/{self.score_name}", self.train_score, on_step=False, on_epoch=True, batch_size=n)
        elif stage == "val":
            self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=n, sync_dist=True)
            for k, (name, metric) in enumerate(self.val_scores.items()):
                metric(out, score_target)
                self.log(f"val/{name}", metric, prog_bar=k == 0, on_epoch=True, batch_size=n)
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=n, sync_dist=True, add_dataloader_idx=False)
            kept = score_target if score_target.dtype == torch.float64 else target.float()
            self._collect.setdefault(stage, []).append({"index": batch["index"].detach(), "output": out, "target": kept.detach()})
        return loss

    def training_step(self, batch, batch_idx):
        return self._common_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._common_step(batch, "val")

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._common_step(batch, self.eval_splits[dataloader_idx])

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return self.predictions(self(batch["image"], batch["covariates"]))

    def on_test_epoch_start(self) -> None:
        self._collect = {}
        self.outputs = {}

    def on_test_epoch_end(self) -> None:
        """Gather the per-sample outputs of every process; drop the duplicates a distributed sampler pads with."""
        for stage, parts in self._collect.items():
            out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
            if self.trainer.world_size > 1:
                # (world, n, ...) -> (world * n, ...): class probabilities keep their class axis
                out = {key: value.flatten(0, 1) for key, value in self.all_gather(out).items()}
            out = {key: value.cpu() for key, value in out.items()}
            _, first = np.unique(out["index"].numpy(), return_index=True)
            self.outputs[stage] = {key: value[torch.from_numpy(first)] for key, value in out.items()}
        self._collect = {}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Remember which training step the loaded weights come from (written into metrics.json)."""
        self.loaded_from = {"checkpoint_step": int(checkpoint.get("global_step", -1)),
                            "checkpoint_epoch": int(checkpoint.get("epoch", -1)) + 1}

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.parameters() if p.requires_grad]
        name, lr, wd = o.get("optimizer", "adam"), o.get("lr", 1e-3), o.get("weight_decay", 0.0)
        if name == "adam":
            optimizer = torch.optim.Adam(params, lr=lr, weight_decay=wd)
        elif name == "adamw":
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        else:
            optimizer = torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=o.get("momentum", 0.9))
        schedule, warmup = o.get("schedule", "none"), int(o.get("warmup_steps", 0))
        if schedule == "none" and warmup == 0:
            return optimizer
        if schedule == "step":
            # Per-epoch decay; a warm-up, if any, is applied per step by the lambda below as well.
            step_size, gamma = int(o.get("step_size", 1)), float(o.get("gamma", 0.1))
            steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
            fn = lambda step: _warm(step, warmup) * gamma ** ((step // steps_per_epoch) // step_size)  # noqa: E731
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            cosine = schedule == "cosine"
            fn = lambda step: _warm(step, warmup) * (_cosine(step - warmup, total - warmup) if cosine else 1.0)  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class RunningConcordance(Metric):
    """Harrell's C over an epoch (``update(risk, target)`` with (N, 2) targets): the per-epoch
    ``train/c_index`` and ``val/c_index``, computed once from every sample the epoch saw."""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("risk", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, risk: torch.Tensor, target: torch.Tensor) -> None:
        self.risk.append(risk.detach().float().reshape(-1))
        self.target.append(target.detach().double().reshape(-1, 2))  # times stay float64

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        risk, target = dim_zero_cat(self.risk), dim_zero_cat(self.target)
        return target.cpu().double().numpy(), risk.cpu().double().numpy()

    def compute(self) -> torch.Tensor:
        if not self.risk:
            return torch.tensor(float("nan"))
        target, risk = self._arrays()
        return torch.tensor(float(concordance(target, risk)[0]))


class RunningIBS(RunningConcordance):
    """The validation epoch's integrated Brier score (``val/ibs``, lower is better), from that epoch's
    outputs alone: the Breslow baseline, the censoring distribution and the grid (quartiles of its
    event times) are estimated on the validation samples themselves, because the training split's
    risks are not recomputed every epoch. metrics.json's ``ibs`` is the one with the training split's
    baseline and censoring."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        if not self.risk:
            return torch.tensor(float("nan"))
        target, risk = self._arrays()
        if not (target[:, 1] > 0.5).any():
            return torch.tensor(float("nan"))
        reference = Reference.from_training(target, risk)
        return torch.tensor(float(survival_scores(target, risk, reference=reference)["ibs"][0]))


LOSSES = {
    "binary cross-entropy": lambda m, logits, target: F.binary_cross_entropy_with_logits(logits, target.float()),
    "cross-entropy": lambda m, logits, target: F.cross_entropy(logits, target.long()),
    "mean squared error": lambda m, logits, target: F.mse_loss(logits, (target.float() - m.target_mean) / m.target_sd),
    "cox": lambda m, logits, target: cox_loss(logits, target[:, 0], target[:, 1], ties=m.ties),
}
"""The losses :data:`covfuse.training.tasks.TASKS` names: ``(module, float32 logits, target) -> loss``."""

RUNNING_METRICS = {
    "binary accuracy": lambda num_classes: BinaryAccuracy(),
    "multiclass accuracy": lambda num_classes: MulticlassAccuracy(num_classes=num_classes, average="micro"),
    "mean absolute error": lambda num_classes: MeanAbsoluteError(),
    "concordance": lambda num_classes: RunningConcordance(),
    "integrated brier score": lambda num_classes: RunningIBS(),
}
"""The running scores :data:`covfuse.training.tasks.TASKS` names: ``num_classes -> torchmetrics.Metric``."""


def load_module(path: Path, map_location: str | torch.device = "cpu") -> CovfuseModule:
    """Rebuild the module from a checkpoint's hyper-parameters and load its weights.

    The file is read with ``weights_only=True`` (:func:`covfuse.io.load_trusted`): a checkpoint
    carrying pickled objects is refused before anything in it runs. The model is built with
    ``weights=None``: the checkpoint holds the trained weights, and the ImageNet file the run may
    have started from need not exist on this machine.
    """
    ckpt = load_trusted(path, what="checkpoint", map_location=map_location)
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a covfuse checkpoint (no hyper_parameters/state_dict); give a run's "
                        "checkpoints/best.ckpt or last.ckpt")
    try:
        hparams = dict(ckpt["hyper_parameters"])
        hparams["model"] = {**hparams["model"], "weights": None}
        module = CovfuseModule(**hparams)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a covfuse checkpoint ({' '.join(str(exc).split())[:160]})") from None
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise UserError(f"{path}: its weights do not fit the model its hyper-parameters describe ({first}); "
                        "the file was edited or comes from another model") from None
    module.on_load_checkpoint(ckpt)
    return module


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """NHWC layout for every 4-D parameter and buffer, in place.

    ``model.to(memory_format=torch.channels_last)`` fails on hybrid convolutions, whose
    ``covariate_weight`` is 5-D (K, O, C, kh, kw); those keep their layout.
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``trainer.compile``: torch.compile ``model`` in place (``nn.Module.compile``), so its parameters,
    state-dict keys and checkpoints stay those of the eager model. The conditioned layers trace
    without graph breaks (hybrid `auto` uses a back-end that needs no host sync); a new batch or
    input size recompiles with dynamic shapes."""
    model.compile()
    return model


def _warm(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _cosine(step: int, total: int) -> float:
    if step <= 0:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))
