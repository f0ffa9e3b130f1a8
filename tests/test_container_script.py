"""scripts/container_test.py (`make container-test`): the image built and run for real.

The real run needs buildah, podman and root, and takes 30 s to a few minutes, so it runs only
with BNSERVE_CONTAINER_TEST=1; without the tools the script installs nothing and says how.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "container_test.py"


def test_without_the_tools_it_installs_nothing_and_says_how(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            env={**os.environ, "PATH": str(tmp_path)}, timeout=60, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "buildah, podman, runc not found" in result.stderr
    assert "apt-get install -y buildah podman runc debootstrap" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.environ.get("BNSERVE_CONTAINER_TEST") != "1",
                    reason="builds and runs the image with buildah and podman (as root): "
                    "set BNSERVE_CONTAINER_TEST=1, or run `make container-test`")
@pytest.mark.timeout(1800)
def test_the_image_honours_bnserve_port_serves_and_stops_on_sigterm():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            cwd=ROOT, timeout=1700, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "container test passed" in result.stdout
