"""``run_bench.py compare BASE NEW``: two runs case by case (``bench.analysis.compare``), as a gate whose exit
status says whether NEW regressed. Parses its own words: it answers even bad arguments with an exit status
(``EPILOG``), never SystemExit, as a CI step needs."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from bench.analysis.compare import (DEFAULT_MAX_INCONCLUSIVE, DEFAULT_MAX_REGRESSION, DEFAULT_MIN_SHARED,
                                    EXIT_INCONCLUSIVE, EXIT_PASSED, EXIT_REGRESSED, EXIT_UNUSABLE, PROG, compare_runs)
from bench.analysis.compare_formats import FORMATS
from bench.analysis.verdicts import parse_threshold, percent_text
from bench.schema.errors import ResultsFormatError

DESCRIPTION = ("Compare two runs case by case: each case regressed, ok or inconclusive, and a gate that fails on "
               "regressions and when too many cases are inconclusive.")


def _threshold_arg(text: str) -> float:
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share_arg(text: str) -> float:
    value = _threshold_arg(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"invalid share {text!r}: at most 100%")
    return value


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: give a whole number, 0 or more") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: 0 or more")
    return value


EPILOG = (f"Exit status: {EXIT_PASSED} passed; {EXIT_REGRESSED} a case regressed (slower or larger beyond the "
          f"threshold, with intervals apart, or a new failure); {EXIT_UNUSABLE} unusable input; "
          f"{EXIT_INCONCLUSIVE} undecided: too many inconclusive cases, or too few shared ones. The decision rule and "
          f"its measured error rates: docs/regression-gate.md.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("base", metavar="BASE", help="results file of the reference run (.csv, .json or no suffix)")
    parser.add_argument("new", metavar="NEW", help="results file of the run to judge")
    parser.add_argument("--max-regression", type=_threshold_arg, default=DEFAULT_MAX_REGRESSION, metavar="PCT",
                        help="allowed slowdown / memory growth: '10%%', '10' (>= 1: percent) or '0.1' (< 1: "
                             "fraction); default 10%%")
    parser.add_argument("--min-shared", type=_share_arg, default=DEFAULT_MIN_SHARED, metavar="PCT",
                        help="share of BASE's cases NEW must have for the comparison to pass, as for "
                             "--max-regression, at most 100%% (default 50%%; 0: any, but at least one)")
    parser.add_argument("--max-inconclusive", type=_share_arg, default=DEFAULT_MAX_INCONCLUSIVE, metavar="PCT",
                        help="share of compared cases that may be inconclusive before the gate gives up (exit "
                             f"{EXIT_INCONCLUSIVE}); as for --min-shared (default "
                             f"{percent_text(DEFAULT_MAX_INCONCLUSIVE)}%)".replace("%", "%%"))
    parser.add_argument("--rerun-inconclusive", type=_count_arg, default=0, metavar="N",
                        help="re-time NEW's inconclusive cases with the code at hand, paired with their reference, "
                             "up to N times before the verdict (default 0; NEW's file is left as it is)")
    parser.add_argument("--format", choices=list(FORMATS), default="text",
                        help="text (default), markdown (for a CI job summary or a merge-request comment) or json "
                             "(for a program); the exit status is the same in every format")
    return parser


def main(argv: Sequence[str]) -> int:
    """``run_bench.py compare BASE NEW [options]``; returns the exit status (never raises SystemExit): see
    ``EPILOG``. Bad arguments give argparse's message, an unusable results file one line on stderr."""
    parser = build_parser()
    argv = list(argv)
    # "--max-regression -5%" would read as a missing value: glue the value on so the error names it
    for i in range(len(argv) - 1):
        if argv[i] in ("--max-regression", "--max-inconclusive", "--min-shared", "--rerun-inconclusive") \
                and argv[i + 1].startswith("-"):
            argv[i:i + 2] = [f"{argv[i]}={argv[i + 1]}"]
            break
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_UNUSABLE)
    remeasure, unusable = None, (ResultsFormatError, OSError)
    if args.rerun_inconclusive:  # re-timing needs torch and the harness; comparing files does not
        from bench.execution.remeasure import RemeasureError, remeasure_rows as remeasure
        unusable += (RemeasureError,)
    try:
        comparison = compare_runs(args.base, args.new, args.max_regression, args.min_shared, args.max_inconclusive,
                                  args.rerun_inconclusive, remeasure)
    except unusable as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(FORMATS[args.format](comparison))
    return comparison.exit_status
