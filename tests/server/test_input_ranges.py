"""Token ids outside the vocabulary are refused (INVALID_ARGUMENT) before they are queued:
the range comes from the model card or, without one, from the embedding's table."""

from __future__ import annotations

import json

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnserve.client import Client, InvalidRequestError
from bnserve.repository.card import ModelCard
from bnserve.repository.graph import index_input_bounds
from bnserve.server.errors import InvalidInputError, ModelLoadError
from bnserve.server.input_ranges import input_ranges
from bnserve.server.loader import load_version
from bnserve.server.model_config import default_settings
from bnserve.server.repository import ModelRepository
from bnserve.server.runtime import TensorSpec
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.server_thread import ServerThread

VOCAB = 5


def load(root, name: str):
    server = ServerSettings(repository=root, drift_sample_rate=0)
    entry = ModelRepository(root).snapshot(name).versions[1]
    return load_version(name, entry, default_settings(server), server)


def test_the_graph_walk_finds_the_table_an_integer_input_indexes(tmp_path):
    path = onnx_graphs.embedding_lookup(tmp_path / "m.onnx", vocab=VOCAB)
    assert index_input_bounds(onnx.load(str(path))) == {"ids": VOCAB}
    # Through a cast, and the smaller of two tables; a float input and an index into a
    # computed tensor are not bounded.
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["ids32"], to=TensorProto.INT32),
         helper.make_node("Gather", ["big", "ids32"], ["a"]),
         helper.make_node("Gather", ["small", "ids"], ["b"], axis=0),
         helper.make_node("Relu", ["big"], ["computed"]),
         helper.make_node("Gather", ["computed", "other"], ["c"])],
        "walk",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info("other", TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in "abc"],
        [numpy_helper.from_array(np.zeros((9, 2), np.float32), "big"),
         numpy_helper.from_array(np.zeros((7, 2), np.float32), "small")],
    )
    assert index_input_bounds(helper.make_model(graph)) == {"ids": 7}


def test_the_card_range_is_kept_within_the_table(tmp_path):
    graph = onnx.load(str(onnx_graphs.embedding_lookup(tmp_path / "m.onnx", vocab=VOCAB)))
    specs = [TensorSpec("ids", "INT64", (-1, -1))]

    def card(low, high):
        return ModelCard.from_dict({"inputs": [{"name": "ids", "datatype": "INT64",
                                                "shape": [-1, -1], "range": [low, high]}]})

    assert input_ranges(specs, graph, None) == {"ids": (0, VOCAB - 1)}
    assert input_ranges(specs, graph, card(1, 3)) == {"ids": (1, 3)}
    assert input_ranges(specs, graph, card(-5, 50)) == {"ids": (0, VOCAB - 1)}
    with pytest.raises(ModelLoadError, match="indexes a table of 5 rows"):
        input_ranges(specs, graph, card(10, 20))


@pytest.fixture
def lookup_repository(tmp_path):
    onnx_graphs.embedding_lookup(tmp_path / "lookup" / "1" / "model.onnx", vocab=VOCAB)
    return tmp_path


async def test_a_served_model_without_a_card_refuses_ids_outside_its_table(lookup_repository):
    model = load(lookup_repository, "lookup")
    model.start()
    try:
        assert model.plan.value_ranges == {"ids": (0, VOCAB - 1)}
        for bad in (-1, VOCAB):
            with pytest.raises(InvalidInputError) as info:
                await model.infer({"ids": np.array([[0, bad, 1]], np.int64)})
            assert str(info.value) == (f"input 'ids': value {bad} is outside the valid range "
                                       f"[0, {VOCAB}) of the model (token ids index its "
                                       "vocabulary)")
        assert model.batcher.runs == 0  # refused before the queue
        answer = await model.infer({"ids": np.array([[0, VOCAB - 1]], np.int64)})
        table = np.arange(VOCAB * 2, dtype=np.float32).reshape(VOCAB, 2)
        np.testing.assert_array_equal(answer["vectors"], table[[[0, VOCAB - 1]]])
    finally:
        await model.stop()


@pytest.fixture(scope="module")
def text_server(text_repository):
    with ServerThread(ServerSettings(repository=text_repository)) as running:
        yield running


def test_the_text_model_refuses_ids_outside_its_vocabulary_over_grpc(text_server,
                                                                      text_repository):
    card = json.loads((text_repository / "text" / "1" / "metadata.json").read_text())
    low, high = card["inputs"][0]["range"]
    vocab = high + 1
    assert low == 0 and vocab > 2
    served = text_server.server.models["text"]
    assert served.plan.value_ranges == {"input": (0, high)}
    tokens = np.ones((2, 24), np.int64)
    with Client(text_server.address) as client:
        for bad in (-1, vocab):
            rows = tokens.copy()
            rows[1, 3] = bad
            with pytest.raises(InvalidRequestError) as info:
                client.predict("text", rows)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert (f"input 'input': value {bad} is outside the valid range [0, {vocab})"
                    in str(info.value))
        rows = tokens.copy()
        rows[0, 0], rows[1, 0] = 0, vocab - 1
        probabilities = client.predict("text", rows)
    assert probabilities.shape == (2, len(card["labels"]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
