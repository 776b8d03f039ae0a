#!/usr/bin/env bash
# The device checks of a session that is lent a GPU (issue 18), prepared so that one call of the
# device tool runs them all: the GPU-marked tests, then the scoring and cross-sampling benchmarks
# (their GPU cases alone), then the profiles of one scoring call at the 1.5B and 7B shapes. Each step
# has its own time limit and a failed step does not stop the next. Everything lands in $OUT
# (default benchmarks/out) as at most eight files, what the device tool brings back: machine.txt
# (nvidia-smi, versions), steps.txt (how each step ended), a .txt per step, and traces.tar.gz (the
# profiles' Chrome traces, left out if over 15 MiB). Record the RESULT lines in
# benchmarks/RESULTS.md with the date, the card (machine.txt) and this command.
#
#   bash benchmarks/gpu_session.sh     # from the repository root, on the GPU machine
#
# The lent machine has torch and transformers but not polars, which tokenshift's sharding imports.
# Its wheels travel in .whl/ (gitignored; the device tool's `carry`), made here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl polars==2.1.0 polars-runtime-32==2.1.0
# and are installed into a folder of /tmp when present (no network there, nothing else installed).
#
# Step limits (seconds): tests 90, scoring 130, cross-sampling 170, profiles 60 and 80: 530 in all,
# inside the device tool's 600 s per call. STEP_SCALE multiplies them; PYTHON names another
# interpreter (default the machine's python3, with PYTHONPATH=src).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
SCALE=${STEP_SCALE:-1}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
SITE=""
if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    || echo "installing .whl/ failed" >>"$OUT/steps.txt"
fi
export PYTHONPATH=src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

step() { # step NAME LIMIT COMMAND...: run with a time limit, keep its output, say how it ended
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local t0=$SECONDS
  timeout -s KILL "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$OUT/steps.txt"
  grep '^RESULT' "$OUT/$name.txt" || true
}

{
  nvidia-smi 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import torch, transformers, polars; print('torch', torch.__version__, 'transformers', transformers.__version__, 'polars', polars.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" 2>&1
  nproc
} >"$OUT/machine.txt"
TRACES=$(mktemp -d)
step tests-gpu 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
step bench-scoring 130 "$PY" benchmarks/bench_scoring.py --gpu-only
step bench-crosssample 170 "$PY" benchmarks/bench_crosssample.py --gpu-only
step profile-1.5b 60 "$PY" benchmarks/bench_scoring.py --profile 1.5b "$TRACES"
step profile-7b 80 "$PY" benchmarks/bench_scoring.py --profile 7b "$TRACES"
if compgen -G "$TRACES/*.json" >/dev/null; then
  tar -czf "$OUT/traces.tar.gz" -C "$TRACES" .
  if [ "$(stat -c %s "$OUT/traces.tar.gz")" -gt $((15 << 20)) ]; then
    echo "traces.tar.gz over 15 MiB: left out" >>"$OUT/steps.txt"
    rm "$OUT/traces.tar.gz"
  fi
fi
