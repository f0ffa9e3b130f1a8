"""Recalibration with onnxruntime alone, through ``recalibrate_version_folder`` and friends.

A real exported digits CNN (``digits_repository``: model.onnx folded, unfolded.onnx beside
it). The shift halves the contrast and brightens the background (x' = 0.5 x + 6); the
model is recalibrated on shifted training-split images (inputs only) and scored, through
onnxruntime, on the shifted held-out split it never saw.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bnserve.repository.batchnorm import batchnorm_layers, row_moments, statistics_graph
from bnserve.repository.card import read_card
from bnserve.repository.drift import window_scores
from bnserve.server.errors import (
    RecalibrationDataError,
    RecalibrationFailed,
    RecalibrationRefused,
    RecalibrationSourceMissing,
)
from bnserve.server.recalibration import (
    DEFAULT_PRIOR_STRENGTH,
    recalibrate_graphs,
    recalibrate_version_folder,
)
from bnserve.server.recalibration_inputs import MAX_ROWS
from bnserve.server.recalibration_source import locate_base
from bnserve.server.reestimate import Reestimator
from bnserve.server.refold import refold, with_statistics


def shift(x: np.ndarray) -> np.ndarray:
    return np.clip(0.5 * x + 6.0, 0.0, 16.0).astype(np.float32)


@dataclass(frozen=True)
class Digits:
    x_train: np.ndarray  # (N, 1, 8, 8) raw, the split the model was trained on
    x_test: np.ndarray  # held out
    y_test: np.ndarray


@pytest.fixture(scope="module")
def digits() -> Digits:
    data = load_digits()
    x = data.images.astype(np.float32)[:, None]
    x_train, x_test, _, y_test = train_test_split(x, data.target, test_size=0.2,
                                                  stratify=data.target, random_state=0)
    return Digits(x_train, x_test, y_test)


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def accuracy(version_dir: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(version_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": x})[0].argmax(axis=1) == y).mean())


def initializer(model_path: Path, name: str) -> np.ndarray:
    model = onnx.load(str(model_path))
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


@pytest.fixture(scope="module")
def repository(digits_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recalibration") / "models"
    shutil.copytree(digits_repository, root)
    return root


@pytest.fixture(scope="module")
def published(repository: Path, digits: Digits):
    """Version 2: the shifted training split, defaults."""
    before = file_hashes(repository / "digits" / "1")
    outcome = recalibrate_version_folder(repository, "digits", {"input": shift(digits.x_train)},
                                         source="file shifted.npz", source_sha256="ab" * 32)
    return outcome, before


def test_a_shifted_stream_loses_accuracy_and_recalibration_wins_it_back(published, repository,
                                                                         digits):
    outcome, _ = published
    v1, v2 = repository / "digits" / "1", repository / "digits" / "2"
    assert outcome.version == 2 and outcome.path == v2
    clean = accuracy(v1, digits.x_test, digits.y_test)
    before = accuracy(v1, shift(digits.x_test), digits.y_test)
    after = accuracy(v2, shift(digits.x_test), digits.y_test)
    figures = f"held-out digits: clean {clean:.1%}; shifted: before {before:.1%}, after {after:.1%}"
    assert clean >= 0.9 and before <= 0.5, figures  # the shift really hurts
    assert after >= clean - 0.03, figures
    assert outcome.estimate.drift_before > read_card(v1).drift.threshold > outcome.estimate.drift_after


def test_the_new_version_is_folded_whole_and_the_base_untouched(published, repository):
    outcome, base_hashes = published
    v1, v2 = repository / "digits" / "1", repository / "digits" / "2"
    assert file_hashes(v1) == base_hashes
    assert sorted(p.name for p in v2.iterdir()) == ["metadata.json", "model.onnx", "unfolded.onnx"]
    served, unfolded = onnx.load(str(v2 / "model.onnx")), onnx.load(str(v2 / "unfolded.onnx"))
    assert not [n for n in served.graph.node if n.op_type == "BatchNormalization"]
    # What the exporter wrote into the graph (labels; a text model's tokenizer) goes along.
    def bnserve_metadata(graph: onnx.ModelProto) -> dict[str, str]:
        return {p.key: p.value for p in graph.metadata_props if p.key.startswith("bnserve.")}

    assert bnserve_metadata(served) == bnserve_metadata(onnx.load(str(v1 / "model.onnx")))
    assert "bnserve.labels" in bnserve_metadata(served)
    assert len(batchnorm_layers(unfolded)) == 7
    card = json.loads((v2 / "metadata.json").read_text())
    base_card = json.loads((v1 / "metadata.json").read_text())
    assert card["sha256"] == hashlib.sha256((v2 / "model.onnx").read_bytes()).hexdigest()
    assert card["size_bytes"] == (v2 / "model.onnx").stat().st_size
    assert card["batchnorm"]["reference_graph"] == "unfolded.onnx"
    assert card["batchnorm"]["reference_sha256"] == \
        hashlib.sha256((v2 / "unfolded.onnx").read_bytes()).hexdigest()
    assert card["version"] == 2 and card["labels"] == base_card["labels"]
    assert card["metrics"] == base_card["metrics"]
    assert read_card(v2).base_version == 1
    # The card's input statistics are the ones the graph now standardizes with.
    stats = card["input_statistics"]
    np.testing.assert_array_equal(np.asarray(stats["mean"], np.float32),
                                  initializer(v2 / "model.onnx", "mean").reshape(stats["shape"]))
    assert stats["mean"] != base_card["input_statistics"]["mean"]


def test_the_card_records_what_was_done(published, repository, digits):
    outcome, _ = published
    base_card = json.loads((repository / "digits" / "1" / "metadata.json").read_text())
    record = json.loads((outcome.path / "metadata.json").read_text())["recalibration"]
    assert record == outcome.record
    assert record["engine"] == "onnxruntime" and record["base_version"] == 1
    assert record["base_sha256"] == base_card["sha256"]
    assert record["num_samples"] == len(digits.x_train)
    assert record["data"] == {"source": "file shifted.npz", "sha256": "ab" * 32}
    assert record["prior_strength"] == DEFAULT_PRIOR_STRENGTH
    assert record["input_statistics"] == "re-estimated"
    assert [layer["name"] for layer in record["layers"]] == \
        [layer["name"] for layer in base_card["batchnorm"]["layers"]]
    assert record["drift"]["before"] > 10 * record["drift"]["after"]
    check = record["verification"]
    assert check["checker_passed"] and check["parity_max_abs_diff"] <= check["parity_atol"]
    assert check["batch_independence_rows"] == 8


def test_the_monitor_is_recalibrated_too_and_quiet_on_the_new_kind_of_traffic(published,
                                                                              repository, digits):
    outcome, _ = published
    card = read_card(outcome.path)
    base = read_card(repository / "digits" / "1")
    assert card.drift.window_rows == base.drift.window_rows
    assert outcome.record["drift"]["threshold"] == base.drift.threshold
    assert outcome.record["drift"]["threshold_after"] == card.drift.threshold
    model = onnx.load(str(outcome.path / "unfolded.onnx"))
    layers = batchnorm_layers(model)
    session = ort.InferenceSession(statistics_graph(model, layers).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    held_out = {"input": shift(digits.x_test)}  # never seen by the recalibration
    moments = row_moments(dict(zip(names, session.run(names, held_out), strict=True)), layers)
    scores = window_scores(layers, moments, card.drift.window_rows, 200)
    assert (scores > card.drift.threshold).mean() <= 0.1


def test_refolding_unchanged_statistics_gives_the_exported_graph_back(repository, digits):
    """The refold is the exporter's own folding: on the exported unfolded graph it answers
    exactly as the exported model.onnx does."""
    v1 = repository / "digits" / "1"
    reestimator = Reestimator(onnx.load(str(v1 / "unfolded.onnx")))
    folded = refold(with_statistics(reestimator.model, reestimator.base.values()))
    x = shift(digits.x_test)
    ours = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
    exported = ort.InferenceSession(str(v1 / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(ours.run(None, {"input": x})[0],
                                  exported.run(None, {"input": x})[0])


def test_a_recalibrated_version_is_recalibrated_from_its_base(published, repository, digits):
    """RDumb: the latest version (2, a recalibration) is not stacked on; the result equals
    recalibrating version 1 directly on the same data."""
    other = {"input": shift(digits.x_test)}
    from_latest = recalibrate_version_folder(repository, "digits", other)
    direct = recalibrate_version_folder(repository, "digits", other, version=1)
    assert (from_latest.requested_version, from_latest.base_version) == (2, 1)
    assert from_latest.record["requested_version"] == 2
    assert from_latest.record["base_version"] == direct.record["base_version"] == 1
    for version in (from_latest, direct):
        assert read_card(version.path).base_version == 1
    a, b = onnx.load(str(from_latest.path / "unfolded.onnx")), onnx.load(str(direct.path / "unfolded.onnx"))
    assert a.graph.initializer == b.graph.initializer
    # and it is not version 2's: those statistics came from other data
    v2 = onnx.load(str(repository / "digits" / "2" / "unfolded.onnx"))
    assert a.graph.initializer != v2.graph.initializer


def test_the_prior_weighs_the_base_statistics_as_rows_already_seen(repository, digits):
    base = locate_base(repository, "digits", 1)
    x = {"input": shift(digits.x_test[:64])}
    plain = recalibrate_graphs(base, x, prior_strength=0, input_statistics=False).estimate
    half = recalibrate_graphs(base, x, prior_strength=64, input_statistics=False).estimate
    stem_base, stem_plain, stem_half = plain.base.layers[0], plain.new.layers[0], half.new.layers[0]
    # The stem has no BatchNorm upstream: its estimate is the same, the prior halves its weight.
    np.testing.assert_allclose(stem_half.mean, (stem_base.mean + stem_plain.mean) / 2, rtol=1e-12)
    np.testing.assert_allclose(stem_half.var, (stem_base.var + stem_plain.var) / 2, rtol=1e-12)
    assert half.drift_after > plain.drift_after  # the data sits between the two references
    assert half.input_statistics == "kept"


def test_an_unfolded_served_graph_stays_unfolded(repository, digits, tmp_path):
    """A version exported with --no-fold has no unfolded.onnx: model.onnx is the reference."""
    root = tmp_path / "models"
    (root / "digits" / "1").mkdir(parents=True)
    v1 = repository / "digits" / "1"
    shutil.copyfile(v1 / "unfolded.onnx", root / "digits" / "1" / "model.onnx")
    card = json.loads((v1 / "metadata.json").read_text())
    card["batchnorm"]["reference_graph"] = None
    (root / "digits" / "1" / "metadata.json").write_text(json.dumps(card))
    outcome = recalibrate_version_folder(root, "digits", {"input": shift(digits.x_train)})
    assert sorted(p.name for p in outcome.path.iterdir()) == ["metadata.json", "model.onnx"]
    assert len(batchnorm_layers(onnx.load(str(outcome.path / "model.onnx")))) == 7
    assert outcome.verification.parity_max_abs_diff is None
    assert read_card(outcome.path).reference_graph is None
    assert accuracy(outcome.path, shift(digits.x_test), digits.y_test) >= 0.9


BAD_INPUTS = [
    ({"image": "x"}, "inputs: missing 'input'; unknown 'image'"),
    ({"input": "f64"}, r"inputs\['input'\]: dtype float64, the model takes FP32"),
    ({"input": "no channel"}, r"inputs\['input'\]: shape \[64, 8, 8\], expected \[N, 1, 8, 8\]"),
    ({"input": "one row"}, r"inputs\['input'\]: 1 rows, expected 2 to 65536"),
    ({"input": "nan"}, r"inputs\['input'\]: holds NaN or infinite values"),
    ({"input": "list"}, r"inputs\['input'\]: expected an array"),
]


def bad_value(kind: str, x: np.ndarray):
    if kind == "f64":
        return x.astype(np.float64)
    if kind == "no channel":
        return x[:, 0]
    if kind == "one row":
        return x[:1]
    if kind == "nan":
        y = x.copy()
        y[3, 0, 2, 2] = np.nan
        return y
    if kind == "list":
        return x.tolist()
    return x


@pytest.mark.parametrize(("inputs", "message"), BAD_INPUTS)
def test_inputs_that_do_not_fit_are_refused_with_invalid_argument(repository, digits, inputs,
                                                                  message):
    x = shift(digits.x_test[:64])
    feeds = {name: bad_value(kind, x) for name, kind in inputs.items()}
    versions = sorted(p.name for p in (repository / "digits").iterdir())
    with pytest.raises(RecalibrationDataError, match=message) as caught:
        recalibrate_version_folder(repository, "digits", feeds)
    assert caught.value.status_code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(p.name for p in (repository / "digits").iterdir()) == versions


def test_too_many_rows_are_refused():
    from bnserve.repository.card import TensorSignature
    from bnserve.server.recalibration_inputs import check_inputs

    declared = [TensorSignature("input", "FP32", (-1, 2))]
    with pytest.raises(RecalibrationDataError, match=f"expected 2 to {MAX_ROWS}"):
        check_inputs(declared, {"input": np.zeros((MAX_ROWS + 1, 2), np.float32)})


def test_a_version_that_cannot_be_recalibrated_is_refused_with_a_clear_status(repository, digits,
                                                                               tmp_path):
    x = {"input": shift(digits.x_test[:64])}
    with pytest.raises(RecalibrationSourceMissing, match="model 'nope' has no published version"):
        recalibrate_version_folder(repository, "nope", x)
    with pytest.raises(RecalibrationSourceMissing, match=r"has no version 99 \(published: 1, 2"):
        recalibrate_version_folder(repository, "digits", x, version=99)
    # A folded graph with no reference graph beside it: nothing to re-estimate.
    root = tmp_path / "models"
    shutil.copytree(repository / "digits" / "1", root / "digits" / "1")
    (root / "digits" / "1" / "unfolded.onnx").unlink()
    card = json.loads((root / "digits" / "1" / "metadata.json").read_text())
    card["batchnorm"]["reference_graph"] = None
    (root / "digits" / "1" / "metadata.json").write_text(json.dumps(card))
    with pytest.raises(RecalibrationRefused, match="no graph with BatchNormalization nodes") as caught:
        recalibrate_version_folder(root, "digits", x)
    assert caught.value.status_code == grpc.StatusCode.FAILED_PRECONDITION
    # A reference graph that is not the one exported beside model.onnx.
    other = tmp_path / "other"
    shutil.copytree(repository / "digits" / "1", other / "digits" / "1")
    model = onnx.load(str(other / "digits" / "1" / "unfolded.onnx"))
    weight = next(t for t in model.graph.initializer if t.name.endswith("stem.0.weight"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 2, weight.name))
    onnx.save(model, str(other / "digits" / "1" / "unfolded.onnx"))
    with pytest.raises(RecalibrationRefused, match="unfolded.onnx is not the file its card records"):
        recalibrate_version_folder(other, "digits", x)
    card = json.loads((other / "digits" / "1" / "metadata.json").read_text())
    del card["batchnorm"]["reference_sha256"]
    (other / "digits" / "1" / "metadata.json").write_text(json.dumps(card))
    with pytest.raises(RecalibrationRefused, match="does not answer as its served graph"):
        recalibrate_version_folder(other, "digits", x)
    with pytest.raises(RecalibrationDataError, match="prior_strength"):
        recalibrate_version_folder(repository, "digits", x, prior_strength=-1)
    # Messages go to clients: no host path in any of them.
    for call in (lambda: recalibrate_version_folder(root, "digits", x),
                 lambda: recalibrate_version_folder(repository, "digits", {"input": x["input"][:1]})):
        with pytest.raises(RecalibrationFailed) as caught:
            call()
        assert str(tmp_path) not in str(caught.value) and "/" not in str(caught.value)
