"""Shared pieces of the subcommands."""
from __future__ import annotations

import argparse
import re

from covfuse.errors import UserError, suggest


class Parser(argparse.ArgumentParser):
    """argparse whose errors become one UserError line (exit 2) instead of usage plus a message.

    One flag spelling across commands: options are declared with underscores, like the config keys
    (``--runs_dir``, ``--data.batch_size``), and ``--runs-dir`` finds the same option (either spelling
    finds whichever one a parser declares).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--seed` must not silently mean `--seeds`
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(f"{_reworded(message)}; see `{self.prog} --help`")

    def parse_known_args(self, args=None, namespace=None):
        if args is not None:
            args = [self._canonical(a) for a in args]
        return super().parse_known_args(args, namespace)

    def _canonical(self, token: str) -> str:
        if not token.startswith("--") or token == "--":
            return token
        name, sep, value = token.partition("=")
        if name in self._option_string_actions:
            return token
        for candidate in (name[:2] + name[2:].replace("-", "_"), name[:2] + name[2:].replace("_", "-")):
            if candidate in self._option_string_actions:
                return candidate + sep + value
        return token


_INVALID = re.compile(r"argument (?P<name>[^:/ ]+)(?:/\S+)?: invalid (?P<kind>int|float) value: '(?P<value>.*)'")
_CHOICE = re.compile(r"argument (?P<name>[^:/ ]+)(?:/\S+)?: invalid choice: '(?P<value>.*)' \(choose from (?P<choices>.*)\)")


def _reworded(message: str) -> str:
    """argparse's complaint about a value, in the words of covfuse's other messages: the option, the value,
    what it takes (``--n x: expected an integer``; ``--format xml: choose from text, json``)."""
    found = _INVALID.fullmatch(message)
    if found:
        kind = "an integer" if found["kind"] == "int" else "a number"
        return f"{found['name']} {found['value']}: expected {kind}"
    found = _CHOICE.fullmatch(message)
    if found:
        choices = [c.strip().strip("'") for c in found["choices"].split(",")]
        return f"{found['name']} {found['value']}: choose from {', '.join(choices)}{suggest(found['value'], choices)}"
    return message


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.strip("[]").split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: write integers separated by commas, e.g. --seeds 0,1,2") from None
