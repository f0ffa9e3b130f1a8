"""The tree stays ruff-clean (style, imports, likely bugs); `make lint` shows the details."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def test_ruff_passes(project_root: Path):
    ruff = Path(sys.executable).with_name("ruff")
    command = [str(ruff)] if ruff.exists() else [shutil.which("ruff") or "ruff"]
    done = subprocess.run([*command, "check", "--output-format", "concise", str(project_root)],
                          capture_output=True, text=True, cwd=project_root)
    assert done.returncode == 0, done.stdout + done.stderr
