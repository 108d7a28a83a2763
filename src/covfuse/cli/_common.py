"""Shared pieces of the subcommands."""
from __future__ import annotations

import argparse

from covfuse.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse whose errors become one UserError line (exit 2) instead of usage plus a message."""

    def error(self, message: str):
        raise UserError(f"{message}; see `{self.prog} --help`")
