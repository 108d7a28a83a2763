"""The run configuration: nested dataclasses with documented defaults, read from YAML by jsonargparse.

A config file is a short list of overrides of these defaults (see ``configs/``); the command line
overrides the file (``--optim.lr 1e-4``). Unknown keys are an error. The resolved config is written
to ``runs/<name>/config.yaml`` and is enough to rebuild the run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from covfuse.errors import UserError, suggest

CovariatesMode = Literal["real", "zeros", "ones", "shuffled"]


@dataclass
class DataConfig:
    """Where the images come from and how they are fed.

    Args:
        root: CelebA-format folder (ROOT holding the files, or ROOT/celeba/ as torchvision lays it out), or a volume manifest CSV.
        target: Attribute to predict, by name.
        covariates: Attributes fed to the model as per-sample covariates, by name.
        image_size: Side of the square model input, in pixels.
        preset: How a photo becomes a square input (see covfuse.data.transforms).
        batch_size: Images per training batch (per device).
        eval_batch_size: Images per batch for valid/test/predict; None: same as batch_size.
        num_workers: Data-loading worker processes (0: load in the main process).
        cache: auto: read images from the uint8 memmap cache (`covfuse data cache`) when one exists; build: build it first if missing; off: decode the JPEGs every epoch.
        augment: Training-time augmentation of the dataset (random horizontal flips).
        covariates_mode: Controls: real covariates, all zeros, all ones, or shuffled within each split (seeded).
        folds: 0 for the official train/valid/test split; k >= 2 for k-fold by identity on train+valid (test stays official).
        fold: Which fold is the validation fold when folds >= 2.
        categorical: Volumes: covariate columns to one-hot even if their values are numbers (others are inferred).
        classes: Volumes: the target's class values in order (binary: [negative, positive]); None: sorted values.
        intensity: Volumes: zscore (over the nonzero, in-brain voxels) or minmax (to [0, 1]).
        geometry: Volumes: resize (whole field of view to image_size^3) or crop-pad (centre crop / zero pad).
        spacing: Volumes: resample to this isotropic voxel size in mm before the geometry step (None: keep).
    """

    root: str = ""
    target: str = "Attractive"
    covariates: list[str] = field(default_factory=lambda: ["Male"])
    image_size: int = 224
    preset: str = "center-crop"
    batch_size: int = 32
    eval_batch_size: Optional[int] = None
    num_workers: int = 0
    cache: Literal["auto", "build", "off"] = "auto"
    augment: bool = False
    covariates_mode: CovariatesMode = "real"
    folds: int = 0
    fold: int = 0
    # Volumes only (data.root is a manifest CSV; see docs/volumes.md).
    categorical: list[str] = field(default_factory=list)
    classes: Optional[list[str]] = None
    intensity: Literal["zscore", "minmax"] = "zscore"
    geometry: Literal["resize", "crop-pad"] = "resize"
    spacing: Optional[float] = None


@dataclass
class ModelConfig:
    """The model, passed to covfuse.models.build.

    Args:
        backbone: torchvision name (vgg16_bn, resnet18, ...) or vgg-mini.
        fusion: image-only, covariates-only, concat, film, daft or hybrid.
        hybrid_layers: Convs made hybrid: first, last, all, or a list of module names (e.g. [features.0, features.40]).
        weights: None (random init), imagenet (local torchvision cache only), or a path to a state dict.
        regime: finetune (train everything) or another regime covfuse.models.build accepts.
        head: binary (one logit, BCE loss) or two-class (two logits, cross-entropy, as in the research).
        options: Extra keyword arguments for covfuse.models.build.
    """

    backbone: str = "vgg-mini"
    fusion: str = "hybrid"
    hybrid_layers: Union[str, list[str]] = "first"
    weights: Optional[str] = None
    regime: str = "finetune"
    head: Literal["binary", "two-class"] = "binary"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule.

    Args:
        optimizer: adam, adamw or sgd.
        lr: Peak learning rate.
        weight_decay: Weight decay (decoupled for adamw, L2 for adam and sgd).
        momentum: SGD momentum (Nesterov off).
        schedule: none, cosine (to zero over all training steps, stepped per batch) or step (per epoch).
        warmup_steps: Linear warm-up steps before the schedule (0: none).
        step_size: Epochs between decays for schedule=step.
        gamma: Decay factor for schedule=step.
    """

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["none", "cosine", "step"] = "none"
    warmup_steps: int = 0
    step_size: int = 1
    gamma: float = 0.1


