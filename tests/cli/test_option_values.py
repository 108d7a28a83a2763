"""Every option of every covfuse command given a value of the wrong type: exit 2 and one covfuse line naming the
option, never jsonargparse's dump of Union subtypes, never a traceback.

The options come from the commands' own parsers (``covfuse.cli.<command>.parser()``, sub-commands included;
``fit``'s holds every config key, which ``sweep`` and ``cv`` take too), and a value is "of the wrong type" when
that parser itself refuses it: each option is offered a few values of other types and the first one its parser
rejects is used. Options whose type is text (a name, a path) have no wrong type on a command line; in a config
file a mapping is the wrong type for them, so every config key is also tried in a YAML file. Nothing trains:
each call must fail while its arguments are read.
"""
from __future__ import annotations

import argparse
import functools
import importlib

import pytest
import yaml

from covfuse.cli.main import COMMANDS
from covfuse.cli.main import main as covfuse
from covfuse.training.config import config_keys, field_types
from covfuse.training.config import parser as config_parser

CANDIDATES = ["abc", "1.5", "{a: 1}", "[1, 2]", "-1", ""]  # tried in order: the first the parser rejects
YAML_CANDIDATES = ["abc", 1.5, {"a": 1}, [1, 2]]
STUDY = {"sweep": ["--config", "base.yaml", "--name", "s"], "cv": ["--config", "base.yaml", "--name", "s", "--folds", "2"]}


def refuses(parser, argv: list[str]) -> bool:
    """Whether a jsonargparse ``parser`` (fit's: no required arguments) rejects ``argv`` while parsing."""
    try:
        parser.parse_args(argv)
    except SystemExit as exc:  # --print_config prints and exits 0
        return exc.code not in (0, None)
    except Exception:  # noqa: BLE001 - jsonargparse's ArgumentError, covfuse's UserError
        return True
    return False


