"""The loop inside the server, over a real server on port 0 with the exported digits CNN:
drift seen on shifted traffic -> `bnserve recalibrate --address` -> version 2 published,
loaded and swapped in under traffic without a failed request -> drift on the same traffic
back below the threshold -> version 1 still served for rollback; and the automatic trigger.
"""

from __future__ import annotations

import itertools
import shutil
import threading

import numpy as np
import pytest

from bnserve.cli import main as bnserve
from bnserve.client import Client, FailedPreconditionError, ModelNotFoundError, UnauthenticatedError
from bnserve.repository.card import read_card
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.server_thread import ServerThread
from support.waiting import wait_for

ADMIN = "admin-secret-loop"
CAPTURE_ROWS = 256
TWO_VERSIONS = "version_policy { latest { num_versions: 2 } }\n"


def scanner(x: np.ndarray) -> np.ndarray:
    """bench/make_shifted_digits.py's washed-out, blurred scanner."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    blurred = (padded[..., 1:-1, 1:-1] + padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1]
               + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]) / 5
    return np.clip(0.5 * blurred + 6, 0, 16).astype(np.float32)


def settings_for(root, secrets, **extra) -> ServerSettings:
    # Every batch is measured (rate 1, no budget wait) so that the test is deterministic.
    return ServerSettings(repository=root, drift_sample_rate=1.0, drift_probe_budget=1.0,
                          drift_history_interval_s=0.0, capture_rows=CAPTURE_ROWS,
                          admin_token_file=secrets / "admin", **extra)


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secrets")
    (folder / "admin").write_text(ADMIN)
    return folder


@pytest.fixture(scope="module")
def server(digits_repository, tmp_path_factory, secrets):
    root = tmp_path_factory.mktemp("loop")
    shutil.copytree(digits_repository / "digits", root / "digits")
    (root / "digits" / "config.pbtxt").write_text(TWO_VERSIONS)  # keep the base for rollback
    onnx_graphs.linear_softmax(root / "linear" / "1" / "model.onnx")
    with ServerThread(settings_for(root, secrets)) as running:
        running.root = root
        yield running


def send(server, images: np.ndarray, version: str | None = None, batch: int = 32) -> np.ndarray:
    """Argmax per row; each probe finished before the next batch, so nothing is dropped."""
    served = server.server.registry.resolve("digits", version or "")
    answers = []
    with Client(server.address) as client:
        for start in range(0, len(images), batch):
            probabilities = client.predict("digits", images[start:start + batch],
                                           version=version)
            answers.append(probabilities.argmax(axis=1))
            assert served.monitoring.monitor.wait_idle()
    return np.concatenate(answers)


def test_drift_seen_recalibrated_in_the_server_and_gone(server, digits_data, capsys,
                                                        secrets):
    images, labels = digits_data
    # In random order: the digits come in blocks by writer, and a block is its own
    # distribution (each writer's style); traffic "like the recalibration data" is iid.
    order = np.random.default_rng(0).permutation(len(images))[:512]
    shifted, truth = scanner(images[order]), labels[order]
    accuracy_before = float((send(server, shifted[:CAPTURE_ROWS]) == truth[:CAPTURE_ROWS]).mean())
    with Client(server.address) as client:
        before = client.drift_report("digits")
    assert before.version == "1" and before.alarm and before.score > before.threshold

    # Traffic keeps flowing while the server recalibrates, loads and swaps the new version:
    # the same shifted stream, four rows at a time (not the same four again and again, which
    # version 2's monitor would rightly call drift, and whose alarm would outlast the test).
    failures, answered, stop = [], [0], threading.Event()

    def traffic() -> None:
        with Client(server.address) as client:
            for start in itertools.cycle(range(0, CAPTURE_ROWS, 4)):
                if stop.is_set():
                    break
                try:
                    client.predict("digits", shifted[start:start + 4])
                    answered[0] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is the finding
                    failures.append(exc)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        code = bnserve(["recalibrate", "--address", server.address, "--model", "digits",
                        "--admin-token-file", str(secrets / "admin")])
    finally:
        stop.set()
        sender.join(timeout=30)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "from version 1's statistics on 256 captured rows: published version 2" in out
    assert "version 2 serves; version(s) 1 still serve" in out
    assert failures == [] and answered[0] > 0

    # The new version: lineage in its card, served by default, version 1 still there.
    card = read_card(server.root / "digits" / "2")
    record = card.extra["recalibration"]
    assert card.base_version == 1 and record["num_samples"] == CAPTURE_ROWS
    assert record["drift"]["before"] > record["drift"]["after"]
    assert sorted(server.server.registry.ready_versions("digits")) == [1, 2]

    # The same traffic again: version 2 answers it better and sees no drift.
    accuracy_after = float((send(server, shifted[CAPTURE_ROWS:]) == truth[CAPTURE_ROWS:]).mean())
    with Client(server.address) as client:
        after = client.drift_report("digits")
        assert after.version == "2"
        assert not after.alarm and after.score < after.threshold
        assert after.threshold_source == "calibrated at recalibration"
        assert accuracy_after > accuracy_before + 0.3
        # Rollback is a version number away: version 1 still answers as before.
        base = client.drift_report("digits", version=1)
        assert base.alarm

    # Recalibrating the recalibrated version starts from version 1's statistics again.
    send(server, shifted[:64])
    with Client(server.address, admin_token=ADMIN) as client:
        again = client.recalibrate("digits", max_rows=64, timeout=300)
    assert (again.base_version, again.new_version, again.samples) == ("1", "3", 64)
    assert read_card(server.root / "digits" / "3").base_version == 1


def test_recalibrate_is_refused_with_the_right_status(server):
    with Client(server.address) as client, pytest.raises(UnauthenticatedError):
        client.recalibrate("digits")
    with Client(server.address, admin_token=ADMIN) as client:
        with pytest.raises(ModelNotFoundError):
            client.recalibrate("no-such-model")
        with pytest.raises(FailedPreconditionError, match="captured rows; recalibration needs"):
            client.recalibrate("linear")  # no traffic captured yet
        with pytest.raises(ValueError, match="max_rows"):
            client.recalibrate("digits", max_rows=-1)


def test_the_automatic_trigger_recalibrates_once_the_alarm_holds(digits_repository, digits_data,
                                                                 tmp_path, secrets):
    root = tmp_path / "auto"
    shutil.copytree(digits_repository / "digits", root / "digits")
    images, _ = digits_data
    settings = settings_for(root, secrets, auto_recalibrate_after_s=0.5)
    with ServerThread(settings) as running:
        send(running, scanner(images[:CAPTURE_ROWS]))
        assert running.server.registry.resolve("digits").monitoring.monitor.alarm
        wait_for(lambda: 2 in running.server.registry.ready_versions("digits"), timeout=120)
        assert read_card(root / "digits" / "2").base_version == 1
        # The policy serves the highest version only: version 1 drained; its files stay.
        wait_for(lambda: running.server.registry.ready_versions("digits") == [2], timeout=30)
        assert (root / "digits" / "1" / "model.onnx").is_file()


def test_the_command_takes_a_file_or_a_server_not_both(capsys, tmp_path):
    assert bnserve(["recalibrate", "--model", "digits", "--address", "127.0.0.1:1",
                    "--data", str(tmp_path / "x.npy")]) == 2
    assert "drop --data" in capsys.readouterr().err
    assert bnserve(["recalibrate", "--model", "digits"]) == 2
    assert "--data PATH (or --address" in capsys.readouterr().err
