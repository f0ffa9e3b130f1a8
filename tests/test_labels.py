"""Class labels reach clients: written into the graph by the exporter, read by the server
from the card or (a graph served without its card) from the graph itself, answered through
Triton's classification extension, and printed by name by `bnserve predict`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from bnserve.cli.main import main
from bnserve.client import ClassScore, Client
from bnserve.server.settings import ServerSettings
from support.server_thread import ServerThread
from support.topics_model import TOKENS, TOPICS


@pytest.fixture(scope="module")
def server(topics_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    shutil.copytree(topics_export.path, root / "topics" / "1")
    (root / "bare" / "1").mkdir(parents=True)  # the graph alone: no card, no config
    shutil.copyfile(topics_export.path / "model.onnx", root / "bare" / "1" / "model.onnx")
    with ServerThread(ServerSettings(repository=root)) as running:
        yield running


@pytest.mark.parametrize("model", ["topics", "bare"])
def test_the_classification_extension_names_the_classes(server, model):
    assert (server.server.models[model].card is None) == (model == "bare")
    assert server.server.models[model].plan.labels == {"probabilities": TOPICS}
    with Client(server.address) as client:
        probabilities = client.predict(model, TOKENS[:4])
        ranked = client.classify(model, TOKENS[:4], top=2)
    for row, classes in zip(probabilities, ranked, strict=True):
        best = np.argsort(-row, kind="stable")[:2]
        assert [c.index for c in classes] == best.tolist()
        assert [c.label for c in classes] == [TOPICS[i] for i in best]
        assert classes[0].score == pytest.approx(row[best[0]], abs=1e-6)
        assert isinstance(classes[0], ClassScore)


def test_bnserve_predict_prints_label_names(server, tmp_path, capsys):
    np.save(tmp_path / "tokens.npy", TOKENS[:3])
    with Client(server.address) as client:
        best = client.predict("bare", TOKENS[:3]).argmax(axis=1)
    assert main(["predict", "--model", "bare", "--input", str(tmp_path / "tokens.npy"),
                 "--address", server.address]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in printed[:3]] == [
        ["row", f"{n}:", TOPICS[i]] for n, i in enumerate(best)]
    assert printed[3] == f"argmax per row: {best.tolist()}"
    assert main(["predict", "--model", "bare", "--input", str(tmp_path / "tokens.npy"),
                 "--address", server.address, "--classes", "3"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert sorted(name for name in TOPICS if name in first) == sorted(TOPICS)
    # --classes 0: the probabilities as before.
    assert main(["predict", "--model", "bare", "--input", str(tmp_path / "tokens.npy"),
                 "--address", server.address, "--classes", "0"]) == 0
    raw = capsys.readouterr().out
    assert "argmax per row:" in raw and not any(name in raw for name in TOPICS)


def test_graph_labels_are_checked_like_the_card_s(tmp_path):
    import onnx

    from bnserve.repository.card import CardError
    from bnserve.repository.graph_metadata import LABELS_KEY, graph_labels, set_graph_labels
    from support import onnx_graphs

    model = onnx.load(str(onnx_graphs.linear_softmax(tmp_path / "m.onnx")))
    assert graph_labels(model) == ()
    set_graph_labels(model, ["a", "b:c", "é"])
    set_graph_labels(model, ["x", "y", "z"])  # replaces, never a second entry
    assert graph_labels(model) == ("x", "y", "z")
    assert [p.key for p in model.metadata_props] == [LABELS_KEY]
    model.metadata_props[0].value = '{"not": "a list"}'
    with pytest.raises(CardError, match="must be a JSON list of label strings"):
        graph_labels(model)
