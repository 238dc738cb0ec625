#!/usr/bin/env bash
# One prepared check of nnx on a machine with an NVIDIA GPU; prints a short table last.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: the same steps on NumPy / PyTorch CPU at tiny size
#
# 1. reads the driver's CUDA major version (nvidia-smi) and makes sure CuPy imports: when it does
#    not, installs the cupy extra for that major (pip install -e ".[cupy12]" or ".[cupy13]") if pip
#    can reach an index, and otherwise goes on with what is there;
# 2. runs the whole test suite on cupy, torch:cuda and jax:gpu (NNX_TEST_BACKEND=<spec>), each where it works;
# 3. runs benchmarks/bench_train.py for nnx on each of them against its library's native loop: CuPy and
#    torch:cuda against torch.nn + torch.optim on CUDA, jax:gpu against a hand-written jax.jit step, at
#    the large and wide (8192-unit) shapes, timing with device synchronisation and checking (CuPy) that
#    no training step synchronises the device (cupyx.allow_synchronize(False) around every step);
# 3b. runs data-parallel training over a world of one GPU with CuPy's NCCL and with torch.distributed's
#    NCCL (benchmarks/bench_distributed.py --engine ...), which still runs each engine's collective;
# 4. prints a summary table and writes it as one section, "## GPU check (benchmarks/gpu_check.sh)", to
#    $OUT/RESULTS.md and (not in a dry run) into benchmarks/RESULTS.md, replacing an earlier one.
#    Results land in $OUT (default benchmarks/gpu_results/).
#
# Environment: PYTHON (default python3), OUT, REPEATS (timed epochs per shape, default 3),
# SHAPES (default large,wide), TEST_ARGS (extra pytest arguments).
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
SHAPES=${SHAPES:-large,wide}
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

# -- 2. the test suite on cupy, torch:cuda and jax:gpu ---------------------------------------------
# NNX_TEST_BACKEND names a backend spec; tests/conftest.py runs the backend-parametrized tests on it alone.
spec_ok() { "$PY" -c "import sys, nnx.backends as b; sys.exit(0 if b.backend_status('$1')[0] else 3)" >/dev/null 2>&1; }
if [ $DRY = 1 ]; then
  SPECS="torch:cpu"; TESTS="tests/test_fastpath.py tests/test_backend.py"
  note "tests (dry run: the fast-path and backend tests on torch:cpu, a device spec as on the GPU)"
else
  SPECS="cupy torch:cuda jax:gpu"; TESTS=""
fi
TEST_SUMMARY="" TESTS_RUN=0 TESTS_FAILED=0
for spec in $SPECS; do
  log="$OUT/tests_${spec//:/-}.log"
  if ! spec_ok "$spec"; then
    TEST_SUMMARY+="${spec}: not available; "
    continue
  fi
  note "tests on $spec"
  # shellcheck disable=SC2086
  # 4 workers share the GPU; JAX would otherwise give each of them 75% of its memory up front
  NNX_TEST_BACKEND="$spec" XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -m pytest -q -n "${TEST_WORKERS:-4}" \
    -p no:cacheprovider $TESTS ${TEST_ARGS:-} > "$log" 2>&1
  rc=$?
  TESTS_RUN=1
  tail -n 3 "$log"
  [ "$rc" = 0 ] || TESTS_FAILED=1
  TEST_SUMMARY+="${spec}: $([ "$rc" = 0 ] || echo "FAILED rc $rc, ")$(tail -n 1 "$log" | tr -d '=' | sed 's/^ *//'); "
done
if [ $TESTS_RUN = 0 ]; then
  record "tests" "skipped (no GPU backend available): $TEST_SUMMARY"
else
  [ $TESTS_FAILED = 0 ] || FAILED=1
  record "tests" "$([ $TESTS_FAILED = 0 ] && echo passed || echo FAILED): $TEST_SUMMARY"
fi

# -- 3. the speed table: nnx on each GPU backend against its own library's native loop ---------------
# cupy and torch:cuda against torch.nn + torch.optim on CUDA; jax:gpu against a hand-written jax.jit step.
BENCH_DIRS=""
bench() {  # name, nnx backend, peer framework, extra args...
  local name=$1 backend=$2 peer=$3; shift 3
  local dir="$OUT/bench_$name"
  mkdir -p "$dir"
  note "benchmark: nnx on $backend vs $peer ($name)"
  if [ $DRY = 1 ]; then
    "$PY" benchmarks/bench_train.py --tiny --shapes tiny_ce --repeats 2 --backend "$backend" --frameworks "nnx,$peer" \
      --check-sync --no-unset --no-memory --no-sweep --no-ablation --no-gemm --import-runs 0 --out "$dir" "$@" \
      2> "$dir/bench.log"
  else
    "$PY" benchmarks/bench_train.py --shapes "$SHAPES" --repeats "$REPEATS" --backend "$backend" \
      --frameworks "nnx,$peer" --threads "$(nproc)" --check-sync --no-unset --no-memory --no-sweep --no-ablation \
      --import-runs 0 --out "$dir" "$@" 2> "$dir/bench.log"
  fi
  local rc=$?
  if [ $rc != 0 ]; then
    tail -n 20 "$dir/bench.log"
    record "benchmark" "$name FAILED (rc $rc), see $dir/bench.log"
    FAILED=1
  else
    record "benchmark" "ok: $name, $dir/RESULTS.md"
    BENCH_DIRS+=" $dir"
  fi
}
if [ $DRY = 1 ]; then
  bench numpy numpy torch --torch-device cpu
  bench torch torch torch --torch-device cpu
  if "$PY" -c "import jax" >/dev/null 2>&1; then bench jax jax jax --jax-device cpu
  else record "benchmark" "jax skipped (jax not installed)"; fi
