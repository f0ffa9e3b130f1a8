#!/usr/bin/env bash
# One prepared check of training on CUDA, for a machine with a GPU (CI has none):
# NCCL process group, DistributedDataParallel with torch's nn.SyncBatchNorm on
# cuda:LOCAL_RANK (2 ranks when 2+ GPUs are visible), the recurrent BN model too,
# conversion back to plain BatchNorm, then export with full verification on CPU.
#   PYTHON=.venv/bin/python bash bench/cuda_training_check.sh
set -euo pipefail
PY=${PYTHON:-python3}
CHECK_DIR=${CHECK_DIR:-/tmp/bnserve-cuda-check}
rm -rf "$CHECK_DIR"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; \
print('torch', torch.__version__, '|', torch.cuda.get_device_name(0), '|', torch.cuda.device_count(), 'GPU(s)')"
NPROC=$("$PY" -c "import torch; print(min(2, torch.cuda.device_count()))")
RUN=("$PY" -m torch.distributed.run --nproc_per_node="$NPROC" --rdzv-backend=c10d
     --rdzv-endpoint=127.0.0.1:0 --local-addr=127.0.0.1 -m bnserve.training.distributed)
"${RUN[@]}" --model cnn --dataset digits --epochs 10 --run-dir "$CHECK_DIR/cnn" \
    --dump-state "$CHECK_DIR/cnn-ranks"
"${RUN[@]}" --model rnn --dataset text --epochs 3 --run-dir "$CHECK_DIR/rnn"
for model in cnn rnn; do  # the Python API: a GPU image may lack the client's grpcio version
    "$PY" -c "import sys; from bnserve.training.export import export_run, format_summary; \
print(format_summary(export_run(sys.argv[1], sys.argv[2], sys.argv[3])))" \
        "$CHECK_DIR/$model" "$CHECK_DIR/models" "$model-cuda"
done
"$PY" - "$CHECK_DIR" <<'PY'
import sys, pathlib, torch
ranks = sorted(pathlib.Path(sys.argv[1], "cnn-ranks").glob("rank*.pt"))
states = [torch.load(p, map_location="cpu", weights_only=True) for p in ranks]
assert states, "no rank state dumped"
for other in states[1:]:
    assert all(torch.equal(states[0][k], other[k]) for k in states[0]), "ranks disagree"
moved = [k for k in states[0] if k.endswith("running_mean") and states[0][k].abs().sum() > 0]
print(f"{len(states)} rank(s) agree on every tensor; {len(moved)} BatchNorm running means moved")
PY
echo "CUDA training check passed"
