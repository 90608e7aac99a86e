"""Signals during a sweep: no completed row lost and no wrong row stored, whichever signal ends it and
whenever it comes, with the processes of its sittings ended with it.

A first Ctrl-C stops the sweep once the group in progress has its rows; a second one, SIGTERM or SIGHUP stop it
at once (that group left without rows). Either way the JSON says ``interrupted`` and by which signal, the
resume command is printed and ``--resume`` completes the run. The sweeps run in subprocesses, as a user runs
them, and get real signals.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench
from bench import cli
from bench.cli import progress as cli_progress
from bench.suites import SUITES
from bench.core.processes import Stopped
from test_bench_cli import (REPO, RUN_BENCH, TIMED, assert_csv_well_formed, data_lines, dry_run, dry_run_labels,
                            row_label, run_bench, stop, subprocess_env, wait_for)

CTRL_C_FLAGS = ["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "torch", "sdpa",
                "--resolutions", "14", "28", "--phase", "fwd", "fwd+bwd", "--min-time", "0.2",
                "--no-report"]  # 8 cases, in 4 comparison groups of 2


def assert_resumed_to_the_plan(csv_path: Path, labels: list[str]) -> None:
    """After one resume: every planned case (its dry-run label) has one timed row, and the metadata says the run
    is complete and was resumed once."""
    frame = bench.load_results(csv_path)
    assert len(frame) == len(labels) and not frame["case_key"].duplicated().any()
    assert sorted(frame.apply(row_label, axis=1)) == sorted(labels)
    assert frame["status"].isin(TIMED).all()
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    assert meta["interrupted"] is False and meta["cases_not_started"] == 0 and len(meta["resumed"]) == 1


def test_ctrl_c_during_a_group_stops_after_it_and_resume_completes_the_run(tmp_path, monkeypatch, capsys):
    """In-process, a real SIGINT raised while the first comparison group is being timed (from inside the real group
    runner): that group is measured to its end and written, the sweep stops before the next, says how to resume
    and returns 130; the JSON says interrupted by SIGINT; the printed command completes the run to exactly the
    planned cases, each with one row. (The same from outside, a user's Ctrl-C to a sweep's process: the slow
    tier's test below.)"""
    results_dir = tmp_path / "results"
    flags = [*CTRL_C_FLAGS[:-3], "--min-time", "0", "--no-report", "--quiet", "--results-dir", str(results_dir),
             "--run-id", "ctrlc"]
    labels = dry_run_labels(dry_run(flags))
    planned = len(labels)
    assert planned == 8
    real_run_group = SUITES["attentions"].run_group
    groups = []

    def interrupted_during_the_first(cases, ctx, companions=()):
        groups.append([case.key for case in cases])
        if len(groups) == 1:
            signal.raise_signal(signal.SIGINT)  # the handler only takes note: the group goes on
        return real_run_group(cases, ctx, companions)

    monkeypatch.setattr(SUITES["attentions"], "run_group", interrupted_during_the_first)
    assert cli.main(flags) == 130
    output = capsys.readouterr().out
    csv_path = results_dir / "cpu" / "ctrlc.csv"
    assert_csv_well_formed(csv_path)
    frame = bench.load_results(csv_path)
    assert len(groups) == 1 and sorted(frame["case_key"]) == sorted(groups[0]), output
    assert frame["status"].isin(TIMED).all()
    rows = len(frame)
    resume = "python run_bench.py " + shlex.join(["--resume", "ctrlc", "--results-dir", str(results_dir),
                                                  "--no-report"])
    assert f"interrupted (SIGINT): {planned - rows} cases not run; resume with: {resume}" in output
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    assert (meta["interrupted"], meta["stopped_by"], meta["cases_not_started"]) == (True, "SIGINT", planned - rows)
    assert "resumed" not in meta

    python, script, *resume_flags = shlex.split(resume)
    assert (python, script) == ("python", "run_bench.py")
    assert cli.main([*resume_flags, "--quiet"]) == 0
    assert f"{planned - rows} cases run, {rows} already complete" in capsys.readouterr().out
    assert_resumed_to_the_plan(csv_path, labels)


@pytest.mark.slow  # two sweeps in processes of their own: about 20 s
def test_ctrl_c_stops_after_the_case_in_progress_and_resume_completes_the_run(tmp_path):
    """One SIGINT once the first row is written: the case in progress finishes and writes its row, the
    sweep stops, says how to resume and exits 130; the JSON says interrupted; the command it printed
    completes the run to exactly the planned cases, each with one row."""
    results_dir = tmp_path / "results"
    flags = [*CTRL_C_FLAGS, "--quiet", "--results-dir", str(results_dir), "--run-id", "ctrlc"]
    labels = dry_run_labels(dry_run(flags))
    planned = len(labels)
    assert planned == 8
    csv_path, log = results_dir / "cpu" / "ctrlc.csv", tmp_path / "ctrlc.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(RUN_BENCH), *flags], cwd=REPO, env=subprocess_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(data_lines(csv_path)) > 1, proc, "first row", log)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        stop(proc)
    output = log.read_text()
    assert code == 130, output
    assert_csv_well_formed(csv_path)
    frame = bench.load_results(csv_path)
    rows = len(frame)
    assert 1 <= rows < planned and len(data_lines(csv_path)) == rows + 1, output
    assert not frame["case_key"].duplicated().any()
    resume = "python run_bench.py " + shlex.join(["--resume", "ctrlc", "--results-dir", str(results_dir),
                                                  "--no-report"])
    assert f"interrupted (SIGINT): {planned - rows} cases not run; resume with: {resume}" in output
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    assert meta["interrupted"] is True and meta["cases_not_started"] == planned - rows
    assert meta["stopped_by"] == "SIGINT"
    assert "resumed" not in meta

    python, script, *resume_flags = shlex.split(resume)
    assert (python, script) == ("python", "run_bench.py")
    resumed = run_bench(*resume_flags)
    assert resumed.returncode == 0, f"stdout:\n{resumed.stdout}\nstderr:\n{resumed.stderr}"
    assert f"{planned - rows} cases run, {rows} already complete" in resumed.stdout
    assert_resumed_to_the_plan(csv_path, labels)


@pytest.mark.slow  # a sweep's start-up each: about 15 s
@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,), (signal.SIGHUP,)],
                         ids=["second-ctrl-c", "sigterm", "sighup"])
