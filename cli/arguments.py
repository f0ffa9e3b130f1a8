"""Argument types every subcommand shares (standard library only: the thin client uses them).

A value argparse refuses is a usage error: one line, exit status 2, naming the flag
(``argument --batch-size: must be an integer >= 1, got 0``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer flag whose values start at ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # what argparse names in its own messages
    return parse
