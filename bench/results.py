"""Result files: the row schema, durable appends, loading with validation, and run metadata.

A run writes ``results/<gpu>/<run-id>.csv`` (one row per case, appended and fsynced as each case
completes) and ``<run-id>.json`` (the environment and the command line).
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import importlib.metadata
import io
import json
import os
import platform
import socket
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
# Where a row's case ran, in both suites (its device_name is that worker's device too).
PLACEMENT_COLUMNS = (
    "node",               # hostname
    "worker",             # the process: "pid 1234" (the sweep's own process, or a Ray worker's)
    "gpu_index",          # the GPU as its node numbers it (CUDA_VISIBLE_DEVICES' entry); empty on the CPU
)
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
    "rel_err",            # ‖got − exact‖ / ‖exact‖ against float64 math (bench.accuracy), of err_tensor; inf on NaN/inf
    "err_tolerance",      # the bound on rel_err: max(2 × ref_rel_err, the dtype's floor)
    "reference_backend",  # the family's reference backend, run in float64 for the exact values
    "seed", "run_id", "case_key", "timestamp",
    "tile_efficiency",    # useful ÷ issued matrix multiply-adds of the backend's kernels (backends that declare it)
    "speedup_vs_ref",     # reference latency ÷ latency: the median of per-round ratios of paired rounds
    "speedup_ci_low", "speedup_ci_high",  # its 95% batch-means confidence interval
    "timing_spread",      # p80 / p20 of the latency; beyond the device's noise limit the row is noisy
    "load_before", "load_after",  # the machine's 1-minute load average around the case's timing
    "gpu_state",          # JSON: SM clock, temperature and power before, during (range, throttle reasons) and after
    *PLACEMENT_COLUMNS,
    "page_faults",        # CPU: the process's minor page faults during one pass, median over the timed rounds
    "ref_rel_err",        # the reference backend's own rel_err (in the case's dtype) on err_tensor
    "err_tensor",         # the tensor closest to its bound (output, input gradient, gradient of <parameter>)
    "timed_s",            # seconds of timed calls behind the latency statistics (all sittings)
    "warmup_calls",       # warm-up calls before the timed rounds (until stable, capped)
    "gmacs_unpadded",     # gmacs less what padding costs (BRA's auto_pad): what tflops_achieved and pct_of_peak count
    *("latency_ms_ci_low", "latency_ms_ci_high"),  # 95% batch-means interval of latency_ms_median (compare's test)
]
# Columns added after results files of the same schema were written: a file without them loads with
# them empty, and a resumed run's file gets them added.
LATE_COLUMNS = {"attentions": ("tile_efficiency", "speedup_vs_ref", "speedup_ci_low", "speedup_ci_high",
                               "timing_spread", "load_before", "load_after", "gpu_state", *PLACEMENT_COLUMNS,
                               "page_faults", "ref_rel_err", "err_tensor", "timed_s", "warmup_calls",
                               "gmacs_unpadded", "latency_ms_ci_low", "latency_ms_ci_high"),
                "models": ("timing_spread", *PLACEMENT_COLUMNS, "page_faults", "timed_s", "warmup_calls",
                           "speedup_vs_ref", "speedup_ci_low", "speedup_ci_high", "gmacs_per_image_unpadded",
                           "latency_ms_ci_low", "latency_ms_ci_high")}
# Rows of the model suite (``--suite models``): one whole backbone of ``attentions.models`` per row.
MODEL_COLUMNS = [
    "model", "attention", "backend", "resolution", "batch", "dtype", "phase", "status",
    "params_m",           # parameters, millions
    "gmacs_per_image",    # fvcore's count of one image's forward (batch 1, eval mode): the papers' GFLOPs, padding included
    "throughput", "latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb",
    "tflops_achieved", "pct_of_peak",
    "hw_gflops",          # hardware FLOPs of the measured pass: 2 × MACs × batch, × 3 for fwd+bwd
    "device_name", "gpu_profile",
    "options",            # JSON of the build_model options (attention choice, auto_pad)
    "device", "status_detail", "rounds", "param_mb", "input_mb", "seed", "run_id", "case_key", "timestamp",
    "timing_spread",      # p80 / p20 of the latency
    *PLACEMENT_COLUMNS,
    "page_faults",        # CPU: minor page faults during one pass, median over the timed rounds
    "timed_s",            # seconds of timed calls behind the latency statistics
    "warmup_calls",       # warm-up calls before the timed rounds (until stable, capped)
    "speedup_vs_ref",     # the reference backend's latency ÷ this one: median of per-round ratios of paired rounds
    "speedup_ci_low", "speedup_ci_high",  # its 95% confidence interval
    "gmacs_per_image_unpadded",  # gmacs_per_image less what padding costs: what tflops_achieved counts
    *("latency_ms_ci_low", "latency_ms_ci_high"),  # 95% batch-means interval of latency_ms_median
]
SUITES = {"attentions": COLUMNS, "models": MODEL_COLUMNS}  # suite -> its row schema
# Every other column of a suite holds numbers (or nothing).
TEXT_COLUMNS = {
    "attentions": {"family", "backend", "dtype", "phase", "kv_downsample_mode", "status", "device_name", "gpu_profile",
                   "options", "device", "status_detail", "macs_parts", "flops_check", "reference_backend", "run_id",
                   "case_key", "timestamp", "gpu_state", "err_tensor", *PLACEMENT_COLUMNS},
    "models": {"model", "attention", "backend", "dtype", "phase", "status", "device_name", "gpu_profile", "options",
               "device", "status_detail", "run_id", "case_key", "timestamp", *PLACEMENT_COLUMNS},
}
# Columns no row may leave empty: what identifies its case.
IDENTITY_COLUMNS = {"attentions": ("family", "backend", "resolution", "batch", "dim", "heads", "dtype", "phase",
                                   "options", "device", "case_key"),
                    "models": ("model", "attention", "backend", "resolution", "batch", "dtype", "phase", "device",
                               "case_key")}
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


class RunInUseError(ValueError):
    """Another process holds the run's lock: it is sweeping or resuming that run now."""


