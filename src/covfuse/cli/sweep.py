"""`covfuse sweep --config BASE.yaml --name STUDY [--grid KEY=V1,V2 ...] [--seeds 0,1,2] [overrides]`:
train every cell x seed of a study into runs/STUDY/<cell>/s<seed>/ (finished runs are skipped,
interrupted ones resumed), locally or as a SLURM array; then `covfuse report STUDY` compares them.

Examples:
  covfuse sweep --config configs/demo.yaml --data.root data/synth --name fusion \\
      --grid model.fusion=image-only,concat,hybrid --seeds 0,1,2
  covfuse sweep --config configs/studies/twin-planted.yaml --name twin --dry-run
  covfuse sweep ... --launcher slurm --partition gpu --gpus 1 --time 02:00:00 [--submit]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from covfuse.cli._common import Parser, parse_seeds
from covfuse.errors import UserError


def parser(prog: str = "covfuse sweep", doc: str = __doc__, cv: bool = False) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], required=True,
                   help="base run config (YAML, may hold a `sweep:` section); may be given more than once")
    p.add_argument("--name", required=True, help="study name: the study folder is RUNS_DIR/NAME")
    p.add_argument("--runs-dir", "--runs_dir", dest="runs_dir", default="runs", help="folder of studies (default: runs)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and its values; several --grid flags make a Cartesian grid")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the study file's, else 0)")
    p.add_argument("--baseline", default=None, help="the cell every other cell is compared with (default: the first)")
    if cv:
        p.add_argument("--folds", type=int, required=True, help="k: folds of train+valid grouped by person (identity, subject), "
                       "stratified by the target (classes, events; not for regression)")
    else:
        p.add_argument("--tune", action="append", default=[], metavar="KEY=V1,V2",
                       help="give every cell the same search over these values; the best by valid metric counts")
        # issue 20: an Optuna search instead of the grid (covfuse.cli.search)
        p.add_argument("--search", choices=["grid", "optuna"], default="grid",
                       help="grid: every --tune value (default); optuna: --trials seeded TPE trials per cell over the "
                            "--tune space (V1,V2 | LO..HI | log:LO..HI), pruned from the validation curve")
        p.add_argument("--trials", type=int, default=20, help="Optuna trials per cell (default: 20)")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="check every run and say what the command would do with each (train, skip, resume, replace, refuse); train nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain the runs whose settings differ from this command's (named by --dry-run); others are kept")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local", help="run here (default) or as a SLURM job array")
    p.add_argument("--task", type=int, default=None, help="run only run number TASK (what each SLURM array task does)")
    g = p.add_argument_group("SLURM (with --launcher slurm)")
    g.add_argument("--submit", action="store_true", help="submit the written script with sbatch")
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--gpus", type=int, default=0, help="GPUs per task (default: 0)")
    g.add_argument("--cpus", type=int, default=4, help="CPUs per task (default: 4)")
    g.add_argument("--mem", default=None, help="memory per node, e.g. 32G")
    g.add_argument("--time", default="04:00:00", help="time limit per task (default: 04:00:00)")
    g.add_argument("--max-parallel", "--max_parallel", dest="max_parallel", type=int, default=None,
                   help="at most this many tasks at once")
    return p


def task_argv(args, overrides: list[str], cv: bool) -> list[str]:
    """The arguments that re-plan this study (what a SLURM task passes to `covfuse sweep`)."""
    out: list[str] = []
    for c in args.config:
        out += ["--config", c]
    out += ["--name", args.name, "--runs-dir", args.runs_dir]
    for g in args.grid:
        out += ["--grid", g]
    for t in getattr(args, "tune", []):
        out += ["--tune", t]
    if args.seeds is not None:
        out += ["--seeds", args.seeds]
    if args.baseline is not None:
        out += ["--baseline", args.baseline]
    if cv:
        out += ["--folds", str(args.folds)]
    if args.overwrite:  # an array task must replace the same changed runs the submitting command named
        out.append("--overwrite")
    return out + overrides


def main(argv: list[str], *, cv: bool = False, prog: str = "covfuse sweep", doc: str = __doc__) -> int:
    args, overrides = parser(prog, doc, cv).parse_known_args(argv)
    if any(o == "--seed" or o.startswith("--seed=") for o in overrides):
        raise UserError(f"a study sets each run's seed: use --seeds 0,1,2 instead of --seed; see `{prog} --help`")
    # every other flag is a config override for all runs; plan_study checks them (unknown keys named there),
    # but a misspelt study flag (no dot, not a top-level config key) is named here with its closest spelling
    from covfuse.errors import suggest
    from covfuse.training.config import config_keys

    own = [o.lstrip("-") for a in parser(prog, doc, cv)._actions for o in a.option_strings]
    for token in overrides:
        name = token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else None
        if name and "." not in name and name not in config_keys():
            raise UserError(f"unknown option --{name}{suggest(name, own + config_keys())}; see `{prog} --help`")
    if getattr(args, "search", "grid") == "optuna":  # issue 20: the Optuna search (covfuse.cli.search)
        from covfuse.cli.search import main as search_main

        return search_main(args, overrides, task_argv(args, overrides, cv), prog)
    from covfuse.studies import slurm
    from covfuse.studies.check import check_study
    from covfuse.studies.sweep import assess, grown, plan_study, prepare_study, refusal, run_study, write_study

    the_task_argv = task_argv(args, overrides, cv)
    planned = plan_study(name=args.name, configs=args.config, runs_dir=args.runs_dir, grid=args.grid,
                         seeds=parse_seeds(args.seeds), tune=getattr(args, "tune", []), overrides=overrides,
                         folds=args.folds if cv else 0, baseline=args.baseline,
                         argv=["covfuse", prog.split()[-1], *the_task_argv])
    if args.task is not None and args.launcher == "slurm":
        raise UserError("--task is what each array task passes; do not combine it with --launcher slurm")
    study = grown(planned)  # the recorded study plus this command's new runs
    if args.task is None:  # every run, before any trains (an array task checks its own run as it starts)
        checked = check_study(study)
        print(f"[sweep] checked {checked['runs']} runs ({checked['data']} data setting(s), {checked['models']} "
              "model(s)): ready", flush=True)
    if args.dry_run:
        actions = [assess(study, run, overwrite=args.overwrite) for run in study.runs]
        print(f"study {study.name}: {len(study.cells)} cells x {len(study.seeds)} seeds"
              + (f" x {study.folds} folds" if study.folds else "")
              + f" = {len(study.runs)} runs in {study.study_dir}")
        for a in actions:
            run = a.run
            settings = ", ".join(f"{k}={v}" for k, v in {**run.settings, **run.tune}.items()) or "base config"
            print(f"  [{run.index}] {a.what:<8} {Path(run.dir).relative_to(study.study_dir)}  ({settings}): {a.reason}")
        todo = {w: sum(a.what == w for a in actions) for w in ("train", "resume", "replace", "skip", "busy", "refuse")}
        print("would " + ", ".join(f"{w} {n}" for w, n in todo.items() if n) + "; nothing was written")
        error = refusal(study, actions)
        if error is not None:
            raise error
        return 0
    if args.launcher == "slurm":
        study, _ = prepare_study(planned, overwrite=args.overwrite)
        write_study(study)
        options = slurm.SlurmOptions(partition=args.partition, gpus=args.gpus, cpus=args.cpus, mem=args.mem,
                                     time=args.time, max_parallel=args.max_parallel, account=args.account)
        script = slurm.write_script(Path(study.study_dir), study.name, len(study.runs), the_task_argv, options)
        print(f"wrote {script}: a job array of {len(study.runs)} tasks")
        if args.submit:
            print(slurm.submit(script))
        else:
            print(f"submit it with: sbatch {script}")
        return 0
    counts = run_study(planned, task=args.task, overwrite=args.overwrite)
    busy = f", {counts['busy']} being trained by another process" if counts["busy"] else ""
    replaced = f", {counts['replaced']} retrained (settings changed)" if counts["replaced"] else ""
    print(f"study {study.name}: {counts['trained']} trained, {counts['resumed']} resumed{replaced}, "
          f"{counts['skipped']} already done{busy}; compare them with: covfuse report {study.study_dir}")
    return 0
