"""Results files (``results/<gpu>/<run-id>.csv``, one row per case): the header check, durable appends, the
run's lock, and loading with validation. A run appends and fsyncs each row as its case completes."""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import json
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.schema.columns import (COLUMNS, EARLIER_VALUES, IDENTITY_COLUMNS, LATE_COLUMNS, MEASURED_STATUSES,
                                  ORDER_TOLERANCE, ORDERED_COLUMNS, SCHEMA_VERSION, STATUSES, SUITES, TEXT_COLUMNS,
                                  VALUE_RULES, results_suite)
from bench.schema.errors import ResultsFormatError, ResultsWarning
from bench.schema.migrations import check_version, declared_version, migrate_rows, rows_version
from bench.schema.storage import atomic_write, complete_text, read_file, resolve_results_path, sync


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
    late columns it lacks are added (rewriting it atomically; its rows hold EARLIER_VALUES there), and rows
    are written in its own column order, columns outside the schema left empty.
    """

    def __init__(self, path: Path, columns: list[str] = COLUMNS) -> None:
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = self._continue()
        if header is None:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(columns)
                sync(f)
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
            earlier = {c: EARLIER_VALUES[c] for c in header.late if c in EARLIER_VALUES}
            writer.writerows({**earlier, **dict(zip(header.columns, record))} for record in records)
        return columns

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        one_line = {k: " ".join(v.splitlines()) if isinstance(v, str) else v for k, v in row.items()}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.header, restval="").writerow(one_line)
            sync(f)


def now_iso(timespec: str = "seconds") -> str:
    """Now, in UTC, as ISO 8601 text: the rows' timestamps and the metadata's times."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec=timespec)


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


def completed_case_keys(path: Path) -> set[str]:
    """Keys of the cases that already have a row (any status) in a results file."""
    return set(load_results(path)["case_key"]) if Path(path).exists() else set()


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Load a results CSV of either suite, migrated to the current schema version (bench.schema.migrations),
    and check that it is one of ours and that every row parses completely (all fields, a known status,
    numbers where the schema has numbers and in their ranges, ordered intervals, the case's identity
    present, options as JSON). Raises ResultsFormatError naming the file, line and value otherwise, and
    when its metadata names a newer schema version than this code's. A last line without a line break is
    left out with a ResultsWarning."""
    path = resolve_results_path(path)
    data = read_file(path, "results file")
    check_version(path, declared_version(path))
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
    migrate_rows(frame, header.suite, rows_version(header.columns, header.suite))
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
