"""Distributed training: synchronized BatchNorm on CPU, its way back to BatchNorm, and a real
two-process torchrun (gloo, 127.0.0.1 only) whose run folder exports like any other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from bnserve.training.checkpoint import load_checkpoint
from bnserve.training.config import ModelSpec, TrainConfig
from bnserve.training.distributed import Launch, train_distributed
from bnserve.training.errors import DistributedError
from bnserve.training.export import export_run
from bnserve.training.models import batchnorm_layers, build_model
from bnserve.training.sync_batchnorm import (
    CPUSyncBatchNorm,
    is_sync_batchnorm,
    revert_sync_batchnorm,
    to_sync_batchnorm,
)
from support import sync_batchnorm_worker as worker
from support.cli import run_cli_in_process

WORKER = Path(worker.__file__)


def torchrun(*args: str | Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node=N ...`` with its rendezvous and gloo on 127.0.0.1 only."""
    # CPU and gloo even where CUDA is present: one GPU cannot host two NCCL ranks.
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo would otherwise bind the hostname's address
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
               "--rdzv-endpoint=127.0.0.1:0", "--local-addr=127.0.0.1", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


def mixed_batchnorm_model() -> nn.Module:
    """The digits CNN (BatchNorm2d and 1d) plus layers with every unusual option."""
    cnn = build_model(ModelSpec(kind="cnn", sample_shape=(1, 8, 8), num_classes=10, width=4))
    cnn.train()(torch.randn(16, 1, 8, 8) * 2 + 1)  # running statistics move off 0 and 1
    extras = nn.ModuleDict({
        "volume": nn.BatchNorm3d(2, affine=False),
        "cumulative": nn.BatchNorm1d(3, momentum=None),
        "untracked": nn.BatchNorm1d(3, track_running_stats=False),
        "no_bias": nn.BatchNorm2d(2, eps=1e-3, bias=False),
    }).eval()
    return nn.ModuleDict({"cnn": cnn, "extras": extras})


@pytest.mark.parametrize(("device", "sync_class"), [("cpu", CPUSyncBatchNorm),
                                                     ("cuda", nn.SyncBatchNorm)])
def test_revert_sync_batchnorm_rebuilds_each_layer_with_its_state(
        device: str, sync_class: type[nn.Module]) -> None:
    model = mixed_batchnorm_model()
    x = torch.randn(5, 1, 8, 8) * 3
    expected = model["cnn"].eval()(x)  # (5, 10) logits from the running statistics
    model["extras"]["cumulative"].train()  # a mix of modes, which the round trip keeps
    before = {name: type(m) for name, m in model.named_modules()
              if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))}
    assert len(before) == 7 + 4
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}

    synced = to_sync_batchnorm(model, device)  # only builds layers: nothing moves to CUDA
    assert {name: type(m) for name, m in synced.named_modules() if name in before} == {
        name: sync_class for name in before}
    plain = revert_sync_batchnorm(synced)

    assert {name: type(m) for name, m in plain.named_modules() if name in before} == before
    assert not any(is_sync_batchnorm(m) for m in plain.modules())
    got = plain.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert {name: m.training for name, m in plain.named_modules()} == modes
    for layer in batchnorm_layers(plain["cnn"]):
        assert (layer.eps, layer.momentum, layer.affine, layer.track_running_stats) == (
            1e-5, 0.1, True, True)
    extras = plain["extras"]
    assert extras["volume"].affine is False and extras["volume"].weight is None
    assert extras["cumulative"].momentum is None
    assert extras["untracked"].track_running_stats is False
    assert extras["untracked"].running_mean is None
    assert extras["no_bias"].eps == 1e-3 and extras["no_bias"].bias is None
    assert extras["no_bias"].weight is not None
    torch.testing.assert_close(plain["cnn"].eval()(x), expected, rtol=0, atol=0)


def test_revert_refuses_a_layer_converted_elsewhere() -> None:
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="does not record which BatchNorm class"):
        revert_sync_batchnorm(converted)


def test_cpu_sync_batchnorm_on_two_ranks_equals_batchnorm_on_the_whole_batch(
        tmp_path: Path) -> None:
    done = torchrun(WORKER, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    for name in worker.CASES:
        reference, x1, x2, g = worker.case_inputs(name)
        reference.train()
        reference(x1)
        x = x2.clone().requires_grad_(True)
        y = reference(x)
        (y * g).sum().backward()
        got = [r[name] for r in ranks]

        for rank, rows in worker.ROWS.items():  # each rank's rows, normalized by global stats
            torch.testing.assert_close(got[rank]["y"], y[rows].detach(), rtol=0, atol=2e-5)
            torch.testing.assert_close(got[rank]["x_grad"], x.grad[rows], rtol=0, atol=2e-5)
        for param in ("weight", "bias"):  # local sums; DDP adds them up across ranks
            ref = getattr(reference, param)
            grads = [r[f"{param}_grad"] for r in got]
            if ref is None:
                assert grads == [None, None]
            else:
                torch.testing.assert_close(grads[0] + grads[1], ref.grad, rtol=0, atol=5e-5)
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(got[0][buffer], got[1][buffer]), (name, buffer)
            torch.testing.assert_close(got[0][buffer], getattr(reference, buffer),
                                       rtol=1e-6, atol=1e-6)


def test_launch_needs_torchrun_and_an_even_global_batch(tmp_path: Path) -> None:
    with pytest.raises(DistributedError, match="RANK, WORLD_SIZE, LOCAL_RANK not set.*torchrun"):
        Launch.from_environment({})
    assert Launch.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}) == \
        Launch(rank=1, world_size=2, local_rank=0)
    with pytest.raises(DistributedError, match="global batch; it must divide evenly over 3"):
        train_distributed(replace(TrainConfig(), batch_size=64), tmp_path,
                          launch=Launch(0, 3, 0), device=torch.device("cpu"))


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One torchrun launch (each costs seconds) that the tests below share: the digits CNN,
    2 epochs on 2 ranks, with both ranks' final state dumped. (run folder, dumps, stdout)"""
    root = tmp_path_factory.mktemp("ddp")
    run_dir, dumps = root / "run", root / "ranks"
    done = torchrun("-m", "bnserve.training.distributed", "--model", "cnn", "--dataset",
                    "digits", "--run-dir", run_dir, "--epochs", "2", "--width", "4", "--seed",
                    "1", "--patience", "5", "--dump-state", dumps)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train cnn/digits x2" in done.stderr  # one progress bar: rank 0's
    return run_dir, dumps, done.stdout


