"""``run_bench.py`` end to end: a sweep of every family (the whole quick preset in the slow tier), FLOPs through
the harness, kill and resume, flag validation, dry runs and listings, and the GPU-profile check.

The sweeps that a test kills, locks or signals, and the sweep of every family (the quick preset in the slow tier,
run in the background while other tests run: tests/background.py), run in subprocesses, as a user runs them; the
others call ``bench.cli.main`` (what ``run_bench.py`` runs) in this process, which saves each the seconds of
importing torch. The subprocesses get one intra-op thread each (OMP_NUM_THREADS=1, like
tests/conftest.py in-process): the tensors are small, and on a 2-core machine two threads per process only contend
(the quick preset takes about twice as long).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import tqdm.std

import attentions
import bench
import bench.cli.sweep
import bench.execution.runner
from attentions import BackendUnavailableError
from bench import cli
from bench.cli import arguments as cli_arguments, progress as cli_progress, sweep as sweep_cli
from bench.suites import SUITES, attention_rows
from bench.suites.cases import Case, config_name
from bench.core.measure import TimingPolicy, retain_available
from bench.suites.presets import KV_MODES
from bench.core.profiles import PROFILES
from bench.core.machine import cpu_name
from bench.schema.files import RunLock
from bench.suites.attention_rows import base_row
from bench.suites.rows import failure, speedup_interval_width, stamped
from background import Job, background, finished
from reference_helpers import BACKENDS

REPO = Path(__file__).resolve().parent.parent
RUN_BENCH = REPO / "run_bench.py"
HAS_CUDA = torch.cuda.is_available()

QUICK_FLAGS = ["--gpu", "cpu", "--preset", "quick", "--quiet", "--min-time", "0.01"]
TIMED = ("ok", "noisy")  # statuses of a measured case that passed its error check
ENVIRONMENT_KEYS = {"torch", "fvcore", "triton", "xformers", "natten", "cuda", "gpu_name", "gpu_count", "driver", "cpu", "os",
                    "python", "suite_commit"}
METADATA_KEYS = {"run_id", "preset", "gpu_profile", "device_name", "argv", "command", "started", "finished",
                 "status_counts", "environment"}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # a user's environment: the Triton kernels need CUDA (conftest sets it)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_BENCH), *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def popen_bench(*args: str, stderr_path: Path) -> subprocess.Popen:
    with open(stderr_path, "w") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, str(RUN_BENCH), *args], cwd=REPO, env=subprocess_env(),
                                stdout=subprocess.DEVNULL, stderr=err)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def dry_run_labels(stdout: str) -> list[str]:
    """The case labels of a --dry-run, after checking its last line is 'N cases' with N of them."""
    lines = stdout.strip().splitlines()
    *labels, last = lines
    assert last == f"{len(labels)} cases", f"dry run should end with the count of its {len(labels)} labels: {last!r}"
    return labels


def row_label(row: pd.Series) -> str:
    """bench.suites.cases.Case.label() rebuilt from a results row, to compare a run with its --dry-run."""
    name = config_name(row["family"], json.loads(row["options"]))
    return (f"{name}/{row['backend']} {row['resolution']}² C{row['dim']} h{row['heads']} "
            f"b{row['batch']} {row['dtype']} {row['phase']}")


def family_of(label: str) -> str:
    """The family of a case label: its first word ('bra (topk=1)/sdpa ...' -> 'bra')."""
    return label.split("/", 1)[0].split(" ", 1)[0]


def data_lines(path: Path) -> list[bytes]:
    """Complete lines of a CSV (header first); a torn last line without its newline is left out."""
    data = path.read_bytes() if path.exists() else b""
    return data[:data.rfind(b"\n") + 1].splitlines(keepends=True)


def is_empty(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def assert_csv_well_formed(path: Path) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == bench.COLUMNS
    widths = {len(r) for r in rows}
    assert widths == {len(bench.COLUMNS)}, f"{path}: rows of {widths} fields, want {len(bench.COLUMNS)}"
    assert path.read_bytes().endswith(b"\n")


# --------------------------------------------------------------------------------------------
# 1. dry runs in this process (the sweep of every family end to end: section 8, at the end of the file)
# --------------------------------------------------------------------------------------------

def dry_run(argv: list[str]) -> str:
    """``run_bench.py ... --dry-run`` in-process (it runs nothing): its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main([*argv, "--dry-run"]) == 0
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# 2. one BRA layer's FLOPs through the harness
# --------------------------------------------------------------------------------------------

BRA_56_MACS = 156_100_672  # fvcore, one BRA layer at 56², C64 h2, n_win 7, topk 4, identity kv, batch 1


def test_bra_layer_flops_through_the_harness(tmp_path):
    flags = ["--gpu", "cpu", "--families", "bra", "--resolutions", "56", "--topk", "4", "--kv-modes", "identity",
             "--batch", "1", "--phase", "fwd", "fwd+bwd", "--backends", "sdpa", "torch",
             "--results-dir", str(tmp_path), "--run-id", "bra56", "--quiet", "--min-time", "0", "--no-report"]
    assert cli.main(flags) == 0
    frame = bench.load_results(tmp_path / "cpu" / "bra56.csv")
    assert len(frame) == 4 and frame["status"].isin(TIMED).all(), frame[["case_key", "status_detail"]]
    assert set(zip(frame["backend"], frame["phase"])) == {(b, p) for b in ("sdpa", "torch") for p in ("fwd", "fwd+bwd")}
    assert (frame["n_win"] == 7).all() and (frame["topk"] == 4).all()
    assert (frame["kv_downsample_mode"] == "identity").all()
    for _, row in frame.iterrows():
        # the sdpa row only counts right because bench gives fvcore a handle for SDPA
        assert row["gmacs"] == pytest.approx(0.1561, rel=1e-3), (row["backend"], row["phase"])
        assert round(row["gmacs"] * 1e9) == BRA_56_MACS, (row["backend"], row["phase"])
        assert row["gmacs_analytic"] == pytest.approx(row["gmacs"], rel=1e-2)
        assert is_empty(row["flops_check"])
        factor = 2 if row["phase"] == "fwd" else 6
        assert row["hw_gflops"] == pytest.approx(factor * row["gmacs"], rel=1e-9), (row["backend"], row["phase"])


@pytest.mark.slow  # a sitting's fresh process: about 12 s; test_bench_core's sitting test is the fast tier's
def test_a_run_in_sittings_pools_their_rounds_and_says_so(tmp_path):
    """--sittings 2: every timed row has the rounds of both sittings (10 each at --min-time 0), the
    paired row an interval about its median from them (symmetric on the log scale, above zero however
    wide: t has one degree of freedom), and the run's JSON and report name the sittings."""
    flags = ["--gpu", "cpu", "--families", "full", "--backends", "torch", "sdpa", "--resolutions", "8", "--batch", "2",
             "--phase", "fwd", "--min-time", "0", "--sittings", "2", "--quiet", "--run-id", "sittings",
             "--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports")]
    assert cli.main(flags) == 0
    frame = bench.load_results(tmp_path / "results" / "cpu" / "sittings.csv")
    assert len(frame) == 2 and frame["status"].isin(TIMED).all(), frame[["case_key", "status_detail"]]
    assert (frame["rounds"] == 20).all()
    sdpa = frame[frame["backend"] == "sdpa"].iloc[0]
    assert 0 < sdpa["speedup_ci_low"] < sdpa["speedup_vs_ref"] < sdpa["speedup_ci_high"] < math.inf
    low, median, high = sdpa[["speedup_ci_low", "speedup_vs_ref", "speedup_ci_high"]]
    assert high / median == pytest.approx(median / low)
    metadata = json.loads((tmp_path / "results" / "cpu" / "sittings.json").read_text())
    assert metadata["timing"]["sittings"] == 2
    report = (tmp_path / "reports" / "cpu" / "sittings" / "README.md").read_text()
    assert "in each of 2 sittings, the later ones in fresh processes" in report


