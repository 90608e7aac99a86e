"""Migrations: explicit, ordered steps that bring the files of schema version n to version n + 1. The readers
(``load_results``, ``read_metadata``) apply them, so that every caller sees files of the current version.

A run's version is the ``schema_version`` of its metadata (``<run-id>.json``); metadata without one is of
version 1. A results CSV records no version of its own: its header says what it lacks (only files of schema 1
lack the late columns), and a CSV whose metadata names a version newer than this code's is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from bench.schema.columns import EARLIER_VALUES, HELD_SINCE, LATE_COLUMNS, METHODS, SCHEMA_VERSION, TEXT_COLUMNS
from bench.schema.errors import ResultsFormatError
from bench.schema.storage import metadata_path, read_file

UNVERSIONED = 1  # the version of metadata without a schema_version (and of a CSV without metadata)


@dataclass(frozen=True)
class Migration:
    """The step from files of version ``source`` to ``source + 1``: ``metadata`` returns the run metadata of
    the new version (without its schema_version, which the reader sets); ``rows`` adds to a loaded frame of
    the suite what files of the new version hold."""

    source: int
    summary: str
    metadata: Callable[[dict[str, Any]], dict[str, Any]]
    rows: Callable[[pd.DataFrame, str], None]


def _metadata_1_to_2(metadata: dict[str, Any]) -> dict[str, Any]:
    """Version 1 recorded one method, late: its speedup intervals' (``timing.speedup_interval``). The others,
    and that one where it is absent, are unrecorded (None): nothing in the file says which they were."""
    timing = metadata.get("timing")
    speedup = timing.get("speedup_interval") if isinstance(timing, dict) else None
    return {**metadata, "methods": {**dict.fromkeys(METHODS), "speedup_interval": speedup}}


def _add_empty(frame: pd.DataFrame, suite: str, version: int) -> None:
    """The columns files hold from ``version`` on that the frame lacks, after its own columns: empty, or
    holding what earlier rows hold in them (EARLIER_VALUES)."""
    for column in LATE_COLUMNS[suite]:
        if HELD_SINCE[column] == version and column not in frame.columns:
            text = column in TEXT_COLUMNS[suite]
            frame[column] = pd.Series(EARLIER_VALUES.get(column) if text else float("nan"), index=frame.index,
                                      dtype="str" if text else "float64")


def _rows_1_to_2(frame: pd.DataFrame, suite: str) -> None:
    """The late columns a file of schema 1 lacks load empty (NaN)."""
    _add_empty(frame, suite, 2)


def _rows_2_to_3(frame: pd.DataFrame, suite: str) -> None:
    """Every case of a file of schema 2 ran eager (its compile column says so); the compile measurements are
    empty."""
    _add_empty(frame, suite, 3)


MIGRATIONS = (
    Migration(1, "metadata: schema_version and methods (the speedup interval method from timing.speedup_interval "
                 "where recorded, every other method unrecorded: null); rows: the late columns a file lacks, empty",
              _metadata_1_to_2, _rows_1_to_2),
    Migration(2, "rows: compile (eager: every earlier case ran uncompiled) and the compile measurements, empty; "
                 "metadata unchanged", dict, _rows_2_to_3),
)


def check_version(path: str | os.PathLike, version: int) -> None:
    """ResultsFormatError, naming both versions, when ``version`` (of the file at ``path``) is newer than
    this code reads."""
    if version > SCHEMA_VERSION:
        raise ResultsFormatError(f"{path} is of schema version {version}; this code reads versions "
                                 f"{UNVERSIONED} to {SCHEMA_VERSION}: update the suite to read it")


def declared_version(results_path: str | os.PathLike) -> int:
    """The schema version the metadata beside a results file names: UNVERSIONED without metadata or without
    a version, and where it cannot be read (``read_metadata`` says why to those who read it)."""
    try:
        data = read_file(metadata_path(results_path), "run metadata file", missing_ok=True)
        metadata = json.loads(data.decode("utf-8-sig")) if data is not None else None
    except (ResultsFormatError, json.JSONDecodeError, UnicodeDecodeError):
        return UNVERSIONED
    version = metadata.get("schema_version") if isinstance(metadata, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else UNVERSIONED


def migrate_metadata(path: str | os.PathLike, metadata: dict[str, Any]) -> dict[str, Any]:
    """A run's metadata (read from ``path``, its types checked) in the current version: each step from its
    version on applied in turn. ResultsFormatError when it is newer than this code."""
    version = metadata.get("schema_version", UNVERSIONED)
    check_version(path, version)
    for step in MIGRATIONS[version - UNVERSIONED:]:
        metadata = {**step.metadata(metadata), "schema_version": step.source + 1}
    return metadata


def rows_version(columns: list[str], suite: str) -> int:
    """The version of a results header's rows, as far as its columns tell: the one before the earliest version
    whose columns it lacks (a late column: version 2; only writers of schema 1 left them out), else the current
    one (a header of schema 1 with every late column holds what one of schema 2 holds)."""
    lacking = [HELD_SINCE[c] for c in LATE_COLUMNS[suite] if c not in columns]
    return min(lacking) - 1 if lacking else SCHEMA_VERSION


def migrate_rows(frame: pd.DataFrame, suite: str, version: int) -> None:
    """Bring a loaded frame of the suite's rows from ``version`` to the current one, in place."""
    for step in MIGRATIONS[version - UNVERSIONED:]:
        step.rows(frame, suite)
