"""``run_bench.py report``: tables, plots and an index from result files alone (no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli.arguments import check_folder, default_reports_dir
from bench.schema.errors import ResultsFormatError

DESCRIPTION = "Tables, plots and an index from result files alone."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="a results .csv (or its .json), or a folder of them")
    parser.add_argument("--out", type=Path,
                        help="report folder (default, beside results/: reports/<gpu profile>/ for a folder, "
                             "reports/<gpu profile>/<run id>/ for one run)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    check_folder(parser, "--out", args.out)
    from bench.report.build import build_report, collect_results  # plotting libraries load only when reporting
    try:
        frame, _ = next(iter(collect_results(args.results).values()))
        out = args.out
        if out is None:
            folder = args.results.is_dir()
            base = args.results if folder else args.results.parent
            out = default_reports_dir(base.parent) / str(frame["gpu_profile"].iloc[0])
            if not folder:
                out /= args.results.stem  # one run's report: beside the folder's, never over it
        readme = build_report(args.results, out)
    except (ResultsFormatError, OSError) as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"report written to {readme}")
    return 0
