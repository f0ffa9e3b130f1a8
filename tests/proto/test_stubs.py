"""The committed protocol stubs are what `make proto` generates from the committed .proto."""

from __future__ import annotations

import json
import subprocess
import sys

from bnserve.proto import generate
from bnserve.proto import open_inference_pb2 as pb
from support import descriptor_dump, floor


def test_committed_stubs_are_current(tmp_path):
    # `make proto`'s way: the floor environment's grpcio-tools (see bnserve.proto.generate).
    done = floor.run(floor.floor_python(), "-m", "bnserve.proto.generate", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for name in generate.generated_names():
        fresh = (tmp_path / name).read_text()
        committed = (generate.PROTO_DIR / name).read_text()
        assert fresh == committed, f"proto/{name} is stale: run `make proto` and commit"


def test_wire_names_and_field_numbers_match_the_open_inference_protocol():
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
            "ModelInfer"} <= set(service.methods_by_name)

    def numbers(message) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert numbers(pb.ModelInferRequest) == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5,
        "outputs": 6, "raw_input_contents": 7,
    }
    assert numbers(pb.ModelInferResponse) == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5,
        "raw_output_contents": 6,
    }
    assert numbers(pb.ModelInferRequest.InferInputTensor) == {
        "name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5,
    }
    assert numbers(pb.InferTensorContents) == {
        "bool_contents": 1, "int_contents": 2, "int64_contents": 3, "uint_contents": 4,
        "uint64_contents": 5, "fp32_contents": 6, "fp64_contents": 7, "bytes_contents": 8,
    }
    assert numbers(pb.ModelMetadataResponse) == {
        "name": 1, "versions": 2, "platform": 3, "inputs": 4, "outputs": 5,
    }
    assert numbers(pb.ModelMetadataResponse.TensorMetadata) == {"name": 1, "datatype": 2, "shape": 3}
    assert numbers(pb.InferParameter) == {
        "bool_param": 1, "int64_param": 2, "string_param": 3, "double_param": 4, "uint64_param": 5,
    }


def test_every_message_and_method_we_declare_is_tritons_on_the_wire():
    """Same names, numbers, types and repetition as tritonclient's own generated code."""
    done = subprocess.run(
        [sys.executable, descriptor_dump.__file__, "tritonclient.grpc.service_pb2",
         "tritonclient.grpc.model_config_pb2"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    triton = json.loads(done.stdout)
    ours = descriptor_dump.dump(["bnserve.proto.open_inference_pb2",
                                 "bnserve.proto.model_config_pb2"])
    assert len(ours["messages"]) >= 40
    for message, fields in ours["messages"].items():
        assert message in triton["messages"], f"{message} is not a Triton message"
        for name, shape in fields.items():
            assert triton["messages"][message].get(name) == shape, f"{message}.{name}"
    for enum, values in ours["enums"].items():
        assert values.items() <= triton["enums"][enum].items(), enum
    for method, types in ours["methods"].items():
        assert triton["methods"][method] == types, method
    extensions = {"ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
                  "RepositoryModelUnload"}
    assert {m.rsplit(".", 1)[1] for m in ours["methods"]} >= extensions
