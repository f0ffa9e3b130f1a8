"""config.pbtxt in Triton's ModelConfig schema: what bnserve honours, checks and reports."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest

from bnserve.server.errors import ConfigError, QueueFullError, QueueTimeoutError
from bnserve.server.model_config import settings_from_text
from bnserve.server.registry import State
from bnserve.server.settings import ServerSettings
from bnserve.server.triton_wire import model_config
from support import onnx_graphs
from support.lifecycle import lifecycle

X = np.ones((1, 2), np.float32)


def model_with(tmp_path, config: str, graph=onnx_graphs.scaled):
    graph(tmp_path / "m" / "1" / "model.onnx", 1.0) if graph is onnx_graphs.scaled else graph(
        tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "config.pbtxt").write_text(config)


def hold_runs(model):
    """Make the model's runs wait for ``gate``; ``entered`` counts runs begun."""
    gate, entered = threading.Event(), threading.Semaphore(0)
    real = model.batcher._run_batch  # noqa: SLF001

    def held(feeds):
        entered.release()
        gate.wait(10)
        return real(feeds)

    model.batcher._run_batch = held  # noqa: SLF001
    return gate, entered


async def test_every_honoured_field_reaches_the_served_model(tmp_path):
    model_with(tmp_path, """
        name: "m"
        platform: "onnxruntime_onnx"
        backend: "onnxruntime"
        max_batch_size: 16
        input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 2 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
        dynamic_batching {
          preferred_batch_size: [ 4, 8 ]
          max_queue_delay_microseconds: 2500
          default_queue_policy { max_queue_size: 7 default_timeout_microseconds: 900000 }
        }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        version_policy: { latest: { num_versions: 1 } }
        parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
    """)
    async with lifecycle(tmp_path) as (_, registry):
        model = registry.resolve("m")
        policy = model.batcher.policy
        assert (model.max_batch_size, policy.max_queue_delay_s, policy.preferred_batch_sizes,
                policy.max_queue_size, policy.queue_timeout_s, policy.instances) == (
            16, 0.0025, (4, 8), 7, 0.9, 2)
        options = model.session._session.get_session_options()  # noqa: SLF001
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
        assert model.settings.unhonoured == ()
        config = model_config(model)  # what the ModelConfig RPC answers
        assert (config.name, config.platform, config.max_batch_size) == ("m", "onnxruntime_onnx", 16)
        assert list(config.input[0].dims) == [2]  # Triton's convention: no batch dimension
        assert config.input[0].format == config.input[0].FORMAT_NHWC
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.instance_group[0].count == 2


async def test_fields_bnserve_does_not_honour_are_logged_once_by_name(tmp_path, caplog):
    model_with(tmp_path, """
        max_batch_size: 8
        dynamic_batching { priority_levels: 2 }
        input [ { name: "x" reshape: { shape: [ 2 ] } } ]
        optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
        model_warmup [ { name: "w" batch_size: 1 } ]
        parameters { key: "enable_mem_pattern" value: { string_value: "0" } }
        parameters { key: "bnserve.tokenizer" value: { string_value: "{}" } }
    """)
    with caplog.at_level(logging.WARNING):
        async with lifecycle(tmp_path) as (_, registry):
            assert registry.ready_versions("m") == [1]
    lines = [r.getMessage() for r in caplog.records if "does not honour" in r.getMessage()]
    assert len(lines) == 1
    for name in ("dynamic_batching.priority_levels", "input.reshape", "optimization",
                 "model_warmup", "parameters['enable_mem_pattern']",
                 # what ModelConfig reports, sent back in a config: the graph's is served
                 "parameters['bnserve.tokenizer'] (the tokenizer is the one in model.onnx)"):
        assert name in lines[0]
    assert "input.reshape.shape" not in lines[0]  # the field is named, not its parts