else
  if [ -n "$BACKEND" ]; then bench cupy cupy "$([ $TORCH_CUDA = 1 ] && echo torch || echo nnx)" --torch-device cuda
  else record "benchmark" "cupy skipped (no cupy)"; fi
  if [ $TORCH_CUDA = 1 ]; then bench torch torch:cuda torch --torch-device cuda
  else record "benchmark" "torch skipped (torch sees no GPU)"; fi
  if spec_ok jax:gpu; then bench jax jax:gpu jax --jax-device gpu
  else record "benchmark" "jax skipped (jax sees no GPU)"; fi
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

# -- 4. summary (last) and the RESULTS.md section ---------------------------------------------------------
summary() {
  echo "================ nnx GPU check$([ $DRY = 1 ] && echo ' (DRY RUN)') ================"
  for row in "${SUMMARY[@]}"; do
    printf '%-10s %s\n' "${row%%|*}" "${row#*|}"
  done
  if [ -n "$BENCH_DIRS" ]; then
    # shellcheck disable=SC2086
    "$PY" - $BENCH_DIRS <<'EOF'
import json, sys
from pathlib import Path

print(f"\n{'nnx on':<11} {'vs':<6} {'shape':<8} {'nnx epoch':>11} {'peer epoch':>11} {'nnx/peer':>9} {'nnx samples/s':>14}"
      "  syncs/epoch  sync in step")
for d in sys.argv[1:]:
    report = json.loads((Path(d) / "results.json").read_text())
    variant = next(iter(report["variants"].values()))
    for name, s in variant["shapes"].items():
        r = s["results"]
        peer = next((k for k in r if k != "nnx"), None)
        nnx_s = r["nnx"]["median"]
        peer_s = r[peer]["median"] if peer else None
        ratio = f"{nnx_s / peer_s:.3f}" if peer_s else "-"
        peer_txt = f"{peer_s * 1e3:.1f} ms" if peer_s else "-"
        print(f"{report['backend']:<11} {peer or '-':<6} {name:<8} {nnx_s * 1e3:>8.1f} ms {peer_txt:>11} {ratio:>9} "
              f"{s['samples'] / nnx_s:>14,.0f}  {s.get('nnx_syncs_per_epoch')!s:>11}  {s.get('sync_check') or '-'}")
    g = variant.get("gemm")
    if g:
        print(f"  GEMMs of {g['shape']} on {report['backend']}: {g['gemm_rate_gflops']:.0f} GFLOP/s alone; nnx step "
              f"{g['nnx_step_s'] * 1e3:.2f} ms vs GEMMs {g['gemm_set_s'] * 1e3:.2f} ms -> step/GEMMs {g['ratio']:.3f}")
EOF
  fi
  if [ $DRY = 1 ]; then echo "(dry run: figures from the CPU at tiny size say nothing about a GPU)"; fi
}
echo
summary | tee "$OUT/summary.txt"
{
  echo "## GPU check (benchmarks/gpu_check.sh)"
  echo
  echo "Written by \`bash benchmarks/gpu_check.sh$([ $DRY = 1 ] && echo ' --dry-run')\` on $(date -u '+%Y-%m-%d %H:%M UTC');"
  echo "details in \`$OUT/\` (tests_*.log, bench_*/RESULTS.md, dp_*.log). Each nnx epoch is timed against"
  echo "its own library's native loop in the same process, alternating, with device synchronisation."
  echo
  echo '```'
  cat "$OUT/summary.txt"
  echo '```'
} > "$OUT/RESULTS.md"
if [ $DRY = 0 ]; then  # replace (or add) this section of benchmarks/RESULTS.md
  "$PY" - "$OUT/RESULTS.md" benchmarks/RESULTS.md <<'EOF'
import sys
from pathlib import Path

section, target = Path(sys.argv[1]).read_text().rstrip() + "\n", Path(sys.argv[2])
text = target.read_text() if target.exists() else ""
head = "## GPU check (benchmarks/gpu_check.sh)"
if head in text:
    before, rest = text.split(head, 1)
    nxt = rest.find("\n## ")
    text = before + section + (rest[nxt:] if nxt >= 0 else "")
else:
    text = text.rstrip() + "\n\n" + section
target.write_text(text)
EOF
fi
exit $FAILED
