"""The thin client's floor environment (scripts/floor_env.py), built or found once per test
session: grpcio, protobuf and numpy at pyproject.toml's floors, and the grpcio-tools that
generates the stubs."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "floor_env.py"
REQUIREMENTS = ROOT / "scripts" / "floor-requirements.txt"
UNSUPPORTED_PYTHON = 3  # floor_env.py's exit status for a Python the pins have no wheels for


def pins() -> dict[str, str]:
    """name -> version, as floor-requirements.txt pins them."""
    found = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[name.strip().lower()] = version.strip()
    return found


@functools.cache
def _built() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=600)


def floor_python() -> Path:
    """The floor environment's python; skips on a Python the pins have no wheels for, and
    fails with pip's message when it cannot be built."""
    done = _built()
    if done.returncode == UNSUPPORTED_PYTHON:
        pytest.skip(done.stderr.strip())
    if done.returncode != 0:
        pytest.fail(f"{SCRIPT.name} could not build the floor environment:\n{done.stderr}",
                    pytrace=False)
    return Path(done.stdout.strip().splitlines()[-1])


def run(python: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python args`` in the checkout, with nothing of this environment on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME",
                                                            "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)
