"""`covfuse fit --config FILE.yaml [--section.key VALUE ...]`: train one named run into runs/<name>/."""
from __future__ import annotations

from covfuse.training import config as cfgmod

DESCRIPTION = """Train one run from a YAML config (see configs/README.md and docs/training.md).
Command-line values override the file (e.g. --model.fusion hybrid --optim.lr 1e-4 --name x);
unknown keys are an error; --print_config shows the resolved config and exits."""


def _flags(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    parser.add_argument("--resume", action="store_true", help="continue the run from its checkpoints/last.ckpt")


def main(argv: list[str]) -> int:
    config, flags = cfgmod.parse(argv, _flags, prog="covfuse fit")
    from covfuse.training.run import fit_run, global_rank, summary  # Lightning is imported only now

    run_dir = fit_run(config, overwrite=flags["overwrite"], resume=flags["resume"])
    if global_rank() == 0:
        print(f"{run_dir}: {summary(run_dir)}")
    return 0
