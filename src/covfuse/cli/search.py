"""`covfuse sweep ... --search optuna --trials N --tune KEY=SPACE`: plan, dry-run, SLURM array or local run of
the Optuna search (covfuse.studies.search); `covfuse sweep` hands over here when --search optuna is given.

As a SLURM array, each of the cells x N tasks runs one trial against the shared journal; running the
same command again without --launcher then finishes any missing trials and trains the study runs.
"""
from __future__ import annotations

from pathlib import Path

from covfuse.errors import UserError


def main(args, overrides: list[str], task_argv: list[str], prog: str) -> int:
    from covfuse.cli._common import parse_seeds
    from covfuse.studies import search, slurm
    from covfuse.studies.sweep import parse_assignments, plan_study

    if not args.tune:
        raise UserError("--search optuna needs a space: --tune KEY=V1,V2 | KEY=LO..HI | KEY=log:LO..HI "
                        "(e.g. --tune optim.lr=log:1e-4..1e-2)")
    if args.trials < 1:
        raise UserError(f"--trials must be at least 1, got {args.trials}")
    space = parse_assignments(args.tune, "--tune")
    search.parse_space(space)  # a bad space is named before anything is planned or written
    argv = [*task_argv, "--search", "optuna", "--trials", str(args.trials)]
    study = plan_study(name=args.name, configs=args.config, runs_dir=args.runs_dir, grid=args.grid,
                       seeds=parse_seeds(args.seeds), tune=(), overrides=overrides, baseline=args.baseline,
                       argv=["covfuse", prog.split()[-1], *argv])
    n_tasks = args.trials * len(study.cells)
    if args.dry_run:
        print(f"study {study.name}: Optuna search, {len(study.cells)} cells x {args.trials} trials = {n_tasks} trials "
              f"(valid only) in {study.study_dir}/<cell>/trials/, then {len(study.runs)} study runs with each cell's "
              "best settings")
        for key, values in space.items():
            print(f"  {key}: {', '.join(map(str, values))}")
        for run in study.runs:
            print(f"  [{run.index}] {Path(run.dir).relative_to(study.study_dir)}  (best settings of cell {run.cell})")
        return 0
    if args.launcher == "slurm":
        if args.task is not None:
            raise UserError("--task is what each array task passes; do not combine it with --launcher slurm")
        from covfuse.studies.sweep import grown, write_study

        write_study(grown(study))
        options = slurm.SlurmOptions(partition=args.partition, gpus=args.gpus, cpus=args.cpus, mem=args.mem,
                                     time=args.time, max_parallel=args.max_parallel, account=args.account)
        script = slurm.write_script(Path(study.study_dir), study.name, n_tasks, argv, options)
        print(f"wrote {script}: a job array of {n_tasks} trial tasks ({len(study.cells)} cells x {args.trials})")
        print(f"{'submitted: ' + slurm.submit(script) if args.submit else f'submit it with: sbatch {script}'}; "
              f"when it has finished, run {' '.join(study.argv)} to train the study runs with the best settings")
        return 0
    summary = search.run_search(study, space, args.trials, seed=study.seeds[0], task=args.task, overwrite=args.overwrite)
    if args.task is None:
        print(f"study {study.name}: {args.trials} Optuna trials per cell, best settings: "
              + "; ".join(f"{cell} {c['best']['params']}" for cell, c in summary["cells"].items())
              + f"; compare them with: covfuse report {study.study_dir}")
    return 0
