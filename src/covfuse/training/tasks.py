"""One entry per model head: its loss, how its logits become predictions, its running scores, its
columns and number formats, and the monitors that may choose its best checkpoint.

The module, the config's monitor check, results.py, ``covfuse predict`` and the study report read
a head's rules from :data:`TASKS` instead of asking for it by name (the data module keeps its own
rules for each head's labels). The table imports nothing heavy, so the config and the report read
it without importing torch: it names its loss and running metrics, and
:mod:`covfuse.training.module` holds them under those names (``LOSSES``, ``RUNNING_METRICS``);
predictions use tensor methods only.
"""
from __future__ import annotations

from typing import Any, Sequence

from covfuse.errors import UserError, suggest

LOWER_IS_BETTER = frozenset({"loss", "mae", "rmse", "ibs", "brier", "ece"})
"""Scores where lower is better (errors, losses, miscalibration); every other score is better higher,
except those of :data:`IDEAL`."""

IDEAL = {"calibration_intercept": 0.0, "calibration_slope": 1.0}
"""Scores whose best value lies inside their range: nearest to it is best, and a difference between
two methods says that they differ, not which is better."""


def direction(score: str) -> str:
    """``"min"`` (lower is better), ``"max"`` (higher is better) or ``"ideal"`` (nearest :data:`IDEAL` is best):
    the one rule that checkpoint monitors, the search's objective, the report's verdicts, forest plots and
    tuning choices read."""
    return "ideal" if score in IDEAL else "min" if score in LOWER_IS_BETTER else "max"


def distance_from_best(score: str, value: float) -> float:
    """How far ``value`` is from the best a score can be, in the score's direction (smaller is better):
    ``value`` for lower-is-better scores, ``-value`` for higher-is-better ones, ``|value - ideal|`` otherwise."""
    rule = direction(score)
    return abs(value - IDEAL[score]) if rule == "ideal" else value if rule == "min" else -value


MONITOR_SCORES = {"val/loss": "loss", "val/acc": "accuracy", "val/brier": "brier", "val/mae": "mae",
                  "val/c_index": "c_index", "val/ibs": "ibs"}
"""The metrics.json score each monitor is the running version of (a search's objective on valid)."""


def _modes(*monitors: str) -> dict[str, str]:
    return {m: direction(MONITOR_SCORES[m]) for m in monitors}


class Task:
    """What one head means (the base: a classifier of integer labels, one output column)."""

    head: str
    """The model head (``model.head``)."""
    name: str
    """The task the metrics know it by (metrics.json's ``task``): binary, multiclass, regression or survival."""
    loss: str
    """The training loss: a key of :data:`covfuse.training.module.LOSSES`."""
    scores: dict[str, str]
    """Running scores, logged as ``val/<name>`` each validation epoch: name -> key of
    :data:`covfuse.training.module.RUNNING_METRICS`. The first is also logged as ``train/<name>``."""
    monitors: dict[str, str]
    """What may pick checkpoints/best.ckpt (``monitor``) and whether it is minimised or maximised; the first is the default."""
    target_dtype = "int64"
    """The dtype the running scores read the targets in (a torch dtype's name)."""
    label_dtype = "int64"
    """The dtype of the labels metrics.json scores (a numpy dtype's name)."""
    label_columns: tuple[str, ...] = ("label",)
    """predictions.csv's label columns."""
    output_column: str
    """The predictions.csv column that holds the prediction (scores read it back: :meth:`output_columns`)."""
    log_loss = False
    """metrics.json gives each split's cross-entropy of the predicted probabilities."""
    standardised = False
    """The network predicts the standardised target: the module keeps the training split's mean and sd."""
    per_class = False
    """One output per class: the model is built with the data's number of classes."""
    reference = False
    """Scores need the training split's outputs: the best checkpoint also scores the training split
    (``TRAIN_EVAL``), and the run writes what :mod:`covfuse.training.survival_run` derives from it."""
    recorded: tuple[str, ...] = ()
    """Extra keys of metrics.json: ``classes`` (the class names in output order), ``event`` (data.event)."""

    def predict(self, m: Any, logits):
        """What a prediction is, from float32 logits (``m``: the module, for the target's scale)."""
        raise NotImplementedError

    def columns(self, classes: Sequence[str]) -> list[str]:
        """predictions.csv's prediction columns."""
        return [self.output_column]

    def output_columns(self, classes: Sequence[str]) -> list[str]:
        """The predictions.csv columns scores read back (the study report): :attr:`output_column`."""
        return [self.output_column]

    def cells(self, value) -> list[str]:
        """One sample's prediction columns, written (``value``: its row of :meth:`predict`)."""
        return [f"{value:.6f}"]

    def label_cells(self, label) -> list:
        """One sample's label columns, written."""
        return [int(label)]

    def table(self, target: str, classes: list[str], values,
              threshold: float | None = None) -> tuple[list[str], list[list[str]]]:
        """(header, rows) of ``covfuse predict``'s prediction columns for float64 ``values`` of :meth:`predict`
        (``threshold``: a binary head's decision threshold, metrics.json's)."""
        raise NotImplementedError

    def monitor_help(self) -> str:
        """The monitors, as an error message lists them."""
        names = list(self.monitors)
        return " or ".join(names) if len(names) == 2 else ", ".join(names)


