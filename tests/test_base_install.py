"""With only the base install (the thin client), every subcommand that needs an extra says
which one, in one line, and none shows a traceback.

The base install is simulated in a subprocess: the server and training distributions are
reported as not installed and their modules cannot be imported.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.cli import CliResult, run_cli

BASE_ONLY = r"""
import importlib.abc, importlib.metadata as metadata, sys
MODULES = {"torch", "onnxruntime", "onnx", "onnxscript", "onnx_ir", "sklearn", "pydantic",
           "pydantic_settings", "grpc_health", "grpc_reflection", "prometheus_client", "tqdm",
           "matplotlib"}
DISTRIBUTIONS = {"torch", "onnxruntime", "onnx", "onnxscript", "scikit-learn",
                 "pydantic-settings", "grpcio-health-checking", "grpcio-reflection",
                 "prometheus-client", "tqdm", "matplotlib"}

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in MODULES:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
installed = metadata.distribution
def distribution(name):
    if name.lower().replace("_", "-") in DISTRIBUTIONS:
        raise metadata.PackageNotFoundError(name)
    return installed(name)
metadata.distribution = distribution
"""


def base_only(*args: str) -> CliResult:
    return run_cli(*args, before=BASE_ONLY, timeout=60)


@pytest.mark.parametrize(("extra", "args"), [
    ("training", ["train", "--run-dir", "r"]),
    ("training", ["export", "--run-dir", "r", "--repository", "m", "--name", "n"]),
    ("training", ["compare", "--out", "o"]),
    ("server", ["recalibrate", "--model", "m", "--data", "d.npz"]),  # onnxruntime, the default
    ("training", ["recalibrate", "--engine", "torch", "--model", "m", "--data", "d.npz"]),
    ("server", ["serve", "--repository", "m"]),
])
def test_a_subcommand_that_needs_an_extra_names_it(extra, args, tmp_path):
    done = base_only(*args)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"pip install 'bnserve[{extra}]'" in lines[0] and args[0] in lines[0]


def test_the_client_subcommands_work_with_the_base_install():
    assert base_only("--help").returncode == 0
    health = base_only("health", "--address", "127.0.0.1:1", "--timeout", "1")
    assert health.returncode == 1 and "Traceback" not in health.stderr
    index = base_only("repository", "index", "--address", "127.0.0.1:1", "--timeout", "1")
    assert index.returncode == 1 and "Traceback" not in index.stderr
    assert "UNAVAILABLE" in index.stderr
    drift = base_only("drift", "--address", "127.0.0.1:1", "--model", "m", "--timeout", "1")
    assert drift.returncode == 1 and "Traceback" not in drift.stderr
    assert "UNAVAILABLE" in drift.stderr
    plot = base_only("drift", "--address", "127.0.0.1:1", "--model", "m", "--plot", "x.png")
    assert plot.returncode == 1 and "pip install matplotlib" in plot.stderr


def test_the_thin_client_imports_no_other_bnserve_package():
    """The SDK needs only its stubs; its subcommands add the shared CLI plumbing (bnserve.cli,
    standard library only), never the server, training or repository packages."""
    packages = ("print(sorted({m.split('.')[1] for m in sys.modules "
                "if m.startswith('bnserve.')}))")
    sdk = subprocess.run([sys.executable, "-c", f"import sys, bnserve.client; {packages}"],
                         capture_output=True, text=True, check=True)
    assert sdk.stdout.strip() == "['client', 'proto']"
    commands = subprocess.run(
        [sys.executable, "-c", "import sys, bnserve.client.predict_cli, bnserve.client.admin_cli, "
         f"bnserve.client.drift_cli; {packages}"], capture_output=True, text=True, check=True)
    assert commands.stdout.strip() == "['cli', 'client', 'proto']"
