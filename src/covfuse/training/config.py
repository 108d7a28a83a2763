"""The run configuration: nested dataclasses with documented defaults, read from YAML by jsonargparse.

A config file is a short list of overrides of these defaults (see ``configs/``); the command line
overrides the file (``--optim.lr 1e-4``). Unknown keys are an error. The resolved config is written
to ``runs/<name>/config.yaml`` and is enough to rebuild the run.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from covfuse.errors import UserError, suggest
from covfuse.training.clinical import parse_threshold
from covfuse.training.tasks import MONITORS, TASKS, task_of

CovariatesMode = Literal["real", "zeros", "ones", "shuffled"]

LOGGERS = ("csv", "tensorboard", "mlflow")
"""``trainer.logger``'s choices (:mod:`covfuse.training.tracking` builds them)."""
_LOGGER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> module it needs (and the extra's name)


@dataclass
class DataConfig:
    """Where the images come from and how they are fed.

    Args:
        root: The data: a manifest CSV/TSV/.xlsx (2D images, or volumes: NIfTI, MGH, Analyze, DICOM series), a BIDS folder, or a CelebA folder (docs/data.md).
        target: Column (CelebA attribute) to predict, by name (survival head: the time column).
        covariates: Columns fed to the model as per-sample covariates, by name ([Young, Male] or Young,Male).
        image_size: Side of the square model input, in pixels.
        preset: How a photo becomes a square input (see covfuse.data.transforms).
        batch_size: Images per training batch (per device).
        eval_batch_size: Images per batch for valid/test/predict; None: same as batch_size.
        num_workers: Data-loading worker processes (0: load in the main process).
        cache: auto: read the decoded images or volumes from their memmap cache when one exists (`covfuse data cache` builds an image cache); build: build it first if missing; off: decode the files every epoch.
        cache_dir: Where caches are read and built (None: a .covfuse-cache folder beside the data); a folder filled by `covfuse data cache ROOT --cache_dir DIR` is used with data.cache_dir DIR.
        augment: Training-time augmentation of the dataset (random horizontal flips).
        covariates_mode: Controls: real covariates, all zeros, all ones, or shuffled within each split (seeded).
        folds: 0 for the official train/valid/test split; k >= 2 for k-fold by identity on train+valid (test stays official).
        fold: Which fold is the validation fold when folds >= 2.
        split_seed: Seed of the folds and, for a manifest without a split column, of the train/valid/test split (not the run seed, so seeds vary the training and not the samples).
        skip_corrupt: Leave out images or volumes that do not decode (counted, listed in the log and in skipped.txt) instead of stopping.
        categorical: Covariate columns to one-hot even if their values are numbers (others are inferred).
        classes: The target's class values in order (binary: [negative, positive]); None: sorted values (not needed for 0/1).
        intensity: Volumes: zscore (over the nonzero, in-brain voxels) or minmax (to [0, 1]).
        geometry: Volumes: resize (whole field of view to image_size^3) or crop-pad (centre crop / zero pad).
        spacing: Volumes: resample to this isotropic voxel size in mm before the geometry step (None: keep).
        event: Survival head: the 0/1 column saying whether the event was observed (1) or data.target's time is censored (0).
        eval_times: Survival head: the evaluation grid (times in data.target's unit) for survival.csv's S@<t> columns, td_auc, the integrated Brier score and calibration, e.g. [1,2,3] or 1,2,3; None: the 25/50/75th percentiles of the training split's event times.
        nonfinite: Volumes: what NaN/Inf voxels become (SPM/FSL mask the background with NaN): zero (set to 0 before normalisation, counted in the log) or refuse (stop, naming the first file).
        series: Volumes: the DICOM series to read where a folder holds several, by SeriesInstanceUID or SeriesDescription (None: a folder must hold one series; docs/volumes.md).
        volume_index: Volumes: which volume of a 4-D file (NIfTI, MGH) to read, 0 the first, -1 the last (None: 4-D files are refused).
        sheet: An .xlsx manifest's sheet to read, by name (None: the first sheet).
    """

    root: str = ""
    target: str = "Attractive"
    covariates: Union[list[str], str] = field(default_factory=lambda: ["Male"])
    image_size: int = 224
    preset: str = "center-crop"
    batch_size: int = 32
    eval_batch_size: Optional[int] = None
    num_workers: int = 0
    cache: Literal["auto", "build", "off"] = "auto"
    cache_dir: Optional[str] = None
    augment: bool = False
    covariates_mode: CovariatesMode = "real"
    folds: int = 0
    fold: int = 0
    split_seed: int = 0
    skip_corrupt: bool = False
    categorical: list[str] = field(default_factory=list)
    classes: Optional[list[str]] = None
    intensity: Literal["zscore", "minmax"] = "zscore"
    geometry: Literal["resize", "crop-pad"] = "resize"
    spacing: Optional[float] = None
    event: Optional[str] = None
    eval_times: Union[list[float], str, None] = None  # "1,2,3" as predict --times takes it, or [1,2,3]
    nonfinite: Literal["zero", "refuse"] = "zero"
    series: Optional[str] = None
    volume_index: Optional[int] = None
    sheet: Optional[str] = None


@dataclass
class ModelConfig:
    """The model, passed to covfuse.models.build.

    Args:
        backbone: torchvision name (vgg16_bn, resnet18, ...) or vgg-mini.
        fusion: The fusion method: image-only, hybrid or another name `covfuse describe --help` lists (docs/methods.md), or a '+' combination of hybrid, film, daft and one concat variant.
        hybrid_layers: Convs made hybrid: first, last, all, or a list of module names (e.g. [features.0, features.40]).
        weights: None (random init), imagenet (local torchvision cache only), or a path to a state dict.
        regime: finetune (train everything) or another regime covfuse.models.build accepts.
        head: binary (one logit, BCE loss), two-class (two logits, cross-entropy, as in the research), multiclass (one logit per class of data.classes), regression (a numeric target, MSE on the standardised target) or survival (one risk score, Cox partial likelihood over the batch, Breslow or Efron ties as model.ties says; data.target is the time, data.event the 0/1 event column); a CelebA folder holds binary attributes only.
        options: Extra keyword arguments for covfuse.models.build.
        ties: Survival head: how the Cox loss handles tied times, breslow or efron (docs/survival.md).
    """

    backbone: str = "vgg-mini"
    fusion: str = "hybrid"
    hybrid_layers: Union[str, list[str]] = "first"
    weights: Optional[str] = None
    regime: str = "finetune"
    head: Literal[tuple(TASKS)] = "binary"
    options: dict[str, Any] = field(default_factory=dict)
    ties: Literal["breslow", "efron"] = "breslow"


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
        precision: 32-true, bf16-mixed, 16-mixed; None: bf16-mixed on a GPU that has it, 16-mixed on one that does not, 32-true on CPU.
        channels_last: NHWC memory format; None: on for GPUs, off on CPU.
        compile: torch.compile the model (inductor; recompiles when the batch or input size changes).
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
        logger: Experiment trackers, a list of csv (metrics.csv; always written), tensorboard (<run>/tensorboard/) and mlflow (see tracking_uri), e.g. [csv,mlflow].
        tracking_uri: MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else a SQLite store mlflow.db in the study folder (a lone run: in runs_dir).
    """

    max_epochs: int = 1
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Union[int, str, list[int]] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Optional[str] = None
    channels_last: Optional[bool] = None
    compile: bool = False
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
    logger: Union[list[str], str] = field(default_factory=lambda: ["csv"])
    tracking_uri: Optional[str] = None


@dataclass
class MetricsConfig:
    """How metrics.json scores a run (docs/training.md; survival: docs/survival.md).

    Args:
        tau: Survival head: Uno's C is truncated at this time (data.target's unit); None: the 80th percentile of the training split's times, one tau for every split (and every run of a study on the same splits).
        threshold: Binary heads: the decision threshold of accuracy, F1, sensitivity, specificity, PPV and NPV (positive at P >= threshold) and of covfuse predict: a probability such as 0.5, or chosen on the valid split before test is scored: youden (max sensitivity + specificity - 1), sensitivity=0.9 (the highest threshold with that sensitivity) or specificity=0.9 (the lowest with that specificity).
    """

    tau: Optional[float] = None
    threshold: Union[float, str] = 0.5


@dataclass
class RunConfig:
    """One named run: data, model, optimiser, trainer, and where its folder goes.

    Args:
        name: Run name; the run folder is <runs_dir>/<name>.
        runs_dir: Folder holding run folders.
        seed: Seed for weights, shuffling, augmentation, shuffled covariates and bootstrap.
        monitor: Metric that picks checkpoints/best.ckpt: val/loss (lowest), val/acc (highest; classification), val/brier (lowest; classification), val/mae (lowest; regression), val/c_index (highest; survival) or val/ibs (lowest; survival); None: val/loss, or val/c_index for a survival head (a batch's Cox loss depends on who shares the batch).
        bootstrap: Bootstrap resamples for the 95% CIs in metrics.json (0: no intervals).
        bootstrap_unit: What the bootstrap resamples: group (the person: CelebA identity, MRI subject; images of one person are not independent) or image (only for data without repeated people).
    """

    name: str = "run"
    runs_dir: str = "runs"
    seed: int = 0
    monitor: Optional[Literal[MONITORS]] = None
    bootstrap: int = 1000
    bootstrap_unit: Literal["group", "image"] = "group"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def parser(prog: str = "covfuse fit", description: str | None = None):
    """A jsonargparse parser for :class:`RunConfig` with ``--config FILE`` and ``--print_config``."""
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog=prog, description=description, exit_on_error=False, allow_abbrev=False)
    p.add_argument("--config", action="config", help="YAML file of overrides (may be given more than once)")
    p.add_class_arguments(RunConfig, nested_key=None, as_group=False)
    return p


@functools.lru_cache(maxsize=8)
def _parser_with(prog: str, extra=None):
    """:func:`parser` plus the flags ``extra(parser)`` adds, built once per (prog, extra): building it takes
    ~0.1 s, parsing with it a fiftieth of that, and a study parses one config per run."""
    p = parser(prog)
    if extra is not None:
        extra(p)
    return p


def config_keys() -> list[str]:
    """Every dotted key of the config (``name``, ``data.root``, ...), the spelling flags and YAML files use."""
    keys = []
    for f in dataclasses.fields(RunConfig):
        sub = _NESTED.get((RunConfig, f.name))
        keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(sub)] if sub else [f.name]
    return keys


def normalise_flags(argv: list[str], known: set[str]) -> list[str]:
    """One flag spelling: ``--data.batch-size`` and ``--data.batch_size`` both mean the config key (underscores
    are canonical, as in the YAML files); an unknown flag is a one-line error with the closest spelling."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token[2:].partition("=")
            canonical = name.replace("-", "_")
            if canonical not in known:
                raise UserError(f"unknown option --{name}{suggest(canonical, known)}; see `covfuse fit --help`")
            token = f"--{canonical}{sep}{value}"
        out.append(token)
    return out


def check_config_file(path: str | Path) -> dict[str, int]:
    """Read a YAML config file and refuse unknown keys, naming the file and suggesting the closest key.

    Returns the batch counts it sets as integers (see ``_COUNT_OR_FRACTION``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable YAML file ({' '.join(str(exc).split())[:160]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected YAML keys such as `data:` and `model:`, got a {type(values).__name__}")
    _check_keys(RunConfig, values, "", f"{path}: ")
    counts = {}
    for key in _COUNT_OR_FRACTION:
        section, name = key.split(".")
        value = (values.get(section) or {}).get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            counts[key] = value
    return counts


# Keys where an integer is a count of batches and a float a fraction of them (Lightning's convention).
_COUNT_OR_FRACTION = ("trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.val_check_interval")


def _integer_flags(argv: list[str]) -> dict[str, int]:
    out = {}
    for i, token in enumerate(argv):
        name, sep, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name in _COUNT_OR_FRACTION:
            value = value if sep else (argv[i + 1] if i + 1 < len(argv) else "")
            if value.strip().lstrip("+").isdigit():
                out[name] = int(value)
    return out


def _check_keys(cls, data: dict, where: str, origin: str = "") -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            raise UserError(f"{origin}unknown config key {where}{key}{suggest(str(key), names)}")
        sub = _NESTED.get((cls, key))
        if sub is not None and value is not None:
            if not isinstance(value, dict):
                raise UserError(f"{origin}config key {where}{key} must hold keys such as {names_of(sub)}, got {value!r}")
            _check_keys(sub, value, f"{where}{key}.", origin)


def names_of(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls)[:3]) + ", ..."


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif token.startswith("--config="):
            files.append(token.split("=", 1)[1])
    return files


def parse(argv: list[str], extra=None, prog: str = "covfuse fit") -> tuple[RunConfig, dict]:
    """Parse ``argv`` into a RunConfig plus a dict of the extra flags that ``extra(parser)`` added.

    Before jsonargparse sees them, flags are normalised (dashes accepted, unknown ones named with a
    suggestion) and every ``--config`` file is checked for unknown keys (naming the file).
    """
    if extra is None:
        p, known = _plain_parser(prog)  # built once: a sweep plans hundreds of runs with it
    else:
        p = _parser_with(prog, extra)
        known = _known_flags(p)
    argv = normalise_flags(list(argv), known)
    counts: dict[str, int] = {}
    for file in _config_files(argv):
        counts.update(check_config_file(file) or {})
    counts.update(_integer_flags(argv))
    try:
        values = p.parse_args(argv).clone(with_meta=False).as_dict()
    except Exception as exc:  # jsonargparse's ArgumentError/TypeError/ValueError: one line of ours
        raise parse_error(exc, argv, prog) from None
    for key, value in counts.items():  # "1" means one batch, not 100% (jsonargparse reads 1.0 once Lightning is loaded)
        section, name = key.split(".")
        if isinstance(values.get(section), dict) and values[section].get(name) == value:
            values[section][name] = value
    values.pop("config", None)
    flags = {k: values.pop(k) for k in list(values) if k not in _CONFIG_KEYS}
    return from_dict(values), flags


_CONFIG_KEYS = {f.name for f in dataclasses.fields(RunConfig)}


# -- a value of the wrong type: one line naming the option, the value and what it takes --------------
def parse_error(exc: BaseException, argv: Sequence[str], prog: str = "covfuse fit") -> UserError:
    """jsonargparse's complaint about ``argv`` (or a ``--config`` file in it) as one line of covfuse's: the
    option, the value given (and the file that gave it), what the key takes and an example, never
    jsonargparse's dump of Union subtypes."""
    text = " ".join(str(exc).split())
    found = re.search(r'Parser key "([^"]+)"', text)
    key = found.group(1) if found else None
    if key in _NESTED_NAMES:
        value, file = _given(key, argv)
        first = dataclasses.fields(_NESTED[(RunConfig, key)])[0].name
        return UserError(f"{f'{file}: {key}: ' if file else f'--{key} '}{value}: not a section of {key} keys; give "
                         f"them one by one (e.g. --{key}.{first} ...) or in a config file under `{key}:`")
    fields = field_types()
    if key not in fields:  # not a type error (an unknown or incomplete flag): jsonargparse's line, without dumps
        return UserError(re.split(r" (?:Subtypes|Errors|Given value type):", text)[0] + f"; see `{prog} --help`"
                         if "Union" in text else text)
    hint, default = fields[key]
    value, file = _given(key, argv)
    advice = f"{key} takes {allowed(hint)}"
    quote = _quote_hint(key, hint, value, file)
    if file:
        section, _, name = key.rpartition(".")
        spelled = f"{name}: {example(hint, default)} under {section}:" if section else f"{key}: {example(hint, default)}"
        return UserError(f"{file}: {key}: {value} is not allowed; {advice} (e.g. {spelled})" + quote)
    return UserError(f"--{key} {value}: {advice}, e.g. --{key} {example(hint, default)}" + quote)


@functools.lru_cache(maxsize=1)
def field_types() -> dict[str, tuple[Any, Any]]:
    """Each dotted config key's type (resolved) and default: what its values must be."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            sub = _NESTED.get((cls, f.name))
            if sub is not None:
                walk(sub, f"{f.name}.")
            else:
                out[prefix + f.name] = (hints[f.name], getattr(defaults, f.name))

    walk(RunConfig, "")
    return out


def allowed(hint) -> str:
    """What a config key of type ``hint`` takes, in words (``one of adam, adamw, sgd``, ``an integer or null``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(_words(hint))
    if origin is Union:
        if int in args and float in args:  # an integer is a number too
            args = tuple(a for a in args if a is not int)
        words = [w for a in args if a is bool or typing.get_origin(a) is Literal for w in _words(a)]
        kinds = [allowed(a) for a in args if a is not bool and typing.get_origin(a) is not Literal and a is not type(None)]
        words += ["null"] if type(None) in args else []
        if len(words) > 1 or not kinds:
            words = ["one of " + ", ".join(words)] if len(words) > 1 else words
        parts = kinds + words
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
    if origin in (list, tuple, Sequence):
        return f"a list of {_plural(args[0]) if args else 'values'} such as {_list_example(args[0] if args else str)}"
    if origin is dict or hint is dict:
        return "a mapping such as {key: value}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(hint, "any value")


def _words(hint) -> list[str]:
    """The values a bool or a Literal type takes, as a flag spells them."""
    values = (True, False) if hint is bool else typing.get_args(hint)
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in values]


def _plural(hint) -> str:
    return {int: "integers", float: "numbers", str: "names"}.get(hint, "values")


def _list_example(hint) -> str:
    return {int: "[0,1]", float: "[1,2.5]"}.get(hint, "[a,b]")


def example(hint, default) -> str:
    """A value a key of type ``hint`` takes, as a flag spells it: its default where that says something."""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (int, float, str)) and default != "" and not isinstance(default, (list, dict)):
        return str(default)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return str(args[0])
    if origin is Union:
        return example(next(a for a in args if a is not type(None)), None)
    if origin in (list, tuple, Sequence):
        return _list_example(args[0] if args else str)
    if origin is dict or hint is dict:
        return "'{key: value}'"
    return {int: "3", float: "0.5", bool: "true", str: "name"}.get(hint, "...")


