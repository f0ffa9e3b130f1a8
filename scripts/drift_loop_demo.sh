#!/usr/bin/env bash
# The README's "drift seen -> recalibrate -> drift gone" walk-through, command by command, in
# a scratch folder: a quick digits CNN, a server that captures 256 rows, the scanner-shifted
# digits of bench/make_shifted_digits.py, `bnserve drift`, `bnserve recalibrate --address`.
#     scripts/drift_loop_demo.sh [PORT]      (needs `make test`'s or `make serve`'s .venv)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.venv/bin"
PORT="${1:-8077}"
WORK="$(mktemp -d)"
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"
"$BIN/python" -c "from pathlib import Path; from bnserve.training.quick import build_digits_repository; build_digits_repository(Path('models'), name='digits')"
head -c 24 /dev/urandom | base64 > admin.token
"$BIN/python" "$ROOT/bench/make_shifted_digits.py" . > /dev/null
run() { echo "\$ $*"; "$@" || echo "(exit status $?)"; }
"$BIN/bnserve" serve --repository models --host 127.0.0.1 --port "$PORT" --capture-rows 256 \
    --admin-token-file admin.token --port-file port 2> serve.log &
SERVER=$!
for _ in $(seq 100); do [ -s port ] && break; sleep 0.2; done
shifted_traffic() {
    for _ in $(seq 12); do
        "$BIN/bnserve" predict --address "127.0.0.1:$PORT" --model digits --input shifted.npy > /dev/null
    done
}
echo "# 12 x 1,437 scanner-shifted digits through bnserve predict"
shifted_traffic
run "$BIN/bnserve" drift --address "127.0.0.1:$PORT" --model digits
run "$BIN/bnserve" recalibrate --address "127.0.0.1:$PORT" --model digits --admin-token-file admin.token
echo "# the same traffic again"
shifted_traffic
run "$BIN/bnserve" drift --address "127.0.0.1:$PORT" --model digits
grep -E "ALARM|recalibrated|not selected" serve.log | cut -d' ' -f3- || true