@dataclass
class TrainerConfig:
    """Passed to lightning.Trainer; None means "chosen for the hardware" (see docs/training.md).

    Args:
        max_epochs: Training epochs.
        max_steps: Stop after this many optimiser steps (-1: no limit).
        accelerator: auto, cpu, gpu, ...
        devices: Number of devices, a list of ids, or auto.
        num_nodes: Machines (SLURM: the allocation's node count).
        strategy: auto, ddp, ddp_spawn, ...
        precision: 32-true, bf16-mixed, 16-mixed; None: bf16-mixed on a GPU that has it, else 32-true.
        channels_last: NHWC memory format; None: on for GPUs, off on CPU.
        gradient_clip_val: Clip the gradient norm to this (None: no clipping).
        accumulate_grad_batches: Batches per optimiser step.
        deterministic: True, False or warn; None: warn on GPU (VGG's pooling backward has no deterministic kernel), True on CPU.
        log_every_n_steps: Training metrics are logged every this many steps.
        val_check_interval: Validate every this fraction of an epoch (float) or number of batches (int).
        limit_train_batches: Use only this fraction (float) or number (int) of training batches.
        limit_val_batches: Same for validation during fit.
        progress: lines (a timestamped line every few seconds; good in log files and SLURM), bar (tqdm) or none.
        progress_every: Seconds between progress lines.
        summary: Print the model's layer table when training starts.
    """

    max_epochs: int = 1
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Union[int, str, list[int]] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Optional[str] = None
    channels_last: Optional[bool] = None
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    deterministic: Optional[Union[bool, Literal["warn"]]] = None
    log_every_n_steps: int = 10
    val_check_interval: Union[int, float] = 1.0
    limit_train_batches: Optional[Union[int, float]] = None
    limit_val_batches: Optional[Union[int, float]] = None
    progress: Literal["lines", "bar", "none"] = "lines"
    progress_every: float = 10.0
    summary: bool = True


@dataclass
class RunConfig:
    """One named run: data, model, optimiser, trainer, and where its folder goes.

    Args:
        name: Run name; the run folder is <runs_dir>/<name>.
        runs_dir: Folder holding run folders.
        seed: Seed for weights, shuffling, augmentation, shuffled covariates and bootstrap.
        monitor: Metric that picks checkpoints/best.ckpt: val/loss (lowest) or val/acc (highest).
        bootstrap: Bootstrap resamples for the 95% CIs in metrics.json (0: no intervals).
    """

    name: str = "run"
    runs_dir: str = "runs"
    seed: int = 0
    monitor: Literal["val/loss", "val/acc"] = "val/loss"
    bootstrap: int = 1000
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def parser(prog: str = "covfuse fit", description: str | None = None):
    """A jsonargparse parser for :class:`RunConfig` with ``--config FILE`` and ``--print_config``."""
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    p.add_argument("--config", action="config", help="YAML file of overrides (may be given more than once)")
    p.add_class_arguments(RunConfig, nested_key=None, as_group=False)
    return p


def parse(argv: list[str], extra=None, prog: str = "covfuse fit") -> tuple[RunConfig, dict]:
    """Parse ``argv`` into a RunConfig plus a dict of the extra flags that ``extra(parser)`` added."""
    p = parser(prog)
    if extra is not None:
        extra(p)
    try:
        values = p.parse_args(argv).clone(with_meta=False).as_dict()
    except Exception as exc:  # jsonargparse raises ArgumentError/TypeError/ValueError with a readable message
        raise UserError(" ".join(str(exc).split())) from None
    values.pop("config", None)
    flags = {k: values.pop(k) for k in list(values) if k not in _CONFIG_KEYS}
    return from_dict(values), flags


_CONFIG_KEYS = {f.name for f in dataclasses.fields(RunConfig)}


def from_dict(values: dict) -> RunConfig:
    """A RunConfig from a nested dict (e.g. a loaded config.yaml); unknown keys are an error."""

    def build(cls, data: dict, where: str):
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise UserError(f"unknown config key {where}{key!r}{suggest(key, names)}")
        kwargs = {}
        for key, value in data.items():
            sub = _NESTED.get((cls, key))
            kwargs[key] = build(sub, value or {}, f"{where}{key}.") if sub else value
        return cls(**kwargs)

    return build(RunConfig, values, "")


_NESTED = {
    (RunConfig, "data"): DataConfig,
    (RunConfig, "model"): ModelConfig,
    (RunConfig, "optim"): OptimConfig,
    (RunConfig, "trainer"): TrainerConfig,
}


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def dump(config: RunConfig) -> str:
    """The config as YAML, in field order."""
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=False)


def load(path: str | Path) -> RunConfig:
    """Read and validate a config file (e.g. a run folder's resolved config.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    return parse(["--config", str(path)])[0]
