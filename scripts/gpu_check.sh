#!/usr/bin/env bash
# The GPU check in one command, for a machine with a GPU and no network (and, with --gpu cpu, for
# trying its plumbing on a CPU): install carried wheels, run the CUDA tests, run the gpu-check sweep
# (BiFormer's stage shapes and 112²/224² with 8×8-token regions: every BRA backend, the reference
# included, and dense full attention through SDPA's flash and memory-efficient kernels; at the stage
# shapes also the compiled reference BRA, and neighborhood attention through NATTEN's na2d beside ours;
# bf16, batch 64, fwd and fwd+bwd on a GPU profile), and leave everything under one folder:
#
#   OUT/results/<gpu>/<run>.csv, .json   rows and metadata     -> commit under results/<gpu>/
#   OUT/reports/<gpu>/<run>/             the run's tables, plots and index (once the rows are under
#                                        results/<gpu>/, `python run_bench.py report results/<gpu>`
#                                        writes reports/<gpu>/ from all of them)
#   OUT/pytest.log, OUT/gpu_check.log    the CUDA tests' log and this script's whole log
#   OUT/gpu_check.tar.gz                 all of the above in one file, for transports that take few files
#
# Usage: scripts/gpu_check.sh OUT [--wheels DIR] [--gpu PROFILE] [--test-budget S] [--sweep-budget S]
#                             [-- more run_bench.py flags]
#   --wheels DIR       install the wheels in DIR (no index, no dependencies) before anything runs;
#                      scripts/fetch_gpu_wheels.sh DIR fetches them on a machine with network
#   --gpu PROFILE      run_bench.py's profile (default: the visible GPU's; give cpu to try it without one)
#   --test-budget S    stop the CUDA tests after S seconds (default 120)
#   --sweep-budget S   start no sweep case after S seconds (default 180); --resume completes the rest
# The Python is $PYTHON, else python3 on the PATH.
# Exit status: 0 when the tests and the sweep both succeeded, 1 otherwise (the folder is written either way).
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }

OUT="" WHEELS="" GPU="" TEST_BUDGET=120 SWEEP_BUDGET=180
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage 0 ;;
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
    --gpu) GPU="${2:?--gpu needs a profile}"; shift 2 ;;
    --test-budget) TEST_BUDGET="${2:?--test-budget needs seconds}"; shift 2 ;;
    --sweep-budget) SWEEP_BUDGET="${2:?--sweep-budget needs seconds}"; shift 2 ;;
    --) shift; break ;;
    -*) echo "gpu_check.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$OUT" ] || { echo "gpu_check.sh: one output folder, got '$OUT' and '$1'" >&2; usage; }
       OUT="$1"; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "gpu_check.sh: give the output folder" >&2; usage; }
for budget in "$TEST_BUDGET" "$SWEEP_BUDGET"; do
  [[ "$budget" =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: budgets are whole seconds, got '$budget'" >&2; exit 2; }
done
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then echo "gpu_check.sh: --wheels $WHEELS is not a folder" >&2; exit 2; fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { echo "gpu_check.sh: no Python at '$PYTHON' (set PYTHON)" >&2; exit 2; }
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # real kernels, never Triton's interpreter
step() { echo; echo "== $(date -u +%H:%M:%S) $*"; }

step "environment"
"$PYTHON" - <<'PY'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible")
for name in ("triton", "fvcore", "xformers", "natten", "pandas", "seaborn"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
PY
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv

if [ -n "$WHEELS" ]; then
  step "wheels from $WHEELS"
  shopt -s nullglob; wheels=("$WHEELS"/*.whl); shopt -u nullglob
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "no .whl files in $WHEELS: nothing installed"
  else
    SITE="$(mktemp -d)/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
      && export PYTHONPATH="$SITE:$PYTHONPATH" && echo "installed ${#wheels[@]} wheels into $SITE" \
      || echo "WARNING: installing the wheels failed; going on with what is here"
  fi
fi
"$PYTHON" -c "import fvcore.nn" 2>/dev/null || echo "WARNING: fvcore is missing: GMACs come from each family's analytic macs() (rows say so)"
"$PYTHON" -c "import xformers.ops" 2>/dev/null || echo "WARNING: xformers is missing: its rows will be 'unsupported'"

status=0
CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
step "CUDA tests (pytest -m cuda, at most ${TEST_BUDGET}s)"
if [ "$CUDA" = 1 ]; then
  timeout --signal=INT "$TEST_BUDGET" "$PYTHON" -m pytest -m cuda -q -rs -p no:cacheprovider \
    --junitxml "$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1
  tests=$?
  tail -n 40 "$OUT/pytest.log"
  [ $tests -eq 124 ] && echo "the CUDA tests ran past ${TEST_BUDGET}s and were stopped"
  [ $tests -eq 0 ] || status=1
else
  echo "no CUDA device is visible: the CUDA tests are skipped" | tee "$OUT/pytest.log"
fi

step "gpu-check sweep (new cases start during the first ${SWEEP_BUDGET}s)"
"$PYTHON" run_bench.py ${GPU:+--gpu "$GPU"} --preset gpu-check --results-dir "$OUT/results" --reports-dir "$OUT/reports" \
  --time-budget "$SWEEP_BUDGET" --quiet "$@" || status=1

step "bundle"
(cd "$OUT" && tar czf gpu_check.tar.gz \
  $(ls -d results reports pytest.log pytest.xml gpu_check.log 2>/dev/null)) && ls -l "$OUT"
echo "gpu_check.sh: $([ $status -eq 0 ] && echo "done" || echo "done, with failures (see above)")"
exit $status
