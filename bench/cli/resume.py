"""``--resume``: complete an interrupted run with its own stored command line."""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
from pathlib import Path

from bench.cli.arguments import is_run_id
from bench.core.methods import measurement_methods
from bench.schema.errors import ResultsFormatError
from bench.schema.files import completed_case_keys
from bench.schema.metadata import read_metadata

# Flags that only say where output goes, how it is shown or where the cases run: allowed beside --resume.
RESUME_COMPATIBLE = {"resume", "results_dir", "reports_dir", "quiet", "no_report", "dry_run", "time_budget", "workers",
                     "ray_address", "retries"}


def resumed_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, dict, argparse.Namespace]:
    """Results path, metadata and the stored sweep arguments of the run named by --resume. Reads only:
    the run's lock is taken, and a torn last row cut, when the run is written to."""
    changed = sorted(f"--{dest.replace('_', '-')}" for dest, value in vars(args).items()
                     if dest not in RESUME_COMPATIBLE and value != parser.get_default(dest))
    if changed:
        parser.error(f"--resume continues the run's own sweep; drop {', '.join(changed)} "
                     f"(start a new run to sweep something else)")
    named = Path(args.resume)
    if named.suffix in (".csv", ".json"):
        results_path = named.with_suffix(".csv")
    else:
        if not is_run_id(args.resume):
            parser.error(f"--resume: {args.resume!r} is neither a run id nor the path of a run's .csv or .json")
        matches = sorted(args.results_dir.glob(f"*/{args.resume}.csv"))
        if not matches:
            parser.error(f"--resume: no run {args.resume!r} under {args.results_dir}/ (give the run id or "
                         f"the path of its .csv)")
        results_path = matches[0]
    metadata_path = results_path.with_suffix(".json")
    try:
        metadata = read_metadata(results_path)
        completed_case_keys(results_path)  # the rows must be readable too
    except (ResultsFormatError, OSError) as exc:
        parser.error(f"--resume: {exc}")
    stored_argv = metadata.get("argv")
    if stored_argv is None:
        parser.error(f"--resume: {metadata_path} has no 'argv' (the run's command-line words): it is not "
                     f"the metadata of a run of this tool")
    if not all(isinstance(word, str) for word in stored_argv):
        parser.error(f"--resume: {metadata_path}: 'argv' is {stored_argv!r}, not a list of strings (the run's "
                     f"command-line words)")
    if metadata["methods"] != measurement_methods():
        changed = ", ".join(f"{key} {metadata['methods'].get(key) or 'unrecorded'} (now {method})"
                            for key, method in measurement_methods().items() if metadata["methods"].get(key) != method)
        parser.error(f"--resume: {results_path}'s rows were made by other methods than this code's: {changed}; rows of "
                     f"both would not compare, so start a new run")
    metadata["run_id"] = results_path.stem
    stored = parse_stored_command(parser, stored_argv, metadata_path)
    for dest in RESUME_COMPATIBLE - {"resume"}:
        setattr(stored, dest, getattr(args, dest))
    return results_path, metadata, stored


def parse_stored_command(parser: argparse.ArgumentParser, argv: list[str], source: Path) -> argparse.Namespace:
    """A run's stored command line parsed as at its start; a clean error if it does not parse or resumes."""
    with contextlib.redirect_stderr(io.StringIO()) as messages:
        try:
            stored = parser.parse_args(argv)
        except SystemExit:
            stored = None
    if stored is None or stored.resume:
        problem = messages.getvalue().strip().splitlines()[-1] if stored is None else "it is itself a --resume"
        parser.error(f"--resume: the command line stored in {source} ({shlex.join(argv)}) is not one this tool "
                     f"can continue: {problem}")
    return stored


def resume_command(parser: argparse.ArgumentParser, args: argparse.Namespace, run_id: str) -> str:
    """The command that completes the run: ``--resume`` with the flags given for where its files go."""
    words = ["--resume", run_id]
    for dest in ("results_dir", "reports_dir", "workers", "ray_address", "retries"):
        if getattr(args, dest) != parser.get_default(dest):
            words += [f"--{dest.replace('_', '-')}", str(getattr(args, dest))]
    if args.no_report:
        words.append("--no-report")
    return "python run_bench.py " + shlex.join(words)