def test_a_stopping_signal_ends_the_sweep_at_once_as_an_interruption(tmp_path, signals):
    """A second SIGINT, or one SIGTERM or SIGHUP, ends the sweep in the middle of a group (two minutes of timed
    rounds): no row for that group, no traceback; the JSON says interrupted and by which signal, the resume
    command is printed, and the exit status is the shell's for that signal (128 + its number)."""
    results_dir = tmp_path / "results"
    flags = [*CTRL_C_FLAGS[:-3], "--min-time", "60", "--no-report", "--results-dir", str(results_dir),
             "--run-id", "stopped"]
    log = tmp_path / "stopped.log"
    with open(log, "w") as out:  # no --quiet: the progress bar names the case running
        proc = subprocess.Popen([sys.executable, str(RUN_BENCH), *flags], cwd=REPO, env=subprocess_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "running full/torch 14² C64 h2 b2 float32 fwd" in log.read_text(), proc,
                 "progress bar naming the first cases", log)
        for sent, signum in enumerate(signals):
            if sent:
                wait_for(lambda: "interrupt: the sweep stops once the case in progress has its row" in log.read_text(),
                         proc, "notice of the first interrupt", log)
            proc.send_signal(signum)
        code = proc.wait(timeout=30)
    finally:
        stop(proc)
    output = log.read_text()
    name = signals[-1].name
    assert code == 128 + signals[-1] and "Traceback" not in output, output
    resume = "python run_bench.py " + shlex.join(["--resume", "stopped", "--results-dir", str(results_dir),
                                                  "--no-report"])
    assert f"interrupted ({name}): 8 cases not run; resume with: {resume}" in output
    csv_path = results_dir / "cpu" / "stopped.csv"
    assert len(data_lines(csv_path)) == 1  # the header alone
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    assert (meta["interrupted"], meta["stopped_by"], meta["cases_not_started"]) == (True, name, 8)
    assert dry_run(["--resume", "stopped", "--results-dir", str(results_dir)]).splitlines()[-1] == \
        "8 cases to run, 0 already complete"


