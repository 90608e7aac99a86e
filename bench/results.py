"""Result files: the row schema, durable appends, loading with validation, and run metadata.

A run writes ``results/<gpu>/<run-id>.csv`` (one row per case, appended and fsynced as each case
completes) and ``<run-id>.json`` (the environment and the command line).
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

SCHEMA_VERSION = 1

# Columns every results file has, in file order. The first block is the contract of issue #3.
REQUIRED_COLUMNS = [
    "family", "backend", "resolution", "batch", "dim", "heads", "dtype", "phase", "n_win", "topk",
    "kv_downsample_mode", "status", "latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb",
    "gmacs", "tflops_achieved", "pct_of_peak", "throughput", "max_abs_err", "device_name", "gpu_profile",
]
COLUMNS = REQUIRED_COLUMNS + [
    "options",            # JSON of the case's family options
    "device",             # cpu / cuda
    "status_detail",      # reason for unsupported / error / oom / mismatch, or notes
    "rounds",             # timed rounds behind the latency statistics
    "param_mb",           # bytes of parameters
    "input_mb",           # bytes of the input
    "gmacs_analytic",     # the family's macs(); compared with fvcore's gmacs
    "macs_parts",         # JSON of the analytic parts (projections, routing/offsets, attention, positional)
    "flops_check",        # empty when fvcore and macs() agree within 1%, else the disagreement
    "hw_gflops",          # hardware FLOPs of the measured pass: 2 × MACs, × 3 for fwd+bwd
    "rel_err",            # ‖out − ref‖ / ‖ref‖, worst over output and gradients; inf (and max_abs_err) on NaN/inf
    "err_tolerance",      # the dtype's tolerance on rel_err
    "reference_backend",  # backend the error was measured against
    "seed", "run_id", "case_key", "timestamp",
    "tile_efficiency",    # useful ÷ issued matrix multiply-adds of the backend's kernels (backends that declare it)
    "speedup_vs_ref",     # reference latency ÷ latency: the median of per-round ratios of paired rounds
    "speedup_ci_low", "speedup_ci_high",  # its 95% bootstrap confidence interval
    "timing_spread",      # p80 / p20 of the latency; beyond the device's noise limit the row is noisy
    "load_before", "load_after",  # the machine's 1-minute load average around the case's timing
    "gpu_state",          # JSON: SM clock, temperature and power before and after (CUDA, through NVML)
]
# Columns added after results files of the same schema were written: a file without them loads with
# them empty, and a resumed run's file gets them added.
LATE_COLUMNS = {"attentions": ("tile_efficiency", "speedup_vs_ref", "speedup_ci_low", "speedup_ci_high",
                               "timing_spread", "load_before", "load_after", "gpu_state"),
                "models": ("timing_spread",)}
# Rows of the model suite (``--suite models``): one whole backbone of ``attentions.models`` per row.
MODEL_COLUMNS = [
    "model", "attention", "backend", "resolution", "batch", "dtype", "phase", "status",
    "params_m",           # parameters, millions
    "gmacs_per_image",    # fvcore's count of one image's forward (batch 1, eval mode): the papers' GFLOPs
    "throughput", "latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb",
    "tflops_achieved", "pct_of_peak",
    "hw_gflops",          # hardware FLOPs of the measured pass: 2 × MACs × batch, × 3 for fwd+bwd
    "device_name", "gpu_profile",
    "options",            # JSON of the build_model options (attention choice, auto_pad)
    "device", "status_detail", "rounds", "param_mb", "input_mb", "seed", "run_id", "case_key", "timestamp",
    "timing_spread",      # p80 / p20 of the latency
]
SUITES = {"attentions": COLUMNS, "models": MODEL_COLUMNS}  # suite -> its row schema
NUMERIC_COLUMNS = {"attentions": ("resolution", "batch", "dim", "heads"), "models": ("resolution", "batch")}
STATUSES = ("ok", "noisy", "mismatch", "unsupported", "oom", "error")
MEASURED_STATUSES = ("ok", "noisy", "mismatch")  # rows with a latency: noisy and mismatch rows are never ranked


def results_suite(columns) -> str:
    """The suite whose schema a results header (or DataFrame) follows: a model column marks the model suite."""
    return "models" if "model" in list(columns) else "attentions"


class ResultsFormatError(ValueError):
    """A results file that is missing, empty, malformed, or not one of this suite's."""