@pytest.mark.parametrize(("config", "reason"), [
    ('input [ { name: "x" data_type: TYPE_INT64 } ]',
     "input 'x' is declared INT64, but the graph's is FP32"),
    ('max_batch_size: 4 input [ { name: "x" dims: [ 3 ] } ]',
     "input 'x' has dims [3], but the graph's are [2] (without the batch dimension)"),
    ('max_batch_size: 0 input [ { name: "x" dims: [ 2 ] } ]',
     "input 'x' has dims [2], but the graph's are [-1, 2]"),
    ('input [ { name: "nope" } ]', "input 'nope' is not an input of the graph (it has 'x')"),
    ('output [ { name: "y" data_type: TYPE_FP16 } ]', "output 'y' is declared FP16"),
    ('sequence_batching { }', "sequence_batching is set, and bnserve does not serve sequence"),
    ('platform: "tensorrt_plan"', "platform 'tensorrt_plan' is not served"),
    ('backend: "python"', "backend 'python' is not served"),
    ('name: "other"', "name 'other' differs from the model folder 'm'"),
    ('max_batch_size: 0 dynamic_batching { }', "dynamic_batching needs max_batch_size > 0"),
    ('max_batch_size: 2 dynamic_batching { preferred_batch_size: [ 4 ] }',
     "preferred_batch_size must lie in [1, max_batch_size=2]"),
    ('version_policy { latest { num_versions: 0 } }', "num_versions must be at least 1"),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "-1" } }',
     "must be an integer from 0 to 1024"),
    ('max_batch_size: "many"', "Couldn't parse integer"),
    ('max_batch_size: 4 input [ { name: "x" dims: [ 2 }', "config.pbtxt:"),
])
async def test_a_config_that_does_not_fit_refuses_the_model_with_the_reason(tmp_path, config, reason):
    model_with(tmp_path, config)
    async with lifecycle(tmp_path) as (_, registry):
        assert registry.ready_versions("m") == []
        entry = registry.entry("m")
        why = entry.reason or entry.versions[1].reason
        assert reason in why, why


def test_a_graph_without_a_batch_axis_needs_max_batch_size_0(tmp_path):
    from bnserve.server.loader import resolve_plan
    from bnserve.server.runtime import TensorSpec

    settings = settings_from_text(b"max_batch_size: 4", "m", ServerSettings())
    fixed = [TensorSpec("x", "FP32", (3, 2))]
    with pytest.raises(ConfigError, match="no free first .batch. dimension; use max_batch_size: 0"):
        resolve_plan(fixed, fixed, settings, ServerSettings(), None, tmp_path, "m")
    plan = resolve_plan(fixed, fixed, settings_from_text(b"max_batch_size: 0", "m", ServerSettings()),
                        ServerSettings(), None, tmp_path, "m")
    assert plan.max_batch_size == 0 and not plan.batching


