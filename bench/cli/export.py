"""``run_bench.py export RESULTS``: a run's rows as JSON for another tool (``bench.analysis.export``), on stdout
or into ``--out``; no torch. ``--format github-action-benchmark``, the default and so far the only format, is what
the GitHub Action benchmark-action/github-action-benchmark reads with ``tool: customSmallerIsBetter``. The rows
left out (not timed) are counted in one line on stderr; an unusable results file exits 2 with one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.analysis.export import GITHUB_ACTION_BENCHMARK, BenchmarkExport, benchmark_entries
from bench.cli.arguments import check_folder
from bench.schema.columns import results_suite
from bench.schema.errors import ResultsFormatError
from bench.schema.files import load_results
from bench.schema.metadata import read_metadata
from bench.schema.registry_facts import facts_of_runs
from bench.schema.storage import atomic_write, resolve_results_path

DESCRIPTION = ("A run's rows as JSON for the GitHub Action github-action-benchmark (tool: customSmallerIsBetter): "
               "each timed case's median latency (ms) and peak memory (MB).")
EXIT_UNUSABLE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, metavar="RESULTS",
                        help="a run's results file (.csv, its .json, or the path without suffix)")
    parser.add_argument("--format", choices=[GITHUB_ACTION_BENCHMARK], default=GITHUB_ACTION_BENCHMARK,
                        help="github-action-benchmark (the default): a list of {name, unit, value, range, extra}")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the JSON to FILE (default: stdout)")


def export_run(path: Path) -> BenchmarkExport:
    """The entries of the attention-suite run at ``path``, its labels named against its recorded registry.
    ResultsFormatError when the file (or its metadata) is missing, malformed, of another suite, or has no rows."""
    frame = load_results(path)
    suite = results_suite(frame.columns)
    if suite != "attentions":
        raise ResultsFormatError(f"{resolve_results_path(path)} is a {suite}-suite run; export converts "
                                 f"attention-suite runs")
    if frame.empty:
        raise ResultsFormatError(f"results file {resolve_results_path(path)} has no rows")
    metadata = read_metadata(path, missing_ok=True)
    return benchmark_entries(frame, facts_of_runs([] if metadata is None else [metadata]).defaults)


def _left_out_line(exported: BenchmarkExport) -> str | None:
    """What the entries leave out, in one line; None when they leave out nothing."""
    parts = []
    if exported.left_out:
        parts.append("rows not timed: " + ", ".join(f"{n} {status}" for status, n in exported.left_out.items()))
    if exported.repeated:
        parts.append(f"earlier rows of repeated cases: {exported.repeated} (the last row of each case is exported)")
    return f"left out {'; '.join(parts)}" if parts else None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    if args.out is not None:
        check_folder(parser, "--out", args.out.parent)
    try:
        exported = export_run(args.results)
        text = json.dumps(exported.entries, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        if args.out is None:
            sys.stdout.write(text)
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(args.out) as tmp:
                tmp.write_text(text, encoding="utf-8")
    except (ResultsFormatError, OSError) as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_UNUSABLE
    left_out = _left_out_line(exported)
    if left_out:
        print(f"{parser.prog}: {left_out}", file=sys.stderr)
    if args.out is not None:
        print(f"{len(exported.entries)} entries written to {args.out}")
    return 0