def test_rearm_sigint_gives_an_ignored_sigint_back_to_python():
    """SIGINT inherited ignored becomes KeyboardInterrupt again; a handler of the program's own stays."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cli_progress.rearm_sigint()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        def own(signum, frame):
            pass

        signal.signal(signal.SIGINT, own)
        cli_progress.rearm_sigint()
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)


REARMED_CHILD = """
import signal, sys, time
from bench import cli
cli.main(["--gpu", "cpu", "--preset", "quick", "--families", "full", "--dry-run"])
print("started", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
time.sleep(60)
"""


@pytest.mark.slow  # a process of its own, signalled: about 6 s (the fast tier: test_rearm_sigint_... in-process)
def test_a_cli_started_with_sigint_ignored_stops_on_sigint():
    """A process that inherited SIGINT ignored (as from ``trap '' INT`` or a script's background job) runs the
    CLI's start-up, after which SIGINT is Python's again: one SIGINT ends it with KeyboardInterrupt."""
    proc = subprocess.Popen([sys.executable, "-c", REARMED_CHILD], cwd=REPO, env=subprocess_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        started = next((line for line in proc.stdout if line.startswith("started")), "")
        assert started.split() == ["started", "True"], started or proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    finally:
        stop(proc)
    assert code != 0 and "KeyboardInterrupt" in proc.stderr.read()  # -SIGINT, or 1 after `python -c`


# --------------------------------------------------------------------------------------------
# the processes of --sittings
# --------------------------------------------------------------------------------------------

SITTINGS_FLAGS = ["--gpu", "cpu", "--families", "full", "--backends", "torch", "sdpa", "--resolutions", "8", "12",
                  "--batch", "2", "--phase", "fwd", "--quiet", "--no-report"]  # 4 cases in 2 groups


def sittings(pid: int) -> list[int]:
    """The processes that ``pid`` started for its sittings, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"sitting_main" in command:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_sweep(flags: list[str], log: Path) -> subprocess.Popen:
    """The sweep in a process group of its own, as a shell starts a job: a terminal's Ctrl-C goes to the group."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(RUN_BENCH), *flags], cwd=REPO, env=subprocess_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def first_sitting(proc: subprocess.Popen, log: Path) -> int:
    found: list[int] = []
    wait_for(lambda: found.extend(sittings(proc.pid)) or found, proc, "a sitting's process", log, timeout=120)
    return found[0]


@pytest.mark.slow  # about a minute: two sweeps in sittings
def test_ctrl_c_to_the_terminal_during_a_sitting_stores_no_error_row(tmp_path):
    """Ctrl-C in a terminal reaches the sweep's whole process group, the sitting's process among them, here
    while that process is still starting (importing torch). The sitting holds it off from its first instruction:
    the group in progress is timed to its end and written, the sweep stops before the next (exit 130), and no
    row is an error; the resume completes the run."""
    results_dir = tmp_path / "results"
    flags = [*SITTINGS_FLAGS, "--sittings", "2", "--min-time", "0.5", "--results-dir", str(results_dir),
             "--run-id", "terminal"]
    log = tmp_path / "terminal.log"
    proc = start_sweep(flags, log)
    try:
        first_sitting(proc, log)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        stop(proc)
    output = log.read_text()
    assert code == 130, output
    frame = bench.load_results(results_dir / "cpu" / "terminal.csv")
    assert len(frame) == 2 and frame["status"].isin(TIMED).all(), frame[["case_key", "status", "status_detail"]]
    resumed = run_bench("--resume", "terminal", "--results-dir", str(results_dir), "--no-report", timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    frame = bench.load_results(results_dir / "cpu" / "terminal.csv")
    assert len(frame) == 4 and frame["status"].isin(TIMED).all(), frame[["case_key", "status", "status_detail"]]


@pytest.mark.slow  # half a minute each, most of it the sweep's own sitting
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_sweep_ended_during_a_sitting_leaves_no_process_behind(tmp_path, signum):
    """The sweep's process is ended while its sitting's process times its rounds: on SIGTERM the sweep ends
    the sitting and records the interruption; on SIGKILL (no handler runs) the kernel ends the sitting with
    it. Either way nothing keeps running, and nothing later writes into the log."""
    results_dir = tmp_path / "results"
    flags = [*SITTINGS_FLAGS, "--sittings", "2", "--min-time", "10", "--results-dir", str(results_dir),
             "--run-id", "ended"]  # the sweep's own sitting: 20 s of rounds; the fresh one's: its start-up, then 20 s
    log = tmp_path / "ended.log"
    proc = start_sweep(flags, log)
    try:
        sitting = first_sitting(proc, log)
        time.sleep(3)  # past its start-up: timing rounds
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        stop(proc)
    deadline = time.monotonic() + 15
    while alive(sitting) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(sitting), f"the sitting's process {sitting} outlived the sweep"
    time.sleep(1)
    output = log.read_text()
    assert code == -signum if signum == signal.SIGKILL else code == 128 + signum, output
    assert "Traceback" not in output and "BrokenPipeError" not in output, output
    csv_path = results_dir / "cpu" / "ended.csv"
    assert len(data_lines(csv_path)) == 1  # the group in progress has no row
    if signum == signal.SIGTERM:
        meta = json.loads(csv_path.with_suffix(".json").read_text())
        assert (meta["interrupted"], meta["stopped_by"], meta["cases_not_started"]) == (True, "SIGTERM", 4)


# --------------------------------------------------------------------------------------------
# the handler itself
# --------------------------------------------------------------------------------------------

def test_stop_on_signals_first_ctrl_c_requests_then_any_stopping_signal_stops_at_once():
    """In-process: the first SIGINT only sets ``requested``; a second SIGINT raises Stopped(SIGINT); SIGTERM and
    SIGHUP raise Stopped at once; the handlers from before are back after the block. (SIGHUP taken back from an
    ignoring parent, such as ``nohup``, for the test: the next test checks that the sweep leaves it ignored.)"""
    hangup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        before = {signum: signal.getsignal(signum) for signum in cli_progress.StopOnSignals.SIGNALS}
        with cli_progress.StopOnSignals() as signals:
            signal.raise_signal(signal.SIGINT)
            assert signals.requested
            with pytest.raises(Stopped) as second:
                signal.raise_signal(signal.SIGINT)
        assert second.value.signum == signal.SIGINT
        for signum in (signal.SIGTERM, signal.SIGHUP):
            with pytest.raises(Stopped) as stopped, cli_progress.StopOnSignals() as signals:
                signal.raise_signal(signum)
            assert stopped.value.signum == signum and not signals.requested
        assert {signum: signal.getsignal(signum) for signum in cli_progress.StopOnSignals.SIGNALS} == before
    finally:
        signal.signal(signal.SIGHUP, hangup)


def test_stop_on_signals_leaves_an_ignored_sighup_ignored():
    """Under ``nohup`` SIGHUP is ignored: the sweep must not take it back and stop when the terminal closes."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli_progress.StopOnSignals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            signal.raise_signal(signal.SIGHUP)  # nothing happens
    finally:
        signal.signal(signal.SIGHUP, previous)


# --------------------------------------------------------------------------------------------
# kill -9 while a report is written
# --------------------------------------------------------------------------------------------

def kill_during_a_write(command: list[str], out: Path, nth: int, timeout: float = 300) -> bool:
    """Start ``command`` (a report into ``out``) and kill -9 it once its nth atomic write (or a later one) is in
    progress: when a temporary file of its own (``.<name>.<pid>-<n>.tmp``, ``bench.schema.storage``) with n >= nth
    is there. Whether it was killed so (False: it finished first)."""
    proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    writing = re.compile(rf"\..+\.{proc.pid}-(\d+)\.tmp")
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            names = [entry.name for folder in (out, out / "tables", out / "plots") if folder.is_dir()
                     for entry in os.scandir(folder)]
            if any((found := writing.fullmatch(name)) and int(found.group(1)) >= nth for name in names):
                proc.kill()
                proc.wait()
                return True
    finally:
        stop(proc)
    return False


@pytest.mark.slow  # a report and four killed ones: about half a minute
def test_a_report_killed_at_any_moment_leaves_whole_files(tmp_path):
    """``kill -9`` of ``report`` over an earlier report, each time while it writes a file (its first, one a
    quarter, half and three quarters through): every file in the folder stays whole (the earlier one or the new
    one, never a 0-byte plot beside the old index), and the next report removes the temporary files the killed
    ones left."""
    run = REPO / "results" / "cpu" / "20261205T091110Z-bra56-topk4.csv"
    out = tmp_path / "report"
    command = [sys.executable, str(RUN_BENCH), "report", str(run), "--out", str(out)]
    assert subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, timeout=300).returncode == 0
    report_files = {path for path in out.rglob("*") if path.is_file() and not path.name.startswith(".")}
    writes = len(report_files)  # one atomic write per file
    for nth in sorted({1, writes // 4, writes // 2, 3 * writes // 4}):  # (the last, the index, is too quick to see)
        assert kill_during_a_write(command, out, nth), f"the report ended before its write {nth}"
        files = {path for path in out.rglob("*") if path.is_file() and not path.name.startswith(".")}
        assert files == report_files
        assert all(path.stat().st_size > 0 for path in files), [p for p in files if p.stat().st_size == 0]
    assert subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, timeout=300).returncode == 0
    assert not [path for path in out.rglob(".*.tmp")]
