"""The `covfuse` command: dispatches to one module per sub-command, imported lazily.

Each sub-command module exposes ``main(argv: list[str]) -> int`` and ``parser()``, the parser of its
options (``fit``'s holds every config key; ``sweep`` and ``cv`` pass unknown flags on as config keys). Any :class:`UserError`
(or ``FileNotFoundError``) that escapes becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading

from covfuse.errors import RunDiverged, RunInterrupted, Terminated, UserError, suggest

# name -> (module, one-line help). Modules are imported only when their command runs,
# so `covfuse --help` and `covfuse data info` start without importing Lightning.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("covfuse.cli.data", "inspect, show, verify, cache or synthesise data (manifests, BIDS, CelebA folders)"),
    "describe": ("covfuse.cli.describe", "print a model's layer table and draw its diagram"),
    "fit": ("covfuse.cli.fit", "train a model from a YAML config into runs/<name>/"),
    "test": ("covfuse.cli.test", "evaluate a finished run on valid and test"),
    "predict": ("covfuse.cli.predict", "predict for images or volumes with covariates"),
    "sweep": ("covfuse.cli.sweep", "train a study: a grid of settings x seeds, locally or as a SLURM array"),
    "cv": ("covfuse.cli.cv", "k-fold cross-validation grouped by person (identity, subject), one run per fold"),
    "status": ("covfuse.cli.status", "where a study stands: done, running, interrupted, failed, pending; time left"),
    "report": ("covfuse.cli.report", "compare a study's cells with a baseline: CIs, paired tests, figures"),
    "demo": ("covfuse.cli.demo", "the main job on built-in synthetic data (CPU-friendly)"),
    "bench": ("covfuse.cli.bench", "measure layer, model and data-loading speed ratios (tables + JSON)"),
    "explain": ("covfuse.cli.explain", "what each covariate changes in a trained run: numbers and maps"),
}


def _usage() -> str:
    lines = ["usage: covfuse COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `covfuse COMMAND --help` for a command's options."]
    return "\n".join(lines)


@contextlib.contextmanager
def sigterm_as_exception():
    """While a command runs, SIGTERM raises :class:`Terminated` instead of killing the process at once,
    so commands clean up what they half wrote (``fit`` installs its own handler, which checkpoints).
    Left alone when someone else (an embedding program) already handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        from covfuse import __version__

        print(f"covfuse {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name not in COMMANDS:
            raise UserError(f"unknown command {name!r}{suggest(name, COMMANDS)}; run `covfuse --help`")
        module = importlib.import_module(COMMANDS[name][0])
        with sigterm_as_exception():
            return int(module.main(rest) or 0)
    except (UserError, FileNotFoundError) as exc:
        print(f"covfuse {name}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"covfuse {name}: error: {exc.filename}: permission denied; check the owner and mode of the file "
              "or folder (ls -l)", file=sys.stderr)
        return 2
    except (RunInterrupted, RunDiverged) as exc:
        print(f"covfuse {name}: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        # The reader went away (`covfuse data info ... | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Terminated:
        print(f"covfuse {name}: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"covfuse {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
