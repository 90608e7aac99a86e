"""Result and report files under faults (issue 23): foreign columns, impossible numbers, a byte order mark,
devices and folders where files belong, torn last rows, metadata of the wrong types, kills and full disks
while a report is written, and folders holding a file that does not load.

The rows are the committed real runs of results/cpu (nothing is timed here); each fault is injected into a copy.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

import bench.schema.storage
from bench import cli
from bench.core.measure import Timing
from bench.core.statistics import median_interval
from bench.report.catalog import PLOTS, names
from bench.report.build import collect_results
from bench.schema.columns import COLUMNS, MODEL_COLUMNS, SUITES, TEXT_COLUMNS, VALUE_RULES
from bench.schema.errors import ResultsFormatError, ResultsWarning
from bench.schema.files import ResultsWriter, load_results
from bench.schema.metadata import read_metadata, write_metadata
from bench.schema.storage import atomic_write

REAL = Path(__file__).resolve().parent.parent / "results" / "cpu"
ATTENTION_RUN = REAL / "20261205T091110Z-bra56-topk4.csv"  # 10 rows: ok, noisy and unsupported
MODEL_RUN = REAL / "20261205T091147Z-models.csv"  # 28 rows of whole backbones
OTHER_RUN = REAL / "20261205T083834Z-default.csv"  # rows appended to a copy of ATTENTION_RUN
BOM = "\ufeff".encode()


def copy_run(source: Path, folder: Path, name: str = "run", current: bool = True) -> Path:
    """A copy of a real run (its .csv and .json) as ``<folder>/<name>.csv``; ``current``: with the late columns
    the committed runs predate (the latency interval), empty, added as a resume adds them (ResultsWriter)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.csv"
    shutil.copyfile(source, target)
    shutil.copyfile(source.with_suffix(".json"), target.with_suffix(".json"))
    if current:
        ResultsWriter(target, MODEL_COLUMNS if source == MODEL_RUN else COLUMNS)
    return target


def read_records(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write_records(path: Path, records: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(records)


def set_cells(path: Path, line: int, cells: dict[str, str]) -> None:
    """Put the values of ``cells`` into their columns of the row on ``line`` (the header is line 1)."""
    records = read_records(path)
    for column, value in cells.items():
        records[line - 1][records[0].index(column)] = value
    write_records(path, records)


def rows_to_append(count: int) -> list[dict]:
    """Real rows of another run, as a runner hands them to ResultsWriter (empty cells as None)."""
    frame = load_results(OTHER_RUN).iloc[:count]
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ResultsWarning)]


# --------------------------------------------------------------------------------------------
# 1. one header check for readers and the writer; unknown columns are carried
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("current", [True, False], ids=["current schema", "without late columns"])
def test_a_resumed_file_keeps_its_extra_column(tmp_path, current):
    """A run's file with a column outside the schema: a resume's writer appends two rows, and every row loads
    afterwards, the extra column's old values intact, empty in the new rows. A file of the current schema
    is appended to as it is; one without the late columns gets them, the extra column kept."""
    path = copy_run(ATTENTION_RUN, tmp_path, current=current)
    records = read_records(path)
    notes = [f"rack {7 * i + 3}" for i in range(len(records) - 1)]
    write_records(path, [record + [note] for record, note in zip(records, ["site", *notes])])
    before = path.read_bytes()
    old = load_results(path)

    writer = ResultsWriter(path)
    for row in rows_to_append(2):
        writer.append(row)

    frame = load_results(path)
    assert len(frame) == len(old) + 2
    assert list(frame["site"].iloc[:len(old)]) == notes and frame["site"].iloc[len(old):].isna().all()
    assert list(frame["case_key"].iloc[len(old):]) == [row["case_key"] for row in rows_to_append(2)]
    pd.testing.assert_frame_equal(frame.iloc[:len(old)][old.columns], old, check_dtype=False)
    assert read_records(path)[0] == COLUMNS + ["site"]
    assert path.read_bytes().startswith(before) == current


@pytest.mark.parametrize("header, message", [
    (["name", "score"], "not a results file of this suite"),
    (COLUMNS + ["status"], "column 'status' more than once"),
])
def test_the_writer_refuses_a_header_as_readers_do(tmp_path, header, message):
    """The writer checks a header with the readers' own check: it never appends to what they refuse."""
    path = tmp_path / "run.csv"
    write_records(path, [header])
    with pytest.raises(ResultsFormatError, match=message) as read:
        load_results(path)
    with pytest.raises(ResultsFormatError, match=message) as written:
        ResultsWriter(path)
    assert str(read.value) == str(written.value)
    assert read_records(path) == [header]


