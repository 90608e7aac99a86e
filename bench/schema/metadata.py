"""Run metadata (``<run-id>.json``): what each field a reader uses may hold, checked when it is read, written
atomically, and migrated to the current schema version as it is read (bench.schema.migrations)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from bench.schema.columns import METHODS, SCHEMA_VERSION
from bench.schema.errors import ResultsFormatError, ResultsWarning
from bench.schema.migrations import migrate_metadata
from bench.schema.storage import atomic_write, metadata_path, read_file, resolve_results_path


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


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# kind -> (its name in messages, its test)
JSON_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "count": ("an integer ≥ 0", _is_count),
    "version": ("an integer ≥ 1", lambda v: _is_count(v) and v >= 1),
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
# ``bench.core.machine.environment()`` (a node's adds ``numerics_now()``, which it holds too)
ENVIRONMENT = JsonType(("object",), {
    **dict.fromkeys(("gpu_name", "driver", "cuda", "torch", "triton", "xformers", "fvcore", "cpu", "os", "python",
                     "suite_commit", "cpp_compiler"), MAYBE_TEXT),
    "gpu_count": COUNT_FIELD, "cpu_count": MAYBE_COUNT_FIELD, "torch_threads": MAYBE_COUNT_FIELD, "suite_dirty": FLAG,
    **NUMERICS_FIELDS})
# The fields of a run's metadata that readers use (bench.cli, report, compare, remeasure), and what they hold
# when present; others may be there and are not checked.
METADATA = JsonType(("object",), {
    "schema_version": JsonType(("version",)),
    "methods": JsonType(("object",), each=MAYBE_TEXT),  # METHODS' identifiers; null: unrecorded
    "registry": JsonType(("object",)),  # the registry the run measured (its own format)
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
    # the plugins the run loaded (attentions.plugins.Plugin.to_json): what they registered, what installed them
    "plugins": JsonType(("list",), each=JsonType(("object",), {
        "module": TEXT, "source": TEXT, "distribution": MAYBE_TEXT, "version": MAYBE_TEXT,
        "families": JsonType(("list",)), "backends": JsonType(("list",))})),
    "timing": JsonType(("object",), {
        "rounds": TEXT, "min_time_s_per_pass": SECONDS, "noise_limit": SECONDS,
        **dict.fromkeys(("min_rounds", "sittings", "warmup_rounds", "retry_noisy", "workers"), COUNT_FIELD),
        "max_rounds": MAYBE_COUNT_FIELD, "threads_per_worker": MAYBE_COUNT_FIELD,
        **dict.fromkeys(("l2_flush", "cuda_graphs"), FLAG),
        "cpu_allocator": MAYBE_TEXT, "speedup_interval": TEXT,
        "warmup": JsonType(("object",), {"min_calls": COUNT_FIELD, "max_calls": COUNT_FIELD, "max_s": SECONDS,
                                         "settled_when": TEXT})}),
})


def versioned_metadata(methods: Mapping[str, str]) -> dict[str, Any]:
    """The fields that version a new run's metadata: ``schema_version`` (this code's) and ``methods``, the
    identifiers of the methods its rows are made by (``bench.core.methods.measurement_methods()``), one
    string for each key of METHODS. ValueError naming the key otherwise."""
    unknown, missing = sorted(set(methods) - set(METHODS)), [key for key in METHODS if key not in methods]
    problems = ([f"unknown {', '.join(unknown)}"] if unknown else []) + ([f"missing {', '.join(missing)}"]
                                                                       if missing else [])
    if problems:
        raise ValueError(f"methods {sorted(methods)!r}: {'; '.join(problems)}; a run names exactly "
                         f"{', '.join(METHODS)}")
    for key, identifier in methods.items():
        if not isinstance(identifier, str) or not identifier:
            raise ValueError(f"method {key!r} is {identifier!r}, not an identifier (a non-empty string)")
    return {"schema_version": SCHEMA_VERSION, "methods": {key: methods[key] for key in METHODS}}


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
    """The run's ``<run-id>.json``, checked to be a run's metadata (its fields' types: METADATA) and migrated
    to the current schema version (it then names every method of METHODS, null where unrecorded).
    ResultsFormatError naming the file, the field and the value when it is not, when it is of a newer
    version than this code, or when it does not exist (None instead with ``missing_ok``)."""
    path = metadata_path(path)
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
    metadata = migrate_metadata(path, metadata)
    missing = [key for key in METHODS if key not in metadata.get("methods", {})]
    if missing:
        raise ResultsFormatError(f"run metadata {path} (schema version {metadata['schema_version']}) does not name "
                                 f"the method{'s' * (len(missing) > 1)} {', '.join(missing)} in 'methods': a run "
                                 f"names {', '.join(METHODS)} (null where unrecorded)")
    return metadata


def warn_row_count(path: Path, metadata: dict[str, Any], rows: int) -> None:
    """A ResultsWarning when the run's metadata counts other rows than ``rows``, those loaded from ``path``
    (a run still being written, a cut row, or rows lost or added by hand)."""
    if "rows" in metadata and metadata["rows"] != rows:
        warnings.warn(ResultsWarning(f"{resolve_results_path(path)}: {rows} rows loaded, but its metadata says the "
                                     f"run wrote {metadata['rows']}"), stacklevel=2)
