#!/usr/bin/env bash
# One prepared check of nnx on a machine with one NVIDIA GPU, sized to finish in one 10-minute run
# (written for an H200 with 16 cores). The summary grows after every step and is completed on exit,
# also when the run is killed, so a timeout loses nothing that finished.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: the same steps on the CPU at tiny size; installs only printed
#
# Time budget, in seconds. New work starts only while the run is under TOTAL (default 540); a command
# gets the smaller of its own timeout and what is left, and one that would get under 10 s is skipped.
# The steps' maxima add up past TOTAL: each later step gets what the earlier ones left (installs and their
# checks included), and the tests what is left at the end.
#
#   step                                                                      timeout each   step at most
#   0  driver: nvidia-smi, the CUDA major it runs                                     10            10
#   1  installs, each only when missing and pip reaches an index (or WHEELHOUSE=dir):
#        nnx's requirement array-api-compat, and array-api-strict for step 5's tests   30
#        cupy:  pip install ".[cupy12]"  (cupy-cuda12x[ctk] + nvidia-nccl-cu12)       120
#        torch: pip install torch --index-url https://download.pytorch.org/whl/cu128  150
#        jax:   pip install "jax[cuda12]"  (jax[cuda13], cupy13, cu130 for a CUDA 13 driver)  120   450
#   2  probe per backend (cupy, torch:cuda, jax:gpu): an elementwise kernel, a matmul
#      and a dropout draw, each checked against NumPy; CuPy also loads NCCL          30            90
#   3  benchmarks, small -> medium -> large -> wide, nnx against each library's
#      native loop (bench_train.py), one process per shape and backend                60           200
#      (--dry-run: one process for every backend and both tiny shapes)
#   3b compiled epochs (bench_epoch.py): nnx on jax:gpu, each epoch one program, against nnx per step
#      and a torch CUDA eager loop, at small, medium and large                              90            90
#   3c one profiled epoch of nnx and of native torch at large, per torch/CuPy spec
#      (benchmarks/profile_step.py: wall time, GPU kernel time, the top kernels)         45            90
#   4  data parallel on one GPU: CuPy NCCL world of 1; torchrun 1 rank (cpu:gloo,cuda:nccl,
#      NCCL all-reduce on the GPU); torchrun 2 ranks sharing the GPU (gloo: one GPU cannot
#      hold two NCCL ranks, so their CUDA tensors are staged through the host); the
#      sharded update (--shard) on the NCCL world of 1 and on the 2 torchrun ranks   60           300
#   5  the backend-parametrized tests only, per GPU spec (a file that does not collect is
#      named, with the last import it finished, and the others run)              what is left
#
# Results land in $OUT (default benchmarks/gpu_results/): summary.txt, RESULTS.md, tests_*.log,
# bench_*/, dp_*.log. Not in a dry run, RESULTS.md's section replaces "## GPU check" in benchmarks/RESULTS.md.
# A machine with no package index but a GPU stack installed (CUDA builds of CuPy, torch and JAX) still lacks
# nnx's own requirement; fetch the pure-Python wheels where pip works and pass their folder as WHEELHOUSE:
#   python -m pip download --no-deps -d wheels "array-api-compat>=1.11" "array-api-strict>=2.3"
# Environment: PYTHON (default python3), OUT, TOTAL, WHEELHOUSE, REPEATS (timed epochs, default 3),
# TEST_WORKERS (default 8), TEST_FILES and TEST_ARGS (narrow step 5), STEPS (which of the steps after the probes
# run, default "benchmark epochs profile parallel tests"; e.g. STEPS=tests gives step 5 the whole budget).
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
TOTAL=${TOTAL:-540}
REPEATS=${REPEATS:-3}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
START=$SECONDS
FAILED=0
STEP=""
echo "================ nnx GPU check$([ $DRY = 1 ] && echo ' (DRY RUN)') $(date -u '+%Y-%m-%d %H:%M UTC') ================" \
  > "$SUMMARY"