def test_the_writer_refuses_a_file_of_the_other_suite(tmp_path):
    path = copy_run(MODEL_RUN, tmp_path)
    before = path.read_bytes()
    with pytest.raises(ResultsFormatError, match="models-suite rows; this run writes attentions-suite rows"):
        ResultsWriter(path, COLUMNS)
    assert path.read_bytes() == before


# --------------------------------------------------------------------------------------------
# 2. values in their ranges, intervals ordered
# --------------------------------------------------------------------------------------------

def test_every_number_column_has_a_value_rule():
    for suite, columns in SUITES.items():
        assert {c for c in columns if c not in TEXT_COLUMNS[suite]} <= set(VALUE_RULES), suite


# (run, line of a measured row, column, the value put there)
BAD_VALUES = [
    (ATTENTION_RUN, 2, "latency_ms_median", "-5"),
    (ATTENTION_RUN, 2, "latency_ms_median", "inf"),
    (ATTENTION_RUN, 3, "latency_ms_p20", "0"),
    (ATTENTION_RUN, 4, "latency_ms_ci_high", "-inf"),
    (ATTENTION_RUN, 2, "speedup_vs_ref", "-53.5"),
    (ATTENTION_RUN, 6, "speedup_ci_high", "inf"),
    (ATTENTION_RUN, 2, "timing_spread", "0"),
    (ATTENTION_RUN, 2, "throughput", "-8.9"),
    (ATTENTION_RUN, 3, "rounds", "12.5"),
    (ATTENTION_RUN, 3, "rounds", "-10"),
    (ATTENTION_RUN, 2, "warmup_calls", "-3"),
    (ATTENTION_RUN, 2, "page_faults", "-4"),
    (ATTENTION_RUN, 2, "page_faults", "1.25"),
    (ATTENTION_RUN, 2, "peak_mem_mb", "-7.6"),
    (ATTENTION_RUN, 2, "gmacs", "-0.12"),
    (ATTENTION_RUN, 2, "timed_s", "inf"),
    (ATTENTION_RUN, 2, "rel_err", "-1e-07"),
    (ATTENTION_RUN, 2, "max_abs_err", "-6.4e-08"),
    (ATTENTION_RUN, 2, "tile_efficiency", "1.5"),
    (ATTENTION_RUN, 5, "resolution", "0"),
    (ATTENTION_RUN, 5, "batch", "2.5"),
    (ATTENTION_RUN, 2, "topk", "-2"),
    (ATTENTION_RUN, 2, "seed", "0.5"),
    (MODEL_RUN, 4, "params_m", "-13.1"),
    (MODEL_RUN, 4, "gmacs_per_image", "inf"),
    (MODEL_RUN, 4, "latency_ms_p80", "-88.6"),
    (MODEL_RUN, 4, "speedup_ci_low", "0"),
]


@pytest.mark.parametrize("run, line, column, value", BAD_VALUES,
                         ids=[f"{run.stem[-6:]}-{column}={value}" for run, line, column, value in BAD_VALUES])
def test_an_impossible_number_is_refused_naming_it(tmp_path, run, line, column, value):
    path = copy_run(run, tmp_path)
    set_cells(path, line, {column: value})
    with pytest.raises(ResultsFormatError) as refused:
        load_results(path)
    assert str(refused.value) == (f"{path}, line {line}: {column} {float(value)!r} is not "
                                  f"{VALUE_RULES[column].what}")


def test_true_and_false_are_no_numbers(tmp_path):
    """A column of nothing but True and False, which pandas reads as booleans (1 and 0 would pass as counts)."""
    path = copy_run(ATTENTION_RUN, tmp_path)
    for line in range(2, 12):
        set_cells(path, line, {"warmup_calls": str(line % 2 == 1)})
    with pytest.raises(ResultsFormatError, match=f"^{path}, line 2: warmup_calls 'False' is not a number$"):
        load_results(path)


