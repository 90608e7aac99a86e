#!/usr/bin/env bash
# Benchmark a pull request against its base on one machine, in one job, and gate it.
#
#   bench-pr.sh measure NAME SOURCE_DIR   sweep the plugin as SOURCE_DIR has it; rows in $BENCH_OUT/results/cpu/NAME.csv
#   bench-pr.sh judge                     compare head with base, check the ratio gates on head, write the summary
#
# The workflows in this folder (github-actions.yml, gitlab-ci.yml) run `measure base`, `measure head`, `judge`.
# Settings, from the environment:
#   BENCH_PLUGIN   the module that registers your families or backends (required)
#   BENCH_SWEEP    the fixed sweep: run_bench.py's sweep flags (default: the quick preset's shapes of bra and your
#                  family on the CPU)
#   BENCH_GATES    ratio gates on head's rows, one per line (run_bench.py check --expect; none by default)
#   BENCH_OUT      where results, reports and the summary go (default: bench-out)
#   RUN_BENCH      how to call the suite's command line (default: run-bench, installed with the suite)
#   GITHUB_STEP_SUMMARY  where GitHub shows the markdown summary (set by GitHub; else $BENCH_OUT/summary.md)
# Exit status of judge: 0 passed (or undecided: said in the summary), 1 a regression or a broken gate, 2 unusable
# input.
set -uo pipefail

: "${BENCH_PLUGIN:?set BENCH_PLUGIN to the module that registers your attention}"
BENCH_OUT=${BENCH_OUT:-bench-out}
BENCH_SWEEP=${BENCH_SWEEP:-"--gpu cpu --preset quick --families bra ${BENCH_PLUGIN} --backends torch sdpa --topk 4 --kv-modes identity --phase fwd"}
read -r -a RUN <<< "${RUN_BENCH:-run-bench}"
RESULTS="$BENCH_OUT/results/cpu"

measure() {  # NAME SOURCE_DIR
    local name=$1 source=$2
    read -r -a sweep <<< "$BENCH_SWEEP"
    # SOURCE_DIR first on the path: its copy of the plugin module is the one imported
    PYTHONPATH="$source${PYTHONPATH:+:$PYTHONPATH}" "${RUN[@]}" --plugin "$BENCH_PLUGIN" "${sweep[@]}" \
        --run-id "$name" --results-dir "$BENCH_OUT/results" --reports-dir "$BENCH_OUT/reports" --quiet
}

judge() {
    local summary=${GITHUB_STEP_SUMMARY:-$BENCH_OUT/summary.md} compare_status gates_status=0
    mkdir -p "$BENCH_OUT"
    "${RUN[@]}" compare "$RESULTS/base.csv" "$RESULTS/head.csv" --format markdown > "$BENCH_OUT/compare.md"
    compare_status=$?
    local gates=()
    while IFS= read -r gate; do
        [[ -n "${gate// /}" ]] && gates+=(--expect "$gate")
    done <<< "${BENCH_GATES:-}"
    if ((${#gates[@]})); then
        "${RUN[@]}" check "$RESULTS/head.csv" "${gates[@]}" --format markdown > "$BENCH_OUT/gates.md"
        gates_status=$?
    fi
    "${RUN[@]}" export "$RESULTS/head.csv" --format github-action-benchmark --out "$BENCH_OUT/benchmark.json"
    {
        echo "## Benchmark: head against base"
        echo
        case $compare_status in
            0) echo "No regression." ;;
            1) echo "**Regression** (compare exit status 1)." ;;
            3) echo "Undecided: too many inconclusive cases on this runner (compare exit status 3)." ;;
            *) echo "**compare could not run** (exit status $compare_status)." ;;
        esac
        echo
        cat "$BENCH_OUT/compare.md"
        if ((${#gates[@]})); then
            echo
            echo "### Ratio gates on head"
            echo
            cat "$BENCH_OUT/gates.md"
        fi
    } >> "$summary"
    if ((compare_status == 2 || gates_status == 2)); then return 2; fi
    if ((compare_status == 1 || gates_status == 1)); then return 1; fi
    return 0
}

case ${1:-} in
    measure) [[ $# -eq 3 ]] || { echo "usage: $0 measure NAME SOURCE_DIR" >&2; exit 2; }; measure "$2" "$3" ;;
    judge) judge ;;
    *) echo "usage: $0 measure NAME SOURCE_DIR | judge" >&2; exit 2 ;;
esac