note() { echo "== $*"; }
elapsed() { echo $((SECONDS - START)); }
record() { printf '%-10s %s  [%s s]\n' "$1" "$2" "$(elapsed)" | tee -a "$SUMMARY"; }  # a row, on disk at once
left() { echo $((TOTAL - (SECONDS - START))); }
budget() {  # the seconds a command may take: its own timeout, or what is left of the run
  local want=$1 rest
  rest=$(left)
  [ "$rest" -lt "$want" ] && want=$rest
  echo "$want"
}
run_for() {  # seconds, command...: the command under a timeout; 124 when it ran out of time
  local secs=$1; shift
  if [ "$secs" -lt 10 ]; then return 125; fi
  timeout -k 5 "$secs" "$@"
}
STEPS=${STEPS:-benchmark epochs profile parallel tests}
for word in $STEPS; do
  case $word in
    benchmark|epochs|profile|parallel|tests) ;;
    *) echo "STEPS: no step '$word'; name steps among: benchmark epochs profile parallel tests" >&2; exit 2 ;;
  esac
done
wants() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }  # step name -> whether STEPS names it
not_asked() { record "$1" "not run: STEPS=\"$STEPS\""; }
outcome() {  # rc -> words
  case $1 in
    0) echo "ok" ;;
    124|137) echo "TIMED OUT" ;;
    125) echo "SKIPPED (out of time)" ;;
    *) echo "FAILED (rc $1)" ;;
  esac
}

last_words() {  # log: its last non-empty line, cut short
  local line
  line=$(grep -v '^\s*$' "$1" | tail -n 1 | cut -c1-200)
  echo "${line:-no output}"
}

finish() {  # on every exit: close the summary, write the RESULTS.md section
  local rc=$?
  trap - EXIT TERM INT
  if [ -n "$STEP" ]; then
    record "$STEP" "INTERRUPTED (exit $rc) after $(elapsed) s; the rows above are what finished"
    FAILED=1
  fi
  record "end" "$(elapsed) s of the ${TOTAL} s budget; $([ $FAILED = 0 ] && echo 'all passed' || echo 'something FAILED')"
  [ $DRY = 1 ] && echo "(dry run: figures from the CPU at tiny size say nothing about a GPU)" >> "$SUMMARY"
  {
    echo "## GPU check (benchmarks/gpu_check.sh)"
    echo
    echo "Written by \`bash benchmarks/gpu_check.sh$([ $DRY = 1 ] && echo ' --dry-run')\`; details in \`$OUT/\`"
    echo "(tests_*.log, bench_*/RESULTS.md, dp_*.log). Each nnx epoch is timed against its own library's native"
    echo "loop in the same process, alternating, with device synchronisation."
    echo
    echo '```'
    cat "$SUMMARY"
    echo '```'
  } > "$OUT/RESULTS.md"
  if [ $DRY = 0 ] && [ -f benchmarks/RESULTS.md ]; then
    "$PY" - "$OUT/RESULTS.md" benchmarks/RESULTS.md <<'EOF' || true
import sys
from pathlib import Path

section, target = Path(sys.argv[1]).read_text().rstrip() + "\n", Path(sys.argv[2])
text = target.read_text()
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
  echo
  cat "$SUMMARY"
  exit $([ $FAILED = 0 ] && echo "$rc" || echo 1)
}
trap finish EXIT
trap 'exit 143' TERM INT

# -- 0. driver -------------------------------------------------------------------------------------------------
STEP="driver"
if [ $DRY = 1 ]; then
  note "dry run: no GPU used; nnx runs on numpy, torch and jax on the CPU, at tiny size"
  CUDA_MAJOR=12
  record "driver" "dry run (assumed CUDA 12)"
  SPECS="numpy torch jax"   # stand-ins for cupy, torch:cuda, jax:gpu
  # one thread a process, as bench_train.py's --threads 1: at tiny size a second one only spins, and on a CPU
  # (the test suite runs this beside its own workers) it spins on a core that other work needs
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    record "driver" "nvidia-smi not found: this script needs an NVIDIA GPU (use --dry-run elsewhere)"
    STEP=""
    exit 3
  fi
  CUDA_MAJOR=$(timeout 10 nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n1)
  record "driver" "$(timeout 10 nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n1), CUDA ${CUDA_MAJOR:-?}"
  SPECS="cupy torch:cuda jax:gpu"
fi
case "${CUDA_MAJOR:-12}" in
  12) CUPY_EXTRA=cupy12 TORCH_INDEX=cu128 JAX_EXTRA=cuda12 ;;
  *) CUPY_EXTRA=cupy13 TORCH_INDEX=cu130 JAX_EXTRA=cuda13 ;;  # CUDA 13 and newer drivers run CUDA 13 wheels
