"""Instances and threads per model: the usable cores, the thread plan, config.pbtxt's
onnxruntime settings, the IO-binding decision."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bnserve.server.cpu_quota import CpuBudget, cgroup_quota, cpu_budget, plan_threads
from bnserve.server.errors import ConfigError
from bnserve.server.loader import session_tuning
from bnserve.server.model_config import default_settings, settings_from_text
from bnserve.server.runtime import CPU, CUDA, OnnxRuntimeSession, SessionTuning, uses_io_binding
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.lifecycle import lifecycle

SERVER = ServerSettings()


def parameters(**values: str) -> str:
    return " ".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
                    for k, v in values.items())


# -- the usable cores, from fake cgroup files ------------------------------------------------

@pytest.mark.parametrize(("text", "quota"), [
    ("max 100000", None), ("200000 100000", 2.0), ("150000 100000", 1.5),
    ("50000 100000", 0.5), ("garbage", None), ("0 100000", None),
])
def test_cgroup_v2_cpu_max(tmp_path, text, quota):
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert cgroup_quota(tmp_path) == quota


@pytest.mark.parametrize(("folder", "quota_us", "quota"), [
    ("cpu", "300000", 3.0), ("cpu,cpuacct", "250000", 2.5), ("cpu", "-1", None),
])
def test_cgroup_v1_cfs_quota(tmp_path, folder, quota_us, quota):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "cpu.cfs_quota_us").write_text(quota_us)
    (tmp_path / folder / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_quota(tmp_path) == quota


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cgroup_quota(tmp_path) is None
    assert cpu_budget(tmp_path, affinity=6).cores == 6


@pytest.mark.parametrize(("affinity", "quota", "cores"), [
    (64, 2.0, 2), (64, 1.5, 2), (64, 0.5, 1), (2, 8.0, 2), (4, None, 4),
])
def test_usable_cores_are_the_affinity_mask_capped_by_the_rounded_up_quota(affinity, quota, cores):
    budget = CpuBudget(affinity=affinity, quota=quota)
    assert budget.cores == cores
    assert f"{cores} usable core(s)" in budget.describe()


def test_the_affinity_mask_is_read_when_not_given(tmp_path):
    assert cpu_budget(tmp_path).affinity >= 1


# -- the thread plan ---------------------------------------------------------------------------

@pytest.mark.parametrize(("cores", "instances", "intra", "spin"), [
    (2, 1, 2, False),  # a 2-core machine, one instance: both cores, no core left: no spinning
    (2, 2, 1, False),  # two instances of one thread: the same
    (2, 4, 1, False),  # four single-thread instances exceed two cores
    (16, 3, 5, True),  # 15 threads leave a core of 16: spinning
    (8, 1, 8, False),  # one instance takes every core
    (1, 1, 1, False),
])
def test_default_intra_op_threads_share_the_cores_between_instances(cores, instances, intra, spin):
    plan = plan_threads(cores, instances)
    assert (plan.intra_op_threads, plan.allow_spinning) == (intra, spin)


def test_set_threads_are_kept_and_spinning_stops_when_they_oversubscribe():
    plan = plan_threads(4, 2, intra_op_threads=4)
    assert (plan.intra_op_threads, plan.allow_spinning) == (4, False)
    assert "8 thread(s) leave no core of 4" in plan.reason
    assert plan_threads(4, 1, intra_op_threads=3).allow_spinning


def test_parallel_mode_counts_the_inter_op_threads():
    assert plan_threads(4, 1, intra_op_threads=3, inter_op_threads=2).allow_spinning
    assert not plan_threads(4, 1, intra_op_threads=3, inter_op_threads=2,
                            parallel=True).allow_spinning


def test_a_set_spinning_choice_wins_over_the_rule():
    assert plan_threads(1, 8, allow_spinning=True).allow_spinning
    assert not plan_threads(64, 1, allow_spinning=False).allow_spinning


# -- config.pbtxt, Triton's names ---------------------------------------------------------------

def test_a_triton_onnxruntime_config_sets_every_session_option():
    text = f"""
        instance_group [ {{ count: 2 kind: KIND_CPU }} ]
        optimization {{ graph {{ level: -1 }} }}
        {parameters(intra_op_thread_count="3", inter_op_thread_count="2", execution_mode="1")}
        {parameters(**{"session.intra_op.allow_spinning": "0",
                       "session.inter_op.allow_spinning": "1"})}
    """
    settings = settings_from_text(text.encode(), "m", SERVER)
    assert (settings.instance_count, settings.intra_op_threads, settings.inter_op_threads,
            settings.execution_mode, settings.graph_optimization_level,
            settings.intra_op_spinning, settings.inter_op_spinning) == (
        2, 3, 2, "parallel", "basic", False, True)
    assert settings.unhonoured == ()


@pytest.mark.parametrize(("level", "name"), [
    ("-1", "basic"), ("1", "extended"), ("2", "disabled"), ("0", "all"), ("7", "all"),
])
def test_graph_levels_mean_what_they_mean_to_triton(level, name):
    text = f"optimization {{ graph {{ level: {level} }} }}".encode()
    assert settings_from_text(text, "m", SERVER).graph_optimization_level == name


def test_other_optimization_fields_are_still_reported():
    text = b'optimization { graph { level: 1 } ' \
           b'execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }'
    settings = settings_from_text(text, "m", SERVER)
    assert settings.graph_optimization_level == "extended"
    assert settings.unhonoured == ("optimization.execution_accelerators."
                                   "gpu_execution_accelerator.name",)


@pytest.mark.parametrize(("text", "reason"), [
    (parameters(execution_mode="parallel"),
     "parameters['execution_mode'] must be 0 (sequential) or 1 (parallel)"),
    (parameters(**{"session.intra_op.allow_spinning": "yes"}),
     "parameters['session.intra_op.allow_spinning'] must be 0 (no spinning) or 1 (spin)"),
    (parameters(inter_op_thread_count="two"),
     "parameters['inter_op_thread_count'] must be an integer from 0 to 1024"),
    ('optimization { graph { level: "high" } }',
     "optimization.graph.level must be an integer (-1 basic, 1 extended, 2 disabled"),
])
def test_bad_values_name_the_field_and_what_was_expected(text, reason):
    with pytest.raises(ConfigError) as caught:
        settings_from_text(text.encode(), "m", SERVER)
    assert reason in str(caught.value)


def test_server_wide_defaults_fill_what_a_config_leaves_out():
    server = ServerSettings(intra_op_threads=2, inter_op_threads=3, execution_mode="parallel",
                            graph_optimization_level="extended", allow_spinning="off")
    for settings in (default_settings(server),
                     settings_from_text(b"max_batch_size: 4", "m", server)):
        assert (settings.intra_op_threads, settings.inter_op_threads, settings.execution_mode,
                settings.graph_optimization_level, settings.intra_op_spinning,
                settings.inter_op_spinning) == (2, 3, "parallel", "extended", False, False)
    assert default_settings(SERVER).intra_op_spinning is None  # auto


def test_session_tuning_fills_auto_values_for_the_usable_cores():
    text = b'instance_group [ { count: 4 } ]'
    tuning = session_tuning(settings_from_text(text, "m", SERVER), CpuBudget(64, 2.0))
    assert tuning == SessionTuning(intra_op_threads=1, inter_op_threads=1,
                                   intra_op_spinning=False, inter_op_spinning=False)
    one = session_tuning(default_settings(SERVER), CpuBudget(2, None))
    assert (one.intra_op_threads, one.intra_op_spinning) == (2, False)
    spare = session_tuning(settings_from_text(parameters(intra_op_thread_count="3").encode(),
                                              "m", SERVER), CpuBudget(4, None))
    assert (spare.intra_op_threads, spare.intra_op_spinning) == (3, True)


# -- the session and the loaded model ---------------------------------------------------------

def test_the_session_gets_the_options(tmp_path):
    path = onnx_graphs.linear_softmax(tmp_path / "m.onnx")
    tuning = SessionTuning(intra_op_threads=2, inter_op_threads=3, execution_mode="parallel",
                           graph_optimization_level="basic", intra_op_spinning=False)
    options = OnnxRuntimeSession(path, tuning=tuning)._session.get_session_options()  # noqa: SLF001
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 3)
    assert str(options.execution_mode).endswith("ORT_PARALLEL")
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "1"


async def test_a_loaded_model_logs_its_threads(tmp_path, caplog):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    (tmp_path / "m" / "config.pbtxt").write_text(
        "instance_group [ { count: 2 } ] " + parameters(intra_op_thread_count="1"))
    with caplog.at_level(logging.INFO, logger="bnserve.server.loader"):
        async with lifecycle(tmp_path) as (_, registry):
            model = registry.resolve("m")
            assert model.session.tuning.intra_op_threads == 1
    assert any("2 instance(s), 1 intra-op thread(s) each" in r.getMessage()
               for r in caplog.records)



async def test_model_config_reports_the_options_the_session_runs_with(tmp_path):
    from bnserve.server.triton_wire import model_config

    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    (tmp_path / "m" / "config.pbtxt").write_text(
        "instance_group [ { count: 2 } ] " + parameters(execution_mode="1"))
    async with lifecycle(tmp_path) as (_, registry):
        model = registry.resolve("m")
        reported = {k: v.string_value for k, v in model_config(model).parameters.items()}
    tuning = model.session.tuning
    # "0" intra-op threads in the settings means auto: the config says what auto became.
    assert reported["intra_op_thread_count"] == str(tuning.intra_op_threads) != "0"
    assert reported["inter_op_thread_count"] == str(tuning.inter_op_threads)
    assert reported["execution_mode"] == "1"
    assert reported["session.intra_op.allow_spinning"] == str(int(tuning.intra_op_spinning))
    assert reported["session.inter_op.allow_spinning"] == str(int(tuning.inter_op_spinning))


# -- IO binding: where it pays, without a GPU --------------------------------------------------

@pytest.mark.parametrize(("providers", "bind"), [
    ([CUDA, CPU], True), ([CPU], False), ([], False),
    (["TensorrtExecutionProvider", CUDA, CPU], False),  # not measured: left on run()
])
def test_io_binding_only_on_cuda(providers, bind):
    assert uses_io_binding(providers) is bind


def test_a_cpu_session_does_not_bind_and_the_bound_path_gives_the_same_answer(tmp_path):
    path = onnx_graphs.linear_softmax(tmp_path / "m.onnx")
    session = OnnxRuntimeSession(path)
    assert session.io_binding is False
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    plain = session.run({"input": x})
    session.io_binding = True  # the CUDA path's calls, run on the CPU provider
    bound = session.run({"input": x[:, :]})
    assert plain.keys() == bound.keys()
    for name in plain:
        np.testing.assert_array_equal(plain[name], bound[name])


def test_the_cuda_extra_never_pulls_the_cpu_onnxruntime():
    import re
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="tomllib is new in Python 3.11")
    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]

    def names(extra: str) -> set[str]:
        found = set()
        for requirement in extras[extra]:
            name = re.match(r"[A-Za-z0-9_.\-]+(\[[^\]]+\])?", requirement).group(0)
            if name.startswith("bnserve["):
                for inner in name[len("bnserve["):-1].split(","):
                    found |= names(inner.strip())
            else:
                found.add(name.lower())
        return found

    assert "onnxruntime-gpu" in names("cuda") and "onnxruntime" not in names("cuda")
    assert "onnxruntime" in names("server") and "onnxruntime-gpu" not in names("server")
    assert names("server") - {"onnxruntime"} == names("cuda") - {"onnxruntime-gpu"}
