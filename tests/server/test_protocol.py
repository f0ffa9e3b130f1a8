"""The Open Inference Protocol as the server speaks it, on hand-built ONNX graphs."""

from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from bnserve.proto.tensors import DATATYPES, decode_raw, encode_contents, encode_raw
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.server_thread import ServerThread

# Every numeric datatype onnxruntime accepts, with the ONNX element type that carries it.
NUMERIC = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
}
MAX_BATCH = 16


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    onnx_graphs.linear_softmax(root / "linear" / "1" / "model.onnx", seed=1)
    onnx_graphs.linear_softmax(root / "linear" / "2" / "model.onnx", seed=2)
    onnx_graphs.two_inputs(root / "pair" / "1" / "model.onnx")
    onnx_graphs.batchnorm(root / "bn_eval" / "1" / "model.onnx", training_mode=False)
    onnx_graphs.batchnorm(root / "bn_train" / "1" / "model.onnx", training_mode=True)
    for datatype, elem_type in NUMERIC.items():
        onnx_graphs.identity(root / f"id_{datatype.lower()}" / "1" / "model.onnx", elem_type)
    onnx_graphs.identity(root / "id_bytes" / "1" / "model.onnx", TensorProto.STRING)
    onnx_graphs.embedding_lookup(root / "lookup" / "1" / "model.onnx", vocab=5)
    return root


@pytest.fixture(scope="module")
def server(repository):
    # bn_train is refused on purpose; the rest must still be served and the server ready.
    settings = ServerSettings(repository=repository, max_batch_size=MAX_BATCH,
                              strict_readiness=False)
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def raw_request(model: str, **arrays: np.ndarray) -> pb.ModelInferRequest:
    from bnserve.proto.tensors import datatype_of

    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        request.raw_input_contents.append(encode_raw(array))
    return request


def test_live_ready_and_server_metadata(stub):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "bnserve" and meta.version


def test_model_metadata_is_derived_from_the_graph(stub):
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="linear"))
    assert meta.name == "linear"
    assert list(meta.versions) == ["2"]  # the highest version is the one served
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("probabilities", "FP32", [-1, 3])
    ]


def test_model_ready(stub):
    assert stub.ModelReady(pb.ModelReadyRequest(name="linear")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="linear", version="2")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="linear", version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready


def test_raw_and_typed_contents_give_the_onnxruntime_answer(stub, repository):
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(repository / "linear" / "2" / "model.onnx")).run(
        None, {"input": x}
    )[0]
    raw = stub.ModelInfer(raw_request("linear", input=x))
    assert raw.model_name == "linear" and raw.model_version == "2"
    assert [(o.name, o.datatype, list(o.shape)) for o in raw.outputs] == [
        ("probabilities", "FP32", [5, 3])
    ]
    got_raw = np.frombuffer(raw.raw_output_contents[0], "<f4").reshape(5, 3)
    np.testing.assert_array_equal(got_raw, expected)

    typed = pb.ModelInferRequest(model_name="linear", id="req-7")
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=[5, 4])
    encode_contents(x, tensor.contents)
    answer = stub.ModelInfer(typed)
    assert answer.id == "req-7"
    got_typed = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(5, 3)
    np.testing.assert_array_equal(got_typed, expected)


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_every_numeric_datatype_round_trips(stub, datatype):
    dtype = DATATYPES[datatype].dtype
    x = (np.arange(6).reshape(2, 3) % 2 == 1) if datatype == "BOOL" else (
        np.arange(6).reshape(2, 3).astype(dtype)
    )
    model = f"id_{datatype.lower()}"
    response = stub.ModelInfer(raw_request(model, x=x))
    assert response.outputs[0].datatype == datatype
    got = np.frombuffer(response.raw_output_contents[0], dtype).reshape(2, 3)
    np.testing.assert_array_equal(got, x)
    if DATATYPES[datatype].contents_field:  # FP16 has no typed field
        typed = pb.ModelInferRequest(model_name=model)
        encode_contents(x, typed.inputs.add(name="x", datatype=datatype, shape=[2, 3]).contents)
        response = stub.ModelInfer(typed)
        got = np.frombuffer(response.raw_output_contents[0], dtype).reshape(2, 3)
        np.testing.assert_array_equal(got, x)


def test_bytes_round_trip_raw_and_typed(stub):
    x = np.array([[b"ab", "h\u00e9".encode(), b""], [b"x", b"yz", b"\x00"]], dtype=object)
    response = stub.ModelInfer(raw_request("id_bytes", x=x))
    assert response.outputs[0].datatype == "BYTES"
    got = decode_raw(response.raw_output_contents[0], "BYTES", [2, 3], name="y")
    np.testing.assert_array_equal(got, x)
    typed = pb.ModelInferRequest(model_name="id_bytes")
    encode_contents(x, typed.inputs.add(name="x", datatype="BYTES", shape=[2, 3]).contents)
    got = decode_raw(stub.ModelInfer(typed).raw_output_contents[0], "BYTES", [2, 3], name="y")
    np.testing.assert_array_equal(got, x)


def test_two_inputs_and_requested_outputs(stub):
    a = np.array([[0.5, 1.5], [2.0, 3.0]], np.float32)
    b = np.array([[1, 2], [3, 4]], np.int64)
    request = raw_request("pair", a=a, b=b)
    request.outputs.add(name="sum")
    response = stub.ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 2)
    np.testing.assert_array_equal(got, a + b)


