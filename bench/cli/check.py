"""``run_bench.py check RESULTS --expect GATE ...``: ratio gates on one run (``bench.analysis.gates``), for CI.

Exit status 0 when every gate passes, 1 when one fails (a ratio whose interval does not clear its bound, or rows
that are not ``ok``), 2 when a gate does not parse or names no row, or the results file is unusable."""

from __future__ import annotations

import argparse
import sys

from bench.analysis.gates import Gate, GateError, evaluate, format_results, parse_gate
from bench.schema.errors import ResultsFormatError
from bench.schema.files import load_results
from bench.schema.metadata import read_metadata
from bench.schema.registry_facts import facts_of_runs

DESCRIPTION = ("Check ratio gates on one run, such as 'mybra/triton <= 0.8 * bra/torch' or "
               "'mybra peak_mem <= 0.5 * full': each must hold, with its whole 95% interval, at every shape the two "
               "sides share (docs/plugins.md#ratio-gates).")


def _gate(text: str) -> Gate:
    try:
        return parse_gate(text)
    except GateError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", metavar="RESULTS", help="a run's results file (.csv)")
    parser.add_argument("--expect", type=_gate, action="append", required=True, metavar="GATE",
                        help="a gate: SIDE OP [NUMBER *] SIDE, or SIDE OP NUMBER; SIDE is "
                             "FAMILY[/BACKEND][KEY=VALUE,...] [latency|peak_mem|gmacs|rel_err|throughput] "
                             "(repeatable)")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                        help="how to print the verdicts (markdown: for a CI job's summary)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    try:
        frame = load_results(args.results)
        metadata = read_metadata(args.results, missing_ok=True)
        defaults = facts_of_runs([metadata] if metadata else []).defaults
        results = [evaluate(gate, frame, defaults) for gate in args.expect]
    except (GateError, ResultsFormatError, OSError) as exc:
        print(f"run_bench.py check: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(format_results(results, args.format))
    return 0 if all(result.passed for result in results) else 1