class Binary(Task):
    """One logit, binary cross-entropy; predicts P(target = 1)."""

    head = name = "binary"
    loss = "binary cross-entropy"
    scores = {"acc": "binary accuracy", "brier": "brier score"}
    monitors = _modes("val/loss", "val/acc", "val/brier")
    output_column = "probability"
    log_loss = True

    def predict(self, m, logits):
        return logits.sigmoid()

    def table(self, target, classes, values, threshold=None):
        name = f"P({target}={classes[1]})" if len(classes) == 2 else f"P({target})"
        probs = values.reshape(-1)
        if threshold is None:
            return [name], [[f"{p:.6f}"] for p in probs]
        negative, positive = classes if len(classes) == 2 else ("0", "1")
        return ([name, f"predicted_{target}"],  # the class at the run's threshold, applied as metrics.json applied it
                [[f"{p:.6f}", positive if p >= threshold else negative] for p in probs])


class TwoClass(Binary):
    """Two logits, cross-entropy (as in the research code); predicts P(target = 1), as a binary head."""

    head = "two-class"
    loss = "cross-entropy"

    def predict(self, m, logits):
        return logits.softmax(dim=1)[:, 1]


class Multiclass(Task):
    """One logit per class, cross-entropy; predicts the class probabilities (N, C), scored on their argmax."""

    head = name = "multiclass"
    loss = "cross-entropy"
    scores = {"acc": "multiclass accuracy", "brier": "brier score"}
    monitors = _modes("val/loss", "val/acc", "val/brier")
    output_column = "prediction"
    log_loss = per_class = True
    recorded = ("classes",)

    def predict(self, m, logits):
        return logits.softmax(dim=1)

    def columns(self, classes):
        return ["prediction", *self.output_columns(classes)]  # the argmax class index, then each class

    def output_columns(self, classes):
        return [f"probability_{c}" for c in classes]  # the class probabilities: calibration needs them

    def cells(self, value):
        return [str(int(value.argmax())), *(f"{q:.6f}" for q in value)]

    def table(self, target, classes, values, threshold=None):
        if values.ndim != 2:
            raise ValueError(f"a multiclass head should predict (N, C) probabilities, got shape {values.shape}")
        names = classes or [str(k) for k in range(values.shape[1])]
        if len(names) != values.shape[1]:
            raise ValueError(f"{values.shape[1]} class probabilities for {len(names)} classes {names}")
        return ([*(f"P({target}={c})" for c in names), f"predicted_{target}"],
                [[*(f"{p:.6f}" for p in row), names[int(row.argmax())]] for row in values])


class Regression(Task):
    """One output, mean squared error on the standardised target; predicts the value in the target's units."""

    head = name = "regression"
    loss = "mean squared error"
    scores = {"mae": "mean absolute error"}
    monitors = _modes("val/loss", "val/mae")
    target_dtype = "float32"
    label_dtype = "float64"
    output_column = "prediction"
    standardised = True

    def predict(self, m, logits):
        return logits * m.target_sd + m.target_mean

    def cells(self, value):
        return [f"{value:.6g}"]

    def label_cells(self, label):
        return [f"{label:.6g}"]

    def table(self, target, classes, values, threshold=None):
        return [f"predicted_{target}"], [[f"{v:.6g}"] for v in values.reshape(-1)]


class Survival(Task):
    """One risk score (the log relative hazard: higher = earlier event), the Cox partial likelihood over
    the batch (Breslow or Efron ties, ``model.ties``); labels are (time, event)."""

    head = name = "survival"
    loss = "cox"
    scores = {"c_index": "concordance", "ibs": "integrated brier score"}
    monitors = _modes("val/c_index", "val/loss", "val/ibs")
    target_dtype = "float64"  # times compared in float64, as given
    label_dtype = "float64"
    label_columns = ("time", "event")
    output_column = "risk"
    reference = True
    recorded = ("event",)

    def predict(self, m, logits):
        return logits

    def cells(self, value):
        return [f"{value:.9g}"]  # 9 digits give a float32 back exactly: lifelines on the file gives metrics.json's C

    def label_cells(self, label):
        return [f"{label[0]:.12g}", int(label[1])]

    def table(self, target, classes, values, threshold=None):
        return ["risk"], [[f"{v:.9g}"] for v in values.reshape(-1)]  # only the order between people means something


TASKS: dict[str, Task] = {t.head: t for t in (Binary(), TwoClass(), Multiclass(), Regression(), Survival())}
"""The entry of each model head."""


def task_of(head: str) -> Task:
    """The entry of ``head``; a UserError naming the heads for another name."""
    if head not in TASKS:
        raise UserError(f"unknown model head {head!r}{suggest(str(head), TASKS)}; choose from {', '.join(TASKS)}")
    return TASKS[head]


def scored_as(name: str) -> Task:
    """The entry whose predictions.csv a run of metrics task ``name`` wrote (a two-class run writes a binary one's)."""
    for task in TASKS.values():
        if task.name == name:
            return task
    raise UserError(f"unknown task {name!r}; choose one of {', '.join(dict.fromkeys(t.name for t in TASKS.values()))}")


MONITORS = tuple(dict.fromkeys(m for task in TASKS.values() for m in task.monitors))
"""Every monitor some head logs (``monitor``'s choices)."""
