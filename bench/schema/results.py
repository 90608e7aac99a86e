"""Transitional: every name importable from this module before the schema was split by job, re-exported from
the module that now holds it (bench.schema.columns, errors, storage, files, metadata; the machine facts from
bench.core.machine). Import from those modules instead; this one goes once the tree does.

The machine facts need torch and are imported on first use, so that importing this module needs no torch."""

from __future__ import annotations

from typing import Any

from bench.schema.columns import (COLUMNS, COUNT, COUNT_MEDIAN, ERROR, FRACTION, IDENTITY_COLUMNS, LATE_COLUMNS,
                                  MEASURED_STATUSES, MODEL_COLUMNS, NON_NEGATIVE, ORDER_TOLERANCE, ORDERED_COLUMNS,
                                  PLACEMENT_COLUMNS, POSITIVE, REQUIRED_COLUMNS, SCHEMA_VERSION, SIZE, STATUSES,
                                  SUITES, TEXT_COLUMNS, VALUE_RULES, WHOLE, ValueRule, results_suite)
from bench.schema.errors import ResultsFormatError, ResultsWarning, one_line_results_warnings, results_warnings
from bench.schema.files import (Header, ResultsWriter, RunInUseError, RunLock, check_header, completed_case_keys,
                                load_results, now_iso, read_records)
from bench.schema.metadata import (COUNT_FIELD, ENVIRONMENT, FLAG, JSON_KINDS, MAYBE_COUNT_FIELD, MAYBE_TEXT,
                                   METADATA, NUMERICS_FIELDS, SECONDS, TEXT, JsonType, read_metadata, warn_row_count,
                                   write_metadata)
from bench.schema.storage import (MAX_FILE_BYTES, TEMPORARY_NAME, atomic_write, complete_text, read_file,
                                  resolve_results_path)

MACHINE_FACTS = ("cpu_name", "environment", "numerics_now")

__all__ = [
    "COLUMNS", "COUNT", "COUNT_FIELD", "COUNT_MEDIAN", "ENVIRONMENT", "ERROR", "FLAG", "FRACTION", "Header",
    "IDENTITY_COLUMNS", "JSON_KINDS", "JsonType", "LATE_COLUMNS", "MAX_FILE_BYTES", "MAYBE_COUNT_FIELD",
    "MAYBE_TEXT", "MEASURED_STATUSES", "METADATA", "MODEL_COLUMNS", "NON_NEGATIVE", "NUMERICS_FIELDS",
    "ORDERED_COLUMNS", "ORDER_TOLERANCE", "PLACEMENT_COLUMNS", "POSITIVE", "REQUIRED_COLUMNS", "ResultsFormatError",
    "ResultsWarning", "ResultsWriter", "RunInUseError", "RunLock", "SCHEMA_VERSION", "SECONDS", "SIZE", "STATUSES",
    "SUITES", "TEMPORARY_NAME", "TEXT", "TEXT_COLUMNS", "VALUE_RULES", "ValueRule", "WHOLE", "atomic_write",
    "check_header", "complete_text", "completed_case_keys", "load_results", "now_iso", "one_line_results_warnings",
    "read_file", "read_metadata", "read_records", "resolve_results_path", "results_suite", "results_warnings",
    "warn_row_count", "write_metadata", *MACHINE_FACTS,
]


def __getattr__(name: str) -> Any:
    """``cpu_name``, ``environment`` and ``numerics_now``, from bench.core.machine (which imports torch)."""
    if name in MACHINE_FACTS:
        from bench.core import machine
        return getattr(machine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
