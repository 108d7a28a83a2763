"""`covfuse fit --config FILE.yaml [--section.key VALUE ...]`: train one named run into runs/<name>/."""
from __future__ import annotations

from covfuse.training import config as cfgmod

DESCRIPTION = """Train one run from a YAML config (see configs/README.md and docs/training.md).
Command-line values override the file (e.g. --model.fusion hybrid --optim.lr 1e-4 --name x);
unknown keys are an error; --print_config shows the resolved config and exits.
--resume continues runs/<name>/ with its own saved config.yaml (only trainer settings, data.root
and a few runtime keys may be overridden)."""


def _flags(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    parser.add_argument("--resume", action="store_true",
                        help="continue runs/<name>/ from checkpoints/last.ckpt with its saved config.yaml")
    parser.add_argument("--skip_corrupt", action="store_true",
                        help="leave out images or volumes that do not decode (counted and listed in skipped.txt) instead of stopping")


def parser():
    """fit's parser: every config key (``--data.root``, ...; jsonargparse) and fit's own flags."""
    p = cfgmod.parser("covfuse fit", DESCRIPTION)
    _flags(p)
    return p


def resolve(argv: list[str]) -> tuple[cfgmod.RunConfig, dict]:
    """The run's config: the command line alone, or with --resume the run's saved config.yaml under it."""
    config, flags = cfgmod.parse(argv, _flags, prog="covfuse fit")
    if flags.get("resume"):
        saved_path = config.run_dir / "config.yaml"
        if saved_path.is_file():
            saved = cfgmod.load(saved_path)
            config, flags = cfgmod.parse(["--config", str(saved_path), *argv], _flags, prog="covfuse fit")
            cfgmod.check_resumable(saved, config, saved_path)
    if flags.get("skip_corrupt"):
        config.data.skip_corrupt = True
    return config, flags


def main(argv: list[str]) -> int:
    config, flags = resolve(argv)
    from covfuse.training.results import summary  # Lightning is imported only now
    from covfuse.training.run import fit_run
    from covfuse.training.trainer import global_rank

    run_dir = fit_run(config, overwrite=flags["overwrite"], resume=flags["resume"])
    if global_rank() == 0:
        print(f"{run_dir}: {summary(run_dir)}")
    return 0