def test_retry_noisy_retimes_a_noisy_case_and_records_it(tmp_path, monkeypatch):
    """``--retry-noisy 2``: the sweep's group runner is wrapped so that a case whose row came out noisy (here
    sdpa's first attempt, made noisy after a real measurement; every other row is made ok, whatever this shared
    machine's timing scattered) is timed again beside its reference; its row says so, the reference's first row
    stays, and the run's metadata records the setting."""
    attempts = []

    def sdpa_noisy_at_first(cases, ctx, companions=()):
        rows = attention_rows.run_group(cases, ctx, companions)
        attempts.append([case.backend for case in cases])
        noisy = len(attempts) == 1
        return [{**row, "status": "noisy" if noisy and row["backend"] == "sdpa" else "ok"} for row in rows]

    monkeypatch.setattr(SUITES["attentions"], "run_group", sdpa_noisy_at_first)
    flags = ["--gpu", "cpu", "--families", "full", "--backends", "torch", "sdpa", "--resolutions", "8", "--batch", "2",
             "--phase", "fwd", "--min-time", "0", "--retry-noisy", "2", "--quiet", "--no-report", "--run-id", "retry",
             "--results-dir", str(tmp_path / "results")]
    assert cli.main(flags) == 0
    assert attempts == [["torch", "sdpa"], ["sdpa"]]
    frame = bench.load_results(tmp_path / "results" / "cpu" / "retry.csv").set_index("backend")
    assert (frame["status"] == "ok").all()
    assert "re-timed 1× (--retry-noisy)" in frame.loc["sdpa", "status_detail"]
    assert "re-timed" not in str(frame.loc["torch", "status_detail"])
    metadata = json.loads((tmp_path / "results" / "cpu" / "retry.json").read_text())
    assert metadata["timing"]["retry_noisy"] == 2


# --------------------------------------------------------------------------------------------
# 3. kill a sweep and resume it
# --------------------------------------------------------------------------------------------

KILL_FLAGS = ["--gpu", "cpu", "--preset", "quick", "--families", "bra", "--backends", "sdpa", "--phase", "fwd",
              "fwd+bwd", "--quiet", "--min-time", "0.05", "--no-report"]  # 14 cases