class ResultsWriter:
    """Appends rows to a CSV, one fsync per row, so a killed run loses at most the case in progress.

    ``columns`` is the schema of the file's suite (``COLUMNS`` or ``MODEL_COLUMNS``).
    """

    def __init__(self, path: Path, columns: list[str] = COLUMNS) -> None:
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            drop_torn_last_row(self.path)
            _add_late_columns(self.path, columns)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(columns)
                _sync(f)

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        one_line = {k: " ".join(v.splitlines()) if isinstance(v, str) else v for k, v in row.items()}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(one_line)
            _sync(f)


def _sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def drop_torn_last_row(path: Path) -> None:
    """A kill during a write can leave half a row: cut the file back to its last complete line (a
    row is one line: ``append`` writes no line break inside a value)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _add_late_columns(path: Path, columns: list[str]) -> None:
    """Rewrite (atomically) a results file written before some of ``columns`` existed with them empty."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] == columns:
        return
    missing = [c for c in columns if c not in rows[0]]
    if set(rows[0]) - set(columns) or set(missing) - set(LATE_COLUMNS[results_suite(columns)]):
        return  # not an older file of this schema: load_results says what is wrong with it
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(dict(zip(rows[0], row)) for row in rows[1:])
        _sync(f)
    os.replace(tmp, path)


def completed_case_keys(path: Path) -> set[str]:
    """Keys of the cases that already have a row (any status) in a results file."""
    return set(load_results(path)["case_key"]) if Path(path).exists() else set()


def resolve_results_path(path: str | os.PathLike) -> Path:
    """Accept a run's .csv, its .json, or the path without suffix."""
    path = Path(path)
    if path.suffix == ".json" or (not path.suffix and not path.is_dir()):
        path = path.with_suffix(".csv")
    return path


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Load a results CSV of either suite and check it is one of ours; raises ResultsFormatError otherwise."""
    path = resolve_results_path(path)
    if path.is_dir():
        raise ResultsFormatError(f"{path} is a directory; give a results .csv file")
    if not path.exists():
        raise ResultsFormatError(f"results file {path} does not exist")
    if path.stat().st_size == 0:
        raise ResultsFormatError(f"results file {path} is empty")
    try:
        frame = pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ResultsFormatError(f"{path} is not a readable CSV: {exc}") from exc
    suite = results_suite(frame.columns)
    for column in LATE_COLUMNS[suite]:
        if column not in frame.columns:
            frame[column] = float("nan")
    missing = [c for c in SUITES[suite] if c not in frame.columns]
    if missing:
        raise ResultsFormatError(
            f"{path} is not a results file of this suite (schema {SCHEMA_VERSION}, {suite}): missing columns "
            f"{', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    bad_status = sorted(set(frame["status"].dropna()) - set(STATUSES))
    if bad_status or frame["status"].isna().any():
        raise ResultsFormatError(f"{path}: unknown status values {bad_status or ['<empty>']}; valid: {STATUSES}")
    for column in NUMERIC_COLUMNS[suite]:
        if len(frame) and not pd.api.types.is_numeric_dtype(frame[column]):
            raise ResultsFormatError(f"{path}: column {column!r} must be numeric")
    return frame


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command_output(*args: str, cwd: Path | None = None) -> str | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=cwd,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """What produced a run: hardware, software versions and the suite's commit."""
    repo = Path(__file__).resolve().parent.parent
    commit = _command_output("git", "rev-parse", "HEAD", cwd=repo)
    dirty = _command_output("git", "status", "--porcelain", "--untracked-files=no", cwd=repo)
    cuda = torch.cuda.is_available()
    return {
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "driver": _command_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "xformers": _version("xformers"),
        "fvcore": _version("fvcore"),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "suite_commit": commit,
        "suite_dirty": bool(dirty),
    }


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write the run's JSON atomically (a kill leaves the old or the new file, never half)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    path = resolve_results_path(path).with_suffix(".json")
    if not path.exists():
        raise ResultsFormatError(f"run metadata {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsFormatError(f"run metadata {path} is not valid JSON: {exc}") from exc


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
