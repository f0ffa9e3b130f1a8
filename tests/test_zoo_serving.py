"""Every zoo model, trained, exported and served: through the server each row's answer is
onnxruntime's answer, alone or batched with others (the recurrent BN model included)."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest

from bnserve.client import AsyncClient, Client
from bnserve.server.settings import ServerSettings
from bnserve.training.checkpoint import load_checkpoint
from bnserve.training.config import DEFAULT_DATASETS
from support.server_thread import ServerThread

KINDS = sorted(DEFAULT_DATASETS)


@pytest.fixture(scope="module")
def server(zoo):
    settings = ServerSettings(repository=zoo.repository, max_queue_delay_ms=20)
    with ServerThread(settings) as running:
        yield running


@pytest.mark.parametrize("kind", KINDS)
def test_served_zoo_model_answers_like_onnxruntime(server, zoo, kind):
    version_dir = zoo.repository / kind / "1"
    samples = load_checkpoint(zoo.runs[kind]).samples[:16]
    session = ort.InferenceSession(str(version_dir / "model.onnx"))
    expected = session.run(None, {"input": samples})[0]
    with Client(server.address) as client:
        meta = client.metadata(kind)
        assert meta.inputs[0].datatype == ("INT64" if samples.dtype == np.int64 else "FP32")
        assert meta.inputs[0].shape == (-1, *samples.shape[1:])
        got = client.predict(kind, samples)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "text"])
async def test_concurrent_rows_equal_rows_sent_alone(server, zoo, kind):
    samples = load_checkpoint(zoo.runs[kind]).samples[:24]
    batcher = server.server.models[kind].batcher
    async with AsyncClient(server.address) as client:
        await client.metadata(kind)
        runs_before = batcher.runs
        together = await asyncio.gather(*(client.predict(kind, s[None]) for s in samples))
        runs = batcher.runs - runs_before
        alone = [await client.predict(kind, s[None]) for s in samples]
    assert runs < len(samples), f"{len(samples)} concurrent requests took {runs} runs"
    for index, (merged, single) in enumerate(zip(together, alone, strict=True)):
        np.testing.assert_allclose(merged, single, rtol=0, atol=1e-6, err_msg=f"row {index}")