@pytest.mark.slow  # three sweeps in processes of their own, two at once: about 40 s; the fast tier resumes runs
# whose last row a kill cut (test_cli_resume_after_a_cut_row) and refuses a second writer
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    results_dir = tmp_path / "results"
    flags = [*KILL_FLAGS, "--results-dir", str(results_dir)]
    labels = dry_run_labels(dry_run(flags))
    planned = len(labels)
    assert planned == 14

    # the uninterrupted run of the same sweep goes alongside (the machine has two cores)
    whole = popen_bench(*flags, "--run-id", "whole", stderr_path=tmp_path / "whole.err")
    killed = popen_bench(*flags, "--run-id", "killme", stderr_path=tmp_path / "killme.err")
    csv_path = results_dir / "cpu" / "killme.csv"
    try:
        deadline = time.monotonic() + 180
        while len(data_lines(csv_path)) - 1 < 3:
            assert killed.poll() is None, \
                f"the sweep ended before it was killed:\n{(tmp_path / 'killme.err').read_text()}"
            assert time.monotonic() < deadline, "no 3 rows within 180 s"
            time.sleep(0.05)
        killed.kill()  # SIGKILL: no cleanup of any kind in the sweep
        assert killed.wait(timeout=30) != 0

        before = data_lines(csv_path)
        n_before = len(before) - 1
        assert 3 <= n_before < planned
        meta = json.loads(csv_path.with_suffix(".json").read_text())
        assert "finished" not in meta and "resumed" not in meta
        # as a run from before the CPU allocator policies left it: a resume keeps glibc's defaults then
        assert meta["timing"].pop("cpu_allocator") == ("retain" if retain_available() else "system")
        csv_path.with_suffix(".json").write_text(json.dumps(meta))
        # a torn write: half of a row, no newline; the writer must cut it before appending
        with open(csv_path, "ab") as f:
            f.write(before[-1][: len(before[-1]) // 2])

        resumed = run_bench("--resume", "killme", "--results-dir", str(results_dir), "--quiet", "--no-report")
        assert resumed.returncode == 0, f"stdout:\n{resumed.stdout}\nstderr:\n{resumed.stderr}"
        assert f"{planned - n_before} cases run, {n_before} already complete" in resumed.stdout
        assert whole.wait(timeout=240) == 0, (tmp_path / "whole.err").read_text()
    finally:
        stop(killed)
        stop(whole)

    after = data_lines(csv_path)
    assert after[:len(before)] == before, "rows written before the kill changed"
    assert_csv_well_formed(csv_path)
    frame = bench.load_results(csv_path)
    reference = bench.load_results(results_dir / "cpu" / "whole.csv")
    assert not frame["case_key"].duplicated().any()
    assert len(frame) == len(reference) == planned
    assert set(frame["case_key"]) == set(reference["case_key"])
    assert set(frame.apply(row_label, axis=1)) == set(labels)
    assert frame["status"].isin(TIMED).all() and (frame["run_id"] == "killme").all()

    meta = json.loads(csv_path.with_suffix(".json").read_text())
    assert meta["run_id"] == "killme" and meta["argv"] == [*flags, "--run-id", "killme"]
    assert isinstance(meta.get("resumed"), list) and len(meta["resumed"]) == 1
    assert {"at", "environment"} <= set(meta["resumed"][0])
    assert meta["timing"]["cpu_allocator"] == "system"
    assert set(meta["status_counts"]) <= set(TIMED) and sum(meta["status_counts"].values()) == planned
    assert sorted(p.name for p in (results_dir / "cpu").iterdir()) == [
        "killme.csv", "killme.json", "whole.csv", "whole.json"]


# --------------------------------------------------------------------------------------------
# 3b. signals: tests/test_signals.py
# --------------------------------------------------------------------------------------------

def wait_for(condition, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    """Poll ``condition()`` while the sweep runs; fail naming ``what`` if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s:\n{log.read_text()}"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------
# 3c. the progress bar within a comparison group
# --------------------------------------------------------------------------------------------

PROGRESS_FLAGS = ["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "torch", "sdpa",
                  "--resolutions", "14", "28", "--phase", "fwd", "--no-report"]  # 4 cases, 2 groups of 2
ROUNDS = 10  # of the stand-in group runner, one second each on the stand-in clock


class StandInClock:
    """tqdm's clock in a test: it moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bar_state(text: str) -> tuple[float, int, int]:
    """(cases counted, seconds elapsed, seconds left) read from a rendered progress bar."""
    found = re.search(r"\| ([\d.]+)/\d+ \[(\d+):(\d+)<(\d+):(\d+)", text)
    assert found, text
    done, elapsed_m, elapsed_s, left_m, left_s = found.groups()
    return float(done), 60 * int(elapsed_m) + int(elapsed_s), 60 * int(left_m) + int(left_s)


def stand_in_group_runner(clock: StandInClock, bars: list[str]):
    """A group runner that takes ROUNDS seconds of the stand-in clock, reporting each round to the
    sweep's progress (``RunContext.on_progress``) and noting the bar as it is then; its rows say so."""
    def run(cases, ctx, companions=()):
        for done in range(1, ROUNDS + 1):
            clock.now += 1
            ctx.on_progress(cases, done / ROUNDS)
            bars.append(str(ctx.on_progress.__self__.bar))
        return [stamped({**base_row(case, ctx), **failure(BackendUnavailableError("a stand-in"))}) for case in cases]

    return run


def test_progress_advances_within_a_group_and_estimates_the_time_left(tmp_path, monkeypatch, capsys):
    """Two groups of two cases, each ROUNDS stand-in seconds: the bar counts a group's cases in fractions
    from its first round on, long before its rows are written, and from 10% of the run on its estimate of
    the whole run (elapsed + left) is within 2x of the 20 s it takes."""
    clock, bars = StandInClock(), []
    monkeypatch.setattr(tqdm.std, "time", clock)
    monkeypatch.setattr(SUITES["attentions"], "run_group", stand_in_group_runner(clock, bars))
    assert cli.main([*PROGRESS_FLAGS, "--results-dir", str(tmp_path)]) == 0
    assert "4 cases run" in capsys.readouterr().out
    states = [bar_state(text) for text in bars]
    assert len(states) == 2 * ROUNDS
    assert states[0][0] == pytest.approx(4 / (2 * ROUNDS), abs=0.05)  # the first round counts
    assert [done for done, _, _ in states] == sorted(done for done, _, _ in states)
    assert states[ROUNDS - 1][0] == pytest.approx(2)  # the first group's last round, before its rows
    total = 2 * ROUNDS
    for done, elapsed, left in states[total // 10 - 1:]:
        assert total / 2 <= elapsed + left <= 2 * total, (done, elapsed, left)


def test_progress_bar_counts_each_case_once():
    """Fractions of a running group, a lower one from a retry and its rows: every case counts once, whole."""
    cases = [Case("full", backend, (), 2, 8, 64, 2, "float32", "cpu", "fwd") for backend in ("torch", "sdpa")]
    progress = cli_progress.SweepProgress(3, disable=False)
    progress.progress(Case("full", "flex", (), 2, 8, 64, 2, "float32", "cpu", "fwd"), already_done=True)
    progress.starting(cases)
    progress.advance(cases, 0.5)
    assert progress.bar.n == pytest.approx(2)
    progress.advance(cases[:1], 0.25)  # a retry of one case starting over
    progress.advance([Case("window", "torch", (), 2, 8, 64, 2, "float32", "cpu", "fwd")], 0.9)  # not running
    assert progress.bar.n == pytest.approx(2)
    progress.progress(cases[0], already_done=False)
    assert progress.bar.n == pytest.approx(2.5) and progress.running
    progress.progress(cases[1], already_done=False)
    assert progress.bar.n == pytest.approx(3) and not progress.running
    progress.close()


def test_run_group_reports_each_pass_prepared_and_each_sitting(monkeypatch):
    """``run_group``'s progress: one step per pass prepared (companions included), as many per sitting of
    rounds; reported for the group's cases as it goes, the first before any timing."""
    events = []

    def prepare(case, ctx, inputs=None, references=None):
        events.append(("prepared", case.backend))
        raise BackendUnavailableError("a stand-in")

    def time_rounds(runs, device, policy):
        events.append(("timed",))
        return {}

    monkeypatch.setattr(attention_rows, "prepare_case", prepare)
    monkeypatch.setattr(attention_rows, "time_rounds", time_rounds)
    case, reference = (Case("full", backend, (), 2, 8, 64, 2, "float32", "cpu", "fwd") for backend in ("sdpa", "torch"))
    ctx = attention_rows.RunContext(run_id="progress", profile=PROFILES["cpu"], device_name=cpu_name(),
                                    timing=TimingPolicy(sittings=2),
                                    on_progress=lambda cases, fraction: events.append((cases, fraction)))
    rows = attention_rows.run_group([case], ctx, companions=[reference])
    assert [row["status"] for row in rows] == ["unsupported"]
    assert events == [("prepared", "sdpa"), ([case], 1 / 6), ("prepared", "torch"), ([case], 2 / 6), ("timed",),
                      ([case], 4 / 6), ([case], 6 / 6)]


# --------------------------------------------------------------------------------------------
# 3d. one writer per run, and a last row cut at every byte
# --------------------------------------------------------------------------------------------

LOCK_FLAGS = ["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "torch", "sdpa",
              "--resolutions", "8", "12", "16", "--phase", "fwd", "--quiet", "--no-report"]  # 6 cases, 3 groups


@pytest.fixture(scope="module")
def lock_run(tmp_path_factory) -> Path:
    """A complete run of LOCK_FLAGS (0.1 s per pass: a resume of all of it takes seconds)."""
    results_dir = tmp_path_factory.mktemp("lock") / "results"
    assert cli.main([*LOCK_FLAGS, "--min-time", "0.1", "--results-dir", str(results_dir), "--run-id", "locked"]) == 0
    return results_dir / "cpu" / "locked.csv"


def emptied_copy(run: Path, folder: Path) -> Path:
    """A copy of the run with its header only: a resume runs every case."""
    results_dir = folder / "results"
    shutil.copytree(run.parent.parent, results_dir)
    copy = results_dir / "cpu" / run.name
    copy.write_bytes(data_lines(copy)[0])
    return copy


def wait_for_lock(path: Path, proc: subprocess.Popen, log: Path) -> str:
    """The holder text once ``proc`` holds the run's lock."""
    lock = path.with_suffix(".lock")
    wait_for(lambda: lock.exists() and f"pid {proc.pid} " in lock.read_text(), proc, "the run's lock", log)
    return lock.read_text()


def resume_locked(path: Path) -> list[str]:
    """The arguments that resume the copy of the locked run at ``path``."""
    return ["--resume", "locked", "--results-dir", str(path.parent.parent), "--quiet", "--no-report"]


def assert_complete_once(path: Path, keys: set[str]) -> None:
    frame = bench.load_results(path)
    assert not frame["case_key"].duplicated().any(), "a case has two rows"
    assert set(frame["case_key"]) == keys


def test_a_second_writer_of_a_run_is_refused_naming_the_first(lock_run, tmp_path, capsys):
    keys = set(bench.load_results(lock_run)["case_key"])
    path = emptied_copy(lock_run, tmp_path)
    log = tmp_path / "first.log"
    first = popen_bench(*resume_locked(path), stderr_path=log)
    try:
        holder = wait_for_lock(path, first, log)
        with pytest.raises(SystemExit) as exc:
            cli.main(resume_locked(path))
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"run locked is being written by pid {first.pid} on " in err and "--resume locked" in holder, err
        assert first.wait(timeout=120) == 0, log.read_text()
    finally:
        stop(first)
    assert_complete_once(path, keys)
    assert not path.with_suffix(".lock").exists()  # the holder removes it as it lets go


@pytest.mark.slow  # two resumes in processes of their own, at once: about 30 s; the fast tier's
# test_a_second_writer_of_a_run_is_refused_naming_the_first checks the refusal
def test_simultaneous_resumes_write_every_case_once(lock_run, tmp_path):
    keys = set(bench.load_results(lock_run)["case_key"])
    path = emptied_copy(lock_run, tmp_path)
    procs = [popen_bench(*resume_locked(path), stderr_path=tmp_path / f"{i}.err") for i in range(2)]
    try:
        codes = [proc.wait(timeout=180) for proc in procs]
    finally:
        for proc in procs:
            stop(proc)
    errors = [(tmp_path / f"{i}.err").read_text() for i in range(2)]
    assert 0 in codes and set(codes) <= {0, 2}, errors
    for code, err in zip(codes, errors):
        assert code == 0 or "is being written by pid" in err, err
    assert_complete_once(path, keys)


@pytest.mark.slow  # a resume in a process of its own, killed, and the run completed: about 8 s
def test_a_killed_writer_leaves_no_lock_behind(lock_run, tmp_path):
    """kill -9 while the run's lock is held: the lock file stays, but the OS released the lock, so the
    next resume takes it and completes the run."""
    keys = set(bench.load_results(lock_run)["case_key"])
    path = emptied_copy(lock_run, tmp_path)
    log = tmp_path / "killed.log"
    proc = popen_bench(*resume_locked(path), stderr_path=log)
    try:
        wait_for_lock(path, proc, log)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        stop(proc)
    assert path.with_suffix(".lock").exists()
    assert cli.main(resume_locked(path)) == 0
    assert_complete_once(path, keys)
    assert not path.with_suffix(".lock").exists()


def cut_positions(row: bytes, which: str) -> list[int]:
    """Where to cut a row: at every byte, or (the fast tier's sample) at its first bytes, on either side of its
    first and last field separators, in its middle and at its last bytes (the line break, then nothing cut)."""
    if which == "every byte":
        return list(range(len(row) + 1))
    first, last = row.index(b","), row.rindex(b",")
    return sorted({0, 1, first, first + 1, len(row) // 2, last, last + 1, len(row) - 2, len(row) - 1, len(row)})


CUTS = [pytest.param("sample"), pytest.param("every byte", marks=pytest.mark.slow)]


@pytest.mark.parametrize("cuts", CUTS)
def test_readers_never_take_a_cut_row(lock_run, tmp_path, cuts):
    """A last row cut at any byte (a write in progress, or a crash): load_results returns the complete
    rows only, whatever the cut leaves."""
    lines = data_lines(lock_run)
    complete, last = b"".join(lines[:-1]), lines[-1]
    expected = bench.load_results(lock_run).iloc[:-1]
    path = tmp_path / "cut.csv"
    for position in cut_positions(last, cuts)[:-1]:
        path.write_bytes(complete + last[:position])
        frame = bench.load_results(path)
        assert list(frame["case_key"]) == list(expected["case_key"]), position
    path.write_bytes(complete + last)
    assert len(bench.load_results(path)) == len(lines) - 1


@pytest.mark.parametrize("cuts", CUTS)
def test_resume_after_a_cut_at_every_byte_completes_the_run_once(lock_run, tmp_path, cuts):
    """The last row cut at each of its byte positions (the fast tier: a sample of them), then the writer of a
    resume opens the run (under its lock) and runs what has no row: every case ends with exactly one row, the
    rows before the cut are untouched. The cases' rows come from the real run (``run`` stands in for the
    measurement, which the next test does for real at a few positions)."""
    lines = data_lines(lock_run)
    complete, last = b"".join(lines[:-1]), lines[-1]
    frame = bench.load_results(lock_run)
    stored = {row["case_key"]: row.to_dict() for _, row in frame.iterrows()}
    labels = dry_run_labels(dry_run([*LOCK_FLAGS, "--results-dir", str(tmp_path)]))
    parser = sweep_cli.build_parser()
    cases = list(sweep_cli.plan(parser, parser.parse_args(LOCK_FLAGS), SUITES["attentions"], "cpu", PROFILES["cpu"]))
    assert sorted(c.label() for c in cases) == sorted(labels)

    def replay(todo, ctx, companions=()):
        return [{k: v for k, v in stored[case.key].items() if not is_empty(v)} for case in todo]

    path = tmp_path / "cut.csv"
    ctx = bench.RunContext(run_id="cut", profile=PROFILES["cpu"], device_name="test")
    positions = cut_positions(last, cuts)
    for position in positions:
        path.write_bytes(complete + last[:position])
        with RunLock(path):
            ran, skipped = bench.run_sweep(cases, ctx, path, run=replay)
        assert (ran, skipped) == ((1, len(cases) - 1) if position < len(last) else (0, len(cases))), position
        assert path.read_bytes().startswith(complete)
        assert_complete_once(path, set(stored))
    assert len(last) > 300 and positions[0] == 0 and positions[-1] == len(last)  # a real row, cut from 0 to whole


@pytest.mark.parametrize("keep", ["first byte", "half", "all but the line break"])
def test_cli_resume_after_a_cut_row(lock_run, tmp_path, keep, capsys):
    path = emptied_copy(lock_run, tmp_path)
    lines = data_lines(lock_run)
    last = lines[-1]
    cut = {"first byte": 1, "half": len(last) // 2, "all but the line break": len(last) - 1}[keep]
    path.write_bytes(b"".join(lines[:-1]) + last[:cut])
    assert cli.main(resume_locked(path)) == 0
    assert "1 cases run, 5 already complete" in capsys.readouterr().out
    assert path.read_bytes().startswith(b"".join(lines[:-1]))
    assert_complete_once(path, set(bench.load_results(lock_run)["case_key"]))


# --------------------------------------------------------------------------------------------
# 3e. the README's CPU command leaves the committed runs and their report as they are
# --------------------------------------------------------------------------------------------

def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_the_readme_cpu_command_leaves_the_committed_runs_and_report_alone(tmp_path, monkeypatch, capsys):
    """``python run_bench.py --gpu cpu --preset quick``, run where results/cpu/ and reports/cpu/ are copies
    of the repository's (a smaller sweep of the preset, with the command's default folders and its report;
    in-process, in that folder): the committed files stay byte for byte, and the run and its report go to
    runs/results/cpu/ and runs/reports/cpu/<run-id>/ instead, never among them. (The command itself, whole, is
    run by tests/test_documented_commands.py.)"""
    for folder in ("results/cpu", "reports/cpu"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    committed = folder_bytes(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "torch", "sdpa",
                     "--phase", "fwd", "--quiet", "--min-time", "0"]) == 0
    stdout = capsys.readouterr().out
    after = folder_bytes(tmp_path)
    assert {name: data for name, data in after.items() if not name.startswith("runs/")} == committed
    [run] = (tmp_path / "runs" / "results" / "cpu").glob("*.csv")
    run_id = run.stem
    assert f"rows in {Path('runs') / 'results' / 'cpu' / run.name}" in stdout
    assert f"report: {Path('runs') / 'reports' / 'cpu' / run_id / 'README.md'}" in stdout
    report = f"runs/reports/cpu/{run_id}/"
    assert {"README.md", "tables/main.md", "tables/main.tex", "tables/main.csv"} <= {
        name.removeprefix(report) for name in after if name.startswith(report)}
    assert f"Run `{run_id}`" in after[f"{report}README.md"].decode()


def test_git_ignores_the_default_results_and_reports(tmp_path):
    """A user's runs (``runs/``, the default of --results-dir and the reports beside it) never show as
    untracked files of the checkout; the committed reference runs are not ignored."""
    assert sweep_cli.build_parser().get_default("results_dir") == Path("runs") / "results"
    assert cli_arguments.default_reports_dir(Path("runs") / "results") == Path("runs") / "reports"
    paths = ["runs/results/cpu/x.csv", "runs/reports/cpu/x/README.md", "results/cpu/x.csv", "reports/cpu/README.md"]
    proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *paths], capture_output=True,
                          text=True)
    assert proc.stdout.split() == paths[:2], proc.stderr


# --------------------------------------------------------------------------------------------
# 4. resume of a run that does not exist
# --------------------------------------------------------------------------------------------

def test_resume_of_unknown_run_fails_naming_it(tmp_path, capsys):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "other-run.csv").write_text(",".join(bench.COLUMNS) + "\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--resume", "no-such-run", "--results-dir", str(tmp_path), "--quiet"])
    code = exc.value.code
    assert code not in (0, None)  # sys.exit with a message exits 1
    message = (code if isinstance(code, str) else "") + capsys.readouterr().err
    assert "no-such-run" in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cpu", "other-run.csv"]


@pytest.fixture(scope="module")
def partial_template(tmp_path_factory) -> Path:
    """A one-case-short run of full attention: 2 planned cases, 1 row on disk (made once; each test gets a copy)."""
    folder = tmp_path_factory.mktemp("partial")
    flags = ["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "torch", "sdpa",
             "--phase", "fwd", "--quiet", "--min-time", "0.01", "--no-report", "--results-dir", str(folder),
             "--run-id", "partial"]
    assert cli.main(flags) == 0
    path = folder / "cpu" / "partial.csv"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    path.write_text("".join(lines[:2]))
    return folder


@pytest.fixture
def partial_run(partial_template, tmp_path):
    """A copy of the one-case-short run in this test's own folder: (results folder, its .csv)."""
    shutil.copytree(partial_template, tmp_path, dirs_exist_ok=True)
    return tmp_path, tmp_path / "cpu" / "partial.csv"


def test_resume_dry_run_lists_what_is_left_and_runs_nothing(partial_run, capsys):
    results_dir, path = partial_run
    before = path.read_bytes(), path.with_suffix(".json").read_bytes()
    assert cli.main(["--resume", "partial", "--results-dir", str(results_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 cases to run, 1 already complete" in out
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == before


@pytest.mark.parametrize("flag", [["--families", "bra"], ["--min-time", "1"], ["--preset", "full"]])
def test_resume_refuses_flags_that_would_change_the_sweep(partial_run, flag, capsys):
    results_dir, path = partial_run
    with pytest.raises(SystemExit) as exc:
        cli.main(["--resume", "partial", "--results-dir", str(results_dir), *flag])
    assert exc.value.code == 2 and flag[0] in capsys.readouterr().err
    assert len(data_lines(path)) == 2  # header and the one row: nothing ran


def test_resume_without_metadata_is_a_clean_error(partial_run, capsys):
    results_dir, path = partial_run
    path.with_suffix(".json").unlink()
    with pytest.raises(SystemExit) as exc:
        cli.main(["--resume", "partial", "--results-dir", str(results_dir)])
    assert exc.value.code == 2 and "partial.json does not exist" in capsys.readouterr().err


def test_resume_looks_in_the_results_dir_before_the_working_directory(partial_run, monkeypatch, capsys):
    results_dir, path = partial_run
    monkeypatch.chdir(results_dir)
    (results_dir / "partial").mkdir()  # a folder named like the run in the working directory
    assert cli.main(["--resume", "partial", "--results-dir", str(results_dir), "--quiet", "--no-report"]) == 0
    assert len(data_lines(path)) == 3  # header and both rows


def test_a_time_budget_stops_starting_cases_and_resume_completes_them(tmp_path, monkeypatch, capsys):
    """With a budget of 1 s and comparison groups that take 2 s each on a stand-in clock (the sweep's budget
    clock, moved on by the real group runner's wrapper), the first group (both backends at 14²) runs and the
    next (28²) is left without rows, said so on stdout and in the metadata; --resume (with a budget of its own)
    runs them."""
    clock = StandInClock()
    stand_in_time = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time)
                                             if not name.startswith("_")})
    stand_in_time.monotonic = clock
    monkeypatch.setattr(bench.cli.sweep, "time", stand_in_time)
    monkeypatch.setattr(bench.execution.runner, "time", stand_in_time)
    real_run_group = SUITES["attentions"].run_group

    def two_seconds_a_group(cases, ctx, companions=()):
        clock.now += 2
        return real_run_group(cases, ctx, companions)

    monkeypatch.setattr(SUITES["attentions"], "run_group", two_seconds_a_group)
    flags = ["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "torch", "sdpa",
             "--resolutions", "14", "28", "--phase", "fwd", "--quiet", "--min-time", "0", "--no-report",
             "--results-dir", str(tmp_path), "--run-id", "budget", "--time-budget", "1"]
    assert cli.main(flags) == 0
    out = capsys.readouterr().out
    assert "2 cases run" in out and "2 cases not started" in out and "--resume budget" in out
    path = tmp_path / "cpu" / "budget.csv"
    assert len(data_lines(path)) == 3  # header and the first group's two rows
    assert set(bench.load_results(path)["resolution"]) == {14}
    assert json.loads(path.with_suffix(".json").read_text())["cases_not_started"] == 2
    assert cli.main(["--resume", "budget", "--results-dir", str(tmp_path), "--time-budget", "3", "--quiet",
                     "--no-report"]) == 0  # one group of 2 s fits in 3
    assert len(data_lines(path)) == 5
    assert json.loads(path.with_suffix(".json").read_text())["cases_not_started"] == 0


# --------------------------------------------------------------------------------------------
# 5. bad flag values: tests/test_bad_cli_input.py has the matrix
# --------------------------------------------------------------------------------------------

def test_gpu_profile_without_cuda_exits_2_suggesting_cpu(tmp_path, monkeypatch, capsys):
    """A real run of a GPU profile without a GPU refuses before anything is written, and says what does work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--gpu", "h100", "--preset", "quick", "--results-dir", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "h100" in err and "CUDA" in err and "none is visible" in err and "--gpu cpu" in err and "--dry-run" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("suite", ["attentions", "models"])
def test_dry_run_of_a_gpu_profile_needs_no_gpu(suite, tmp_path, monkeypatch, capsys):
    """``--gpu h100 --dry-run`` on a machine without CUDA lists the profile's plan (its dtype, CUDA cases)
    and initialises nothing of CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_cuda(*args, **kwargs):
        raise AssertionError("a dry run initialised CUDA")

    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    monkeypatch.setattr(torch.cuda, "init", no_cuda)
    assert cli.main(["--gpu", "h100", "--suite", suite, "--dry-run", "--results-dir", str(tmp_path / "r")]) == 0
    labels = dry_run_labels(capsys.readouterr().out)
    assert labels and all(PROFILES["h100"].default_dtype in label for label in labels)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------
# 6. dry runs and the listing
# --------------------------------------------------------------------------------------------

def test_full_attention_is_not_repeated_per_topk_or_kv_mode(tmp_path, capsys):
    assert cli.main(["--gpu", "cpu", "--preset", "quick", "--families", "full", "--dry-run",
                     "--results-dir", str(tmp_path / "r")]) == 0
    labels = dry_run_labels(capsys.readouterr().out)
    backends = attentions.list_attentions()["full"]["backends"]
    assert len(labels) == 2 * len(backends)
    assert sorted(labels) == sorted(f"full/{b} 28² C64 h2 b2 float32 {p}"
                                    for b in backends for p in ("fwd", "fwd+bwd"))
    assert not (tmp_path / "r").exists()


def test_dry_run_counts_per_family(tmp_path):
    """The quick preset's count per family: a family without BRA's or NAT's options once per backend and phase
    (the topk, kv and variant axes are not crossed with it); BRA per backend in its 5 kv modes × 2 phases, and
    topk 1 and 16 forward; neighborhood in its 3 variants (NAT, no bias, DiNAT) × 2 phases."""
    labels = dry_run_labels(dry_run([*QUICK_FLAGS, "--results-dir", str(tmp_path / "r")]))
    registry = attentions.list_attentions()
    count = {f: sum(family_of(label) == f for label in labels) for f in registry}
    per_backend = {"bra": 5 * 2 + 2, "neighborhood": 3 * 2}
    assert count == {family: len(info["backends"]) * per_backend.get(family, 2) for family, info in registry.items()}
    assert count["bra"] == 5 * (5 * 2 + 2)  # torch, sdpa, flex, triton, chunked
    assert not any("topk" in label for label in labels if family_of(label) != "bra")


def test_list_shows_every_family_and_backend_with_availability(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    blocks: dict[str, list[str]] = {}
    families_part = out.split("\nsuites (--suite):")[0]  # the suites and their reports follow the families
    for line in families_part.splitlines():
        if line and not line.startswith(" "):
            # a family's block opens with "<family> (<class>), reference backend '<name>'"; other blocks follow
            current = blocks.setdefault(line.split()[0] if ", reference backend " in line else line, [])
        else:
            current.append(line)
    registry = attentions.list_attentions()
    assert {name for name in blocks if " " not in name} == set(registry)
    for family, info in registry.items():
        lines = blocks[family]
        for backend in info["backends"]:
            index = next((i for i, line in enumerate(lines) if line.split()[:1] == [backend]), None)
            assert index is not None, f"--list lacks {family}/{backend}"
            here = lines[index + 1]
            on_cpu, reason = attentions.backend_available(family, backend, "cpu")
            assert ("here: cpu: yes" in here) == on_cpu and reason in here, here
            if not HAS_CUDA:
                why_not = here.split("cuda: no (", 1)[1]
                assert ("CUDA" in why_not) if "cuda" in info["backends"][backend]["devices"] else (
                    "not on cuda" in why_not), here


# --------------------------------------------------------------------------------------------
# 7. the GPU profile against the GPU present
# --------------------------------------------------------------------------------------------

H100_NAME = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def fake_h100(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: H100_NAME)


def test_profile_for_another_gpu_warns_naming_both(fake_h100):
    with pytest.warns(UserWarning, match=r"(?s)a100.*H100 80GB HBM3") as record:
        profile, device, name = sweep_cli.select_profile(sweep_cli.build_parser(), "a100")
    assert any(PROFILES["a100"].marketing_name in str(w.message) for w in record)
    assert profile is PROFILES["a100"] and device == "cuda" and name == H100_NAME


def test_matching_profile_does_not_warn(fake_h100):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        profile, device, name = sweep_cli.select_profile(sweep_cli.build_parser(), "h100")
    assert profile is PROFILES["h100"] and device == "cuda" and name == H100_NAME


def test_profile_is_picked_from_the_gpu(fake_h100):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        profile, device, name = sweep_cli.select_profile(sweep_cli.build_parser(), None)
    assert profile.name == "h100" and device == "cuda" and name == H100_NAME


@pytest.mark.parametrize("name", ["NVIDIA L40S", "NVIDIA GH200 480GB", "NVIDIA A10"])
def test_profiles_match_whole_model_names(monkeypatch, name, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    with pytest.raises(SystemExit):  # no profile: an L40S is not an L4, a GH200 not an H200
        sweep_cli.select_profile(sweep_cli.build_parser(), None)
    assert name in capsys.readouterr().err
    with pytest.warns(UserWarning, match=name):
        sweep_cli.select_profile(sweep_cli.build_parser(), "l4" if "L40" in name else "h200" if "GH" in name else "a100")


def test_unknown_gpu_without_profile_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GTX 1080")
    with pytest.raises(SystemExit) as exc:
        sweep_cli.select_profile(sweep_cli.build_parser(), None)
    assert exc.value.code == 2
    assert "GTX 1080" in capsys.readouterr().err


def test_no_cuda_needs_an_explicit_cpu_profile(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        sweep_cli.select_profile(sweep_cli.build_parser(), None)
    assert exc.value.code == 2 and "--gpu cpu" in capsys.readouterr().err
    profile, device, name = sweep_cli.select_profile(sweep_cli.build_parser(), "cpu")
    assert profile.name == "cpu" and device == "cpu" and name == cpu_name() and name


# --------------------------------------------------------------------------------------------
# 8. a sweep end to end (one run, shared by several tests): in the fast tier the smallest sweep that
#    runs every registered family once; in the slow tier the whole quick preset. Its tests come last in
#    this file, so that the run (in the background, in a process of its own) is done by the time they start.
# --------------------------------------------------------------------------------------------

def every_family_flags() -> list[str]:
    """The quick preset cut to one configuration of each registered family (BRA: topk 4, identity kv), both
    phases, on the shared reference backends (torch, sdpa), each family's reference backend, and one backend
    that cannot run on a CPU (its rows are 'unsupported'), all from the registry; nothing timed beyond the
    minimum rounds."""
    registry = attentions.list_attentions()
    references = [info["reference_backend"] for info in registry.values()]
    not_on_cpu = [backend for info in registry.values() for backend, record in info["backends"].items()
                  if "cpu" not in record["devices"]]
    backends = list(dict.fromkeys([*BACKENDS, *references, *not_on_cpu[:1]]))
    return ["--gpu", "cpu", "--preset", "quick", "--kv-modes", "identity", "--topk", "4", "--backends", *backends,
            "--quiet", "--min-time", "0"]


# The registry as a user's process sees it (without Triton's interpreter, which conftest.py turns on here): what
# each backend declares about the CPU.
USER_REGISTRY = """
import json, attentions
print(json.dumps({family: {backend: {"devices": record["devices"], "backward": record["backward"],
                                      "cpu_dtypes": record["device_dtypes"].get("cpu", [])}
                           for backend, record in info["backends"].items()}
                  for family, info in attentions.list_attentions().items()}))
"""


def runs_on_the_cpu(declared: dict, family: str, backend: str, phase: str, dtype: str) -> bool:
    """Whether the backend declares the CPU, the dtype there and (for fwd+bwd) a backward there."""
    record = declared[family][backend]
    return ("cpu" in record["devices"] and dtype in record["cpu_dtypes"]
            and (phase == "fwd" or "cpu" in record["backward"]))


def refused_by_its_options(row: pd.Series) -> bool:
    """Whether the case's module refuses its backend for its options (``unsupported_reason``: NATTEN without a
    bias table), which no declaration says."""
    with torch.device("meta"):
        module = attentions.build(row["family"], dim=int(row["dim"]), num_heads=int(row["heads"]),
                                  backend=row["backend"], **json.loads(row["options"]))
    return module.unsupported_reason() is not None


SWEEPS = {"every-family": every_family_flags, "quick-preset": lambda: list(QUICK_FLAGS)}


@background("quick_run")
def quick_run_jobs(param: str, folder: Path) -> dict[str, Job]:
    """The sweep, as a user runs it, and what each backend declares about the CPU in a user's process."""
    flags = [*SWEEPS[param](), "--results-dir", str(folder / "results")]
    return {"sweep": Job([sys.executable, str(RUN_BENCH), *flags], REPO, subprocess_env()),
            "declared": Job([sys.executable, "-c", USER_REGISTRY], REPO, subprocess_env())}


@pytest.fixture(scope="module", params=[pytest.param("every-family"),
                                        pytest.param("quick-preset", marks=pytest.mark.slow)])
def quick_run(request, tmp_path_factory):
    """The sweep in a process of its own, run in the background while other tests run (tests/background.py); its
    dry run here, with the same flags on an empty results folder of its own."""
    jobs = finished(request, tmp_path_factory)
    sweep, declared = jobs["sweep"], jobs["declared"]
    flags = sweep.command[2:]
    results_dir = Path(flags[flags.index("--results-dir") + 1])
    empty = tmp_path_factory.mktemp("dry") / "results"
    dry = dry_run([*flags[:flags.index("--results-dir")], "--results-dir", str(empty)])
    dry_files = sorted(p for p in empty.rglob("*")) if empty.exists() else []
    assert sweep.returncode == 0, sweep.output[-6000:]
    assert declared.returncode == 0, declared.output[-3000:]
    csvs = sorted((results_dir / "cpu").glob("*.csv"))
    assert len(csvs) == 1, f"one results file expected under {results_dir}/cpu, got {csvs}"
    return {"name": request.param, "dir": results_dir, "flags": flags, "dry": dry, "dry_files": dry_files,
            "output": sweep.output, "csv": csvs[0], "json": csvs[0].with_suffix(".json"),
            "frame": bench.load_results(csvs[0]), "declared": json.loads(declared.output.strip().splitlines()[-1])}


def test_quick_run_writes_csv_json_and_prints_summary(quick_run):
    csv_path, json_path = quick_run["csv"], quick_run["json"]
    assert csv_path.parent.name == "cpu" and json_path.exists()
    assert sorted(p.name for p in csv_path.parent.iterdir()) == sorted([csv_path.name, json_path.name])
    assert_csv_well_formed(csv_path)
    out = quick_run["output"]
    header = next(line for line in out.splitlines() if line.strip())
    for word in ("family", "options", "resolution", "batch", "dtype", "phase", "gmacs", *BACKENDS):
        assert word in header.split(), f"summary table header lacks {word!r}: {header!r}"
    for family in attentions.list_attentions():
        assert any(line.split()[:1] == [family] for line in out.splitlines()), f"no summary line for {family}"
    assert f"{len(dry_run_labels(quick_run['dry']))} cases run, 0 already complete" in out
    assert str(csv_path) in out
    # by default the sweep ends with a report of its own, in reports/<gpu>/<run-id>/ beside the results folder
    report = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("report:")]
    assert report == [str(quick_run["dir"].parent / "reports" / "cpu" / csv_path.stem / "README.md")], out[-500:]
    assert Path(report[0]).is_file()


def test_quick_run_rows_match_the_dry_run(quick_run):
    frame = quick_run["frame"]
    labels = dry_run_labels(quick_run["dry"])
    assert len(labels) == len(set(labels))
    assert not frame["case_key"].duplicated().any(), frame.loc[frame["case_key"].duplicated(), "case_key"].tolist()
    assert len(frame) == len(labels)
    assert set(frame.apply(row_label, axis=1)) == set(labels)
    # and the keys are the ones the planner makes for these flags
    parser = sweep_cli.build_parser()
    args = parser.parse_args(quick_run["flags"])
    planned = sweep_cli.plan(parser, args, SUITES["attentions"], "cpu", PROFILES["cpu"])
    assert set(frame["case_key"]) == {c.key for c in planned}
    # every registered family ran, in both phases
    assert set(frame["family"]) == set(attentions.list_attentions())
    assert set(frame["phase"]) == {"fwd", "fwd+bwd"}


def test_quick_run_rows_are_consistent(quick_run):
    frame = quick_run["frame"]
    assert [c for c in bench.REQUIRED_COLUMNS if c not in frame.columns] == []
    assert list(frame.columns) == bench.COLUMNS
    # 'unsupported' exactly where the backend declares no CPU, no backward on the CPU or not this dtype there, or
    # refuses the case's options
    declared = quick_run["declared"]
    declared_runs = frame.apply(lambda row: runs_on_the_cpu(declared, row["family"], row["backend"], row["phase"],
                                                            row["dtype"]), axis=1)
    refused = frame.apply(refused_by_its_options, axis=1)
    runs = declared_runs & ~refused
    unsupported = frame["status"] == "unsupported"
    assert list(frame.loc[unsupported, "case_key"]) == list(frame.loc[~runs, "case_key"])
    assert frame.loc[refused & declared_runs, "status_detail"].str.contains("has no relative position bias").all()
    assert unsupported.any(), "the sweep should hold a backend that cannot run here"
    no_cpu = frame.apply(lambda row: "cpu" not in declared[row["family"]][row["backend"]]["devices"], axis=1)
    assert frame.loc[no_cpu, "status_detail"].str.contains(r"runs on cuda, not on cpu").all()
    assert frame.loc[~declared_runs & ~no_cpu & (frame["phase"] == "fwd+bwd"), "status_detail"].str.contains(
        "no backward on cpu").all()
    assert frame.loc[unsupported, ["latency_ms_median", "gmacs"]].isna().all(axis=None)
    frame = frame[~unsupported]
    # measured: ok, or noisy where this (shared, 2-core) machine's timing scattered at the minimum rounds
    assert frame["status"].isin(TIMED).all(), frame.loc[~frame["status"].isin(TIMED), ["case_key", "status_detail"]]
    noisy = frame[frame["status"] == "noisy"]
    assert noisy["status_detail"].str.contains("timing spread p80/p20").all()
    interval = pd.Series([1.0 if is_empty(row["speedup_vs_ref"])  # a reference has no interval
                          else speedup_interval_width(row["speedup_ci_low"], row["speedup_ci_high"])
                          for _, row in noisy.iterrows()], index=noisy.index, dtype=float)
    assert ((noisy["timing_spread"] > 1.3) | (interval > 1.3)).all()
    reference = frame["backend"] == frame["reference_backend"]
    references = {family: info["reference_backend"] for family, info in attentions.list_attentions().items()}
    assert (frame["reference_backend"] == frame["family"].map(references)).all()
    assert reference.any() and (~reference).any()
    for _, row in frame.iterrows():  # every row against float64, the reference's own included
        assert not is_empty(row["rel_err"]) and row["rel_err"] <= row["err_tolerance"], row["case_key"]
        assert 0 < row["rel_err"] and math.isfinite(row["max_abs_err"]), row["case_key"]
        assert row["err_tolerance"] == max(2 * row["ref_rel_err"], 1e-5), row["case_key"]  # float32's floor
    assert (frame.loc[reference, "rel_err"] == frame.loc[reference, "ref_rel_err"]).all()
    assert frame["flops_check"].isna().all(), frame["flops_check"].dropna().tolist()
    assert ((frame["gmacs"] - frame["gmacs_analytic"]).abs() <= 0.01 * frame["gmacs_analytic"]).all()
    assert (frame["gmacs"] > 0).all()
    # full attention at 28², C64, 2 heads, batch 2 (no LePE), by hand: 1568 tokens × 64 × 4 × 64 for qkv and the
    # output projection, and 1568 × 784 keys × 2 × 64 for q·kᵀ and attn·v: 25,690,112 + 157,351,936 MACs
    full = frame[(frame["family"] == "full") & (frame["options"] == "{}")]
    assert len(full) and (full["gmacs"] * 1e9).round().eq(183_042_048).all(), full["gmacs"].tolist()
    factor = frame["phase"].map({"fwd": 2, "fwd+bwd": 6})  # the papers' convention: 2 FLOPs a MAC, 3x for training
    assert ((frame["hw_gflops"] - factor * frame["gmacs"]).abs() <= 1e-9 * frame["hw_gflops"]).all()
    assert (frame["latency_ms_p20"] <= frame["latency_ms_median"]).all()
    assert (frame["latency_ms_median"] <= frame["latency_ms_p80"]).all()
    assert (frame["latency_ms_p20"] > 0).all()
    assert (frame["rounds"] >= 10).all()
    assert (frame["peak_mem_mb"] > 0).all()
    assert (frame["page_faults"] >= 0).all()  # counted for every timed CPU row
    expected_throughput = frame["batch"] / (frame["latency_ms_median"] / 1000)
    assert ((frame["throughput"] - expected_throughput).abs() <= 1e-6 * expected_throughput).all()
    achieved = frame["hw_gflops"] * 1e9 / (frame["latency_ms_median"] / 1000) / 1e12
    assert ((frame["tflops_achieved"] - achieved).abs() <= 1e-6 * achieved).all()
    assert frame["pct_of_peak"].isna().all()  # the cpu profile has no peak figure
    assert (frame["gpu_profile"] == "cpu").all() and (frame["device"] == "cpu").all()
    names = frame["device_name"]
    assert names.notna().all() and (names.astype(str).str.strip() != "").all()
    assert frame["run_id"].nunique() == 1 and frame["run_id"].iloc[0] == quick_run["csv"].stem
    assert (frame["batch"] == 2).all() and (frame["resolution"] == 28).all() and (frame["dtype"] == "float32").all()


def test_quick_run_metadata(quick_run):
    meta = json.loads(quick_run["json"].read_text())
    frame = quick_run["frame"]
    planned = len(dry_run_labels(quick_run["dry"]))
    assert METADATA_KEYS <= set(meta), METADATA_KEYS - set(meta)
    assert meta["run_id"] == quick_run["csv"].stem
    assert meta["preset"] == "quick" and meta["gpu_profile"] == "cpu"
    assert meta["device_name"] and meta["device_name"] == frame["device_name"].iloc[0]
    assert meta["argv"] == quick_run["flags"]
    assert meta["command"].startswith("python run_bench.py ") and "--preset quick" in meta["command"]
    assert meta["started"] <= meta["finished"]
    counts = meta["status_counts"]
    assert counts == frame["status"].value_counts().to_dict()
    assert set(counts) <= {"ok", "noisy", "unsupported"}
    assert counts.get("ok", 0) + counts.get("noisy", 0) + counts["unsupported"] == planned
    assert meta["timing"]["rounds"].startswith("paired") and meta["timing"]["noise_limit"] == 1.3
    assert meta["timing"]["cpu_allocator"] == ("retain" if retain_available() else "system")  # the CPU default
    assert meta.get("cases_planned", planned) == planned
    assert "resumed" not in meta
    assert ENVIRONMENT_KEYS <= set(meta["environment"]), ENVIRONMENT_KEYS - set(meta["environment"])
    assert meta["environment"]["torch"] == torch.__version__
    assert meta["environment"]["gpu_count"] == (torch.cuda.device_count() if HAS_CUDA else 0)


def test_dry_run_writes_no_files(quick_run):
    """The fixture ran --dry-run with the flags of the run on an empty results dir of its own."""
    assert quick_run["dry_files"] == []


def test_existing_run_id_is_refused_and_resume_suggested(quick_run, tmp_path, capsys):
    run_id = quick_run["csv"].stem
    results_dir = tmp_path / "results"
    (results_dir / "cpu").mkdir(parents=True)
    for path in (quick_run["csv"], quick_run["json"]):
        (results_dir / "cpu" / path.name).write_bytes(path.read_bytes())
    before = (results_dir / "cpu" / quick_run["csv"].name).read_bytes()
    with pytest.raises(SystemExit) as exc:  # a one-case sweep, should it not be refused
        cli.main(["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "sdpa", "--phase", "fwd",
                  "--quiet", "--min-time", "0.01", "--no-report", "--results-dir", str(results_dir),
                  "--run-id", run_id])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and run_id in err
    assert (results_dir / "cpu" / quick_run["csv"].name).read_bytes() == before


def test_the_quick_preset_plans_every_family_backend_and_kv_mode():
    """The whole quick preset (planned, not run: its real sweep is the slow tier's): every registered family with
    every one of its backends in both phases, BRA in every kv mode, and topk 1 and 16 forward only."""
    parser = sweep_cli.build_parser()
    cases = sweep_cli.plan(parser, parser.parse_args(QUICK_FLAGS), SUITES["attentions"], "cpu", PROFILES["cpu"])
    assert len({case.key for case in cases}) == len(cases)
    for family, info in attentions.list_attentions().items():
        mine = [case for case in cases if case.family == family]
        assert {(case.backend, case.phase) for case in mine} == {
            (backend, phase) for backend in info["backends"] for phase in ("fwd", "fwd+bwd")}, family
    bra = [case for case in cases if case.family == "bra"]
    assert {case.effective_options()["kv_downsample_mode"] for case in bra} == set(KV_MODES)
    assert {case.effective_options()["topk"] for case in bra if case.phase == "fwd+bwd"} == {4}
    assert {case.effective_options()["topk"] for case in bra} == {1, 4, 16}
    assert {(case.resolution, case.batch, case.dtype) for case in cases} == {(28, 2, "float32")}