# (run, line, the cells put there, the column put beyond the other end of its interval, that end)
REVERSED = [
    (ATTENTION_RUN, 2, {"latency_ms_p20": "60.5"}, "latency_ms_p20", "latency_ms_median"),
    (ATTENTION_RUN, 3, {"latency_ms_p80": "62.9"}, "latency_ms_median", "latency_ms_p80"),
    (ATTENTION_RUN, 2, {"latency_ms_ci_low": "57.1", "latency_ms_ci_high": "54.3"}, "latency_ms_ci_low",
     "latency_ms_ci_high"),
    (ATTENTION_RUN, 3, {"speedup_ci_low": "3.5"}, "speedup_ci_low", "speedup_vs_ref"),
    (MODEL_RUN, 3, {"speedup_ci_high": "0.5"}, "speedup_vs_ref", "speedup_ci_high"),
]


@pytest.mark.parametrize("run, line, cells, low, high", REVERSED, ids=[r[3] + "-" + r[4] for r in REVERSED])
def test_an_interval_out_of_order_is_refused_naming_both_ends(tmp_path, run, line, cells, low, high):
    path = copy_run(run, tmp_path)
    set_cells(path, line, cells)
    record = dict(zip(*[read_records(path)[i] for i in (0, line - 1)]))
    with pytest.raises(ResultsFormatError) as refused:
        load_results(path)
    assert str(refused.value) == (f"{path}, line {line}: {low} {float(record[low])!r} is above {high} "
                                  f"{float(record[high])!r}: out of order")


@pytest.mark.parametrize("times", [[49.97250055] * 4, [6.0, 1.0, 1.0, 6.0, 1.0, 6.0, 6.0, 1.0, 1.0, 6.0]],
                         ids=["equal rounds", "two clusters"])
def test_what_the_runner_writes_at_the_edges_still_loads(tmp_path, times):
    """The statistics bench.core.measure writes: equal rounds give quintiles an ulp below their median, and two
    clusters of rounds a median of 3.5 ms outside the interval (of the median log latency) at 2.45 ms. A
    mismatch row's errors are inf where its output has non-finite values (bench.core.accuracy)."""
    timing = Timing(times)
    low, high = median_interval(timing)
    assert timing.p80_ms < timing.median_ms or not low <= timing.median_ms <= high  # the edge is real
    path = copy_run(ATTENTION_RUN, tmp_path)
    set_cells(path, 2, {column: str(value) for column, value in [
        ("latency_ms_median", timing.median_ms), ("latency_ms_p20", timing.p20_ms), ("latency_ms_p80", timing.p80_ms),
        ("latency_ms_ci_low", low), ("latency_ms_ci_high", high), ("timing_spread", timing.spread),
        ("status", "mismatch"), ("rel_err", math.inf), ("max_abs_err", math.inf)]})
    row = load_results(path).iloc[0]
    assert row["latency_ms_median"] == timing.median_ms and row["rel_err"] == math.inf


@pytest.mark.parametrize("csv_path", sorted(REAL.glob("*.csv")), ids=lambda p: p.stem)
def test_the_committed_runs_load_without_a_warning(csv_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultsWarning)
        frame = load_results(csv_path)
        metadata = read_metadata(csv_path)
    assert len(frame) == metadata["rows"] > 0


# --------------------------------------------------------------------------------------------
# 3. a UTF-8 byte order mark
# --------------------------------------------------------------------------------------------

def test_a_byte_order_mark_is_read_and_written_through(tmp_path):
    """Excel saves CSV and JSON with a byte order mark: both load as without it, and a resume appends."""
    path = copy_run(ATTENTION_RUN, tmp_path)
    path.write_bytes(BOM + path.read_bytes())
    json_path = path.with_suffix(".json")
    json_path.write_bytes(BOM + json_path.read_bytes())
    pd.testing.assert_frame_equal(load_results(path), load_results(ATTENTION_RUN))
    assert read_metadata(path) == read_metadata(ATTENTION_RUN)
    writer = ResultsWriter(path)
    for row in rows_to_append(2):
        writer.append(row)
    frame = load_results(path)
    assert len(frame) == 12 and list(frame["case_key"].iloc[-2:]) == [r["case_key"] for r in rows_to_append(2)]


# --------------------------------------------------------------------------------------------
# 4. devices, FIFOs and folders where a file belongs
# --------------------------------------------------------------------------------------------

