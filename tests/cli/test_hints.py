"""Every hint is true (issue 24): each command and option that docs/errors.md or an error message names
exists on the command it is named with, or, named alone, on some covfuse command.

The texts are collected, not listed by hand: docs/errors.md whole, and every string literal in
src/covfuse (f-strings with ``{…}`` read as a placeholder word). Each ``covfuse CMD [SUB] … --opt``
in them is checked against ``covfuse CMD [SUB] --help`` as the command prints it, so a message can
only name what a user can type.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

from covfuse.cli.main import COMMANDS
from covfuse.cli.main import main as covfuse

REPO = Path(__file__).resolve().parents[2]
DATA_COMMANDS = ("info", "show", "synth", "synth3d", "cache", "verify")
CONFIG_COMMANDS = ("fit", "sweep", "cv")  # take every config key as --section.key
# options of other programs that messages quote (pip, python); never covfuse's
FOREIGN = {"--upgrade", "--index-url", "--extra-index-url", "--user", "--no-deps", "--force-reinstall"}


def errors_md() -> list[tuple[str, str]]:
    """docs/errors.md: its prose whole, and of each catalogue row the message, less the options the row's
    own command passes (a message may quote the user's mistake: "unknown option --optim.lrr")."""
    text = (REPO / "docs" / "errors.md").read_text()
    out = []
    prose = []
    for line in text.splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) >= 4:
            given = set(re.findall(r"--[a-z][a-z0-9_.-]*", cells[2]))
            message = cells[3]
            for opt in given:
                message = re.sub(rf"{re.escape(opt)}(?![\w.-])", "", message)
            out.append((f"docs/errors.md row {cells[0][2:]}", message))
        else:
            prose.append(line)
    return [("docs/errors.md", "\n".join(prose)), *out]


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (they describe code, not what a user is told)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def texts() -> list[tuple[str, str]]:
    """(where, text) for docs/errors.md and each string literal under src/covfuse (docstrings and the
    #SBATCH lines of SLURM scripts, which are sbatch's options, left out)."""
    out = errors_md()
    for file in sorted((REPO / "src" / "covfuse").rglob("*.py")):
        tree = ast.parse(file.read_text())
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            if ("--" in text or "covfuse " in text) and not text.startswith("#SBATCH"):
                out.append((f"{file.relative_to(REPO)}:{node.lineno}", text))
    return out


@lru_cache(maxsize=None)
def help_text(command: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = covfuse([*command.split(), "--help"])
        except SystemExit as exc:  # fit's parser (jsonargparse) exits after printing its help
            code = exc.code or 0
    assert code == 0 and out.getvalue(), command
    return out.getvalue()


@lru_cache(maxsize=None)
def options(command: str) -> frozenset[str]:
    found = set(re.findall(r"--[a-z][a-z0-9_.-]*", help_text(command)))
    if command != "fit" and command.split()[0] in CONFIG_COMMANDS:
        found |= {"--" + o for o in options("fit")}
    return frozenset(o.replace("-", "_")[2:] for o in found)


def all_options() -> frozenset[str]:
    names = [*(c for c in COMMANDS if c != "data"), *(f"data {s}" for s in DATA_COMMANDS)]
    return frozenset().union(*(options(c) for c in names), {"version", "help"})  # `covfuse --version`


def named_commands(text: str):
    """(command, [options]) for each ``covfuse CMD …`` in ``text``; prose ("covfuse reads …") is skipped."""
    for match in re.finditer(r"(`?)covfuse ([a-z][a-z0-9]*)\b([^`;)\n]*)", text):
        ticked, command, rest = match.groups()
        if command not in COMMANDS:
            if ticked:
                yield command, None  # a backticked command that does not exist
            continue
        tokens = rest.split()
        if command == "data" and tokens and re.fullmatch(r"[a-z][a-z0-9]*", tokens[0]):
            command = f"data {tokens[0]}"
        opts = [t.split("=")[0].rstrip(".,:'\"") for t in tokens if t.startswith("--") and len(t) > 2]
        yield command, [o for o in opts if o not in FOREIGN and not o.endswith("X")]


def test_every_command_and_option_a_message_or_docs_errors_names_exists():
    problems = []
    checked = 0
    named = set()
    for where, text in texts():
        for command, opts in named_commands(text):
            named.add(command)
            if opts is None:
                problems.append(f"{where}: `covfuse {command}` is no covfuse command")
                continue
            if command.startswith("data ") and command.split()[1] not in DATA_COMMANDS:
                problems.append(f"{where}: no `covfuse {command}`")
                continue
            for opt in opts:
                checked += 1
                if opt.replace("-", "_")[2:] not in options(command):
                    problems.append(f"{where}: `covfuse {command}` has no option {opt}")
        # an option named alone (`pass --overwrite`) must exist on some command
        for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9_.-]*[a-z0-9]", text):
            if opt in FOREIGN or opt.replace("-", "_")[2:] in all_options():
                continue
            problems.append(f"{where}: {opt} is an option of no covfuse command")
    # the collection finds the hints: the corrupt-image messages name `data verify` and `fit --skip_corrupt`
    assert checked > 20 and {"data verify", "data info", "fit", "predict", "sweep"} <= named
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command", [f"data {s}" for s in DATA_COMMANDS])
def test_data_subcommands_answer_help(command):
    assert help_text(command).startswith("usage: covfuse data")


def catalogue_rows() -> list[tuple[str, str, str]]:
    """(case, command, message) of each docs/errors.md catalogue row; command as ``fit`` or ``data info``."""
    rows = []
    for line in (REPO / "docs" / "errors.md").read_text().splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) >= 4:
            words = cells[2].strip("`").split()
            command = words[1] if words[1] != "data" else f"data {words[2]}"
            rows.append((cells[0][2:].strip("`"), command, cells[3], cells[2]))
    return rows


def test_an_option_a_message_names_alone_is_one_of_the_command_that_printed_it():
    """"pass --skip-corrupt" printed by `covfuse predict` must be an option of predict (it was not:
    issue 24); an option inside a named command (`covfuse fit --skip_corrupt`) is checked above."""
    problems = []
    rows = catalogue_rows()
    assert len(rows) > 50
    for case, command, message, given in rows:
        alone = re.sub(r"`?covfuse [a-z][a-z0-9]*\b[^`;)]*`?", "", message)
        echoed = set(re.findall(r"--[a-z][a-z0-9_.-]*", given))
        for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9_.-]*[a-z0-9]", alone):
            if opt in echoed or opt in FOREIGN:
                continue
            if opt.replace("-", "_")[2:] not in options(command):
                problems.append(f"{case}: `covfuse {command}` prints {opt}, which it does not have")
    assert not problems, "\n".join(problems)