class RunLock:
    """The lock of one run: an OS file lock (``flock``) on ``<run-id>.lock`` beside its results, held by
    the one process that writes the run (a sweep or a resume) for as long as it writes. The file names
    the holder; the OS releases the lock when the holder dies, however it dies, so a stale file left by
    a killed process locks nothing. ``with RunLock(path):`` raises RunInUseError while another holds it.
    """

    def __init__(self, results_path: Path) -> None:
        self.path = Path(results_path).with_suffix(".lock")
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunInUseError(f"run {self.path.stem} is being written by {holder} (lock {self.path}); "
                                    f"let it finish or stop it, then resume") from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder removed this file as it let go: lock the one that is there now
        os.ftruncate(fd, 0)
        command = " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "python"
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()} ({command})\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.path.unlink(missing_ok=True)  # before letting go, so that no one locks a file about to vanish
        os.close(self._fd)
        self._fd = None


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


def complete_lines(path: Path) -> str:
    """The file's text up to its last line break: a last line without one is a row being written (or cut
    by a kill), which no reader takes for a row. Raises ResultsFormatError when it is not text."""
    data = path.read_bytes()
    try:
        return data[:data.rfind(b"\n") + 1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsFormatError(f"{path} is not a text file: {exc}") from None


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Load a results CSV of either suite and check that it is one of ours and that every row parses
    completely (all fields, a known status, numbers where the schema has numbers, the case's identity
    present, options as JSON). Raises ResultsFormatError naming the file, line and value otherwise."""
    path = resolve_results_path(path)
    if path.is_dir():
        raise ResultsFormatError(f"{path} is a directory; give a results .csv file")
    if not path.exists():
        raise ResultsFormatError(f"results file {path} does not exist")
    text = complete_lines(path)
    if not text:
        raise ResultsFormatError(f"results file {path} is empty")
    records = list(csv.reader(io.StringIO(text)))
    header = records[0]
    suite = results_suite(header)
    missing = [c for c in SUITES[suite] if c not in header and c not in LATE_COLUMNS[suite]]
    if missing:
        raise ResultsFormatError(
            f"{path} is not a results file of this suite (schema {SCHEMA_VERSION}, {suite}): missing columns "
            f"{', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    for line, record in enumerate(records[1:], start=2):
        if len(record) != len(header):
            raise ResultsFormatError(f"{path}, line {line}: {len(record)} fields where the header has "
                                     f"{len(header)}: a cut or foreign row")
    # only an empty cell is missing: "n/a" or "None" in a number column is an error, not a silent NaN
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""],
                        dtype={c: str for c in TEXT_COLUMNS[suite]})
    for column in LATE_COLUMNS[suite]:
        if column not in frame.columns:
            frame[column] = float("nan")
    _check_rows(path, frame, suite)
    return frame


def _check_rows(path: Path, frame: pd.DataFrame, suite: str) -> None:
    """Raise ResultsFormatError at the first value of ``frame`` that is not what its column holds."""
    def bad(index: int, column: str, what: str) -> ResultsFormatError:
        return ResultsFormatError(f"{path}, line {index + 2}: {column} {frame.at[index, column]!r} {what}")

    for column in IDENTITY_COLUMNS[suite]:
        empty = frame.index[frame[column].isna()]
        if len(empty):
            raise ResultsFormatError(f"{path}, line {empty[0] + 2}: {column} is empty")
    unknown = frame.index[~frame["status"].isin(STATUSES)]
    if len(unknown):
        raise bad(unknown[0], "status", f"is not a status; valid: {', '.join(STATUSES)}")
    for column in [c for c in SUITES[suite] if c not in TEXT_COLUMNS[suite]]:
        if pd.api.types.is_numeric_dtype(frame[column]):
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        wrong = frame.index[numbers.isna() & frame[column].notna()]
        if len(wrong):
            raise bad(wrong[0], column, "is not a number")
        frame[column] = numbers
    unmeasured = frame.index[frame["status"].isin(MEASURED_STATUSES) & frame["latency_ms_median"].isna()]
    if len(unmeasured):
        raise ResultsFormatError(f"{path}, line {unmeasured[0] + 2}: latency_ms_median is empty in a row of status "
                                 f"{frame.at[unmeasured[0], 'status']!r}")
    if suite == "attentions":
        for index, options in frame["options"].items():
            try:
                parsed = json.loads(options)
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise bad(index, "options", "is not a JSON object")


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


def numerics_now() -> dict[str, Any]:
    """This process's math modes now (see ``bench.settings.Numerics``), as a run's environment records them."""
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


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
        **numerics_now(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "suite_commit": commit,
        "suite_dirty": bool(dirty),
    }


# The structured fields of a run's metadata, and what they hold when present.
METADATA_FIELD_TYPES: dict[str, type] = {"run_id": str, "argv": list, "environment": dict, "resumed": list,
                                         "timing": dict, "status_counts": dict, "nodes": dict}
JSON_NAMES = {str: "string", list: "list", dict: "object"}


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write the run's JSON atomically (a kill leaves the old or the new file, never half)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike, missing_ok: bool = False) -> dict[str, Any] | None:
    """The run's ``<run-id>.json``, checked to be a run's metadata; ResultsFormatError when it is not,
    or when it does not exist (None instead with ``missing_ok``)."""
    path = resolve_results_path(path).with_suffix(".json")
    if not path.exists():
        if missing_ok:
            return None
        raise ResultsFormatError(f"run metadata {path} does not exist")
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsFormatError(f"run metadata {path} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise ResultsFormatError(f"run metadata {path} holds a JSON {type(metadata).__name__}, not the object "
                                 f"a run writes")
    for key, kind in METADATA_FIELD_TYPES.items():
        if key in metadata and not isinstance(metadata[key], kind):
            raise ResultsFormatError(f"run metadata {path}: {key!r} is {metadata[key]!r}, not a JSON "
                                     f"{JSON_NAMES[kind]}")
    return metadata


def now_iso(timespec: str = "seconds") -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec=timespec)
