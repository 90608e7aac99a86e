"""A report folder from result files alone: tables, plots and an index README with the runs' metadata.

A folder may hold runs of both suites: attention runs give the attention tables and plots, model runs
(``--suite models``) the model table.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pandas as pd

from bench.report.catalog import PLOTS, TABLES, make_plots, make_tables, names, suites_in_order
from bench.schema.registry_facts import facts_of_runs
from bench.schema.columns import results_suite
from bench.schema.errors import ResultsFormatError, ResultsWarning
from bench.schema.files import load_results
from bench.schema.labels import backend_labels
from bench.schema.metadata import read_metadata, warn_row_count
from bench.schema.storage import TEMPORARY_NAME, atomic_write


def load_run(file: Path) -> tuple[pd.DataFrame, dict]:
    """A run's rows and metadata (a note where it has no metadata file); a ResultsWarning when its metadata
    counts other rows than its file holds."""
    frame = load_results(file)
    metadata = read_metadata(file, missing_ok=True)
    if metadata is None:
        return frame, {"run_id": Path(file).stem, "note": "no metadata file"}
    warn_row_count(file, metadata, len(frame))
    return frame, metadata


def collect_results(path: Path) -> dict[str, tuple[pd.DataFrame, list[dict]]]:
    """Per suite ('attentions', 'models'), the rows and metadata of a results file, or of every results file
    in a folder (newest row per case), each row's backend its label (``torch+compile``: torch under
    torch.compile; ``bench.schema.labels.backend_label``), so that every table and plot shows a compiled backend
    as one of its own. A folder's run that does not load is left out with a ResultsWarning saying why; the folder
    is refused only when none loads. A file named on its own must load."""
    path = Path(path)
    folder = path.is_dir()
    files = sorted(path.glob("*.csv")) if folder else [path]
    if not files:
        raise ResultsFormatError(f"no results .csv files in {path}")
    collected: dict[str, tuple[list[pd.DataFrame], list[dict]]] = {}
    failures = []
    for file in files:
        try:
            frame, meta = load_run(file)
        except (ResultsFormatError, OSError) as exc:
            if not folder:
                raise
            failures.append(str(exc))
            warnings.warn(ResultsWarning(f"{file} left out of the report: {exc}"), stacklevel=2)
            continue
        frames, metadata = collected.setdefault(results_suite(frame.columns), ([], []))
        frames.append(frame)
        metadata.append(meta)
    if not collected:
        raise ResultsFormatError(f"no results file in {path} loads: {'; '.join(failures)}")
    out = {}
    for suite, (frames, metadata) in collected.items():
        frame = pd.concat(frames, ignore_index=True)
        frame = frame.sort_values("timestamp", kind="stable").drop_duplicates("case_key", keep="last")
        out[suite] = frame.assign(backend=backend_labels(frame)).reset_index(drop=True), metadata
    if all(frame.empty for frame, _ in out.values()):
        raise ResultsFormatError(f"{path} holds no result rows")
    return {suite: (frame, metadata) for suite, (frame, metadata) in out.items() if not frame.empty}


def _metadata_markdown(metadata: list[dict]) -> str:
    lines = []
    for meta in metadata:
        env = meta.get("environment", {})
        lines += [f"### Run `{meta.get('run_id')}`", "",
                  f"- device: {meta.get('device_name')} (profile `{meta.get('gpu_profile')}`, "
                  f"{env.get('gpu_count', 0)} GPU(s), driver {env.get('driver')}, CUDA {env.get('cuda')})",
                  f"- CPU: {env.get('cpu')}, {env.get('cpu_count')} cores, {env.get('torch_threads')} torch threads; "
                  f"OS: {env.get('os')}; Python {env.get('python')}",
                  f"- torch {env.get('torch')}, triton {env.get('triton')}, xformers {env.get('xformers')}, "
                  f"fvcore {env.get('fvcore')}",
                  f"- suite commit `{env.get('suite_commit')}`"
                  + (" (with local changes)" if env.get("suite_dirty") else ""),
                  f"- started {meta.get('started')}, finished {meta.get('finished')}; "
                  + ("suite `models`" if meta.get("suite") == "models" else f"preset `{meta.get('preset')}`"),
                  f"- command: `{meta.get('command')}`",
                  f"- rows by status: {json.dumps(meta.get('status_counts', {}))}", ""]
        if meta.get("timing"):
            lines.insert(-1, _timing_markdown(meta["timing"]))
        if isinstance(meta.get("numerics"), dict):
            lines.insert(-1, "- numerics: " + ", ".join(f"{k} {v}" for k, v in sorted(meta["numerics"].items())))
        for node, node_env in (meta.get("nodes") or {}).items():  # a sweep on Ray: where its workers ran
            lines.insert(-1, f"- node `{node}`: {node_env.get('gpu_name') or node_env.get('cpu')}, driver "
                             f"{node_env.get('driver')}, CUDA {node_env.get('cuda')}, torch {node_env.get('torch')}, "
                             f"triton {node_env.get('triton')}")
        for plugin in meta.get("plugins") or []:  # where a plugin's families and backends came from
            lines.insert(-1, f"- plugin {plugin_text(plugin)}")
        if meta.get("note"):
            lines.insert(-1, f"- {meta['note']}")
    return "\n".join(lines)


def plugin_text(plugin: dict) -> str:
    """``mybra-example 0.1.0 (module mybra): family mybra`` from a run's record of a plugin
    (``attentions.plugins.Plugin.to_json``)."""
    origin = f"{plugin.get('distribution')} {plugin.get('version')}" if plugin.get("distribution") else "not installed"
    added = [*(f"family {name}" for name in plugin.get("families", [])),
             *(f"backend {family}/{backend}" for family, backend in plugin.get("backends", []))]
    return f"{origin} (module {plugin.get('module')}): {', '.join(added)}"


def _timing_markdown(timing: dict) -> str:
    """How a run timed its passes, in one line."""
    parts = [f"timing: {timing.get('rounds')}", f"at least {timing.get('min_time_s_per_pass')} s per pass"]
    if timing.get("sittings", 1) > 1:
        parts[-1] += f" in each of {timing['sittings']} sittings, the later ones in fresh processes"
    if timing.get("cpu_allocator"):
        parts.append(f"CPU allocator `{timing['cpu_allocator']}`")
    if timing.get("cuda_graphs"):
        parts.append("CUDA graphs")
    if timing.get("l2_flush"):
        parts.append("L2 flushed before every pass")
    return "- " + "; ".join(parts)


# What a report writes into its tables/ and plots/ folders: the only files it ever removes.
REPORT_FOLDERS = ("tables", "plots")
REPORT_SUFFIXES = (".md", ".tex", ".csv", ".png", ".pdf")


def remove_stale_files(out_dir: Path, written: list[Path]) -> None:
    """Remove the files in ``out_dir``'s tables/ and plots/ that this report did not write (left by an
    earlier version, or for tables and plots that no longer apply), so that the folder holds what its
    index shows. Only regular files with a report's suffixes, directly in those two folders, are
    candidates: anything else stays (subfolders, links, other files, and everything outside those two
    folders, such as the sweeps' ``<run-id>/`` reports beside them)."""
    keep = {path.resolve() for path in written}
    for folder in REPORT_FOLDERS:
        folder_path = out_dir / folder
        if not folder_path.is_dir() or folder_path.is_symlink():
            continue
        for path in sorted(folder_path.iterdir()):
            if (path.suffix in REPORT_SUFFIXES and path.is_file() and not path.is_symlink()
                    and path.resolve() not in keep) or abandoned_temporary(path):
                path.unlink()
    for path in out_dir.iterdir():  # the index's own
        if abandoned_temporary(path):
            path.unlink()


def abandoned_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file of ``atomic_write`` whose writer is gone (killed mid-write)."""
    match = TEMPORARY_NAME.fullmatch(path.name)
    if not match or not path.is_file() or path.is_symlink():
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def build_report(results: Path, out_dir: Path) -> Path:
    """Write tables (.md, .tex, .csv), plots (.png, .pdf) and README.md into ``out_dir``; return the README.

    Each suite's rows give that suite's tables and plots (``bench.report.catalog``), in report order,
    drawn with the registry facts of the runs (``bench.schema.registry_facts.facts_of_runs``). Files of an earlier
    report in ``out_dir``'s tables/ and plots/ that this one does not write are removed
    (``remove_stale_files``).
    """
    suites = collect_results(results)
    metadata = [meta for _, suite_metadata in suites.values() for meta in suite_metadata]
    facts = facts_of_runs(metadata)
    out_dir = Path(out_dir)
    tables_dir, plots_dir = out_dir / "tables", out_dir / "plots"
    tables, written = [], []
    for suite in suites_in_order(PLOTS):
        if suite in suites:
            written += make_plots(suites[suite][0], plots_dir, facts, names(PLOTS, suite))
    for suite in suites_in_order(TABLES):
        if suite in suites:
            tables += make_tables(suites[suite][0], facts, suite)
    plots = [p for p in written if p.suffix == ".png"]
    for table in tables:
        written += table.write(tables_dir)
    remove_stale_files(out_dir, written)
    frame = pd.concat([frame[["gpu_profile", "device_name", "status"]] for frame, _ in suites.values()])
    profile = ", ".join(sorted(frame["gpu_profile"].astype(str).unique()))
    devices = ", ".join(sorted(frame["device_name"].astype(str).unique()))
    counts = frame["status"].value_counts().to_dict()
    mixed = (" The rows come from several devices: every ratio pairs rows of one device name."
             if frame["device_name"].nunique() > 1 else "")
    lines = [f"# Benchmark report: {devices} (profile {profile})", "",
             f"Generated by `python run_bench.py report {results}` from {len(frame)} rows "
             f"({', '.join(f'{n} {s}' for s, n in counts.items())}). Every table and plot below comes from the "
             f"result files alone; regenerate them with that command.{mixed}", "",
             "## Runs", "", _metadata_markdown(metadata), "## Tables", ""]
    for table in tables:
        lines += [f"### {table.name}", "", f"[LaTeX](tables/{table.name}.tex) · [CSV](tables/{table.name}.csv)",
                  "", table.to_markdown(), ""]
    if plots:
        lines += ["## Plots", ""]
        for png in plots:
            lines += [f"### {png.stem}", "", f"![{png.stem}](plots/{png.name}) ([PDF](plots/{png.stem}.pdf))", ""]
    readme = out_dir / "README.md"
    with atomic_write(readme) as tmp:
        tmp.write_text("\n".join(lines))
    return readme