esac
STEP=""

# -- 1. installs -----------------------------------------------------------------------------------------------
STEP="install"
works() {  # spec -> exit 0 when nnx runs a sum on it (within a minute, or what is left of the run)
  run_for "$(budget 60)" "$PY" -c "import sys, nnx.backends as b; sys.exit(0 if b.backend_status('$1')[0] else 3)" \
    >/dev/null 2>&1
}
imports() {  # module -> exit 0 when it imports (within a minute, or what is left of the run)
  run_for "$(budget 60)" "$PY" -c "import $1" >/dev/null 2>&1
}
PIP=("$PY" -m pip install -q)
[ -n "${WHEELHOUSE:-}" ] && PIP+=(--no-index --find-links "$WHEELHOUSE")
install() {  # name, check (works:SPEC or imports:MODULE), timeout, pip arguments...
  local name=$1 secs=$3 probe=${2%%:*} subject=${2#*:}
  shift 3
  if [ $DRY = 1 ]; then
    record "install" "$name: would run, unless $subject $probe: pip install $*"
    return
  fi
  if [ "$(left)" -lt 10 ]; then record "install" "$name: SKIPPED (out of time)"; return; fi
  if "$probe" "$subject"; then record "install" "$name: already works"; return; fi
  if [ -z "${WHEELHOUSE:-}" ] && ! run_for "$(budget 15)" "$PY" -m pip download -q --no-deps -d "$OUT/pip-probe" pip \
      >/dev/null 2>&1; then
    record "install" "$name: not installed, and pip reaches no index (set WHEELHOUSE=dir of wheels)"
    return
  fi
  run_for "$(budget "$secs")" "${PIP[@]}" "$@" > "$OUT/install_$name.log" 2>&1
  local rc=$?
  record "install" "$name: pip $(outcome $rc)$("$probe" "$subject" && echo ', works now' || echo ', still not usable')"
}
# first what `import nnx` needs (every later check imports it), then the test suite's reference namespace
install array-api-compat imports:array_api_compat 30 "array-api-compat>=1.11"
install array-api-strict imports:array_api_strict 30 "array-api-strict>=2.3"
install cupy "works:${SPECS%% *}" 120 -e ".[${CUPY_EXTRA}]"
install torch works:torch:cuda 150 torch --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}"
install jax works:jax:gpu 120 "jax[${JAX_EXTRA}]"
STEP=""

# -- 2. probes: real work on each backend ----------------------------------------------------------------------
STEP="probe"
READY=""
for spec in $SPECS; do
  run_for "$(budget 30)" "$PY" - "$spec" > "$OUT/probe_${spec//:/-}.log" 2>&1 <<'EOF'
import sys

import numpy as np

import nnx

spec = sys.argv[1]
be = nnx.get_backend(spec)  # raises, naming the cause and the install line, where it cannot run
xp = be.xp
A = np.random.default_rng(0).normal(size=(1024, 1024)).astype(np.float32)
x = be.asarray(A)
kernel = be.to_host(xp.exp(xp.tanh(x)) * 2.0 + 1.0)   # an elementwise kernel (CuPy compiles it with NVRTC)
product = be.jit(xp.matmul) if be.can_compile else xp.matmul  # JAX: as nnx's programs multiply (float32)
matmul = be.to_host(product(x, x))                    # cuBLAS / XLA's GEMM
mask = be.to_host(be.rng(0).uniform((256, 256), "float32"))  # the dropout stream (cuRAND on CuPy)
be.synchronize()
assert np.allclose(kernel, np.exp(np.tanh(A)) * 2.0 + 1.0, rtol=1e-4), "elementwise kernel is wrong"
assert np.allclose(matmul, A @ A, rtol=1e-3, atol=1e-2), "matmul is wrong"
assert 0.45 < float(mask.mean()) < 0.55 and mask.min() >= 0 and mask.max() < 1, "dropout draws are wrong"
extra = ""
if spec.startswith("cupy"):
    from cupy.cuda import nccl

    assert nccl.available, "NCCL is not loadable (pip install nvidia-nccl-cu12, in the cupy12 extra)"
    extra = ", NCCL loads"
