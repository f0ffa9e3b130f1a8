"""The ``bnserve`` command as a user runs it: the one way tests call the CLI (but for
tests/client/test_fake_servicer.py, which runs the installed console script: that script
is what it checks).

    run_cli("predict", "--model", "digits", "--input", path) -> CliResult(returncode, stdout, stderr)

``run_cli`` starts a child process: what is tested is the process itself (its exit status,
what reaches stderr, signals, an import that must not happen). ``before`` is Python run in
the child ahead of the command, to plant a fault (a module that cannot be imported, a
handler that raises) without touching the installed code. ``env`` replaces every BNSERVE_*
variable of this process's environment (``{}`` runs the command with none).

``run_cli_in_process`` calls the same ``main()`` in this process, for the steps of a longer
story whose process-level behaviour another test already holds (a refusal after a resume,
say): it saves the ~3 s a child spends importing torch again.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

# What `bnserve` runs, without depending on the venv's bin/ being on PATH.
RUN_MAIN = "import sys\nfrom bnserve.cli import main\nsys.exit(main(sys.argv[1:]))\n"
BNSERVE = [sys.executable, "-m", "bnserve.cli"]


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """The non-empty lines on stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]


def environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """This process's environment with its BNSERVE_* variables replaced by ``env``."""
    if env is None:
        return None
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BNSERVE_")}
    environ.update(env)
    return environ


def run_cli(*args: str | Path, before: str = "", cwd: Path | str | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 120,
            check: bool = False) -> CliResult:
    """Run ``bnserve ARGS`` (``python -m bnserve.cli``, or the same after ``before``);
    ``check``: fail the test, showing stderr, unless it exits 0."""
    command = [sys.executable, "-c", before + "\n" + RUN_MAIN] if before else BNSERVE
    done = subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=environment(env))
    assert not check or done.returncode == 0, f"bnserve {args[0]} exited {done.returncode}: " \
        f"{done.stderr[-3000:]}"
    return CliResult(done.returncode, done.stdout, done.stderr)


def run_cli_in_process(*args: str | Path) -> CliResult:
    """``main(ARGS)`` here, stdout and stderr captured; a usage error's SystemExit is its code."""
    from bnserve.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())
