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


EXTENSIONS_PROBE = Path(__file__).parent / "support" / "triton_extensions_probe.py"


def test_tritonclient_drives_config_statistics_repository_and_classification(
        digits_repository, digits_data, tmp_path):
    import shutil

    root = tmp_path / "repo"
    for name in ("digits", "spare"):
        shutil.copytree(digits_repository / "digits", root / name)
    (tmp_path / "token").write_text("t0ken\n")
    settings = ServerSettings(repository=root, model_control_mode="explicit",
                              load_model=["digits"], admin_token_file=tmp_path / "token")
    images, labels = digits_data
    np.save(tmp_path / "x.npy", images[:4])
    with ServerThread(settings) as server:
        done = subprocess.run(
            [sys.executable, str(EXTENSIONS_PROBE), server.address, "t0ken",
             str(tmp_path / "x.npy")],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["extensions"]) >= {"model_configuration", "model_repository",
                                         "statistics", "classification"}
    config = report["config"]
    assert config["name"] == "digits" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32",
                                "format": "FORMAT_NCHW", "dims": ["1", "8", "8"]}]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32",
                                 "dims": ["10"]}]
    assert "dynamic_batching" in config and config["instance_group"][0]["count"] == 1
    assert report["index_denied"]["status"] == "StatusCode.UNAUTHENTICATED"
    index = {(m["name"], m.get("version", "")): m.get("state") for m in report["index"]}
    assert index[("digits", "1")] == "READY" and index[("spare", "")] == "UNAVAILABLE"
    assert report["spare_ready"] and not report["spare_ready_after_unload"]
    assert report["load_unknown"]["status"] == "StatusCode.NOT_FOUND"
    for row, label in zip(report["top3"], labels[:4], strict=True):
        score, index_, name = row[0].split(":")
        assert int(index_) == label and name == str(label) and 0.5 < float(score) <= 1.0
        assert len(row) == 3
    stats = {s["version"]: s for s in report["statistics"]}
    assert int(stats["1"]["inference_count"]) == 4
    assert int(stats["1"]["inference_stats"]["success"]["count"]) == 1


STREAM_PROBE = Path(__file__).parent / "support" / "triton_stream_probe.py"


def test_tritonclient_streams_answers_in_order_and_an_error_in_its_place(
        server, digits_data, tmp_path):
    images, _ = digits_data
    items = images[:8]
    np.save(tmp_path / "items.npy", items)
    done = subprocess.run(
        [sys.executable, str(STREAM_PROBE), server.address, "digits", str(tmp_path / "items.npy"),
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    good = [i for i in range(len(items)) if i != 3]

    from bnserve.client import Client

    with Client(server.address) as ours:
        expected = np.concatenate([ours.predict("digits", items[i : i + 1]) for i in good])
    for api, prefix in (("sync", "s"), ("aio", "a")):
        answers = report[api]
        assert len(answers) == len(items), api
        # The error reaches the callback (or the aio iterator) as an InferenceServerException
        # with the server's message; tritonclient passes it no id.
        assert answers[3] == {"error": "input 'input': shape [1, 1, 4, 4] does not fit the "
                                       "model's [-1, 1, 8, 8] (-1 = any size)"}, api
        assert [answers[i]["id"] for i in good] == [f"{prefix}{i}" for i in good], api
        assert all(answers[i]["final"] == {"bool_param": True} for i in good), api
        np.testing.assert_allclose(np.load(tmp_path / f"{api}.npy"), expected, rtol=0,
                                   atol=1e-6, err_msg=api)
