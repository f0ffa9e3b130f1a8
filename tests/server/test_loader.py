"""The loader trusts nothing on disk and proves batch independence before a model serves."""

from __future__ import annotations

import json
import os

import numpy as np
from onnx import TensorProto

from bnserve.server.registry import State
from support import onnx_graphs
from support.lifecycle import lifecycle


async def reasons(root, **settings) -> dict[str, str]:
    """model name -> why its version 1 is not served ("" when it is)."""
    async with lifecycle(root, **settings) as (_, registry):
        found = {}
        for name in registry.names():
            entry = registry.version_entry(name, 1)
            found[name] = "" if entry and entry.state is State.READY else (
                entry.reason if entry else registry.entry(name).reason)
        return found


async def test_external_data_must_be_a_plain_file_inside_the_version_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = tmp_path / "repo"
    onnx_graphs.with_external_weights(repo / "plain" / "1" / "model.onnx")
    onnx_graphs.with_external_weights(repo / "hardlink" / "1" / "model.onnx")
    weights = repo / "hardlink" / "1" / "weights.bin"
    os.replace(weights, outside / "secret.bin")
    os.link(outside / "secret.bin", weights)  # looks inside, is a file outside
    onnx_graphs.with_external_weights(repo / "symlink" / "1" / "model.onnx")
    weights = repo / "symlink" / "1" / "weights.bin"
    os.replace(weights, outside / "other.bin")
    os.symlink(outside / "other.bin", weights)
    onnx_graphs.with_external_weights(repo / "escape" / "1" / "model.onnx",
                                      data_file="../escape.bin")
    onnx_graphs.with_external_weights(repo / "missing" / "1" / "model.onnx")
    (repo / "missing" / "1" / "weights.bin").unlink()
    onnx_graphs.linear_softmax(repo / "model_link" / "1" / "model.onnx")
    os.link(repo / "model_link" / "1" / "model.onnx", outside / "copy.onnx")
    found = await reasons(repo)
    assert found == {
        "plain": "",
        "hardlink": "failed to load: external data file is a hard link",
        "symlink": "failed to load: external data file is a symlink",
        "escape": "failed to load: an external data file location leads out of the version folder",
        "missing": "failed to load: external data file is missing",
        "model_link": "failed to load: model.onnx is a hard link",
    }
    assert not any(str(tmp_path) in reason for reason in found.values())


async def test_folders_that_are_symlinks_out_of_the_repository_are_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    onnx_graphs.linear_softmax(elsewhere / "m" / "1" / "model.onnx")
    repo = tmp_path / "repo"
    onnx_graphs.linear_softmax(repo / "inside" / "1" / "model.onnx")
    (repo / "inside" / "config.pbtxt").write_text("version_policy { all { } }")
    os.symlink(elsewhere / "m" / "1", repo / "inside" / "2")  # a version folder out
    os.symlink(elsewhere / "m", repo / "linked")  # a model folder out
    os.symlink(repo / "inside", repo / "alias")  # a symlink that stays inside: fine
    async with lifecycle(repo, strict_readiness=False) as (_, registry):
        assert registry.ready_versions("inside") == [1]  # version 2 is refused
        assert registry.version_entry("inside", 2).reason == (
            "failed to load: the version folder is a symlink that leads out of the repository")
        assert registry.entry("linked").reason == (
            "the model folder is a symlink that leads out of the repository")
        assert registry.ready_versions("alias") == [1]


async def test_a_graph_that_mixes_rows_of_a_batch_is_refused_naming_the_output(tmp_path):
    onnx_graphs.batch_mean(tmp_path / "mean" / "1" / "model.onnx")
    onnx_graphs.dropout_training(tmp_path / "dropout" / "1" / "model.onnx")
    onnx_graphs.linear_softmax(tmp_path / "fine" / "1" / "model.onnx")
    found = await reasons(tmp_path)
    assert found["fine"] == ""
    assert found["mean"].startswith("failed to load: failed the batch-independence check: "
                                    "output 'y' of row 0 changes with the other rows of its batch")
    assert found["dropout"].startswith("failed to load: failed the batch-independence check: "
                                       "output 'y' differs between two runs of the same inputs")


async def test_a_batch_dependent_model_is_served_unbatched_only_when_its_config_says_so(tmp_path):
    onnx_graphs.batch_mean(tmp_path / "mean" / "1" / "model.onnx")
    (tmp_path / "mean" / "config.pbtxt").write_text(
        'max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 100000 }\n'
        'parameters { key: "batch_dependent" value { string_value: "serve_unbatched" } }\n')
    async with lifecycle(tmp_path) as (_, registry):
        model = registry.resolve("mean")
        assert not model.plan.batching and "row 0" in model.plan.independence.reason
        rows = [np.full((1, 3), float(i), np.float32) for i in range(6)]
        import asyncio

        answers = await asyncio.gather(*(model.infer({"x": r}) for r in rows))
        # Alone, a row minus its own mean is zero: no request saw another one's rows.
        assert all(np.array_equal(a["y"], np.zeros((1, 3), np.float32)) for a in answers)
        assert model.batcher.runs == 6


async def test_the_check_uses_the_card_statistics_and_integer_ranges(tmp_path):
    onnx_graphs.embedding_lookup(tmp_path / "lookup" / "1" / "model.onnx", vocab=50)
    card = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, 6], "range": [0, 49]}]}
    (tmp_path / "lookup" / "1" / "metadata.json").write_text(json.dumps(card))
    onnx_graphs.identity(tmp_path / "floats" / "1" / "model.onnx", TensorProto.FLOAT)
    stats = {"mean": [100.0, 200.0, 300.0], "std": [1.0, 1.0, 1.0], "shape": [3]}
    (tmp_path / "floats" / "1" / "metadata.json").write_text(json.dumps({"input_statistics": stats}))
    from bnserve.repository.card import read_card
    from bnserve.server.independence import probe_inputs
    from bnserve.server.runtime import TensorSpec

    ids = probe_inputs([TensorSpec("ids", "INT64", (-1, -1))], 8,
                       read_card(tmp_path / "lookup" / "1"))["ids"]
    assert ids.shape == (8, 6) and ids.min() >= 0 and ids.max() <= 49 and ids.max() > 1
    x = probe_inputs([TensorSpec("x", "FP32", (-1, 3))], 8, read_card(tmp_path / "floats" / "1"))["x"]
    assert np.allclose(x.mean(axis=0), [100, 200, 300], atol=2)
    assert (await reasons(tmp_path)) == {"lookup": "", "floats": ""}


async def test_a_malformed_model_card_refuses_the_version_with_the_field(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "1" / "metadata.json").write_text('{"labels": "cat,dog"}')
    assert (await reasons(tmp_path))["m"] == ("failed to load: metadata.json is not a valid model "
                                              "card: labels must be a list of strings of at most "
                                              "1024 characters")