def _given(key: str, argv: Sequence[str]) -> tuple[str, str | None]:
    """(the value ``key`` was given, as typed; the config file that gave it, or None for a flag): the last one wins,
    as in jsonargparse (flags after the files that they override)."""
    import yaml

    value, file = None, None
    for i, token in enumerate(argv):
        if token in (f"--{key}", "--config") and i + 1 < len(argv):
            given = argv[i + 1]
        elif token.startswith((f"--{key}=", "--config=")):
            given = token.split("=", 1)[1]
        else:
            continue
        if token.startswith(f"--{key}"):
            value, file = given, None
            continue
        try:
            data = yaml.safe_load(Path(given).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for part in key.split("."):
            data = data.get(part, _ABSENT) if isinstance(data, dict) else _ABSENT
        if data is not _ABSENT:
            value, file = yaml.safe_dump(data, default_flow_style=True, width=1000).strip().removesuffix("\n..."), given
    return ("(none)" if value is None else str(value)), file


_ABSENT = object()


def _quote_hint(key: str, hint, value: str, file: str | None) -> str:
    """For a list of names given numbers or yes/no (YAML reads those as numbers and booleans): how to quote them."""
    import yaml

    names = [a for a in typing.get_args(hint) if typing.get_origin(a) is list and typing.get_args(a) == (str,)]
    if not names and not (typing.get_origin(hint) is list and typing.get_args(hint) == (str,)):
        return ""
    try:
        items = yaml.safe_load(value)
    except yaml.YAMLError:
        return ""
    if not isinstance(items, list) or all(isinstance(v, str) for v in items):
        return ""
    words = [w.strip().strip("'\"") for w in value.strip().strip("[]").split(",")]
    quoted = "[" + ",".join(f'"{w}"' for w in words) + "]"
    spelled = f"{key.rpartition('.')[2]}: {quoted}" if file else f"--{key} '{quoted}'"
    return f"; numbers and yes/no are read as numbers and booleans: quote them, e.g. {spelled}"


def _known_flags(p) -> set[str]:
    """Every flag name ``p`` accepts, as :func:`normalise_flags` checks them."""
    known = {a.dest for a in p._actions if a.dest} | set(config_keys()) | {"help", "config", "print_config"}
    return known | set(_NESTED_NAMES)


@functools.lru_cache(maxsize=4)
def _plain_parser(prog: str):
    """(parser, known flags) of :func:`parse` without extra flags, built once per ``prog`` (building it
    takes ~0.05 s; parsing with it leaves it unchanged)."""
    p = parser(prog)
    return p, _known_flags(p)


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

    config = build(RunConfig, values, "")
    config.monitor = default_monitor(config)  # resolved at once: a study compares planned and saved configs
    config.data.covariates = split_names(config.data.covariates)
    config.trainer.logger = split_names(config.trainer.logger) or ["csv"]
    return config


def split_names(value: Union[str, list, None]) -> list[str]:
    """One list syntax: ``Young,Male``, ``[Young,Male]`` and a YAML list all give ``["Young", "Male"]``."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return [n.strip().strip("'\"") for n in text.split(",") if n.strip()]
    return [str(n).strip() for n in value]


def parse_times(text: str, option: str = "--times") -> list[float]:
    """``"1,2.5,4"`` -> [1.0, 2.5, 4.0]: finite times >= 0, sorted and distinct (``covfuse predict
    --times``, and ``--data.eval_times`` given the same way); anything else, an empty item (``1,,2``)
    and a digit separator (``1_000``, which Python's float() would take) included, is a UserError naming
    ``option``."""
    out = []
    parts = [p.strip() for p in text.strip().strip("[]").split(",")]
    if parts == [""]:
        raise UserError(f"{option} needs at least one time, e.g. {option} 1,2.5,4")
    for part in parts:
        if not part:
            raise UserError(f"{option}: {text.strip()!r} has an empty item; separate the times by single commas, "
                            f"e.g. {option} 1,2.5,4")
        try:
            if "_" in part:
                raise ValueError(part)
            t = float(part)
        except ValueError:
            raise UserError(f"{option}: {part!r} is not a number; give times in the unit of the time column, "
                            f"digits without separators, e.g. {option} 1,2.5,4") from None
        if not math.isfinite(t) or t < 0:
            raise UserError(f"{option}: {part} must be a finite time >= 0, e.g. {option} 1,2.5,4")
        out.append(t)
    return sorted(set(out))


def check_loggers(names: Sequence[str]) -> list[str]:
    """``trainer.logger``'s names, each known and its package installed (one line naming the extra otherwise)."""
    out = []
    for name in names:
        key = str(name).strip().lower()
        if key not in LOGGERS:
            raise UserError(f"trainer.logger: unknown logger {name!r}{suggest(key, LOGGERS)}; choose from "
                            f"{', '.join(LOGGERS)} (e.g. --trainer.logger [csv,tensorboard])")
        module = _LOGGER_PACKAGES.get(key)
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"trainer.logger {key} needs the {module} package: pip install 'covfuse[{key}]'")
        if key not in out:
            out.append(key)
    return out


_NESTED = {
    (RunConfig, "data"): DataConfig,
    (RunConfig, "model"): ModelConfig,
    (RunConfig, "optim"): OptimConfig,
    (RunConfig, "trainer"): TrainerConfig,
    (RunConfig, "metrics"): MetricsConfig,
}
_NESTED_NAMES = tuple(key for _, key in _NESTED)


def default_monitor(config: RunConfig) -> str:
    """The monitor as given, or the head's default (:mod:`covfuse.training.tasks`: val/c_index for survival, val/loss otherwise)."""
    if config.monitor:
        return config.monitor
    return next(iter(task_of(config.model.head).monitors))


def check(config: RunConfig) -> RunConfig:
    """Refuse values that cannot make a run, each with the key and a valid example (before anything is written)."""
    d, o, t = config.data, config.optim, config.trainer

    def need(ok: bool, key: str, rule: str, value) -> None:
        if not ok:
            raise UserError(f"{key} must be {rule}, got {value!r}")

    need(isinstance(o.lr, (int, float)) and o.lr > 0 and o.lr == o.lr and o.lr != float("inf"),
         "optim.lr", "a positive number (e.g. --optim.lr 1e-3)", o.lr)
    need(o.weight_decay >= 0, "optim.weight_decay", ">= 0", o.weight_decay)
    need(d.batch_size >= 1, "data.batch_size", "at least 1 (e.g. --data.batch_size 32)", d.batch_size)
    need(d.eval_batch_size is None or d.eval_batch_size >= 1, "data.eval_batch_size", "at least 1 or null",
         d.eval_batch_size)
    need(d.image_size >= 8, "data.image_size", "at least 8 pixels", d.image_size)
    need(d.num_workers >= 0, "data.num_workers", ">= 0", d.num_workers)
    need(d.folds == 0 or d.folds >= 2, "data.folds", "0 (the official split) or at least 2", d.folds)
    need(d.folds == 0 or 0 <= d.fold < d.folds, "data.fold", f"in 0..{d.folds - 1} for {d.folds} folds", d.fold)
    need(t.max_epochs >= 1 or (t.max_epochs == -1 and t.max_steps > 0), "trainer.max_epochs",
         "at least 1 (e.g. --trainer.max_epochs 3)", t.max_epochs)
    need(t.max_steps == -1 or t.max_steps >= 1, "trainer.max_steps", "-1 (no limit) or at least 1", t.max_steps)
    need(t.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "at least 1", t.accumulate_grad_batches)
    need(t.num_nodes >= 1, "trainer.num_nodes", "at least 1", t.num_nodes)
    need(config.bootstrap >= 0, "bootstrap", ">= 0 (0: no intervals)", config.bootstrap)
    t.logger = check_loggers(split_names(t.logger) or ["csv"])
    survival = config.model.head == "survival"
    config.monitor = default_monitor(config)
    task = task_of(config.model.head)
    if config.monitor not in task.monitors:
        raise UserError(f"monitor {config.monitor} does not exist for head {task.head}; use {task.monitor_help()}")
    if isinstance(d.eval_times, str):  # 1,2,3 as `covfuse predict --times` takes it
        d.eval_times = parse_times(d.eval_times, "--data.eval_times")
    if not survival and (d.eval_times or config.metrics.tau is not None):
        raise UserError(f"data.eval_times and metrics.tau are for model.head survival; head {config.model.head} "
                        "does not use them (drop them, or set --model.head survival)")
    if not survival and config.model.ties != "breslow":
        raise UserError(f"model.ties {config.model.ties} is for model.head survival; head {config.model.head} has no "
                        "tied times to handle (drop it, or set --model.head survival)")
    need(not d.eval_times or all(isinstance(v, (int, float)) and 0 <= v < float("inf") for v in d.eval_times), "data.eval_times",
         "times >= 0 in data.target's unit (e.g. --data.eval_times [1,2,3])", d.eval_times)
    need(config.metrics.tau is None or config.metrics.tau > 0, "metrics.tau", "a time > 0 (e.g. --metrics.tau 4)",
         config.metrics.tau)
    rule = parse_threshold(config.metrics.threshold)
    if rule != ("fixed", 0.5) and task.name != "binary":
        raise UserError(f"metrics.threshold is for binary heads (binary, two-class); head {config.model.head} "
                        f"{'predicts the most probable class' if task.per_class else 'has no decision threshold'} "
                        "(drop metrics.threshold)")
    if d.event and not survival:
        raise UserError(f"data.event {d.event} is for model.head survival; head {config.model.head} does not use it "
                        "(drop data.event, or set --model.head survival)")
    target = d.target.lower()
    if survival and d.event and any(c.lower() == d.event.lower() for c in d.covariates):
        raise UserError(f"data.event {d.event} is also in data.covariates {d.covariates}; "
                        "a model fed whether the event happened learns nothing: remove it from the covariates")
    if any(c.lower() == target for c in d.covariates):
        raise UserError(f"data.target {d.target} is also in data.covariates {d.covariates}; "
                        "a model fed its own label learns nothing: remove it from the covariates")
    return config


# What --resume may change: how and where the run trains, not what it trains.
RESUMABLE = ("trainer.", "data.root", "data.num_workers", "data.cache", "data.cache_dir", "data.eval_batch_size", "bootstrap",
             "runs_dir", "name")


def flatten(config: RunConfig) -> dict[str, Any]:
    """The config's values by dotted key (``seed``, ``data.batch_size``, ...), as flags spell them."""
    out = {}
    for key, value in to_dict(config).items():
        if isinstance(value, dict) and key in _NESTED_NAMES:
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def check_resumable(saved: RunConfig, new: RunConfig, saved_path: Path) -> None:
    """A resumed run keeps its model, data selection, optimiser and seed; only trainer/runtime keys may change."""
    old, cur = flatten(saved), flatten(new)
    for key, value in cur.items():
        if key.startswith(RESUMABLE) or old.get(key) == value:
            continue
        raise UserError(f"--resume: {key} is {old.get(key)!r} in {saved_path} but {value!r} here; a resumed run keeps "
                        f"its {key} (drop the override, or start a new run with another --name)")


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