def refused_within_a_minute(read, *args) -> str:
    """The message of the ResultsFormatError ``read(*args)`` raises; fails (rather than hangs) if it blocks."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            read(*args)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(60)
    assert outcome, f"{read.__name__} blocked on {args}"
    assert isinstance(outcome[0], ResultsFormatError), outcome[0]
    return str(outcome[0])


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_link_to_a_device_is_refused(tmp_path):
    (tmp_path / "run.csv").symlink_to("/dev/full")
    (tmp_path / "run.json").symlink_to("/dev/full")
    message = refused_within_a_minute(load_results, tmp_path / "run.csv")
    assert message == f"{tmp_path / 'run.csv'} (a link to /dev/full) is a character device, not a results file"
    assert "a link to /dev/full) is a character device, not a run metadata file" in refused_within_a_minute(
        read_metadata, tmp_path / "run.csv")
    with pytest.raises(ResultsFormatError, match="character device"):
        ResultsWriter(tmp_path / "run.csv")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "run.csv")
    os.mkfifo(tmp_path / "run.json")
    assert refused_within_a_minute(load_results, tmp_path / "run.csv").endswith("is a FIFO, not a results file")
    assert refused_within_a_minute(read_metadata, tmp_path / "run.json").endswith("is a FIFO, not a run metadata file")


def test_a_folder_where_a_file_belongs_is_named(tmp_path, capsys):
    (tmp_path / "run.csv").mkdir()
    (tmp_path / "run.json").mkdir()
    with pytest.raises(ResultsFormatError, match=r"/run\.csv is a directory, not a results file$"):
        load_results(tmp_path / "run.json")
    with pytest.raises(ResultsFormatError, match=r"/run\.json is a directory, not a run metadata file$"):
        read_metadata(tmp_path / "run.csv")
    good = copy_run(ATTENTION_RUN, tmp_path / "good")
    assert cli.main(["compare", str(good), str(tmp_path / "run.csv")]) == 2
    assert "run.csv is a directory, not a results file" in capsys.readouterr().err


def test_reads_are_bounded(tmp_path, monkeypatch):
    path = copy_run(ATTENTION_RUN, tmp_path)
    monkeypatch.setattr(bench.schema.storage, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(ResultsFormatError, match="is larger than"):
        load_results(path)


# --------------------------------------------------------------------------------------------
# 5. a torn last row, and a row count that differs from the metadata's
# --------------------------------------------------------------------------------------------

def test_a_torn_last_row_is_left_out_with_a_warning(tmp_path):
    path = copy_run(ATTENTION_RUN, tmp_path)
    path.write_bytes(path.read_bytes().rstrip(b"\r\n"))
    with pytest.warns(ResultsWarning) as caught:
        frame = load_results(path)
    assert messages(caught) == [f"{path}, line 11 has no line break: a row being written or cut by a kill; left out"]
    assert len(frame) == 9


def test_the_report_warns_when_the_metadata_counts_other_rows(tmp_path):
    path = copy_run(ATTENTION_RUN, tmp_path)
    path.write_bytes(path.read_bytes().rstrip(b"\r\n"))
    with pytest.warns(ResultsWarning) as caught:
        (frame, _), = collect_results(path).values()
    assert len(frame) == 9
    assert messages(caught)[1:] == [f"{path}: 9 rows loaded, but its metadata says the run wrote 10"]


def test_compare_and_the_cli_show_what_was_left_out_in_one_line(tmp_path, capsys):
    """``compare`` lists the torn row and the row count that differs among its warnings, naming the run; the
    command line prints a reader's warning as one line of its own, without Python's file and source line."""
    base = copy_run(ATTENTION_RUN, tmp_path, "base")
    new = copy_run(ATTENTION_RUN, tmp_path, "new")
    new.write_bytes(new.read_bytes().rstrip(b"\r\n"))
    from bench.analysis.compare import compare_runs
    comparison = compare_runs(base, new)
    assert f"NEW: {new}, line 11 has no line break: a row being written or cut by a kill; left out" \
        in comparison.warnings
    assert f"NEW: {new}: 9 rows loaded, but its metadata says the run wrote 10" in comparison.warnings
    assert not [w for w in comparison.warnings if w.startswith("BASE")]
    assert cli.main(["report", str(new), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"run_bench.py: warning: {new}, line 11 has no line break: a row being written or cut by a kill; " \
           f"left out" in err
    assert not [line for line in err if "ResultsWarning" in line or "warnings.warn" in line]


def test_abandoned_temporary_files_of_a_killed_report_are_removed(tmp_path):
    """A report killed mid-write leaves at worst a hidden temporary file: the next report removes those whose
    writer is gone, and leaves one of a live writer (a report running beside it) alone."""
    path = copy_run(ATTENTION_RUN, tmp_path / "results")
    out = tmp_path / "report"
    (out / "plots").mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    abandoned = [out / "plots" / f".scaling.png.{gone.pid}-3.tmp", out / f".README.md.{gone.pid}-7.tmp"]
    live = out / "plots" / f".scaling.pdf.{os.getpid()}-1.tmp"
    for file in [*abandoned, live]:
        file.write_bytes(b"half a file")
    cli.main(["report", str(path), "--out", str(out)])
    assert not any(file.exists() for file in abandoned) and live.exists()


def test_a_write_error_during_a_sweep_names_the_file_without_the_usage_text(tmp_path, monkeypatch, capsys):
    """A disk that fills while a sweep writes a row: exit 1 with one line naming the file and how to go on
    (the rows written stay; --resume completes the run), not argparse's usage text, which is for bad flags."""
    def disk_fills(self, row):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(ResultsWriter, "append", disk_fills)
    results = tmp_path / "results"
    code = cli.main(["--gpu", "cpu", "--families", "full", "--backends", "torch", "--resolutions", "8", "--batch",
                     "2", "--phase", "fwd", "--min-time", "0", "--quiet", "--no-report", "--run-id", "full",
                     "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 1 and "usage:" not in err, err
    assert err.strip().splitlines() == [
        f"run_bench.py: error: cannot write the run's files in {results / 'cpu'}: No space left on device "
        f"({results / 'cpu' / 'full.csv'}); the rows written so far are kept, and --resume full completes the run "
        f"once the cause is fixed"]


# --------------------------------------------------------------------------------------------
# 6. metadata of the wrong types
# --------------------------------------------------------------------------------------------

# (where: keys from the top, the value put there, the end of the message)
BAD_METADATA = [
    (("nodes",), {"vm": "x"}, "'nodes.vm' is 'x', not an object"),
    (("timing", "min_time_s_per_pass"), "fast", "'timing.min_time_s_per_pass' is 'fast', not a number ≥ 0"),
    (("timing", "warmup"), {"max_s": -10.0}, "'timing.warmup.max_s' is -10.0, not a number ≥ 0"),
    (("timing", "sittings"), True, "'timing.sittings' is True, not an integer ≥ 0"),
    (("timing", "max_rounds"), 2.5, "'timing.max_rounds' is 2.5, not an integer ≥ 0 or null"),
    (("cases_planned",), "10", "'cases_planned' is '10', not an integer ≥ 0"),
    (("rows",), True, "'rows' is True, not an integer ≥ 0"),
    (("cases_not_started",), -1, "'cases_not_started' is -1, not an integer ≥ 0"),
    (("status_counts", "ok"), 6.5, "'status_counts.ok' is 6.5, not an integer ≥ 0"),
    (("numerics", "tf32_matmul"), "no", "'numerics.tf32_matmul' is 'no', not true or false"),
    (("interrupted",), "false", "'interrupted' is 'false', not true or false"),
    (("environment", "gpu_count"), "0", "'environment.gpu_count' is '0', not an integer ≥ 0"),
    (("environment", "torch"), ["2.13.0"], "'environment.torch' is ['2.13.0'], not a string or null"),
    (("gpu_profile",), ["cpu"], "'gpu_profile' is ['cpu'], not a string"),
    (("argv",), "--gpu cpu", "'argv' is '--gpu cpu', not a list"),
    (("resumed",), [{"at": 5}], "'resumed[0].at' is 5, not a string"),
]


@pytest.mark.parametrize("where, value, message", BAD_METADATA, ids=[m.split(" is ")[0].strip("'") for _, _, m in BAD_METADATA])
def test_metadata_of_the_wrong_type_is_refused_naming_the_field(tmp_path, where, value, message):
    """A real run's metadata with one field of the wrong type: the error names the file, the field's path,
    the value and the type it should have (true is no integer)."""
    path = copy_run(ATTENTION_RUN, tmp_path).with_suffix(".json")
    metadata = json.loads(path.read_text())
    parent = metadata
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = value
    path.write_text(json.dumps(metadata))
    with pytest.raises(ResultsFormatError) as refused:
        read_metadata(path)
    assert str(refused.value) == f"run metadata {path}: {message}"


def test_the_report_names_a_wrong_node_instead_of_crashing(tmp_path, capsys):
    path = copy_run(ATTENTION_RUN, tmp_path)
    metadata = read_metadata(path) | {"nodes": {"vm": "x"}}
    write_metadata(path.with_suffix(".json"), metadata)
    assert cli.main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'nodes.vm' is 'x', not an object" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# 7, 9. report files written whole or not at all; a write error names its file
# --------------------------------------------------------------------------------------------

def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "main.md"
    target.write_text("| old table |\n")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_write(target) as tmp:
            tmp.write_text("| new ta")
            raise RuntimeError("half-way")
    assert target.read_text() == "| old table |\n" and os.listdir(tmp_path) == ["main.md"]
    with atomic_write(target) as tmp:
        tmp.write_text("| new table |\n")
    assert target.read_text() == "| new table |\n" and os.listdir(tmp_path) == ["main.md"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), OSError("disk quota")],
                         ids=["errno", "no errno"])