async def test_without_a_config_the_server_settings_apply(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    async with lifecycle(tmp_path, max_batch_size=12, max_queue_delay_ms=3.0,
                         max_queue_size=5) as (_, registry):
        model = registry.resolve("m")
        assert model.settings.source == "server defaults"
        assert (model.max_batch_size, model.plan.batching, model.batcher.policy.max_queue_delay_s,
                model.batcher.policy.max_queue_size) == (12, True, 0.003, 5)


async def test_what_a_config_leaves_out_is_filled_like_tritons_auto_complete(tmp_path):
    model_with(tmp_path, "version_policy { latest { num_versions: 1 } }")  # a pin, nothing else
    async with lifecycle(tmp_path, max_batch_size=12, max_queue_delay_ms=3.0) as (_, registry):
        model = registry.resolve("m")
        assert (model.max_batch_size, model.plan.batching,
                model.batcher.policy.max_queue_delay_s) == (12, True, 0.003)
    model_with(tmp_path, "max_batch_size: 0")  # said explicitly: no batch axis
    async with lifecycle(tmp_path) as (_, registry):
        model = registry.resolve("m")
        assert (model.max_batch_size, model.plan.batching) == (0, False)
        assert model_config(model).input[0].dims == [-1, 2]  # full shapes without a batch axis


async def test_dynamic_batching_off_never_merges_requests(tmp_path):
    model_with(tmp_path, 'max_batch_size: 8 parameters { key: "dynamic_batching" '
                         'value: { string_value: "off" } }')
    async with lifecycle(tmp_path) as (_, registry):
        model = registry.resolve("m")
        assert not model.plan.batching and "dynamic_batching" not in str(model_config(model))
        gate, entered = hold_runs(model)
        calls = [asyncio.ensure_future(model.infer({"x": X})) for _ in range(4)]
        await asyncio.to_thread(entered.acquire, True, 10)
        gate.set()
        await asyncio.gather(*calls)
        assert model.batcher.runs == 4


async def test_a_preferred_batch_size_goes_without_waiting_for_the_delay(tmp_path):
    model_with(tmp_path, "max_batch_size: 16 dynamic_batching { preferred_batch_size: [ 4 ] "
                         "max_queue_delay_microseconds: 30000000 }")  # a 30 s delay
    async with lifecycle(tmp_path) as (_, registry):
        model = registry.resolve("m")
        answers = await asyncio.wait_for(
            asyncio.gather(*(model.infer({"x": X * i}) for i in range(4))), timeout=10)
        assert model.batcher.runs == 1 and [float(a["y"][0, 0]) for a in answers] == [0, 1, 2, 3]


async def test_queue_policy_bounds_the_queue_and_times_out_waiting_requests(tmp_path):
    model_with(tmp_path, "max_batch_size: 1 dynamic_batching { default_queue_policy { "
                         "max_queue_size: 2 default_timeout_microseconds: 1000 } }")
    async with lifecycle(tmp_path) as (_, registry):
        model = registry.resolve("m")
        gate, entered = hold_runs(model)
        running = asyncio.ensure_future(model.infer({"x": X}))
        await asyncio.to_thread(entered.acquire, True, 10)
        queued = [asyncio.ensure_future(model.infer({"x": X})) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await model.infer({"x": X})
        # Answered at their 1 ms timeout, while the run they wait for still holds the model,
        # and their places are free again at once.
        done, _ = await asyncio.wait(queued, timeout=5)
        assert len(done) == 2 and not running.done() and model.batcher.queued == 0
        for call in queued:
            with pytest.raises(QueueTimeoutError, match="queue timeout of 1 ms"):
                await call
        late = asyncio.ensure_future(model.infer({"x": X}))  # a newcomer is queued, not refused
        gate.set()
        await running
        await late


async def test_a_request_timeout_shortens_the_queue_timeout_only_where_allowed(tmp_path):
    model_with(tmp_path, "max_batch_size: 1 dynamic_batching { default_queue_policy { "
                         "default_timeout_microseconds: 60000000 allow_timeout_override: true } }")
    async with lifecycle(tmp_path) as (_, registry):
        model = registry.resolve("m")
        gate, entered = hold_runs(model)
        running = asyncio.ensure_future(model.infer({"x": X}))
        await asyncio.to_thread(entered.acquire, True, 10)
        short = asyncio.ensure_future(model.infer({"x": X}, timeout_s=0.001))
        longer = asyncio.ensure_future(model.infer({"x": X}, timeout_s=3600))  # capped: 60 s
        with pytest.raises(QueueTimeoutError, match="queue timeout of 1 ms"):
            await asyncio.wait_for(short, 5)
        assert not longer.done()
        gate.set()
        await running
        await longer


async def test_instance_group_count_runs_that_many_batches_at_once(tmp_path):
    model_with(tmp_path, "max_batch_size: 1 dynamic_batching { } instance_group [ { count: 2 } ]")
    async with lifecycle(tmp_path) as (_, registry):
        model = registry.resolve("m")
        gate, entered = hold_runs(model)
        calls = [asyncio.ensure_future(model.infer({"x": X})) for _ in range(3)]
        for _ in range(2):  # two runs begin while neither can finish
            assert await asyncio.to_thread(entered.acquire, True, 10)
        assert not entered.acquire(timeout=0.2)  # a third waits for an instance
        gate.set()
        await asyncio.gather(*calls)


async def test_labels_come_from_label_filename_or_the_model_card(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "filed" / "1" / "model.onnx")
    (tmp_path / "filed" / "labels.txt").write_text("cat\ndog\nbird\n")
    (tmp_path / "filed" / "config.pbtxt").write_text(
        'max_batch_size: 8 dynamic_batching { } '
        'output [ { name: "probabilities" label_filename: "labels.txt" } ]')
    onnx_graphs.linear_softmax(tmp_path / "carded" / "1" / "model.onnx")
    (tmp_path / "carded" / "1" / "metadata.json").write_text('{"labels": ["a", "b", "c"]}')
    onnx_graphs.linear_softmax(tmp_path / "escape" / "1" / "model.onnx")
    (tmp_path / "escape" / "config.pbtxt").write_text(
        'output [ { name: "probabilities" label_filename: "../labels.txt" } ]')
    async with lifecycle(tmp_path) as (_, registry):
        assert registry.resolve("filed").plan.labels == {"probabilities": ("cat", "dog", "bird")}
        assert registry.resolve("carded").plan.labels == {"probabilities": ("a", "b", "c")}
        assert registry.entry("escape").versions[1].state is State.UNAVAILABLE
        assert "contains a path separator" in registry.entry("escape").versions[1].reason
