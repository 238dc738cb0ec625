#!/usr/bin/env bash
# One prepared check of nnx on a machine with an NVIDIA GPU; prints a short table last.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: the same steps on NumPy / PyTorch CPU at tiny size
#
# 1. reads the driver's CUDA major version (nvidia-smi) and makes sure CuPy imports: when it does
#    not, installs the cupy extra for that major (pip install -e ".[cupy12]" or ".[cupy13]") if pip
#    can reach an index, and otherwise goes on with what is there;
# 2. runs the test suite on the cupy backend (bash backends/run_tests.sh cupy -q);
# 3. runs benchmarks/bench_train.py with nnx on CuPy against PyTorch on CUDA (when torch sees the
#    GPU) at the medium, large and wide (8192-unit) shapes, timing with device synchronisation
#    (Backend.synchronize / torch.cuda.synchronize) and checking that no training step
#    synchronises the device (cupyx.allow_synchronize(False) around every step);
# 3b. runs data-parallel training over a world of one GPU with CuPy's NCCL and with torch.distributed's
#    NCCL (benchmarks/bench_distributed.py --engine ...), which still runs each engine's collective;
# 4. prints a summary table. Results land in $OUT (default benchmarks/gpu_results/).
#
# Environment: PYTHON (default python3), OUT, REPEATS (timed epochs per shape, default 3),
# SHAPES (default medium,large,wide), TEST_ARGS (extra pytest arguments).
set -uo pipefail

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ $DRY = 1 ]; then OUT=${OUT:-${TMPDIR:-/tmp}/nnx-gpu-check-dry-run}; else OUT=${OUT:-benchmarks/gpu_results}; fi
REPEATS=${REPEATS:-3}
SHAPES=${SHAPES:-medium,large,wide}
mkdir -p "$OUT"
declare -a SUMMARY=()
FAILED=0
note() { echo "== $*"; }
record() { SUMMARY+=("$1|$2"); }

# -- 1. driver, CUDA and CuPy ---------------------------------------------------------------------
if [ $DRY = 1 ]; then
  note "dry run: no GPU used; nnx runs on numpy, PyTorch on its CPU, at tiny size"
  BACKEND=numpy TORCH_DEVICE=cpu
  CUDA_MAJOR=12
  record "driver" "dry run (assumed CUDA 12)"
else
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "nvidia-smi not found: this script needs an NVIDIA GPU (use --dry-run elsewhere)" >&2
    exit 3
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n1)
  note "driver supports CUDA ${CUDA_MAJOR:-unknown}"
  record "driver" "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n1), CUDA ${CUDA_MAJOR:-?}"
  BACKEND=cupy TORCH_DEVICE=cuda
fi

EXTRA="" PKG=""
case "${CUDA_MAJOR:-}" in
  12) EXTRA=cupy12 PKG=cupy-cuda12x ;;
  13|14|15) EXTRA=cupy13 PKG=cupy-cuda13x ;;  # the newest wheel; newer drivers run CUDA 13 code
esac

cupy_ok() { "$PY" -c "import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)" >/dev/null 2>&1; }
if [ $DRY = 1 ]; then
  note "would run, only if cupy does not import: $PY -m pip install -e \".[${EXTRA}]\""
  record "cupy" "dry run: install step skipped"
elif cupy_ok; then
  record "cupy" "$("$PY" -c 'import cupy; print("cupy", cupy.__version__, "(already installed)")')"
else
  if [ -z "$EXTRA" ]; then
    note "no cupy extra for CUDA ${CUDA_MAJOR:-?}; using what is installed"
  elif timeout 30 "$PY" -m pip index versions "$PKG" >/dev/null 2>&1; then
    note "installing the ${EXTRA} extra ($PKG)"
    timeout 900 "$PY" -m pip install -q -e ".[${EXTRA}]" || note "pip install failed; going on with what is installed"
  else
    note "pip cannot reach a package index; using what is installed"
  fi
  if cupy_ok; then
    record "cupy" "$("$PY" -c 'import cupy; print("cupy", cupy.__version__, "(installed now)")')"
  else
    record "cupy" "NOT AVAILABLE: the cupy tests and benchmark are skipped"
    BACKEND=""
  fi
fi

TORCH_CUDA=0
if [ $DRY = 1 ]; then
  "$PY" -c "import torch" >/dev/null 2>&1 && TORCH_CUDA=1
elif "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  TORCH_CUDA=1
fi
record "torch" "$([ $TORCH_CUDA = 1 ] && "$PY" -c 'import torch; print("torch", torch.__version__, "on", "'"$TORCH_DEVICE"'")' || echo "not available on the GPU: nnx runs alone")"

# -- 2. the test suite on cupy ------------------------------------------------------------------
if [ $DRY = 1 ]; then
  note "tests (dry run: the fast-path and backend tests on numpy)"
  bash backends/run_tests.sh numpy -q -p no:cacheprovider tests/test_fastpath.py tests/test_backend.py ${TEST_ARGS:-} \
    > "$OUT/tests.log" 2>&1
  rc=$?
elif [ -n "$BACKEND" ]; then
  note "tests on cupy"
  bash backends/run_tests.sh cupy -q -p no:cacheprovider ${TEST_ARGS:-} > "$OUT/tests.log" 2>&1
  rc=$?
else
  rc=-1
fi
if [ "$rc" = -1 ]; then
  record "tests" "skipped (no cupy)"
else
  tail -n 3 "$OUT/tests.log"
  [ "$rc" = 0 ] || FAILED=1
  record "tests" "$([ "$rc" = 0 ] && echo passed || echo "FAILED (rc $rc)"): $(tail -n 1 "$OUT/tests.log" | tr -d '=' | sed 's/^ *//')"
fi