print(f"{be.spec} on {be.device}: kernel, 1024x1024 matmul and dropout draw match NumPy{extra}")
EOF
  rc=$?
  if [ $rc = 0 ]; then
    READY+=" $spec"
    record "probe" "$spec: $(tail -n 1 "$OUT/probe_${spec//:/-}.log")"
  else
    record "probe" "$spec: $(outcome $rc): $(grep -v '^\s*$' "$OUT/probe_${spec//:/-}.log" | tail -n 1)"
    FAILED=1
  fi
done
STEP=""

# -- 3. benchmarks, small to wide -------------------------------------------------------------------------------
STEP="benchmark"
bench_table() {  # dir [shape] -> the rows of its results.json (of that shape only, if given), for the summary
  "$PY" - "$1" "${2:-}" <<'EOF'
import json, sys
from pathlib import Path

report = json.loads((Path(sys.argv[1]) / "results.json").read_text())
for variant in report["variants"].values():
    for name, s in variant["shapes"].items():
        if sys.argv[2] and name != sys.argv[2]:
            continue
        r = s["results"]
        peer = next((k for k in r if k != "nnx"), None)
        nnx_s, peer_s = r["nnx"]["median"], (r[peer]["median"] if peer else None)
        ratio = f"{nnx_s / peer_s:.3f}" if peer_s else "-"
        print(f"{report['backend']} vs {peer or '-'}, {name}: nnx {nnx_s * 1e3:.1f} ms/epoch, "
              f"peer {peer_s * 1e3 if peer_s else float('nan'):.1f} ms, nnx/peer {ratio}, "
              f"{s['samples'] / nnx_s:,.0f} samples/s, syncs/epoch {s.get('nnx_syncs_per_epoch')}, "
              f"{s.get('sync_check') or 'sync not checked'}")
EOF
}
if [ $DRY = 1 ]; then SHAPES="tiny_bce tiny_ce"; else SHAPES="small medium large wide"; fi
BENCH_SPECS=$READY
[ $DRY = 1 ] && BENCH_SPECS=$(echo "$READY" | tr ' ' '\n' | grep -v '^jax' | tr '\n' ' ')  # JAX compiles for long on a CPU
wants benchmark || { BENCH_SPECS=""; not_asked benchmark; }
BENCH_END=$(( $(elapsed) + 200 ))
wants benchmark && [ -z "${BENCH_SPECS// /}" ] && record "benchmark" "none: no backend passed its probe"
bench_args() {  # spec, shapes (comma list): bench_train.py's arguments for them into ARGS, its folder into DIR
  local spec=$1 shapes=$2 peer extra size
  case $spec in
    cupy|numpy) peer=torch; extra=(--torch-device "$([ $DRY = 1 ] && echo cpu || echo cuda)") ;;
    torch*) peer=torch; extra=(--torch-device "$([ $DRY = 1 ] && echo cpu || echo cuda)") ;;
    jax*) peer=jax; extra=(--jax-device "$([ $DRY = 1 ] && echo cpu || echo gpu)") ;;
  esac
  DIR="$OUT/bench_${spec//:/-}_${shapes//,/-}"
  mkdir -p "$DIR"
  if [ $DRY = 1 ]; then size=(--tiny --repeats 1 --no-gemm); else size=(--repeats "$REPEATS" --threads "$(nproc)"); fi
  ARGS=("${size[@]}" --shapes "$shapes" --backend "$spec" --frameworks "nnx,$peer" "${extra[@]}" --check-sync
        --no-unset --no-memory --no-sweep --no-ablation --import-runs 0 --out "$DIR")
}
bench_secs() {  # the seconds a benchmark process may take: its own timeout, within the step's
  local secs
  secs=$(budget 60)
  [ $((BENCH_END - $(elapsed))) -lt "$secs" ] && secs=$((BENCH_END - $(elapsed)))
  echo "$secs"
}
bench_run() {  # spec, shapes (comma list): one bench_train.py process into $OUT/bench_<spec>_<shapes>; rc 0 when it wrote
  local spec=$1 shapes=$2 rc
  bench_args "$spec" "$shapes"
  run_for "$(bench_secs)" "$PY" benchmarks/bench_train.py "${ARGS[@]}" > "$DIR/bench.log" 2>&1
  rc=$?
  if [ $rc != 0 ]; then
    record "benchmark" "$spec $shapes: $(outcome $rc), see $DIR/bench.log"
    [ $rc = 125 ] || FAILED=1
  fi
  return $rc
}
if [ $DRY = 1 ]; then
  # one process for every backend and both tiny shapes (a process is seconds of imports, the epochs milliseconds):
  # bench_train.py's main once per backend, each into its own folder; the rows still go shape by shape, as in the
  # real run
  groups=() specs=""
  for spec in $BENCH_SPECS; do
    bench_args "$spec" "${SHAPES// /,}"
    rm -f "$DIR/results.json"
    groups+=("${ARGS[@]}" ::)
    specs+="${specs:+ }$spec"
  done
  log="$OUT/bench_dry-run.log"
  if [ ${#groups[@]} -gt 0 ]; then
    run_for "$(bench_secs)" "$PY" - "${groups[@]}" > "$log" 2>&1 <<'EOF'
import sys

sys.path.insert(0, "benchmarks")
import bench_train  # noqa: E402

args, rc = sys.argv[1:], 0
while args:
    cut = args.index("::")
    rc = bench_train.main(args[:cut]) or rc
    args = args[cut + 1:]
sys.exit(rc)
EOF
    rc=$?
    if [ $rc != 0 ]; then
      record "benchmark" "$specs ${SHAPES// /,}: $(outcome $rc), see $log"
      [ $rc = 125 ] || FAILED=1
    fi
  fi
  for shape in $SHAPES; do
    for spec in $BENCH_SPECS; do
      dir="$OUT/bench_${spec//:/-}_${SHAPES// /-}"
      [ -f "$dir/results.json" ] || continue
      while IFS= read -r row; do record "benchmark" "ok: $row"; done < <(bench_table "$dir" "$shape")
    done
  done
else
  for shape in $SHAPES; do
    for spec in $BENCH_SPECS; do
      if bench_run "$spec" "$shape"; then
        while IFS= read -r row; do record "benchmark" "ok: $row"; done < <(bench_table "$OUT/bench_${spec//:/-}_$shape")
      fi
    done
  done
fi
STEP=""

# -- 3b. compiled epochs: jax:gpu one program an epoch, against per step and torch CUDA eager --------------------
STEP="epochs"
JAX_SPEC=$(echo "$READY" | tr ' ' '\n' | grep '^jax' | head -n1)
TORCH_READY=$(echo "$READY" | tr ' ' '\n' | grep -c '^torch')
if ! wants epochs; then
  not_asked epochs
elif [ -z "$JAX_SPEC" ]; then
  record "epochs" "skipped: no JAX backend passed its probe"
else
  dir="$OUT/bench_epochs"
  mkdir -p "$dir"
  contenders="nnx_epoch,nnx_step"
  [ "$TORCH_READY" -gt 0 ] && contenders+=",torch"
  if [ $DRY = 1 ]; then
    epoch_args=(--device cpu --torch-device cpu --shapes tiny --repeats 1 --epochs 1)
  else
    epoch_args=(--device gpu --torch-device cuda --shapes small,medium,large --repeats "$REPEATS")
  fi
  run_for "$(budget 90)" "$PY" benchmarks/bench_epoch.py "${epoch_args[@]}" --contenders "$contenders" \
    --out "$dir" > "$dir/bench.log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    while IFS= read -r row; do record "epochs" "ok: $row"; done < <("$PY" - "$dir" <<'EOF'
import json, sys
from pathlib import Path

report = json.loads((Path(sys.argv[1]) / "results.json").read_text())
for s in report["shapes"]:
    c = s["contenders"]
    epoch = c["nnx_epoch"]["median_ms"]
    parts = [f"{name} {r['median_ms']:.2f} ms ({r['nnx_epoch_over_this']:.2f}x)" for name, r in c.items()
             if name != "nnx_epoch"]
    print(f"jax:{report['device']} {s['shape']} ({'-'.join(map(str, s['sizes']))}, batch {s['batch']}): "
          f"nnx epoch program {epoch:.2f} ms/epoch ({s['rows'] / (epoch / 1e3):,.0f} samples/s); "
          + ", ".join(parts) + " [per-round ratio nnx_epoch/other]")
EOF
)
  else
    record "epochs" "$(outcome $rc), see $dir/bench.log"
    [ $rc = 125 ] || FAILED=1
  fi
fi
STEP=""

# -- 3c. where the large shape's epoch goes: one profiled epoch of nnx and of native torch per GPU spec --------
STEP="profile"
PROFILE_SPECS=$(echo "$READY" | tr ' ' '\n' | grep -E '^(torch|cupy)' | tr '\n' ' ')
wants profile || { PROFILE_SPECS=""; not_asked profile; }
for spec in $PROFILE_SPECS; do
  log="$OUT/profile_${spec//:/-}.log"
  if [ $DRY = 1 ]; then size=(--shape tiny_ce); else size=(--shape large); fi
  run_for "$(budget 45)" "$PY" benchmarks/profile_step.py --backend "$spec" "${size[@]}" > "$log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    while IFS= read -r row; do record "profile" "$spec: $row"; done < <(grep -E '^(==|nnx|torch)' "$log" | grep -v '^== ')
  else
    record "profile" "$spec: $(outcome $rc): $(last_words "$log")"
    [ $rc = 125 ] || FAILED=1
  fi
done
STEP=""

# -- 4. data parallel on one GPU --------------------------------------------------------------------------------
STEP="parallel"
TORCHRUN="$(dirname "$(command -v "$PY")")/torchrun"
[ -x "$TORCHRUN" ] || TORCHRUN=torchrun
dp_run() {  # name, command...
  local name=$1; shift
  run_for "$(budget 60)" "$@" > "$OUT/dp_$name.log" 2>&1
  local rc=$?
  if [ $rc = 0 ]; then
    record "parallel" "$name: $(grep '^{' "$OUT/dp_$name.log" | tail -n 1)"
  else
    record "parallel" "$name: $(outcome $rc), see $OUT/dp_$name.log"
    [ $rc = 125 ] || FAILED=1
  fi
}
if ! wants parallel; then
  not_asked parallel
elif [ $DRY = 1 ]; then
  dp_run "single-numpy" "$PY" benchmarks/bench_distributed.py --engine single --backend numpy --epochs 1 --steps 4
  dp_run "torchrun-1" "$TORCHRUN" --standalone --nproc_per_node=1 benchmarks/bench_distributed.py --engine torch \
    --backend torch --epochs 1 --steps 4
  dp_run "torchrun-2-gloo" "$TORCHRUN" --standalone --nproc_per_node=2 benchmarks/bench_distributed.py --engine torch \
    --backend torch --epochs 1 --steps 4
  dp_run "torchrun-2-gloo-sharded" "$TORCHRUN" --standalone --nproc_per_node=2 benchmarks/bench_distributed.py \
    --engine torch --backend torch --epochs 1 --steps 4 --shard
else
  case " $READY " in
    *" cupy "*)
      dp_run "cupy-nccl-1" "$PY" benchmarks/bench_distributed.py --engine nccl --backend cupy --epochs 2
      # the sharded update (ZeRO-1): NCCL's reduce-scatter and all-gather of a padded flat buffer
      dp_run "cupy-nccl-1-sharded" "$PY" benchmarks/bench_distributed.py --engine nccl --backend cupy --epochs 1 \
        --shard ;;
    *) record "parallel" "cupy-nccl-1: skipped (cupy did not pass its probe)" ;;
  esac
  case " $READY " in
    *" torch:cuda "*)
      dp_run "torchrun-1-nccl" "$TORCHRUN" --standalone --nproc_per_node=1 benchmarks/bench_distributed.py --engine torch \
        --backend torch:cuda --epochs 2
      dp_run "torchrun-2-gloo" "$TORCHRUN" --standalone --nproc_per_node=2 benchmarks/bench_distributed.py --engine torch \
        --backend torch:cuda --epochs 1
      dp_run "torchrun-2-gloo-sharded" "$TORCHRUN" --standalone --nproc_per_node=2 benchmarks/bench_distributed.py \
        --engine torch --backend torch:cuda --epochs 1 --shard ;;
    *) record "parallel" "torchrun: skipped (torch:cuda did not pass its probe)" ;;
  esac
