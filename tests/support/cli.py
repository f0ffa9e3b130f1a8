"""The ``bnserve`` command in a child process, as a user runs it.

    run_cli("predict", "--model", "digits", "--input", path) -> CliResult(returncode, stdout, stderr)

``before`` is Python run in the child ahead of the command, to plant a fault (a module that
cannot be imported, a handler that raises) without touching the installed code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

# What `bnserve` runs, without depending on the venv's bin/ being on PATH.
RUN_MAIN = "import sys\nfrom bnserve.cli import main\nsys.exit(main(sys.argv[1:]))\n"


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """The non-empty lines on stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(*args: str | Path, before: str = "", cwd: Path | str | None = None,
            timeout: float = 60) -> CliResult:
    """Run ``bnserve ARGS`` (``python -m bnserve.cli``, or the same after ``before``)."""
    command = ([sys.executable, "-c", before + "\n" + RUN_MAIN] if before
               else [sys.executable, "-m", "bnserve.cli"])
    done = subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
    return CliResult(done.returncode, done.stdout, done.stderr)