# -- 3. the benchmark ---------------------------------------------------------------------------
FRAMEWORKS=nnx
[ $TORCH_CUDA = 1 ] && FRAMEWORKS=nnx,torch
bench_rc=-1
if [ $DRY = 1 ]; then
  note "benchmark (dry run: tiny shape, nnx on numpy, PyTorch on CPU)"
  "$PY" benchmarks/bench_train.py --tiny --shapes tiny_ce --backend "$BACKEND" --torch-device "$TORCH_DEVICE" \
    --frameworks "$FRAMEWORKS" --check-sync --no-unset --no-memory --no-sweep --no-ablation --import-runs 1 \
    --out "$OUT" 2> "$OUT/bench.log"
  bench_rc=$?
elif [ -n "$BACKEND" ]; then
  note "benchmark: nnx on $BACKEND vs PyTorch on $TORCH_DEVICE, shapes $SHAPES"
  "$PY" benchmarks/bench_train.py --shapes "$SHAPES" --repeats "$REPEATS" --backend "$BACKEND" \
    --torch-device "$TORCH_DEVICE" --frameworks "$FRAMEWORKS" --threads "$(nproc)" --check-sync --no-unset \
    --no-memory --no-sweep --no-ablation --import-runs 3 --out "$OUT" 2> "$OUT/bench.log"
  bench_rc=$?
fi
if [ $bench_rc = -1 ]; then
  record "benchmark" "skipped (no cupy)"
elif [ $bench_rc != 0 ]; then
  tail -n 20 "$OUT/bench.log"
  record "benchmark" "FAILED (rc $bench_rc), see $OUT/bench.log"
  FAILED=1
else
  record "benchmark" "ok: $OUT/RESULTS.md"
fi

# -- 3b. data parallel: CuPy's NCCL and torch.distributed's NCCL, world size 1 (the collective still runs) ------
# (dry run: the same runs with nnx's single-process engine on numpy and torch.distributed's gloo on the CPU)
dp_run() {  # name, command...
  local name=$1; shift
  if "$@" > "$OUT/dp_$name.log" 2>&1; then
    record "dp $name" "$(tail -n 1 "$OUT/dp_$name.log")"
  else
    tail -n 20 "$OUT/dp_$name.log"
    record "dp $name" "FAILED, see $OUT/dp_$name.log"
    FAILED=1
  fi
}
TORCHRUN="$(dirname "$(command -v "$PY")")/torchrun"
[ -x "$TORCHRUN" ] || TORCHRUN=torchrun
if [ $DRY = 1 ]; then
  note "data parallel (dry run: single engine on numpy, torch.distributed gloo on CPU)"
  dp_run "cupy-nccl" "$PY" benchmarks/bench_distributed.py --engine single --backend numpy --epochs 1
  [ $TORCH_CUDA = 1 ] && dp_run "torch-nccl" "$TORCHRUN" --nproc_per_node=1 benchmarks/bench_distributed.py \
    --engine torch --backend torch --epochs 1
else
  if [ -n "$BACKEND" ]; then
    note "data parallel: CuPy NCCL, world size 1"
    dp_run "cupy-nccl" "$PY" benchmarks/bench_distributed.py --engine nccl --backend cupy --epochs 3
  else
    record "dp cupy-nccl" "skipped (no cupy)"
  fi
  if [ $TORCH_CUDA = 1 ]; then
    note "data parallel: torch.distributed NCCL, world size 1"
    dp_run "torch-nccl" "$TORCHRUN" --nproc_per_node=1 benchmarks/bench_distributed.py --engine torch \
      --backend torch:cuda --epochs 3
  else
    record "dp torch-nccl" "skipped (torch sees no GPU)"
  fi
fi

# -- 4. summary (last) ---------------------------------------------------------------------------
summary() {
  echo "================ nnx GPU check$([ $DRY = 1 ] && echo ' (DRY RUN)') ================"
  for row in "${SUMMARY[@]}"; do
    printf '%-10s %s\n' "${row%%|*}" "${row#*|}"
  done
  if [ -f "$OUT/results.json" ] && [ $bench_rc = 0 ]; then
    "$PY" - "$OUT/results.json" <<'EOF'
import json, sys

report = json.load(open(sys.argv[1]))
variant = next(iter(report["variants"].values()))
print(f"\n{'shape':<8} {'nnx epoch':>11} {'torch epoch':>12} {'nnx/torch':>10} {'nnx samples/s':>14}  syncs/epoch  sync in step")
for name, s in variant["shapes"].items():
    r = s["results"]
    nnx_s = r["nnx"]["median"]
    torch_s = r.get("torch", {}).get("median")
    ratio = f"{nnx_s / torch_s:.3f}" if torch_s else "-"
    torch_txt = f"{torch_s * 1e3:.1f} ms" if torch_s else "-"
    check = s.get("sync_check") or "-"
    print(f"{name:<8} {nnx_s * 1e3:>8.1f} ms {torch_txt:>12} {ratio:>10} {s['samples'] / nnx_s:>14,.0f}  "
          f"{s.get('nnx_syncs_per_epoch')!s:>11}  {check}")
g = variant.get("gemm")
if g:
    print(f"\nGEMMs of {g['shape']}: {g['gemm_rate_gflops']:.0f} GFLOP/s alone; nnx step {g['nnx_step_s'] * 1e3:.2f} ms "
          f"vs GEMMs {g['gemm_set_s'] * 1e3:.2f} ms -> step/GEMMs {g['ratio']:.3f}")
EOF
  fi
  if [ $DRY = 1 ]; then echo "(dry run: figures from the CPU at tiny size say nothing about a GPU)"; fi
}
echo
summary | tee "$OUT/summary.txt"
exit $FAILED
