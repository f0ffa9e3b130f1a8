"""README.md's quick path, run as a new user runs it, so the README cannot drift from the code.

The blocks come from the README itself: those marked ``<!-- quick-path: NAME ... -->``
(tests/support/readme_blocks.py says how a block is read and compared). Covered: "The two
commands" (``make serve`` trains, exports and serves the digits CNN, and logs what the README
shows), "From Python" (the five.npy command and the thin-client example with its output),
"From the command line" (predict and health), "When a command fails" (every error line) and
"From Triton's tritonclient, unchanged". Not covered: ``make test`` itself, the ``bnserve
repository`` transcript (it needs an admin token file, a config and explicit model control)
and everything after the quick path.

How it runs: in a temp folder that has a ``.venv`` link to this interpreter's environment
(the README's ``.venv/bin/python``) and that environment's bin/ first on PATH (``bnserve``),
against ``make serve REPOSITORY=<tmp>/models RUNS=<tmp>/runs HOST=127.0.0.1 PORT=0`` from
the project root; the port is the one its "serving ... on port N" line names, and readiness
is ``bnserve health --model digits`` polled from that line on. The digits CNN is trained
once, as on a fresh machine: ``make serve`` takes ~18 s of the ~24 s this test takes (three
process starts; ~3 s training, ~5 s export). No fixture trains that exact model (the
session's ``digits_repository`` is a smaller, shorter run), so none seeds the run folder.
The install stamp is left alone (``make -o``): the environment running the tests is the one
installed. ``BNSERVE_DRAIN_WINDOW_S=0`` for the server (the 5 s window would only add 5 s).

Substitutions, the only differences from the README's text: ``localhost:8001`` -> the
server's address and ``port 8001`` -> its port; ``bnserve predict`` without ``--address``
(its default is localhost:8001) gets ``--address`` the server's; ``BNSERVE_PORT`` is the
server's port. A command the README shows failing with ``--input F: no such file`` runs
while F is moved aside. The error transcript runs beside the files it names: digits.npz,
rows.npy (3, 5) and tiny.npz (5 rows, 2 classes).

Order: tritonclient first after five.npy, because its last line counts the calls since the
server started; then the README's order. At the end SIGTERM stops the server, which exits 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support.readme_blocks import Block, log_contains, output_matches, quick_path_blocks
from support.subprocess_server import PORT_LINE
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
QUICK_PATH = ("serve-log", "five-npy", "thin-client", "command-line", "command-fails",
              "tritonclient")
RUN_ORDER = ("five-npy", "tritonclient", "thin-client", "command-line", "command-fails")
COMMAND_TIMEOUT_S = 60
READY_TIMEOUT_S = 240  # make serve trains, exports and starts in ~18 s on 2 cores; margin for busy ones
STOP_TIMEOUT_S = 30
MISSING_INPUT = re.compile(r"--input (\S+): no such file")
DEFAULT_ADDRESS = re.compile(r"^bnserve predict\b")
SERVER_LOG = re.compile(r" (INFO|WARNING|ERROR) bnserve\.server\.")


def readme_blocks() -> dict[str, Block]:
    return quick_path_blocks((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_quick_path_markers_name_every_block():
    """A marker dropped or added by accident fails here, not silently."""
    blocks = readme_blocks()
    assert tuple(blocks) == QUICK_PATH
    assert {name: block.kind for name, block in blocks.items()} == {
        "serve-log": "log", "five-npy": "script", "thin-client": "python",
        "command-line": "transcript", "command-fails": "transcript", "tritonclient": "python"}


@pytest.mark.parametrize(("shown", "printed", "matches"), [
    (["a", "...", "z"], ["a", "b", "c", "z"], True),
    (["a", "...", "z"], ["a", "z"], True),
    (["a", "...", "z"], ["a", "b"], False),
    (["row 0: 0 0.9937"], ["row 0: 0 0.9601"], True),
    (["row 0: 0 0.9937"], ["row 0: 0 0.9401"], False),
    (["row 0: 0 0.9937"], ["row 0: 1 0.9937"], False),  # integers and labels are exact
    (["(4, 10) [0 1 2 3]"], ["(4, 10) [0 1 2 3]", "more"], False),
])
def test_shown_output_rules(shown, printed, matches):
    assert output_matches(shown, printed, floats=0.05) is matches


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _server_pid(make_pid: int) -> int:
    """The ``bnserve serve`` process below ``make`` (make runs the recipe line itself)."""
    todo = [make_pid]
    while todo:
        pid = todo.pop()
        try:
            argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            argv = []
        if b"serve" in argv and b"--repository" in argv:
            return pid
        todo.extend(_children(pid))
    raise AssertionError("no `bnserve serve` process under make")


class QuickPath:
    """The user's folder, the ``make serve`` process and how commands run there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0  # the server's, once its log names it
        venv = Path(sys.prefix)
        (folder / ".venv").symlink_to(venv, target_is_directory=True)
        self.env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        self.log_path = folder.parent / "make-serve.log"
        self.make: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        venv = Path(sys.prefix)
        env = {k: v for k, v in self.env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        env["BNSERVE_DRAIN_WINDOW_S"] = "0"
        with self.log_path.open("wb") as log:
            self.make = subprocess.Popen(
                ["make", "-o", f"{venv}/.installed-serve", "serve", f"VENV={venv}",
                 f"REPOSITORY={self.folder.parent / 'models'}",
                 f"RUNS={self.folder.parent / 'runs'}", "HOST=127.0.0.1", "PORT=0"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.make is not None
            if self.make.poll() is not None:
                pytest.fail(f"make serve exited with {self.make.returncode}:\n{self.log}")
            if not self.port:  # no process per poll while it trains
                serving = PORT_LINE.search(self.log)
                if serving is None:
                    return False
                self.port = int(serving[1])
                self.env["BNSERVE_PORT"] = serving[1]
            return self.sh(f"bnserve health --address {self.address} --model digits")[0] == 0

        wait_for(ready, READY_TIMEOUT_S, "make serve to train, export and serve digits")

    def stop(self) -> int:
        """SIGTERM the server (not make, which would pass it on a second time); make's exit
        status is the server's."""
        assert self.make is not None
        os.kill(_server_pid(self.make.pid), signal.SIGTERM)
        return self.make.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        if self.make is not None and self.make.poll() is None:
            os.killpg(self.make.pid, signal.SIGKILL)
            self.make.wait(timeout=10)

    def substitute(self, text: str) -> str:
        return (text.replace("localhost:8001", self.address)
                .replace("port 8001", f"port {self.port}"))

    def sh(self, command: str) -> tuple[int, list[str]]:
        """Run a shell command in the folder: its exit status and printed lines (stdout and
        stderr together, as a terminal shows them)."""
        done = subprocess.run(["bash", "-c", command], cwd=self.folder, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        return done.returncode, done.stdout.splitlines()


def _command(quick: QuickPath, command: str) -> str:
    command = quick.substitute(command)
    if DEFAULT_ADDRESS.match(command) and "--address" not in command:
        command = DEFAULT_ADDRESS.sub(f"bnserve predict --address {quick.address}", command)
    return command


def run_block(quick: QuickPath, block: Block) -> list[str]:
    """Run one block; what differs from the README (empty: nothing)."""
    where = f"README line {block.line} ({block.name})"
    if block.kind == "script":
        code, printed = quick.sh(block.text)
        return [] if code == 0 and not printed else [f"{where}: exit {code}, printed {printed}"]
    if block.kind == "python":
        script = quick.folder / f"readme-{block.name}.py"  # not a module name it imports
        script.write_text(quick.substitute(block.text))
        code, printed = quick.sh(f"python {script.name}")
        assert block.output is not None
        shown = quick.substitute(block.output).splitlines()
        if code == 0 and output_matches(shown, printed, floats=block.floats):
            return []
        return [f"{where}: exit {code}; shown:\n" + "\n".join(shown)
                + "\nprinted:\n" + "\n".join(printed)]
    problems = []
    for step in block.steps():
        command = _command(quick, step.command)
        aside = [quick.folder / name for line in step.output
                 for name in MISSING_INPUT.findall(line)]
        for path in aside:
            path.rename(path.with_name(path.name + ".aside"))
        try:
            code, printed = quick.sh(command)
        finally:
            for path in aside:
                path.with_name(path.name + ".aside").rename(path)
        shown = [quick.substitute(line) for line in step.output]
        exit_ok = code != 0 if block.fails else code == 0
        if not (exit_ok and output_matches(shown, printed, floats=block.floats)
                and not any("Traceback" in line for line in printed)):
            problems.append(f"{where}: $ {command}\nexit {code}; shown:\n" + "\n".join(shown)
                            + "\nprinted:\n" + "\n".join(printed))
    return problems


def _error_scene(folder: Path) -> None:
    """The files the error transcript names besides five.npy."""
    images = np.load(folder / "five.npy")
    np.savez(folder / "digits.npz", x=images, y=np.arange(len(images)))
    np.save(folder / "rows.npy", np.zeros((3, 5), np.float32))
    rng = np.random.default_rng(0)
    np.savez(folder / "tiny.npz", x=rng.random((5, 4), np.float32), y=np.array([0, 1, 0, 1, 0]))


def test_the_quick_path_runs_as_the_readme_shows(tmp_path):
    blocks = readme_blocks()
    assert set(RUN_ORDER) | {"serve-log"} == set(blocks)
    folder = tmp_path / "user"
    folder.mkdir()
    quick = QuickPath(folder)
    problems: list[str] = []
    try:
        quick.start()
        # While it trains: the command that writes five.npy (a second terminal's work).
        problems += run_block(quick, blocks["five-npy"])
        assert not problems, problems
        _error_scene(folder)
        quick.wait_ready()
        log_lines = quick.log.splitlines()
        shown = quick.substitute(blocks["serve-log"].text).splitlines()
        missing = log_contains(shown, log_lines)
        if missing:
            served = [line for line in log_lines if SERVER_LOG.search(line)]
            problems.append(f"README line {blocks['serve-log'].line} (serve-log): not logged "
                            f"in this order: {missing}\nthe server logged:\n" + "\n".join(served))
        for name in RUN_ORDER[1:]:
            problems += run_block(quick, blocks[name])
        code = quick.stop()
        assert code == 0, f"make serve exited {code} after SIGTERM:\n{quick.log}"
        assert "Traceback" not in quick.log, quick.log
    finally:
        quick.kill()
    assert not problems, "\n\n".join(problems)