fi
STEP=""

# -- 5. the backend-parametrized tests, per GPU spec -----------------------------------------------------------
STEP="tests"
TEST_SPECS=$READY
[ $DRY = 1 ] && TEST_SPECS=$(echo "$READY" | tr ' ' '\n' | grep '^torch' | tr '\n' ' ')  # one spec shows the step
wants tests || { TEST_SPECS=""; not_asked tests; }
wants tests && [ -z "${TEST_SPECS// /}" ] && record "tests" "none: no backend passed its probe"
collect() {  # secs spec log files...: collect-only of the tests parametrized with spec, into log; pytest's status
  local secs=$1 spec=$2 log=$3; shift 3
  NNX_TEST_BACKEND="$spec" NNX_TEST_ONLY_BACKEND_CASES=1 run_for "$secs" "$PY" -m pytest --collect-only -q \
    -p no:cacheprovider -n 0 "$@" ${TEST_ARGS:-} > "$log" 2>&1
}
export -f collect run_for
export PY TEST_ARGS
for spec in $TEST_SPECS; do
  tag=${spec//:/-}
  log="$OUT/tests_$tag.log"
  targets="$OUT/tests_$tag.targets"  # what pytest is given, one a line: folders, files or test ids
  printf '%s\n' ${TEST_FILES:-tests} > "$targets"
  # tests/conftest.py keeps only the tests parametrized with this backend case (NNX_TEST_ONLY_BACKEND_CASES):
  # the workers select them from whole files, as one process does, rather than each looking up given ids
  collect "$(budget 60)" "$spec" "$OUT/collect_$tag.log" ${TEST_FILES:-}
  rc=$?
  [ $rc = 5 ] && rc=0  # pytest's "no tests collected"
  count=$(grep -c '::' "$OUT/collect_$tag.log")
  if [ $rc != 0 ]; then
    # a file that cannot be collected here must not cost the others their run: collect file by file (in
    # parallel), keep what collects, and name each file that does not with the end of its output; its imports
    # (python -X importtime) tell where a process that exits without a word stopped
    record "tests" "$spec: collection $(outcome $rc): $(last_words "$OUT/collect_$tag.log"); file by file"
    mkdir -p "$OUT/collect_$tag"
    # what was named, one by one: a folder as its test files, a file or a test id as it is
    for entry in ${TEST_FILES:-tests}; do
      if [ -d "$entry" ]; then find "$entry" -name 'test_*.py'; else echo "$entry"; fi
    done | sort -u > "$targets"
    secs=$(budget 60)
    # shellcheck disable=SC2016  # expanded by the inner shell
    run_for "$(budget 120)" xargs -a "$targets" -P "${TEST_WORKERS:-8}" -I{} bash -c \
      'collect "$0" "$1" "$2/$(echo "$3" | tr "/:[]" "____").log" "$3"; rc=$?; [ $rc = 0 ] || [ $rc = 5 ] || echo "$3 $rc" >> "$2/failed"' \
      "$secs" "$spec" "$OUT/collect_$tag" {}
    count=$(cat "$OUT/collect_$tag"/*.log | grep -c '::')
    while read -r file frc; do
      flog="$OUT/collect_$tag/$(echo "$file" | tr "/:[]" "____").log"
      NNX_TEST_BACKEND="$spec" run_for "$(budget 30)" "$PY" -X importtime -m pytest --collect-only -q \
        -p no:cacheprovider -n 0 "$file" > "$flog.imports" 2>&1 < /dev/null
      record "tests" "$spec: $file: $(outcome "$frc"): $(last_words "$flog"); last import finished: $(grep 'import time:' "$flog.imports" | tail -n 1 | sed 's/.*|//')"
      FAILED=1
      grep -vxF "$file" "$targets" > "$targets.left"; mv "$targets.left" "$targets"
    done < <(sort "$OUT/collect_$tag/failed" 2>/dev/null)
  fi
  if [ "$count" = 0 ]; then
    record "tests" "$spec: no backend-parametrized test collected"
    FAILED=1
    continue
  fi
  secs=$(budget 600)
  note "tests on $spec: $count, $secs s"
  # workers share the GPU; JAX would otherwise give each of them 75% of its memory up front
  NNX_TEST_BACKEND="$spec" NNX_TEST_ONLY_BACKEND_CASES=1 XLA_PYTHON_CLIENT_PREALLOCATE=false run_for "$secs" \
    xargs -a "$targets" -d '\n' "$PY" -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-8}" ${TEST_ARGS:-} \
    > "$log" 2>&1
  rc=$?
  last=$(grep -iE '(passed|failed|error|no tests ran)' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//')
  record "tests" "$spec: $count collected; $(outcome $rc)${last:+: $last}"
  [ $rc = 0 ] || FAILED=1
done
STEP=""
