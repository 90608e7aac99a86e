"""Malformed command lines and corrupt or foreign files, for every tool of ``run_bench.py``.

Each case is one invocation a user could type (after an optional setup that damages a copy of a small
real run). Each must end with exit status 2 (compare: 1 where the comparison itself fails) and a last
line on stderr that names the bad value, never a traceback, never silence, and must leave the run's rows
as they were.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Callable

import pytest

from bench import cli
from bench.schema.files import RunLock

RUN_ID = "tiny"
# Two cases of full attention at 8², forward: a real run in seconds.
TINY_RUN = ["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "torch", "sdpa", "--phase",
            "fwd", "--resolutions", "8", "--min-time", "0", "--quiet", "--no-report", "--run-id", RUN_ID]
DRY = ["--gpu", "cpu", "--preset", "quick", "--dry-run"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A results folder holding one complete run, ``cpu/tiny.csv`` and its ``.json``."""
    results = tmp_path_factory.mktemp("tiny") / "results"
    assert cli.main([*TINY_RUN, "--results-dir", str(results)]) == 0
    return results


class Setup:
    """What a case damages in its copy of the tiny run (``results``, inside ``tmp``), and the argv it runs."""

    def __init__(self, argv: Callable[[Path, Path], list[str]], damage: Callable[[Path, Path], None] | None = None):
        self.argv, self.damage = argv, damage


def csv_of(results: Path) -> Path:
    return results / "cpu" / f"{RUN_ID}.csv"


def json_of(results: Path) -> Path:
    return results / "cpu" / f"{RUN_ID}.json"


def sweep(*flags: str) -> Setup:
    return Setup(lambda results, tmp: [*DRY, "--results-dir", str(tmp / "new"), *flags])


def models(*flags: str) -> Setup:
    return Setup(lambda results, tmp: ["--gpu", "cpu", "--suite", "models", "--dry-run", "--results-dir",
                                       str(tmp / "new"), *flags])


def resume(damage: Callable[[Path, Path], None], *flags: str) -> Setup:
    return Setup(lambda results, tmp: ["--resume", RUN_ID, "--results-dir", str(results), "--quiet", "--no-report",
                                       *flags], damage)


def report(damage: Callable[[Path, Path], None] | None = None, *flags: str) -> Setup:
    return Setup(lambda results, tmp: ["report", str(csv_of(results)), "--out", str(tmp / "report"), *flags], damage)


def compare(damage: Callable[[Path, Path], None] | None = None, *flags: str) -> Setup:
    return Setup(lambda results, tmp: ["compare", str(csv_of(results)), str(results / "cpu" / "other.csv"), *flags],
                 damage)


def set_metadata(value: object) -> Callable[[Path, Path], None]:
    return lambda results, tmp: json_of(results).write_text(json.dumps(value))


def edit_metadata(**fields: object) -> Callable[[Path, Path], None]:
    def damage(results: Path, tmp: Path) -> None:
        metadata = json.loads(json_of(results).read_text())
        metadata.update(fields)
        json_of(results).write_text(json.dumps(metadata))
    return damage