def test_torchrun_two_ranks_agree_and_the_run_exports(two_rank_run, tmp_path: Path) -> None:
    run_dir, dumps, stdout = two_rank_run
    assert "trained cnn on digits with 2 ranks (gloo) (norm batch)" in stdout
    assert "(2 epochs): kept epoch" in stdout and "(lowest val loss)" in stdout

    rank0, rank1 = (torch.load(dumps / f"rank{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    differ = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert differ == []  # parameters (DDP) and running statistics (synchronized BatchNorm)
    running = [k for k in rank0 if k.endswith(("running_mean", "running_var"))]
    assert len(running) == 2 * 7
    for key in running:  # the statistics really moved from their initial 0 and 1
        initial = 0.0 if key.endswith("mean") else 1.0
        assert (rank0[key] - initial).abs().max() > 1e-3, key

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo", "batch_size": 64,
                                      "batch_size_per_rank": 32}
    assert (metrics["epochs"], metrics["seed"]) == (2, 1)
    assert metrics["num_train"] + metrics["num_val"] == 1797
    # The ranks keep the kept epoch's state, which is what the checkpoint holds.
    tracked = {int(v) for k, v in rank0.items() if k.endswith("num_batches_tracked")}
    assert tracked == {metrics["checkpoint_epoch"] * metrics["steps_per_epoch"]}
    ckpt = load_checkpoint(run_dir)
    assert all(torch.equal(ckpt.state_dict[k], rank0[k]) for k in rank0)
    model = ckpt.build()
    assert {type(m) for m in batchnorm_layers(model)} == {nn.BatchNorm1d, nn.BatchNorm2d}

    result = export_run(run_dir, tmp_path / "models", "digits-ddp")
    assert result.report.ok
    bn = result.card["batchnorm"]
    assert (bn["torch_layers"], bn["onnx_nodes"], bn["folded"]) == (7, 0, 7)
    assert result.card["metrics"]["distributed"]["world_size"] == 2


def test_bnserve_train_points_at_torchrun(tmp_path: Path, monkeypatch) -> None:
    help_text = " ".join(run_cli_in_process("train", "--help").stdout.split())
    assert "torchrun --nproc_per_node=N -m bnserve.training.distributed" in help_text
    monkeypatch.setenv("WORLD_SIZE", "2")
    refused = run_cli_in_process("train", "--run-dir", tmp_path / "run", "--dry-run")
    assert refused.returncode == 1
    assert "launched as one of several processes (WORLD_SIZE=2)" in refused.stderr
    assert not (tmp_path / "run").exists()


def test_torchrun_shares_the_loop_refusal_resume_patience_and_summary(
        two_rank_run, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_rank_run[0], run)  # resumed here; the shared run stays as it was

    # The refusal is the shared loop's (check_run_dir, as `bnserve train` runs it), naming
    # the torchrun command: checked in process, one launch fewer (each costs seconds).
    from bnserve.training.distributed import COMMAND
    from bnserve.training.errors import RunExistsError
    from bnserve.training.train import check_run_dir

    with pytest.raises(RunExistsError) as refused:
        check_run_dir(run, resume=False, overwrite=False, command=COMMAND)
    assert (f"already holds a finished run (checkpoint.pt, last.pt, metrics.json); not "
            f"overwriting it: continue it with `torchrun --nproc_per_node=N -m "
            f"bnserve.training.distributed --run-dir {run} --resume`") in str(refused.value)

    resumed = torchrun("-m", "bnserve.training.distributed", "--run-dir", run, "--resume",
                       "--epochs", "3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 3, now of 3 (the run planned 2)" in resumed.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert (metrics["resumed_at_epoch"], metrics["patience"]) == (3, 5)
    best = min(history, key=lambda h: h["val_loss"])
    assert metrics["checkpoint_epoch"] == metrics["best_epoch"] == best["epoch"]
    assert metrics["best"] == "lowest val loss"
    state = torch.load(run / "last.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["world_size"] == 2  # every rank resumes its own

    from bnserve.training.train import train

    single = train(replace(TrainConfig(), model="mlp", dataset="wine", width=8, batch_size=32,
                           patience=5, epochs=2), tmp_path / "single", progress=False)
    assert set(metrics) == set(single.metrics) | {"distributed"}  # the same summary
    refused_single = run_cli_in_process("train", "--run-dir", run, "--resume")
    assert refused_single.returncode == 1
    assert "was trained by 2 process(es); resume it with as many (torchrun " in \
        refused_single.stderr