def rejects(action, value: str) -> bool:
    """Whether an argparse ``action`` rejects ``value``: not one of its choices, or its type refuses it."""
    if action.choices is not None and value not in action.choices:
        return True
    if callable(action.type) and action.type is not str:
        try:
            action.type(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            return True
    return False


def typed_actions(parser: argparse.ArgumentParser, path: list[str]):
    """(sub-command path, action) for every action of ``parser`` and its sub-parsers that takes a value."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from typed_actions(sub, [*path, name])
        elif action.nargs != 0 and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def wrong_value(parser, action) -> str | None:
    """A value the parser refuses for ``action`` (None: any text is a value of its type)."""
    option = action.option_strings[0] if action.option_strings else None
    for value in CANDIDATES:
        if hasattr(parser, "add_class_arguments"):  # jsonargparse: ask the parser
            if refuses(parser, [f"{option}={value}"] if option == "--print_config" else [option, value]):
                return value
        elif rejects(action, value):
            return value
    return None


@functools.lru_cache(maxsize=1)
def collect() -> tuple[list, list]:
    """(cases, text options): every (command, sub-command path, action, wrong value) that the commands' parsers
    define, and the options without a wrong type (value None)."""
    cases, text = [], []
    for command, (module_name, _) in COMMANDS.items():
        parser = importlib.import_module(module_name).parser()
        for path, action in typed_actions(parser, []):
            value = wrong_value(parser, action)
            (cases if value is not None else text).append((command, path, action, value))
    return cases, text


def one_line(capsys, code: int, command: str, names: list[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"covfuse {command}: error: "), line
    for junk in ("Traceback", "Union", "Subtypes", "<class", "NoneType", "Given value type"):
        assert junk not in line, line
    assert any(name in line for name in names), f"{names} not named in: {line}"
    assert len(line) < 400, line
    return line


def names_of(action) -> list[str]:
    """How a message may name the option: its flags (a positional: its name); --config: the config file."""
    if action.option_strings == ["--config"]:
        return ["config file"]
    return list(action.option_strings) or [action.dest]


def test_the_parsers_were_found():
    cases, text = collect()
    commands = {c for c, *_ in cases + text}
    assert commands == set(COMMANDS)
    keys = {a.dest for c, _, a, _ in cases + text if c == "fit"}
    assert set(config_keys()) <= keys  # fit's parser holds every config key
    assert len(cases) > 100


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_typed_option_refuses_a_wrong_value_in_one_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("data:\n  root: nowhere\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    keys = config_keys()
    for cmd, path, action, value in collect()[0]:
        if cmd != command:
            continue
        option = action.option_strings[0] if action.option_strings else None
        argv = ([f"{option}={value}"] if option == "--print_config" else [option, value]) if option else [value]
        code = covfuse([command, *path, *argv])
        one_line(capsys, code, command, names_of(action))
        if command == "fit" and action.dest in keys:
            for study, base in STUDY.items():  # sweep and cv take every config key as an override
                one_line(capsys, covfuse([study, *base, *argv]), study, names_of(action))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_every_config_key_refuses_a_wrong_type_in_a_config_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    p = config_parser()
    for key in config_keys():
        section, _, name = key.rpartition(".")
        for value in YAML_CANDIDATES:
            text = yaml.safe_dump({section: {name: value}} if section else {name: value})
            (tmp_path / "bad.yaml").write_text(text)
            if refuses(p, ["--config", "bad.yaml"]):
                break
        else:
            pytest.fail(f"no wrong-typed value found for {key}")
        line = one_line(capsys, covfuse(["fit", "--config", "bad.yaml"]), "fit", [key])
        assert line.startswith("covfuse fit: error: bad.yaml: "), line


def test_the_messages_say_what_is_allowed(capsys):
    cases = [
        (["fit", "--data.classes", "[0,1]"], "--data.classes [0,1]: data.classes takes a list of names such as [a,b] "
         "or null, e.g. --data.classes [a,b]; numbers and yes/no are read as numbers and booleans: quote them, e.g. "
         "--data.classes '[\"0\",\"1\"]'"),
        (["fit", "--monitor", "val/auc"], "--monitor val/auc: monitor takes one of val/loss, val/acc, val/brier, val/mae, "
         "val/c_index, val/ibs, null, e.g. --monitor val/loss"),
        (["fit", "--trainer.deterministic", "maybe"], "takes one of true, false, warn, null"),
        (["fit", "--data.spacing", "abc"], "--data.spacing abc: data.spacing takes a number or null"),
        (["fit", "--optim.optimizer", "adamx"], "takes one of adam, adamw, sgd, e.g. --optim.optimizer adam"),
        (["data", "synth", "out", "--n", "many"], "--n many: expected an integer"),
        (["report", "st", "--metric", "acuracy"], "--metric acuracy: choose from accuracy, "),
    ]
    for argv, expect in cases:
        line = one_line(capsys, covfuse(argv), argv[0], [expect])
        assert expect in line


def test_text_options_are_only_those_whose_type_is_text():
    """What this test cannot give a wrong type: options declared as text (str/Path, no choices)."""
    from pathlib import Path

    for command, path, action, _ in collect()[1]:
        if command == "fit":
            hint = field_types().get(action.dest, (str, None))[0]
            assert str in (hint, *getattr(hint, "__args__", ())) or action.dest == "config", (command, action.dest)
        else:
            assert action.choices is None and action.type in (None, str, Path), (command, path, action.dest)


def test_the_quoted_spelling_the_message_gives_is_accepted(tmp_path):
    """The hint for class names that YAML reads as numbers or booleans works, on the command line and in a file."""
    from covfuse.training.config import parse

    assert parse(["--data.classes", '["0","1"]'])[0].data.classes == ["0", "1"]
    (tmp_path / "q.yaml").write_text('data:\n  classes: ["no", "yes"]\n')
    assert parse(["--config", str(tmp_path / "q.yaml")])[0].data.classes == ["no", "yes"]
