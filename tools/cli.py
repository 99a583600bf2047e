"""The command-line pieces every tool and record script shares: bad input is one line on stderr and exit 2.

    from tools.cli import Parser, UsageError, int_at_least, one_line
"""
from __future__ import annotations

import argparse


class UsageError(Exception):
    """A bad command line or input: printed as one line, exit status 2."""


def one_line(e: Exception) -> str:
    """An exception's message on one line (whole words: nothing is cut)."""
    return " ".join(str(e).split())


def int_at_least(flag: str, low: int):
    """argparse type: a whole number >= low, else a one-line UsageError naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{flag}={text!r}: not an integer; pass a whole number >= {low}") from None
        if value < low:
            raise UsageError(f"{flag}={value}: must be >= {low}")
        return value
    return parse


class Parser(argparse.ArgumentParser):
    """argparse whose own errors (unknown flag, missing argument) raise UsageError instead of printing usage.
    Call parse() rather than parse_args(): a type function's UsageError arrives wrapped on some Pythons."""

    def error(self, message):
        raise UsageError(message)

    def parse(self, argv: list[str] | None) -> argparse.Namespace:
        try:
            return self.parse_args(argv)
        except argparse.ArgumentError as e:
            raise UsageError(one_line(e)) from None