def test_eval_mode_batchnorm_is_served_and_training_mode_is_refused(stub):
    assert stub.ModelReady(pb.ModelReadyRequest(name="bn_eval")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="bn_train")).ready
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(raw_request("bn_train", x=np.zeros((2, 3), np.float32)))
    # Known to the repository but not served: UNAVAILABLE with the reason, not NOT_FOUND.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details().startswith(
        "model 'bn_train' is not ready: version 1 failed to load: BatchNormalization node bn0 "
        "has training_mode=1")
    assert "depend on the other requests" in info.value.details()


def _typed_and_raw() -> pb.ModelInferRequest:
    request = raw_request("linear", input=np.zeros((1, 4), np.float32))
    request.inputs[0].contents.fp32_contents.extend([0.0] * 4)
    return request


def _request(model="linear", name="input", datatype="FP32", shape=(2, 4), raw=None):
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw if raw is not None else b"\0" * (8 * 4 * 4))
    return request


BAD_REQUESTS = {
    "unknown model": (
        pb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"
    ),
    "unknown version": (
        pb.ModelInferRequest(model_name="linear", model_version="9"),
        grpc.StatusCode.NOT_FOUND, "no version '9'",
    ),
    "wrong datatype": (
        raw_request("linear", input=np.zeros((2, 4), np.float64)),
        grpc.StatusCode.INVALID_ARGUMENT, "input 'input': datatype FP64 does not match the model's FP32",
    ),
    "wrong rank": (
        raw_request("linear", input=np.zeros((2, 4, 1), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT, "input 'input': shape [2, 4, 1] does not fit the model's [-1, 4]",
    ),
    "wrong dims": (
        raw_request("linear", input=np.zeros((2, 5), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT, "shape [2, 5] does not fit",
    ),
    "byte size mismatch": (
        _request(raw=b"\0" * 7), grpc.StatusCode.INVALID_ARGUMENT,
        "input 'input': raw contents hold 7 bytes, but FP32 with shape [2, 4] needs 32",
    ),
    "typed and raw contents": (
        _typed_and_raw(), grpc.StatusCode.INVALID_ARGUMENT, "use one or the other"
    ),
    "missing input": (
        raw_request("pair", a=np.zeros((1, 2), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT, "input 'b' is missing: expected INT64 with shape [-1, 2]",
    ),
    "unknown input": (
        raw_request("linear", input=np.zeros((1, 4), np.float32), extra=np.zeros((1, 4), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT, "has no input 'extra'",
    ),
    "batch above the limit": (
        raw_request("linear", input=np.zeros((MAX_BATCH + 1, 4), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT, f"batch size {MAX_BATCH + 1} is above the limit of {MAX_BATCH}",
    ),
    "unknown datatype": (
        _request(datatype="FP8"), grpc.StatusCode.INVALID_ARGUMENT, "unsupported datatype 'FP8'"
    ),
    "negative dimension": (
        _request(shape=(-1, 4)), grpc.StatusCode.INVALID_ARGUMENT, "negative dimension"
    ),
    "shape whose size overflows int64": (
        _request(shape=(2**32, 2**32), raw=b""), grpc.StatusCode.INVALID_ARGUMENT,
        "has a dimension above 2147483647",
    ),
    "output named twice": (
        pb.ModelInferRequest(
            model_name="linear",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 4])],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")] * 2,
            raw_input_contents=[b"\0" * 16],
        ),
        grpc.StatusCode.INVALID_ARGUMENT, "outputs name 'probabilities' twice",
    ),
    "token id outside the vocabulary": (
        raw_request("lookup", ids=np.array([[1, 99]], np.int64)),
        grpc.StatusCode.INVALID_ARGUMENT, "input 'ids': value 99 is outside the valid range [0, 5)",
    ),
    "negative token id (Gather would wrap it)": (
        raw_request("lookup", ids=np.array([[-1, 1]], np.int64)),
        grpc.StatusCode.INVALID_ARGUMENT, "input 'ids': value -1 is outside the valid range [0, 5)",
    ),
    "BYTES that are not UTF-8 text": (
        raw_request("id_bytes", x=np.array([[b"ok", b"\xff", b""]], dtype=object)),
        grpc.StatusCode.INVALID_ARGUMENT, "input 'x': BYTES element is not UTF-8",
    ),
    "no data": (
        pb.ModelInferRequest(model_name="linear", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 4])
        ]),
        grpc.StatusCode.INVALID_ARGUMENT, "has no data",
    ),
    "unknown requested output": (
        pb.ModelInferRequest(
            model_name="linear",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 4])],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
            raw_input_contents=[b"\0" * 16],
        ),
        grpc.StatusCode.INVALID_ARGUMENT, "has no output 'logits'",
    ),
    "raw contents count": (
        pb.ModelInferRequest(
            model_name="linear",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 4])],
            raw_input_contents=[b"\0" * 16, b"\0" * 16],
        ),
        grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has 2 entries",
    ),
    "typed contents in the wrong field": (
        pb.ModelInferRequest(
            model_name="linear",
            inputs=[pb.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=[1, 4],
                contents=pb.InferTensorContents(int_contents=[1, 2, 3, 4]),
            )],
        ),
        grpc.StatusCode.INVALID_ARGUMENT, "FP32 data goes in contents.fp32_contents",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_a_clear_status_and_the_server_stays_up(stub, case):
    request, code, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details()
    # Still up, and a good request right after is answered.
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    ok = stub.ModelInfer(raw_request("linear", input=np.ones((1, 4), np.float32)))
    assert len(ok.raw_output_contents[0]) == 3 * 4


def test_metadata_of_unknown_model_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
