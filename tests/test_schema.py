"""The declared row schema, its versions and migrations, and the generated docs/schema.md, checked against the
committed real runs of results/cpu (nothing is timed here)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.core.statistics import SPEEDUP_INTERVAL_METHOD
from bench.core.methods import measurement_methods
from bench.schema.columns import (BOTH, EAGER, HELD_SINCE, LATE_COLUMNS, METHODS, SCHEMA_VERSION, SIZE, SUITES, Column,
                                  results_suite, suite_columns)
from bench.schema.docs import DOCS_PATH, REGENERATE, schema_markdown
from bench.schema.errors import ResultsFormatError
from bench.schema.files import load_results
from bench.schema.metadata import read_metadata, versioned_metadata, write_metadata
from bench.schema.migrations import MIGRATIONS, rows_version

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "results" / "cpu"
REAL_RUNS = sorted(REAL.glob("*.csv"))
# The committed runs written before files named their version (schema 1), and those written by the current code.
UNVERSIONED_RUNS = [path for path in REAL_RUNS
                    if "schema_version" not in json.loads(path.with_suffix(".json").read_text())]
CURRENT_RUNS = [path for path in REAL_RUNS if path not in UNVERSIONED_RUNS]


def header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def copy_run(source: Path, folder: Path) -> Path:
    target = folder / source.name
    shutil.copyfile(source, target)
    shutil.copyfile(source.with_suffix(".json"), target.with_suffix(".json"))
    return target


def rewrite_metadata(path: Path, **fields) -> None:
    """Set ``fields`` in the raw JSON beside ``path`` (no reader, no migration in between)."""
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps({**json.loads(json_path.read_text()), **fields}))


# --------------------------------------------------------------------------------------------
# the declaration and the tables derived from it
# --------------------------------------------------------------------------------------------

def test_the_committed_runs_cover_both_suites():
    assert {results_suite(header(path)) for path in REAL_RUNS} == set(SUITES)


@pytest.mark.parametrize("csv_path", REAL_RUNS, ids=lambda p: p.stem)
def test_a_committed_header_is_the_derived_header_less_late_columns_at_its_end(csv_path):
    """Files grew by late columns at their end: every committed header is the start of its suite's derived
    header, and what it lacks of it is late (loaded empty)."""
    columns = header(csv_path)
    schema = SUITES[results_suite(columns)]
    assert columns == schema[:len(columns)]
    assert set(schema[len(columns):]) <= set(LATE_COLUMNS[results_suite(columns)])


@pytest.mark.parametrize("facts, message", [
    (dict(kind="number"), "a number column needs a value rule"),
    (dict(kind="text", rule=SIZE), "a text column has none"),
    (dict(kind="string"), "kind 'string' is not 'text' or 'number'"),
    (dict(kind="text", suites=("videos",)), "suites \\['videos'\\] must be some of attentions, models"),
    (dict(kind="text", suites=("models",), identifies=("attentions",)), "identifies cases of \\['attentions'\\]"),
    (dict(kind="text", since=SCHEMA_VERSION + 1), f"since {SCHEMA_VERSION + 1} is not a schema version"),
])
def test_a_column_declared_wrongly_is_refused_naming_it(facts, message):
    with pytest.raises(ValueError, match=message) as refused:
        Column(**{"name": "foo", "suites": BOTH, "doc": "a column", **facts})
    assert "'foo'" in str(refused.value)


def test_a_name_declared_twice_or_placed_after_no_column_is_refused():
    first = Column("foo", "text", BOTH, "a column")
    with pytest.raises(ValueError, match="column 'foo' is declared more than once"):
        suite_columns((first, first), "models")
    lost = Column("bar", "text", BOTH, "a column", model_after="nowhere")
    with pytest.raises(ValueError, match="'bar' follows 'nowhere' in the models suite, which has no such column"):
        suite_columns((first, lost), "models")


# --------------------------------------------------------------------------------------------
# versions and migrations
# --------------------------------------------------------------------------------------------

def test_migrations_lead_from_every_older_version_to_the_current():
    assert [step.source for step in MIGRATIONS] == list(range(1, SCHEMA_VERSION))


def test_unversioned_metadata_is_migrated_from_what_it_records():
    """The committed runs are of version 1: each reads as the current version, its own fields kept, its speedup
    interval method the one its timing names (unrecorded, None, in the runs from before it was named), every
    other method unrecorded."""
    speedup_methods = []
    for csv_path in UNVERSIONED_RUNS:
        raw = json.loads(csv_path.with_suffix(".json").read_text())
        assert "schema_version" not in raw
        metadata = read_metadata(csv_path)
        assert metadata["schema_version"] == SCHEMA_VERSION
        assert {key: metadata[key] for key in raw} == raw
        recorded = raw["timing"].get("speedup_interval")
        assert metadata["methods"] == {**dict.fromkeys(METHODS), "speedup_interval": recorded}
        speedup_methods.append(recorded)
    assert None in speedup_methods and SPEEDUP_INTERVAL_METHOD in speedup_methods  # both kinds of run are there


@pytest.mark.parametrize("csv_path", UNVERSIONED_RUNS, ids=lambda p: p.stem)
def test_rows_of_schema_1_load_with_the_late_columns_they_lack_empty_and_compile_eager(csv_path):
    """Every case of a run of before the compile mode ran eager: its compile column says so, and every other column
    it lacks (the late ones, the compile measurements) loads empty."""
    columns = header(csv_path)
    lacking = [c for c in LATE_COLUMNS[results_suite(columns)] if c not in columns]
    frame = load_results(csv_path)
    assert list(frame.columns) == columns + lacking
    assert "compile" in lacking and (frame["compile"] == EAGER).all()
    assert frame[[c for c in lacking if c != "compile"]].isna().all().all()
    assert len(frame) == read_metadata(csv_path)["rows"]


@pytest.mark.parametrize("csv_path", UNVERSIONED_RUNS[-2:], ids=lambda p: p.stem)
def test_rows_of_schema_2_load_with_compile_eager_and_the_compile_measurements_empty(csv_path, tmp_path):
    """A file of schema 2 (every column of then, none of version 3's) migrates one step: compile eager, the compile
    measurements empty, every value it holds as it held it."""
    schema_3 = [c for c, since in HELD_SINCE.items() if since == 3]
    loaded = load_results(csv_path)
    path = tmp_path / csv_path.name
    loaded.drop(columns=schema_3).to_csv(path, index=False)
    metadata = read_metadata(csv_path)
    write_metadata(path.with_suffix(".json"), {**metadata, "schema_version": 2})
    suite = results_suite(header(path))
    assert rows_version(header(path), suite) == 2 and HELD_SINCE["compile"] == 3
    frame = load_results(path)
    assert list(frame.columns) == SUITES[suite]
    assert (frame["compile"] == EAGER).all() and len(frame) == metadata["rows"]
    assert frame[[c for c in schema_3 if c != "compile"]].isna().all().all()
    pd.testing.assert_frame_equal(frame.drop(columns=schema_3), loaded.drop(columns=schema_3))


@pytest.mark.parametrize("csv_path", CURRENT_RUNS, ids=lambda p: p.stem)
def test_a_run_of_the_current_version_loads_as_written(csv_path):
    """A run the current code wrote names its version and methods, and holds every column of its suite: it loads
    without a migration, its compile modes as its rows name them."""
    raw = json.loads(csv_path.with_suffix(".json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and read_metadata(csv_path) == raw
    assert header(csv_path) == SUITES[results_suite(header(csv_path))]
    frame = load_results(csv_path)
    assert len(frame) == raw["rows"] and frame["compile"].notna().all()


def test_the_committed_runs_hold_both_kinds():
    assert UNVERSIONED_RUNS and CURRENT_RUNS


def test_a_versioned_run_reads_back_its_methods_unmigrated(tmp_path):
    """A run that names its version and methods (the oldest committed one, whose timing names no speedup
    interval method) reads back with the methods it names: no migration step guesses over them."""
    path = copy_run(REAL_RUNS[0], tmp_path)
    raw = json.loads(path.with_suffix(".json").read_text())
    assert "speedup_interval" not in raw["timing"]
    write_metadata(path.with_suffix(".json"), {**raw, **versioned_metadata(measurement_methods())})
    metadata = read_metadata(path)
    assert metadata["schema_version"] == SCHEMA_VERSION and metadata["methods"] == measurement_methods()
    assert metadata["methods"]["speedup_interval"] == SPEEDUP_INTERVAL_METHOD
    assert len(load_results(path)) == raw["rows"]


def test_a_run_of_a_newer_version_is_refused_naming_both_versions(tmp_path):
    path = copy_run(REAL_RUNS[-1], tmp_path)
    rewrite_metadata(path, schema_version=SCHEMA_VERSION + 1)
    for read in (read_metadata, load_results):
        with pytest.raises(ResultsFormatError) as refused:
            read(path)
        message = str(refused.value)
        assert f"schema version {SCHEMA_VERSION + 1}" in message and f"to {SCHEMA_VERSION}:" in message, message


@pytest.mark.parametrize("fields, message", [
    (dict(schema_version=0), "'schema_version' is 0, not an integer ≥ 1"),
    (dict(schema_version="2"), "'schema_version' is '2', not an integer ≥ 1"),
    (dict(schema_version=True), "'schema_version' is True, not an integer ≥ 1"),
    (dict(methods={"timing": 3}), "'methods.timing' is 3, not a string or null"),
    (dict(registry=["bra"]), "'registry' is \\['bra'\\], not an object"),
    (dict(schema_version=SCHEMA_VERSION), "does not name the methods timing, latency_interval, speedup_interval, "
                                          "flops in 'methods'"),
    (dict(schema_version=SCHEMA_VERSION, methods={"timing": "t", "latency_interval": None, "speedup_interval": None}),
     "does not name the method flops in 'methods'"),
])
def test_metadata_of_a_wrong_version_or_methods_is_refused_naming_them(tmp_path, fields, message):
    path = copy_run(UNVERSIONED_RUNS[-1], tmp_path)
    rewrite_metadata(path, **fields)
    with pytest.raises(ResultsFormatError, match=message):
        read_metadata(path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("flops"), "missing flops; a run names exactly"),
    (lambda m: m.update(gpu="x"), "unknown gpu; a run names exactly"),
    (lambda m: m.update(timing=""), "method 'timing' is '', not an identifier"),
    (lambda m: m.update(timing=None), "method 'timing' is None, not an identifier"),
])
def test_versioned_metadata_refuses_methods_other_than_declared(change, message):
    methods = measurement_methods()
    change(methods)
    with pytest.raises(ValueError, match=message):
        versioned_metadata(methods)


# --------------------------------------------------------------------------------------------
# no torch, and the generated reference
# --------------------------------------------------------------------------------------------

def test_the_schema_needs_no_torch():
    """Every module of bench.schema imports, and reads a committed run, where torch cannot be imported."""
    code = f"""
import importlib, pkgutil, sys
sys.modules["torch"] = None
try:
    import bench.core.machine
except ImportError:
    pass
else:
    sys.exit("torch was importable: the check checks nothing")
import bench.schema
for module in pkgutil.iter_modules(bench.schema.__path__):
    importlib.import_module("bench.schema." + module.name)
from bench.schema.files import load_results
from bench.schema.metadata import read_metadata
assert len(load_results({str(REAL_RUNS[-1])!r})) == read_metadata({str(REAL_RUNS[-1])!r})["rows"]
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_committed_schema_docs_are_generated_from_the_declaration():
    assert DOCS_PATH.read_text() == schema_markdown(measurement_methods()), (
        f"{DOCS_PATH} is not what the declaration generates: regenerate it with `{REGENERATE}`")
