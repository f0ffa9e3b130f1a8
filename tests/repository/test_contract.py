"""One repository contract for both sides: the server reads what the exporter writes, by the
same rules, with names and tables defined once (bnserve.repository, bnserve.proto.datatypes)."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from bnserve.proto import model_config_pb2 as mc
from bnserve.proto.datatypes import BY_NAME
from bnserve.repository.card import CardError, ModelCard, read_card
from bnserve.repository.layout import model_name_problem
from bnserve.repository.publish import check_model_name as training_check
from bnserve.repository.publish import list_versions
from bnserve.server.errors import InvalidInputError
from bnserve.server.repository import ModelRepository
from bnserve.server.repository import check_model_name as server_check
from bnserve.training.errors import InvalidVersionError

ROOT = Path(__file__).resolve().parents[2]
ODD_FOLDERS = ("1", "2", "10", "007", "0", "-3", "+4", "²", "٣", "1e3", " 5", "6 ", "latest",
               ".staging-x1", "99999999999999999999")


def test_server_and_exporter_read_the_same_versions(tmp_path):
    for name in ODD_FOLDERS:
        (tmp_path / "m" / name).mkdir(parents=True)
        (tmp_path / "m" / name / "model.onnx").write_bytes(b"x")
    assert list_versions(tmp_path, "m") == [1, 2, 10]
    assert sorted(ModelRepository(tmp_path).snapshot("m").versions) == [1, 2, 10]


@pytest.mark.parametrize("name", ["digits", "my-model_v2", "Modèle", "a.b"])
def test_a_plain_name_is_a_model_name_on_both_sides(name):
    assert model_name_problem(name) is None
    server_check(name)
    training_check(name)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden",
                                  "nul\x00", "line\nfeed", " pad", "é" * 200])
def test_a_name_that_is_not_one_plain_folder_is_refused_on_both_sides(name):
    assert model_name_problem(name) is not None
    with pytest.raises(InvalidInputError):
        server_check(name)
    with pytest.raises(InvalidVersionError):
        training_check(name)


def test_the_datatype_table_agrees_with_onnx_and_tritons_config_enum():
    for datatype in BY_NAME.values():
        assert mc.DataType.Value(datatype.config_type) > 0
        if datatype.name != "BYTES":
            assert onnx.helper.tensor_dtype_to_np_dtype(datatype.onnx_type) == datatype.dtype


def test_the_exported_card_is_read_back_by_the_schema(digits_repository):
    card = read_card(digits_repository / "digits" / "1")
    assert card.labels == tuple(str(i) for i in range(10))
    assert card.inputs[0].name == "input" and card.inputs[0].datatype == "FP32"
    assert card.input_statistics is not None and card.input_statistics.shape == (1, 1, 1)
    assert ModelCard.from_dict(card.to_dict()) == card
    assert card.extra["batchnorm"]["torch_layers"] > 0  # the exporter's own keys are kept


@pytest.mark.parametrize(("card", "field"), [
    ([], "not a JSON object"),
    ({"labels": [1, 2]}, "labels"),
    ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1]}]}, "inputs[0].datatype"),
    ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [-1], "range": [5, 1]}]}, "range"),
    ({"input_statistics": {"mean": [1.0], "std": [1.0, 2.0], "shape": [1]}}, "input_statistics.std"),
    ({"schema_version": 99}, "schema_version"),
])
def test_a_malformed_card_names_the_field(card, field):
    with pytest.raises(CardError, match=re.escape(field)):
        ModelCard.from_dict(card)


def test_file_names_and_the_platform_string_are_written_once():
    literals = re.compile(r'"(model\.onnx|metadata\.json|config\.pbtxt|onnxruntime_onnx)"')
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("server", "training", "client", "cli", "proto")
        for path in (ROOT / folder).rglob("*.py") if not path.name.endswith("_pb2.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if literals.search(line.split("#")[0])
    ]
    assert offenders == []
