"""How the ``bnserve`` command reports a failure: one line on stderr, never a traceback.

    UserError              the user's mistake: its message names the flag or file and what
                           was expected                        -> "bnserve CMD: error: ..."
    OSError (a filename)   a file the command could not use   -> "... cannot access PATH: why"
    anything else          a bug                               -> "... internal error: ..."

Subcommands raise ``UserError`` (``user_errors()`` turns a package's own error types into it)
and let other exceptions through; ``bnserve.cli.main`` is the one place that prints them.
Each is exit status 1. Under ``--log-level DEBUG`` the traceback is printed first, for bug
reports. Standard library only: the thin client's subcommands import this.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator

# Long enough for a path and a server's explanation; a library's message can be a page long
# (a pydantic or onnx dump) and a terminal line is the goal.
MAX_MESSAGE = 400

DEBUG_HINT = "run with --log-level DEBUG for the traceback"


class UserError(Exception):
    """A mistake the user can fix. The message is the whole story: it names the flag or file
    and says what was expected, e.g. ``--input x.npy: no such file; expected ...``."""


@contextlib.contextmanager
def user_errors(*types: type[BaseException], note: str = "") -> Iterator[None]:
    """Re-raise ``types`` (a package's errors that mean "the user's input is wrong") as
    ``UserError``, with ``note`` appended, e.g. "; nothing was written to the repository"."""
    try:
        yield
    except types as exc:
        raise UserError(f"{exc}{note}") from exc


def file_problem(exc: OSError, doing: str = "access") -> str:
    """``cannot read PATH: No such file or directory`` for an OSError from opening a file."""
    reason = exc.strerror or str(exc)
    return f"cannot {doing} {exc.filename}: {reason}" if exc.filename else f"cannot {doing}: {reason}"


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (inner newlines and runs of spaces collapse) of at most ``limit``
    characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def describe(exc: BaseException, *, debug: bool = False) -> str:
    """The line for an exception a subcommand raised (without the ``bnserve CMD:`` prefix);
    ``debug``: the traceback is already on screen, so the line does not ask for it."""
    if isinstance(exc, UserError):
        return f"error: {one_line(str(exc))}"
    if isinstance(exc, OSError):
        # A file or the machine (disk full, a port taken): the user's to fix, not a bug.
        return f"error: {one_line(file_problem(exc))}"
    if debug:
        return f"internal error: {one_line(f'{type(exc).__name__}: {exc}')}"
    message = one_line(f"{type(exc).__name__}: {exc}", MAX_MESSAGE - len(DEBUG_HINT) - 3)
    return f"internal error: {message} ({DEBUG_HINT})"


def report_failure(command: str, exc: BaseException, *, debug: bool) -> int:
    """Print the one line for ``exc`` (after its traceback when ``debug``); the exit status."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"bnserve {command}: {describe(exc, debug=debug)}", file=sys.stderr)
    return 1