def test_a_write_error_names_the_file_being_written(tmp_path, error):
    target = tmp_path / "plots" / "scaling.png"
    target.parent.mkdir()
    with pytest.raises(OSError) as raised:
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"\x89PNG")
            raise error
    assert str(target) in str(raised.value) and ".tmp" not in str(raised.value)
    assert os.listdir(target.parent) == []


def test_a_full_disk_during_a_report_keeps_the_old_report_and_names_the_file(tmp_path, monkeypatch, capsys):
    """A report over an earlier one, on a disk that fills at the first figure: exit 2 naming that figure's
    file, and every file of the earlier report as it was, without a partial or temporary file beside them."""
    path = copy_run(ATTENTION_RUN, tmp_path / "results")
    out = tmp_path / "report"
    (out / "plots").mkdir(parents=True)
    earlier = {out / "README.md": b"# earlier report\n"}
    earlier.update({out / "plots" / f"{name}{suffix}": f"earlier {name}{suffix}".encode()
                    for name in names(PLOTS, "attentions") for suffix in (".png", ".pdf")})
    for file, data in earlier.items():
        file.write_bytes(data)

    def disk_fills(figure, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", disk_fills)
    assert cli.main(["report", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and f"{out / 'plots'}/" in err and ".png'" in err and ".tmp" not in err
    assert all(file.read_bytes() == data for file, data in earlier.items())
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(earlier)


def test_metadata_is_written_through_the_atomic_writer(tmp_path):
    """A metadata file that cannot be replaced (a folder stands there): the error names it, no temporary file stays."""
    path = tmp_path / "run.json"
    path.mkdir()
    with pytest.raises(OSError) as raised:
        write_metadata(path, read_metadata(ATTENTION_RUN))
    assert raised.value.filename == str(path) and os.listdir(tmp_path) == ["run.json"]


# --------------------------------------------------------------------------------------------
# 8. a folder's file that does not load
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["empty", "negative latency"])
def test_a_folder_reports_the_runs_that_load(tmp_path, fault):
    folder = tmp_path / "results"
    good = copy_run(ATTENTION_RUN, folder, "good")
    bad = copy_run(OTHER_RUN, folder, "bad")
    if fault == "empty":
        bad.write_bytes(b"")
        reason = "is empty"
    else:
        set_cells(bad, 3, {"latency_ms_median": "-5"})
        reason = "line 3: latency_ms_median -5.0 is not a finite number > 0"
    with pytest.warns(ResultsWarning) as caught:
        (frame, metadata), = collect_results(folder).values()
    left_out = [m for m in messages(caught) if m.startswith(f"{bad} left out of the report: ")]
    assert len(left_out) == 1 and reason in left_out[0]
    assert sorted(frame["case_key"]) == sorted(load_results(good)["case_key"])
    assert [meta["run_id"] for meta in metadata] == [read_metadata(good)["run_id"]]
    with pytest.raises(ResultsFormatError, match=reason):  # named on its own, it fails as ever
        collect_results(bad)
    good.unlink()
    with pytest.warns(ResultsWarning), pytest.raises(ResultsFormatError, match=f"no results file in {folder} loads"):
        collect_results(folder)
