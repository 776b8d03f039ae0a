#!/usr/bin/env bash
# The device checks of a session that is lent a GPU (issue 18), prepared so that one call of the
# device tool runs them all: the GPU-marked tests, then the scoring and cross-sampling benchmarks,
# then the profiles of one scoring call at the 1.5B and 7B shapes. Each step has its own time limit
# and a failed step does not stop the next; everything lands in $OUT (default benchmarks/out):
# a .txt per step, the profiles' tables and Chrome traces. Record the RESULT lines in
# benchmarks/RESULTS.md with the date, the card (nvidia-smi.txt) and this command.
#
#   bash benchmarks/gpu_session.sh     # from the repository root, on the GPU machine
#
# Five steps of at most STEP_LIMIT_S each: 110 keeps the whole run inside the device tool's 600 s
# per call.
#
# It uses the machine's own python3 and its CUDA torch with PYTHONPATH=src (nothing can be installed
# on a lent machine); PYTHON names another interpreter, STEP_LIMIT_S caps each step (default 110 s).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
LIMIT=${STEP_LIMIT_S:-110}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

step() { # step NAME COMMAND...: run with a time limit, keep its output, say how it ended
  local name=$1
  shift
  local t0=$SECONDS
  timeout -s KILL "$LIMIT" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
  grep '^RESULT' "$OUT/$name.txt" || true
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$OUT/nvidia-smi.txt"
"$PY" -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" \
  >"$OUT/versions.txt" 2>&1
step tests-gpu "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
step bench-scoring "$PY" benchmarks/bench_scoring.py
step bench-crosssample "$PY" benchmarks/bench_crosssample.py
step profile-1.5b "$PY" benchmarks/bench_scoring.py --profile 1.5b "$OUT"
step profile-7b "$PY" benchmarks/bench_scoring.py --profile 7b "$OUT"
