"""Result files: the row schema, durable appends, loading with validation, and run metadata.

A run writes ``results/<gpu>/<run-id>.csv`` (one row per case, appended and fsynced as each case
completes) and ``<run-id>.json`` (the environment and the command line).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import importlib.metadata
import io
import itertools
import json
import os
import platform
import re
import socket
import stat
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
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
    "rel_err",            # ‖got − exact‖ / ‖exact‖ against float64 math (bench.core.accuracy), of err_tensor; inf on NaN/inf
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


class ResultsWarning(UserWarning):
    """Something a reader left out or found inconsistent, without refusing the file (the CLIs show it)."""


# Value rules of the numeric columns: what a number of each may be (an empty cell is always allowed).
@dataclass(frozen=True)
class ValueRule:
    """The values a numeric column may hold: ``holds`` is True where a (non-empty) value is allowed;
    ``what`` completes the error message "<column> <value> is not ...". """

    what: str
    holds: Callable[[pd.Series], pd.Series]


def _whole(values: pd.Series) -> pd.Series:
    return np.isfinite(values) & (values == np.floor(values))


SIZE = ValueRule("a whole number ≥ 1", lambda v: _whole(v) & (v >= 1))
COUNT = ValueRule("a whole number ≥ 0", lambda v: _whole(v) & (v >= 0))
COUNT_MEDIAN = ValueRule("a median of counts (a whole or half number ≥ 0)", lambda v: _whole(2 * v) & (v >= 0))
WHOLE = ValueRule("a whole number", _whole)
POSITIVE = ValueRule("a finite number > 0", lambda v: np.isfinite(v) & (v > 0))
NON_NEGATIVE = ValueRule("a finite number ≥ 0", lambda v: np.isfinite(v) & (v >= 0))
ERROR = ValueRule("a number ≥ 0 (or inf)", lambda v: v >= 0)  # inf: bench.core.accuracy's error of non-finite values
FRACTION = ValueRule("a fraction in (0, 1]", lambda v: (v > 0) & (v <= 1))
VALUE_RULES: dict[str, ValueRule] = {
    **dict.fromkeys(("resolution", "batch", "dim", "heads", "n_win", "topk"), SIZE),
    **dict.fromkeys(("latency_ms_median", "latency_ms_p20", "latency_ms_p80", "latency_ms_ci_low",
                     "latency_ms_ci_high", "throughput", "speedup_vs_ref", "speedup_ci_low", "speedup_ci_high",
                     "timing_spread"), POSITIVE),
    **dict.fromkeys(("peak_mem_mb", "param_mb", "input_mb", "params_m", "gmacs", "gmacs_analytic", "gmacs_unpadded",
                     "gmacs_per_image", "gmacs_per_image_unpadded", "hw_gflops", "tflops_achieved", "pct_of_peak",
                     "load_before", "load_after", "timed_s"), NON_NEGATIVE),
    **dict.fromkeys(("max_abs_err", "rel_err", "ref_rel_err", "err_tolerance"), ERROR),
    **dict.fromkeys(("rounds", "warmup_calls"), COUNT),
    "page_faults": COUNT_MEDIAN, "seed": WHOLE, "tile_efficiency": FRACTION,
}
# (low, high) columns of one row that are ordered, low ≤ high (where both are present). The latency interval
# is one of the median of the log latencies (bench.core.measure.median_interval), which need not hold the
# arithmetic median of latency_ms_median (two middle rounds of 1 and 6 ms: 3.5 against an interval at 2.45):
# only its ends are ordered.
ORDERED_COLUMNS = (("latency_ms_p20", "latency_ms_median"), ("latency_ms_median", "latency_ms_p80"),
                   ("latency_ms_ci_low", "latency_ms_ci_high"),
                   ("speedup_ci_low", "speedup_vs_ref"), ("speedup_vs_ref", "speedup_ci_high"))
# Relative slack between ordered values, for the runner's rounding (quintiles of equal rounds come out an ulp
# below their median).
ORDER_TOLERANCE = 1e-9
# The most a reader reads of a results or metadata file: a device or a runaway file is refused, not read to the end.
MAX_FILE_BYTES = 256 * 2**20
_FILE_KINDS = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a FIFO",
               stat.S_ISSOCK: "a socket"}


def read_file(path: Path, what: str, missing_ok: bool = False) -> bytes | None:
    """The bytes of a results CSV or metadata JSON (``what`` names it in messages); None when it does not exist
    and ``missing_ok``. Only a regular file (a link is followed) of at most MAX_FILE_BYTES is read: a folder,
    device or FIFO is a ResultsFormatError (a FIFO is opened without waiting for a writer, and never read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ResultsFormatError(f"{what} {path} does not exist") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else next(
            (name for test, name in _FILE_KINDS.items() if test(mode)), "a special file")
        link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise ResultsFormatError(f"{path}{link} is {kind}, not a {what}")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ResultsFormatError(f"{path} is larger than {MAX_FILE_BYTES // 2**20} MiB: too large for a {what}")
    return data


def complete_text(path: Path, data: bytes) -> tuple[str, int | None]:
    """The file's text up to its last line break, and the number of the line after it when that line has no
    line break (a row being written, or cut by a kill: no reader takes it for a row), else None. A UTF-8
    byte order mark (Excel writes one) is dropped. ResultsFormatError when it is not UTF-8 text."""
    cut = data.rfind(b"\n") + 1
    try:
        text = data[:cut].decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ResultsFormatError(f"{path} is not a text file: {exc}") from None
    return text, (text.count("\n") + 1 if cut < len(data) else None)


@dataclass(frozen=True)
class Header:
    """A results file's header, checked against its suite's schema (``check_header``)."""

    columns: list[str]  # the file's own, in its order
    suite: str
    late: list[str]  # late columns the file lacks: loaded empty; a writer adds them
    unknown: list[str]  # columns outside the schema: loaded as they are; a writer carries them, empty in new rows


def check_header(path: Path, columns: list[str]) -> Header:
    """The one check of a results header, for readers and the writer alike: its suite's columns are all
    there (but late ones), none twice. Raises ResultsFormatError naming the file otherwise."""
    suite = results_suite(columns)
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ResultsFormatError(f"{path}: the header names column {twice[0]!r} more than once")
    schema, late = SUITES[suite], LATE_COLUMNS[suite]
    missing = [c for c in schema if c not in columns and c not in late]
    if missing:
        raise ResultsFormatError(
            f"{path} is not a results file of this suite (schema {SCHEMA_VERSION}, {suite}): missing columns "
            f"{', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    return Header(columns, suite, [c for c in late if c not in columns], [c for c in columns if c not in schema])


def read_records(path: Path, text: str) -> tuple[Header, list[list[str]]]:
    """The checked header and the rows of a results file's complete text; ResultsFormatError at a row whose
    field count is not the header's (a cut or foreign row)."""
    records = list(csv.reader(io.StringIO(text)))
    header = check_header(path, records[0])
    for line, record in enumerate(records[1:], start=2):
        if len(record) != len(header.columns):
            raise ResultsFormatError(f"{path}, line {line}: {len(record)} fields where the header has "
                                     f"{len(header.columns)}: a cut or foreign row")
    return header, records[1:]


class ResultsWriter:
    """Appends rows to a CSV, one fsync per row, so a killed run loses at most the case in progress.

    ``columns`` is the schema of the file's suite (``COLUMNS`` or ``MODEL_COLUMNS``). An existing file is
    continued: a torn last row is cut, its header is checked like a reader checks it (``check_header``),
    late columns it lacks are added (rewriting it atomically), and rows are written in its own column
    order, columns outside the schema left empty.
    """

    def __init__(self, path: Path, columns: list[str] = COLUMNS) -> None:
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = self._continue()
        if header is None:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(columns)
                _sync(f)
        self.header = header or columns

    def _continue(self) -> list[str] | None:
        """The existing file's header, made ready for appending; None when there is no file (or no line) yet."""
        data = read_file(self.path, "results file", missing_ok=True)
        if data is None:
            return None
        text, torn = complete_text(self.path, data)
        if torn is not None:  # a kill during a write: cut the file back to its last complete line
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        if not text:
            return None
        header, records = read_records(self.path, text)
        if header.suite != results_suite(self.columns):
            raise ResultsFormatError(f"{self.path} holds {header.suite}-suite rows; this run writes "
                                     f"{results_suite(self.columns)}-suite rows")
        if not header.late:
            return header.columns
        columns = [c for c in self.columns if c in header.columns or c in header.late] + header.unknown
        with atomic_write(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(dict(zip(header.columns, record)) for record in records)
        return columns

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        one_line = {k: " ".join(v.splitlines()) if isinstance(v, str) else v for k, v in row.items()}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.header, restval="").writerow(one_line)
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


_TEMPORARY_NUMBERS = itertools.count()
# atomic_write's temporary files: '.<name>.<pid of the writer>-<n>.tmp', beside the file they become
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-(?P<n>\d+)\.tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write ``path`` whole or not at all: yields a temporary path in the same folder for the caller to write
    (name its format where a writer guesses it from the suffix), then fsyncs it and renames it over ``path``.
    When the caller raises, the temporary file is removed and the old file stays; a kill leaves the old file
    (and at worst a hidden ``.<name>.<pid>-<n>.tmp``). An OSError names ``path``, not the temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{next(_TEMPORARY_NUMBERS)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        if exc.errno is None:
            raise OSError(f"cannot write {path}: {exc}") from exc
        exc.filename, exc.filename2 = str(path), None
        raise


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
    """Load a results CSV of either suite and check that it is one of ours and that every row parses
    completely (all fields, a known status, numbers where the schema has numbers and in their ranges,
    ordered intervals, the case's identity present, options as JSON). Raises ResultsFormatError naming the
    file, line and value otherwise. A last line without a line break is left out with a ResultsWarning."""
    path = resolve_results_path(path)
    data = read_file(path, "results file")
    text, torn = complete_text(path, data)
    if not text:
        raise ResultsFormatError(f"results file {path} is empty" + (": its only line has no line break" * bool(data)))
    header, _ = read_records(path, text)
    if torn is not None:
        warnings.warn(ResultsWarning(f"{path}, line {torn} has no line break: a row being written or cut by a "
                                     f"kill; left out"), stacklevel=2)
    # only an empty cell is missing: "n/a" or "None" in a number column is an error, not a silent NaN
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""],
                        dtype={c: str for c in TEXT_COLUMNS[header.suite] | set(header.unknown)})
    for column in header.late:
        frame[column] = float("nan")
    _check_rows(path, frame, header.suite)
    return frame


def _number(value: Any) -> str:
    return repr(float(value))


def _check_rows(path: Path, frame: pd.DataFrame, suite: str) -> None:
    """Raise ResultsFormatError at the first value of ``frame`` that is not what its column holds
    (VALUE_RULES, ORDERED_COLUMNS)."""
    def bad(index: int, column: str, what: str) -> ResultsFormatError:
        return ResultsFormatError(f"{path}, line {index + 2}: {column} {str(frame.at[index, column])!r} {what}")

    for column in IDENTITY_COLUMNS[suite]:
        empty = frame.index[frame[column].isna()]
        if len(empty):
            raise ResultsFormatError(f"{path}, line {empty[0] + 2}: {column} is empty")
    unknown = frame.index[~frame["status"].isin(STATUSES)]
    if len(unknown):
        raise bad(unknown[0], "status", f"is not a status; valid: {', '.join(STATUSES)}")
    for column in [c for c in SUITES[suite] if c not in TEXT_COLUMNS[suite]]:
        if pd.api.types.is_bool_dtype(frame[column]):  # every cell True or False: pandas' booleans, no numbers
            raise bad(frame.index[0], column, "is not a number")
        if not pd.api.types.is_numeric_dtype(frame[column]):
            numbers = pd.to_numeric(frame[column], errors="coerce")
            wrong = frame.index[numbers.isna() & frame[column].notna()]
            if len(wrong):
                raise bad(wrong[0], column, "is not a number")
            frame[column] = numbers
        rule = VALUE_RULES[column]
        values = frame[column].astype(float)
        broken = frame.index[values.notna() & ~rule.holds(values)]
        if len(broken):
            raise ResultsFormatError(f"{path}, line {broken[0] + 2}: {column} {_number(values[broken[0]])} is not "
                                     f"{rule.what}")
    for low, high in ORDERED_COLUMNS:
        if low in frame.columns and high in frame.columns:
            reversed_ = frame.index[frame[low] > frame[high] * (1 + ORDER_TOLERANCE)]
            if len(reversed_):
                index = reversed_[0]
                raise ResultsFormatError(f"{path}, line {index + 2}: {low} {_number(frame.at[index, low])} is above "
                                         f"{high} {_number(frame.at[index, high])}: out of order")
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
    """This process's math modes now (see ``bench.core.settings.Numerics``), as a run's environment records them."""
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


@dataclass(frozen=True)
class JsonType:
    """What a metadata value may be: one of ``kinds`` (keys of JSON_KINDS). An object's ``fields`` say what
    its known keys hold, ``each`` what every other value holds (anything when None); a list's ``each``
    what every item holds."""

    kinds: tuple[str, ...]
    fields: dict[str, JsonType] = field(default_factory=dict)
    each: JsonType | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # JSON true is no number


# kind -> (its name in messages, its test)
JSON_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "count": ("an integer ≥ 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "seconds": ("a number ≥ 0", lambda v: _is_number(v) and v >= 0),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "null": ("null", lambda v: v is None),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "list": ("a list", lambda v: isinstance(v, list)),
}
TEXT, MAYBE_TEXT = JsonType(("string",)), JsonType(("string", "null"))
COUNT_FIELD, MAYBE_COUNT_FIELD = JsonType(("count",)), JsonType(("count", "null"))
FLAG, SECONDS = JsonType(("boolean",)), JsonType(("seconds",))
NUMERICS_FIELDS = {"tf32_matmul": FLAG, "tf32_cudnn": FLAG, "cudnn_benchmark": FLAG, "deterministic": FLAG,
                   "float32_matmul_precision": TEXT}
# ``environment()`` (a node's adds ``numerics_now()``, which it holds too)
ENVIRONMENT = JsonType(("object",), {
    **dict.fromkeys(("gpu_name", "driver", "cuda", "torch", "triton", "xformers", "fvcore", "cpu", "os", "python",
                     "suite_commit"), MAYBE_TEXT),
    "gpu_count": COUNT_FIELD, "cpu_count": MAYBE_COUNT_FIELD, "torch_threads": MAYBE_COUNT_FIELD, "suite_dirty": FLAG,
    **NUMERICS_FIELDS})
# The fields of a run's metadata that readers use (bench.cli, report, compare, remeasure), and what they hold
# when present; others may be there and are not checked.
METADATA = JsonType(("object",), {
    **dict.fromkeys(("run_id", "suite", "gpu_profile", "device_name", "command", "started", "finished"), TEXT),
    "preset": MAYBE_TEXT, "stopped_by": MAYBE_TEXT, "note": TEXT,
    "argv": JsonType(("list",)),  # its words: bench.cli checks them, as it parses them
    **dict.fromkeys(("cases_planned", "rows", "cases_not_started"), COUNT_FIELD),
    "interrupted": FLAG,
    "status_counts": JsonType(("object",), each=COUNT_FIELD),
    "numerics": JsonType(("object",), NUMERICS_FIELDS),
    "environment": ENVIRONMENT,
    "nodes": JsonType(("object",), each=ENVIRONMENT),  # node name -> its environment
    "resumed": JsonType(("list",), each=JsonType(("object",), {"at": TEXT, "environment": ENVIRONMENT})),
    "ray": JsonType(("object",), {"address": TEXT, "retries": COUNT_FIELD}),
    "timing": JsonType(("object",), {
        "rounds": TEXT, "min_time_s_per_pass": SECONDS, "noise_limit": SECONDS,
        **dict.fromkeys(("min_rounds", "sittings", "warmup_rounds", "retry_noisy", "workers"), COUNT_FIELD),
        "max_rounds": MAYBE_COUNT_FIELD, "threads_per_worker": MAYBE_COUNT_FIELD,
        **dict.fromkeys(("l2_flush", "cuda_graphs"), FLAG),
        "cpu_allocator": MAYBE_TEXT, "speedup_interval": TEXT,
        "warmup": JsonType(("object",), {"min_calls": COUNT_FIELD, "max_calls": COUNT_FIELD, "max_s": SECONDS,
                                         "settled_when": TEXT})}),
})


def _check_json(path: Path, value: Any, expected: JsonType, where: str) -> None:
    """ResultsFormatError at the first value in ``value`` (at field path ``where``, "" for the top) that
    ``expected`` rules out."""
    if not any(JSON_KINDS[kind][1](value) for kind in expected.kinds):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ResultsFormatError(f"run metadata {path}: {where!r} is {shown}, not "
                                 f"{' or '.join(JSON_KINDS[kind][0] for kind in expected.kinds)}")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        inner = expected.fields.get(key, expected.each) if isinstance(value, dict) else expected.each
        if inner is not None:
            _check_json(path, item, inner, f"{where}[{key}]" if isinstance(value, list) else
                        f"{where}.{key}" if where else key)


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write the run's JSON atomically (a kill leaves the old or the new file, never half)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")


def read_metadata(path: str | os.PathLike, missing_ok: bool = False) -> dict[str, Any] | None:
    """The run's ``<run-id>.json``, checked to be a run's metadata (its fields' types: METADATA);
    ResultsFormatError naming the file, the field and the value when it is not, or when it does not
    exist (None instead with ``missing_ok``)."""
    path = resolve_results_path(path).with_suffix(".json")
    data = read_file(path, "run metadata file", missing_ok)
    if data is None:
        return None
    try:
        metadata = json.loads(data.decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsFormatError(f"run metadata {path} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise ResultsFormatError(f"run metadata {path} holds a JSON {type(metadata).__name__}, not the object "
                                 f"a run writes")
    _check_json(path, metadata, METADATA, "")
    return metadata


@contextlib.contextmanager
def results_warnings() -> Iterator[list[str]]:
    """Collect the ResultsWarnings raised inside the block (their messages, in the list it yields, filled when
    the block ends) for a caller that lists warnings of its own; other warnings pass on as they were."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        yield messages
    for warning in caught:
        if issubclass(warning.category, ResultsWarning):
            messages.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


@contextlib.contextmanager
def one_line_results_warnings(program: str) -> Iterator[None]:
    """Inside the block, a ResultsWarning prints as one line on stderr ('<program>: warning: ...'), without
    Python's file and source line: it is about the user's file, not about our code."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, ResultsWarning):
            print(f"{program}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def warn_row_count(path: Path, metadata: dict[str, Any], rows: int) -> None:
    """A ResultsWarning when the run's metadata counts other rows than ``rows``, those loaded from ``path``
    (a run still being written, a cut row, or rows lost or added by hand)."""
    if "rows" in metadata and metadata["rows"] != rows:
        warnings.warn(ResultsWarning(f"{resolve_results_path(path)}: {rows} rows loaded, but its metadata says the "
                                     f"run wrote {metadata['rows']}"), stacklevel=2)


def now_iso(timespec: str = "seconds") -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec=timespec)
