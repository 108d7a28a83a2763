"""Check every run of a study before any trains: configs, data, models, trainer settings, samples.

A study is hours of work; a misspelt grid value found after the first cells trained costs them.
``check_study`` builds what ``fit_run`` builds for each distinct setting (the data module, the model,
the Trainer) without training or writing anything, and refuses a study whose runs would be scored
on different samples (a comparison of those says nothing about the methods).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from covfuse.errors import UserError
from covfuse.studies.sweep import Run, Study, dotted_config
from covfuse.training import config as cfgmod
from covfuse.training.datamodule import CovfuseDataModule
from covfuse.training.run import build_module, check_fill
from covfuse.training.rundir import check_name
from covfuse.training.trainer import build_trainer, check_hardware, resolve_hardware


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _digest(names: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(map(str, names)).encode()).hexdigest()


def check_study(study: Study, runs: Sequence[Run] | None = None) -> dict[str, int]:
    """Raise the first problem of any run as a one-line UserError naming the run; returns what was checked."""
    runs = list(study.runs if runs is None else runs)
    datas: dict[str, object] = {}
    models: set[str] = set()
    trainers: set[str] = set()
    samples: dict[object, tuple[str, Run]] = {}
    for run in runs:
        where = Path(run.dir).relative_to(study.study_dir)
        try:
            config = study.run_config(run)
            check_name(config.name)
            cfgmod.check(config)
            check_hardware(config.trainer)
            dkey = _key([asdict(config.data), config.model.head])
            if dkey not in datas:
                data = CovfuseDataModule(config.data, seed=config.seed, head=config.model.head)
                data.setup("fit")
                datas[dkey] = data
            data = datas[dkey]
            hw = resolve_hardware(config.trainer)
            mkey = _key([asdict(config.model), asdict(config.optim), data.covariate_names,
                         list(getattr(data, "classes", []) or [])])
            if mkey not in models:
                build_module(config, data, hw)
                models.add(mkey)
            tkey = _key([asdict(config.trainer), config.monitor, dkey])
            if tkey not in trainers:
                trainer = build_trainer(config, Path(run.dir), hw)
                check_fill(config, data, trainer.world_size)
                trainers.add(tkey)
        except UserError as exc:
            raise UserError(f"run {where} ({', '.join(f'{k}={v}' for k, v in {**run.settings, **run.tune}.items()) or 'base config'}): "
                            f"{' '.join(str(exc).split())}") from None
        # the samples each run is scored on: valid (tuning, out-of-fold) and test, by file name
        signature = (_digest(data.filenames(data.indices["valid"])), _digest(data.filenames(data.indices["test"])))
        first = samples.setdefault(run.fold, (signature, run, config))
        if first[0] != signature:
            other = first[2]
            keys = [k for k, v in dotted_config(cfgmod.to_dict(config)).items()
                    if k.startswith("data.") and dotted_config(cfgmod.to_dict(other)).get(k) != v]
            raise UserError(f"runs {Path(first[1].dir).relative_to(study.study_dir)} and {where} would be scored on "
                            f"different samples ({', '.join(keys) or 'the data'} differ); a study compares runs on the "
                            "same valid/test samples: keep data.root, data.split_seed and the split settings equal across cells")
    return {"runs": len(runs), "data": len(datas), "models": len(models)}