def edit_cell(column: str, value: str) -> Callable[[Path, Path], None]:
    """Put ``value`` into ``column`` of the first data row (written back as csv writes it)."""
    def damage(results: Path, tmp: Path) -> None:
        with open(csv_of(results), newline="") as f:
            rows = list(csv.reader(f))
        rows[1][rows[0].index(column)] = value
        with open(csv_of(results), "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return damage


def write_csv(text: str, name: str = RUN_ID) -> Callable[[Path, Path], None]:
    return lambda results, tmp: (results / "cpu" / f"{name}.csv").write_text(text)


def short_middle_row(results: Path, tmp: Path) -> None:
    lines = csv_of(results).read_text().splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"  # a cut row that is not the last one
    csv_of(results).write_text("".join(lines))


def copy_as_other(keep_rows: int, resolution: str | None = None) -> Callable[[Path, Path], None]:
    """``other.csv``: the run's header and its first ``keep_rows`` rows (their case keys changed when
    ``resolution`` is given, so that no case is shared)."""
    def damage(results: Path, tmp: Path) -> None:
        lines = csv_of(results).read_text().splitlines(keepends=True)
        rows = lines[1:1 + keep_rows]
        if resolution is not None:
            rows = [row.replace("|8|", f"|{resolution}|") for row in rows]
        (results / "cpu" / "other.csv").write_text(lines[0] + "".join(rows))
    return damage


def file_in_place_of(name: str) -> Callable[[Path, Path], None]:
    return lambda results, tmp: (tmp / name).write_text("not a folder")


def hold_lock(results: Path, tmp: Path) -> None:
    """Taken in the test itself (see ``test_malformed_invocation``): another writer of the run."""


CASES: dict[str, tuple[Setup, list[str], int]] = {
    # sweep flags: (setup, strings the error's last line must hold, exit status)
    "gpu-unknown": (sweep("--gpu", "a200"), ["--gpu", "a200"], 2),
    "preset-unknown": (sweep("--preset", "huge"), ["--preset", "huge"], 2),
    "family-unknown": (sweep("--families", "swin"), ["--families", "swin"], 2),
    "family-one-of-two-unknown": (sweep("--families", "bra", "swin"), ["--families", "swin"], 2),
    "backend-unknown": (sweep("--backends", "flash"), ["--backends", "flash"], 2),
    "backend-of-another-family": (sweep("--families", "deformable", "--backends", "triton"), ["--backends", "triton"],
                                  2),
    "kv-mode-unknown": (sweep("--kv-modes", "fracpool"), ["--kv-modes", "fracpool"], 2),
    "dtype-unknown": (sweep("--dtype", "fp8"), ["--dtype", "fp8"], 2),
    "resolution-zero": (sweep("--resolutions", "0"), ["--resolutions", "0"], 2),
    "resolution-text": (sweep("--resolutions", "abc"), ["--resolutions", "abc"], 2),
    "resolution-fraction": (sweep("--resolutions", "28.5"), ["--resolutions", "28.5"], 2),
    # BRA's n_win 7 divides it; its input alone would not fit in any machine's memory
    "resolution-beyond-memory": (sweep("--resolutions", str(7 * 10 ** 8)),
                                 [f"{7 * 10 ** 8}²", "its input alone", "larger than the memory"], 2),
    "resolution-not-divisible-by-n-win": (sweep("--resolutions", "30"), ["30", "n_win=7", "auto_pad"], 2),
    "topk-negative": (sweep("--topk", "-1"), ["--topk", "-1"], 2),
    "topk-above-regions": (sweep("--topk", "100", "--resolutions", "28"), ["topk", "100", "49"], 2),
    "topk-above-regions-default-res": (sweep("--topk", "50", "--resolutions", "56"), ["topk", "50", "49"], 2),
    "pool-ratio-above-region": (sweep("--resolutions", "7", "--kv-modes", "avgpool"),
                                ["kv_downsample_ratio 2", "1×1 region"], 2),
    "phase-unknown": (sweep("--phase", "bwd"), ["--phase", "bwd"], 2),
    "batch-zero": (sweep("--batch", "0"), ["--batch", "0"], 2),
    "batch-fraction": (sweep("--batch", "1.5"), ["--batch", "1.5"], 2),
    "time-budget-zero": (sweep("--time-budget", "0"), ["--time-budget", "0"], 2),
    "time-budget-inf": (sweep("--time-budget", "inf"), ["--time-budget", "inf"], 2),
    "time-budget-text": (sweep("--time-budget", "soon"), ["--time-budget", "soon"], 2),
    "min-time-nan": (sweep("--min-time", "nan"), ["--min-time", "nan"], 2),
    "min-time-inf": (sweep("--min-time", "inf"), ["--min-time", "inf"], 2),
    "min-time-negative": (sweep("--min-time=-1"), ["--min-time", "-1"], 2),
    "min-time-text": (sweep("--min-time", "long"), ["--min-time", "long"], 2),
    "workers-zero": (sweep("--workers", "0"), ["--workers", "0", ">= 1"], 2),
    "workers-text": (sweep("--workers", "all"), ["--workers", "'all'"], 2),
    "ray-address-without-port": (sweep("--ray-address", "headnode"), ["--ray-address", "'headnode'", "HOST:PORT"], 2),
    "ray-address-port-out-of-range": (sweep("--ray-address", "10.0.0.1:70000"), ["--ray-address", "10.0.0.1:70000"],
                                      2),
    "ray-address-url": (sweep("--ray-address", "http://head:6379"), ["--ray-address", "http://head:6379"], 2),
    "ray-address-nothing-there": (Setup(lambda results, tmp: [*TINY_RUN, "--run-id", "new", "--results-dir",
                                                              str(results), "--ray-address", "127.0.0.1:1"]),
                                  ["--ray-address 127.0.0.1:1"], 2),
    "cpu-allocator-unknown": (sweep("--cpu-allocator", "keep"), ["--cpu-allocator", "'keep'", "retain", "system"], 2),
    "sittings-zero": (sweep("--sittings", "0"), ["--sittings", "0", ">= 1"], 2),
    "sittings-too-many": (sweep("--sittings", "11"), ["--sittings", "11", "at most 10"], 2),
    "model-suite-with-sittings": (models("--sittings", "3"), ["--sittings", "--suite models"], 2),
    "retries-negative": (sweep("--retries=-1"), ["--retries", "-1", ">= 0"], 2),
    "retries-text": (sweep("--retries", "twice"), ["--retries", "'twice'"], 2),
    "retry-noisy-negative": (sweep("--retry-noisy=-1"), ["--retry-noisy", "-1", ">= 0"], 2),
    "retry-noisy-too-many": (sweep("--retry-noisy", "11"), ["--retry-noisy", "11", "<= 10"], 2),
    "retries-without-ray": (sweep("--retries", "3"), ["--retries 3", "--workers N > 1", "--ray-address"], 2),
    "run-id-escaping": (sweep("--run-id", "../../x"), ["--run-id", "../../x"], 2),
    "run-id-with-slash": (sweep("--run-id", "a/b"), ["--run-id", "a/b"], 2),
    "run-id-csv-suffix": (sweep("--run-id", "mine.csv"), ["--run-id", "mine.csv", "not ending in .csv"], 2),
    "run-id-json-suffix": (sweep("--run-id", "mine.JSON"), ["--run-id", "mine.JSON", ".json"], 2),
    "run-id-lock-suffix": (sweep("--run-id", "mine.lock"), ["--run-id", "mine.lock", ".lock"], 2),
    "run-id-empty": (sweep("--run-id", ""), ["--run-id", "''"], 2),
    "run-id-hidden": (sweep("--run-id", ".hidden"), ["--run-id", ".hidden"], 2),
    "run-id-space": (sweep("--run-id", "my run"), ["--run-id", "my run"], 2),
    "auto-pad-without-a-family-that-pads": (sweep("--families", "full", "--auto-pad"), ["--auto-pad", "bra"], 2),
    "models-flag-without-model-suite": (sweep("--models", "biformer_tiny"), ["--models", "--suite models"], 2),
    "kernel-size-even": (sweep("--families", "neighborhood", "--kernel-sizes", "4"), ["--kernel-sizes", "4 is even"],
                         2),
    "kernel-size-wider-than-the-map": (sweep("--families", "neighborhood", "--kernel-sizes", "9", "--resolutions", "8"),
                                       ["neighborhood", "8×8", "kernel_size × dilation = 9 × 1 = 9"], 2),
    "dilated-kernel-wider-than-the-map": (sweep("--families", "neighborhood", "--dilations", "3", "--resolutions",
                                                "14"), ["dilation=3", "kernel_size × dilation = 7 × 3 = 21"], 2),
    "dilation-zero": (sweep("--dilations", "0"), ["--dilations", "0 must be >= 1"], 2),
    "map-smaller-than-the-kernel": (sweep("--families", "neighborhood", "--resolutions", "5"),
                                    ["5×5", "height 5 is smaller than kernel_size × dilation = 7 × 1 = 7"], 2),
    "kernel-sizes-without-neighborhood": (sweep("--families", "bra", "--kernel-sizes", "3"),
                                          ["--kernel-sizes", "kernel_size", "neighborhood"], 2),
    "model-suite-with-dilations": (models("--dilations", "2"), ["--dilations", "--suite models"], 2),
    "model-suite-with-topk": (models("--topk", "4"), ["--topk", "--suite models"], 2),
    "model-suite-with-auto-pad": (models("--auto-pad"), ["--auto-pad"], 2),
    "model-image-beyond-memory": (models("--resolutions", str(32 * 10 ** 5)),
                                  [f"{32 * 10 ** 5}px", "its input alone", "larger than the memory"], 2),
    "model-image-not-a-multiple-of-32": (models("--resolutions", "100"), ["100×100", "multiples of 32"], 2),
    "model-unknown": (models("--models", "resnet50"), ["--models", "resnet50"], 2),
    "model-attention-choice-of-two": (models("--attentions", "bra,full"),
                                      ["--attentions", "'bra,full'"], 2),
    "results-dir-is-a-file": (Setup(lambda results, tmp: [*DRY, "--results-dir", str(tmp / "file")],
                                    file_in_place_of("file")), ["--results-dir", "file", "not a folder"], 2),
    "results-dir-below-a-file": (Setup(lambda results, tmp: [*DRY, "--results-dir", str(tmp / "file" / "sub")],
                                       file_in_place_of("file")), ["--results-dir", "file", "not a folder"], 2),
    "reports-dir-is-a-file": (Setup(lambda results, tmp: [*DRY, "--reports-dir", str(tmp / "file")],
                                    file_in_place_of("file")), ["--reports-dir", "file", "not a folder"], 2),
    "run-id-taken": (Setup(lambda results, tmp: [*TINY_RUN, "--results-dir", str(results)]),
                     ["--run-id", "tiny.csv exists", "--resume tiny"], 2),
    # --resume and its files
    "resume-unknown-run": (Setup(lambda results, tmp: ["--resume", "no-such-run", "--results-dir", str(results)]),
                           ["no-such-run"], 2),
    "resume-not-a-run-id": (Setup(lambda results, tmp: ["--resume", "../tiny", "--results-dir", str(results)]),
                            ["--resume", "'../tiny'"], 2),
    "resume-changes-the-sweep": (resume(lambda r, t: None, "--families", "bra"), ["--resume", "--families"], 2),
    "resume-metadata-missing": (resume(lambda results, tmp: json_of(results).unlink()), ["tiny.json",
                                                                                        "does not exist"], 2),
    "resume-metadata-a-list": (resume(set_metadata([1, 2])), ["tiny.json", "JSON list"], 2),
    "resume-metadata-a-number": (resume(set_metadata(7)), ["tiny.json", "JSON int"], 2),
    "resume-metadata-not-json": (resume(lambda results, tmp: json_of(results).write_text("{argv: [")),
                                 ["tiny.json", "not valid JSON"], 2),
    "resume-metadata-without-argv": (resume(set_metadata({"run_id": RUN_ID})), ["tiny.json", "'argv'"], 2),
    "resume-metadata-argv-a-string": (resume(edit_metadata(argv="--gpu cpu")), ["tiny.json", "'argv'",
                                                                                "'--gpu cpu'"], 2),
    "resume-metadata-argv-of-numbers": (resume(edit_metadata(argv=[1, 2])),
                                        ["tiny.json", "'argv' is [1, 2]", "not a list of strings"], 2),
    "resume-metadata-argv-foreign": (resume(edit_metadata(argv=["--frobnicate"])), ["tiny.json", "--frobnicate"], 2),
    "resume-metadata-argv-resumes": (resume(edit_metadata(argv=["--resume", "x"])), ["tiny.json", "--resume"], 2),
    "resume-metadata-resumed-not-a-list": (resume(edit_metadata(resumed="yesterday")), ["'resumed'", "yesterday"], 2),
    "resume-metadata-environment-a-list": (resume(edit_metadata(environment=[])), ["'environment'", "[]"], 2),
    "resume-csv-text-latency": (resume(edit_cell("latency_ms_median", "fast")), ["tiny.csv", "line 2", "latency_ms_median", "'fast'"],
                                2),
    "resume-csv-unknown-status": (resume(edit_cell("status", "exploded")), ["tiny.csv", "status", "'exploded'"], 2),
    "resume-csv-text-resolution": (resume(edit_cell("resolution", "big")), ["tiny.csv", "resolution", "'big'"], 2),
    "resume-csv-empty-family": (resume(edit_cell("family", "")), ["tiny.csv", "line 2", "family is empty"], 2),
    "resume-csv-cut-middle-row": (resume(short_middle_row), ["tiny.csv", "line 2", "fields"], 2),
    "resume-csv-foreign": (resume(write_csv("name,score\nalice,3\n")), ["tiny.csv", "not a results file"], 2),
    "resume-csv-binary": (resume(lambda results, tmp: csv_of(results).write_bytes(bytes(range(128, 256)) + b"\n")),
                          ["tiny.csv", "not a text file"], 2),
    "resume-while-another-writes": (resume(hold_lock), ["run tiny is being written by", "pid"], 2),
    # report
    "report-missing-file": (Setup(lambda results, tmp: ["report", str(tmp / "none.csv")]), ["none.csv",
                                                                                          "does not exist"], 2),
    "report-empty-folder": (Setup(lambda results, tmp: ["report", str(tmp)]), ["no results .csv files"], 2),
    "report-out-is-a-file": (Setup(lambda results, tmp: ["report", str(csv_of(results)), "--out",
                                                         str(json_of(results))]), ["--out", "tiny.json",
                                                                                   "not a folder"], 2),
    "report-csv-text-latency": (report(edit_cell("latency_ms_median", "n/a")), ["tiny.csv", "latency_ms_median", "'n/a'"], 2),
    "report-csv-options-not-json": (report(edit_cell("options", "topk=4")), ["tiny.csv", "options", "'topk=4'"], 2),
    "report-metadata-a-list": (report(set_metadata(["run"])), ["tiny.json", "JSON list"], 2),
    "report-metadata-environment-a-string": (report(edit_metadata(environment="h100")), ["'environment'", "h100"], 2),
    # compare
    "compare-no-shared-case": (compare(copy_as_other(2, resolution="9")), ["UNDECIDED", "0 of BASE's 2 cases"], 3),
    "compare-too-few-shared": (compare(copy_as_other(1), "--min-shared", "100%"), ["UNDECIDED", "1 of BASE's 2",
                                                                                   "100%"], 3),
    "compare-max-inconclusive-above-all": (compare(copy_as_other(2), "--max-inconclusive", "150%"),
                                           ["--max-inconclusive", "150%"], 2),
    "compare-rerun-negative": (compare(copy_as_other(2), "--rerun-inconclusive", "-1"),
                               ["--rerun-inconclusive", "'-1'"], 2),
    "compare-min-shared-above-all": (compare(copy_as_other(2), "--min-shared", "150%"), ["--min-shared", "150%"], 2),
    "compare-max-regression-negative": (compare(copy_as_other(2), "--max-regression", "-5%"),
                                        ["--max-regression", "-5%"], 2),
    "compare-csv-text-latency": (compare(lambda r, t: (copy_as_other(2)(r, t), edit_cell("latency_ms_median", "slow")(r, t))),
                                 ["tiny.csv", "latency_ms_median", "'slow'"], 2),
    "compare-metadata-a-list": (compare(lambda r, t: (copy_as_other(2)(r, t), set_metadata([])(r, t))),
                                ["tiny.json", "JSON list"], 2),
    "compare-models-run": (compare(write_csv("model,attention\n", name="other")), ["other.csv",
                                                                                  "not a results file"], 2),
}


def test_ray_not_installed_exits_2_saying_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without the package
    for flags, named in ((["--workers", "2"], "--workers 2"), (["--ray-address", "auto"], "--ray-address auto")):
        code, out, err = invoke([*DRY, "--results-dir", str(tmp_path), *flags], capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and "Traceback" not in err and not out, err
        assert named in last and 'pip install -e ".[cluster]"' in last, last


def invoke(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``run_bench.py argv`` run in this process."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_invocation(name, tiny_run, tmp_path, capsys):
    setup, named, status = CASES[name]
    results = tmp_path / "results"
    shutil.copytree(tiny_run, results)
    if setup.damage is not None:
        setup.damage(results, tmp_path)
    before = tree(results)
    with RunLock(csv_of(results)) if setup.damage is hold_lock else contextlib.nullcontext():
        code, out, err = invoke(setup.argv(results, tmp_path), capsys)
    assert code == status, (code, out[-500:], err[-500:])
    assert "Traceback" not in err + out
    last = (err.strip() or out.strip()).splitlines()[-1]
    if status in (1, 3):  # compare's verdict line
        last = out.strip().splitlines()[-1]
    for text in named:
        assert text in last, f"{text!r} not in the error {last!r}"
    after = tree(results)
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == before  # no row lost or added
    assert "cases" not in out or status in (1, 3)  # nothing was planned and listed
