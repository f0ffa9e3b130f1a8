"""Wire compatibility: Triton's own tritonclient drives bnserve unchanged (in a subprocess)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnserve.server.settings import ServerSettings
from support.server_thread import ServerThread

PROBE = Path(__file__).parent / "support" / "triton_probe.py"

# Only look for it: importing it here would clash with bnserve's own `inference.*` messages.
if importlib.util.find_spec("tritonclient") is None:
    pytest.fail("tritonclient[grpc] is missing: install the dev extra (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def server(digits_repository):
    with ServerThread(ServerSettings(repository=digits_repository)) as running:
        yield running


def test_tritonclient_health_metadata_and_fp32_infer(server, digits_data, tmp_path):
    images, labels = digits_data
    x = images[:8]
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run(
        [sys.executable, str(PROBE), server.address, "digits", str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["live"] and report["ready"] and report["model_ready"]
    assert not report["unknown_model_ready"]
    assert report["server_metadata"]["name"] == "bnserve"
    meta = report["model_metadata"]
    assert meta["name"] == "digits" and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}]
    assert report["response"]["id"] == "triton-1"
    assert report["unknown_model_error"]["status"] == "StatusCode.NOT_FOUND"

    from bnserve.client import Client

    with Client(server.address) as ours:
        expected = ours.predict("digits", x)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    assert (expected.argmax(axis=1) == labels[:8]).mean() >= 0.75
