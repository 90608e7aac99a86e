"""Sweeps on Ray (``--workers``, ``--ray-address``): one task per comparison group, one writer, and no
completed row lost or written twice when a worker or the driver is killed.

One local Ray cluster of 2 CPUs serves the module: the executor tests run on it from this process (a
worker killed, a worker dying on every try), and the CLI test that kills the driver joins it with
``--ray-address`` (a killed driver of a local cluster would leave Ray's agent processes behind); the
other CLI test starts a local cluster of its own with ``--workers 2``. Every sweep is a few tiny cases
of full attention, so that a group takes about a second at most.

The fast tier runs one sweep on the cluster (two workers write what one process writes); the slow tier adds a stop,
the model suite, the workers' settings and extensions, the tests that kill or lose processes, and the command
line's own clusters.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

if importlib.util.find_spec("ray") is None and not os.environ.get("REQUIRE_RAY"):
    pytest.skip('Ray is not installed (pip install -e ".[cluster]"); with REQUIRE_RAY=1, as in CI, this fails instead',
                allow_module_level=True)

import ray  # noqa: E402

import bench  # noqa: E402
from bench import cli  # noqa: E402
from bench.suites.cases import Case, ModelCase  # noqa: E402
from bench.execution.cluster import RayExecutor, driver_paths  # noqa: E402
from bench.core.measure import TimingPolicy  # noqa: E402
from bench.suites.model import base_model_row  # noqa: E402
from bench.core.profiles import PROFILES  # noqa: E402
import bench.schema.metadata  # noqa: E402
from bench.core.machine import cpu_name  # noqa: E402
from bench.schema.columns import MODEL_COLUMNS  # noqa: E402
from bench.schema.files import load_results  # noqa: E402
from bench.execution.runner import run_sweep  # noqa: E402
from bench.suites.attention_rows import RunContext, base_row, run_group  # noqa: E402
from small_results import FAST  # noqa: E402
from test_bench_cli import TIMED, data_lines, popen_bench, run_bench, stop, wait_for  # noqa: E402

# 3 comparison groups (one per resolution) of 2 cases
CASES = [Case("full", backend, (), 1, resolution, 16, 2, "float32", "cpu", "fwd")
         for resolution in (7, 14, 21) for backend in ("torch", "sdpa")]
SWEEP = ["--gpu", "cpu", "--preset", "quick", "--families", "full", "--backends", "torch", "sdpa", "--resolutions",
         "8", "12", "16", "--phase", "fwd", "--quiet", "--no-report"]  # 6 cases, 3 groups
PLANNED = 6


@pytest.fixture(scope="module")
def cluster() -> str:
    """The module's local Ray cluster (2 CPUs); its address."""
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                       runtime_env=driver_paths())
    yield context.address_info["gcs_address"]
    ray.shutdown()


def context(path: Path) -> RunContext:
    return RunContext(run_id=path.stem, profile=PROFILES["cpu"], device_name="the driver's", timing=FAST)


def executor(workers: int = 2, retries: int = 0, **kwargs) -> RayExecutor:
    return RayExecutor("cpu", workers, retries, base_row, threads=1, **kwargs)


def assert_placed(frame) -> None:
    """Every row names its node, its worker process (two of them at least) and the worker's own device."""
    assert frame["node"].notna().all() and frame["worker"].str.fullmatch(r"pid \d+").all()
    assert frame["worker"].nunique() >= 2 and frame["gpu_index"].isna().all()
    assert (frame["device_name"] == cpu_name()).all()  # not the driver's RunContext's


# --------------------------------------------------------------------------------------------
# the executor, from this process
# --------------------------------------------------------------------------------------------

def test_two_workers_write_the_cases_of_one_worker_once_each(cluster, tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert run_sweep(CASES, context(one), one) == (PLANNED, 0)
    nodes = {}
    ray_executor = executor(on_node=nodes.__setitem__)
    assert run_sweep(CASES, context(two), two, executor=ray_executor) == (PLANNED, 0)
    one_rows, two_rows = load_results(one), load_results(two)
    assert sorted(two_rows["case_key"]) == sorted(one_rows["case_key"]) == sorted(c.key for c in CASES)
    assert two_rows["status"].isin(TIMED).all()
    assert_placed(two_rows)
    assert (one_rows["worker"] == f"pid {os.getpid()}").all()
    assert set(nodes) == set(ray_executor.nodes) == set(two_rows["node"])
    assert {"gpu_name", "torch", "triton", "cuda", "driver"} <= set(nodes[two_rows["node"].iloc[0]])
    for _, group in two_rows.groupby("resolution"):  # a group's cases are timed together, in one worker
        assert group["worker"].nunique() == 1 and group["speedup_vs_ref"].notna().any()


@pytest.mark.slow  # another sweep on the cluster: the fast tier's Ray test is the one above
def test_no_group_starts_after_a_stop_and_the_running_ones_are_written(cluster, tmp_path):
    path = tmp_path / "stopped.csv"
    written = []
    ran, skipped = run_sweep(CASES, context(path), path, executor=executor(),
                             progress=lambda case, done: written.append(case), should_stop=lambda: bool(written))
    assert (ran, skipped) == (4, 0)  # the two groups started at once; the third never
    assert set(load_results(path)["resolution"]) == {7, 14}
    assert run_sweep(CASES, context(path), path, executor=executor()) == (2, 4)
    assert sorted(load_results(path)["case_key"]) == sorted(c.key for c in CASES)


@pytest.mark.slow  # the model suite on the cluster: the fast tier's Ray test is the first one
def test_the_model_suite_fans_out_one_case_per_task(cluster, tmp_path):
    cases = [ModelCase("biformer_tiny", "bra", "torch", 1, resolution, "float32", "cpu", "fwd") for resolution in (32, 64)]
    path = tmp_path / "models.csv"
    ray_executor = RayExecutor("cpu", 2, 0, base_model_row, threads=1)
    assert run_sweep(cases, context(path), path, executor=ray_executor) == (2, 0)
    frame = load_results(path)
    assert list(frame.columns) == MODEL_COLUMNS and (frame["status"] == "ok").all()
    assert_placed(frame)


def descendants(root: int) -> list[int]:
    """Processes below ``root``."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    below, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        below += children
        frontier = children
    return below


def running_tasks() -> list[int]:
    """This module's Ray workers running a group (Ray titles them after the task)."""
    pids = []
    for pid in descendants(os.getpid()):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::run_group_task"):
                pids.append(pid)
        except OSError:
            pass
    return pids


@pytest.mark.slow  # a worker killed and its group run again in a fresh one: about 12 s
def test_a_killed_worker_loses_no_row(cluster, tmp_path):
    """kill -9 of a worker as soon as it runs a group: Ray runs the group again (--retries 2 by default),
    so every case has one row, none from the killed process, and a resume has nothing left to run."""
    path = tmp_path / "worker.csv"
    ctx = replace(context(path), timing=TimingPolicy(warmup_rounds=1, min_time_s=0.3, min_rounds=3,
                                                    noise_limit=float("inf")))  # a group takes a second or two
    counts = []
    sweep = threading.Thread(target=lambda: counts.append(run_sweep(CASES, ctx, path, executor=executor(retries=2))))
    sweep.start()
    try:
        deadline = time.monotonic() + 120
        while not (running := running_tasks()):
            assert sweep.is_alive() and time.monotonic() < deadline, "no group seen running"
            time.sleep(0.01)
        os.kill(running[0], signal.SIGKILL)
    finally:
        sweep.join(timeout=120)
    assert counts == [(PLANNED, 0)]
    frame = load_results(path)
    assert sorted(frame["case_key"]) == sorted(c.key for c in CASES) and frame["status"].isin(TIMED).all()
    assert f"pid {running[0]}" not in set(frame["worker"])
    assert run_sweep(CASES, ctx, path, executor=executor()) == (0, PLANNED)


@pytest.mark.slow  # two workers die, two fresh ones start: about 7 s
def test_a_group_whose_worker_dies_on_every_try_gets_error_rows(cluster, tmp_path):
    """A worker process that dies (here, it exits in the middle of the group at 14²) is a Ray system
    failure: Ray runs the task again, --retries times, then each of the group's cases gets an error row
    with the reason; the other groups' rows are all there, each once."""
    def dies_at_14(cases, ctx, companions):
        if cases[0].resolution == 14:
            os._exit(1)
        return run_group(cases, ctx, companions)

    path = tmp_path / "lost.csv"
    assert run_sweep(CASES, context(path), path, run=dies_at_14, executor=executor(retries=1)) == (PLANNED, 0)
    frame = load_results(path)
    assert sorted(frame["case_key"]) == sorted(c.key for c in CASES)
    lost = frame[frame["resolution"] == 14]
    assert (lost["status"] == "error").all() and lost["worker"].isna().all()
    assert lost["status_detail"].str.startswith("worker died 2 times: WorkerCrashedError: ").all()
    assert frame.loc[frame["resolution"] != 14, "status"].isin(TIMED).all()


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------

@pytest.mark.slow  # a sweep in a process of its own with a local Ray cluster of its own: about 25 s
def test_the_cli_with_two_workers_writes_what_one_worker_writes(tmp_path, monkeypatch):
    """--workers 2 starts a local cluster: the rows are the cases of the in-process run, once each,
    each naming its worker; the CPU warning is said; the metadata has the workers and the nodes. The
    in-process run (no --workers) never imports Ray."""
    results = tmp_path / "results"
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "bench.execution.cluster", None)
    monkeypatch.delattr(bench, "cluster", raising=False)
    assert cli.main([*SWEEP, "--results-dir", str(results), "--run-id", "one"]) == 0
    monkeypatch.undo()
    proc = run_bench(*SWEEP, "--results-dir", str(results), "--run-id", "two", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "--workers 2 on the CPU: concurrent cases share its cores" in proc.stderr
    assert f"{PLANNED} cases run, 0 already complete" in proc.stdout
    one, two = load_results(results / "cpu" / "one.csv"), load_results(results / "cpu" / "two.csv")
    assert sorted(two["case_key"]) == sorted(one["case_key"]) and len(two) == PLANNED
    assert_placed(two)
    assert (one["worker"] == f"pid {os.getpid()}").all()
    meta = bench.schema.metadata.read_metadata(results / "cpu" / "two.json")
    assert meta["timing"]["workers"] == 2 and meta["timing"]["threads_per_worker"] == 1
    assert meta["ray"] == {"address": "local", "retries": 2} and set(meta["nodes"]) == set(two["node"])
    assert bench.schema.metadata.read_metadata(results / "cpu" / "one.json")["timing"]["workers"] == 1


@pytest.mark.slow  # a killed sweep and its resume, each in a process of its own, on Ray: about 25 s
def test_a_killed_driver_loses_no_completed_row(cluster, tmp_path):
    """kill -9 of the sweep's own process with groups running: the rows written stay as they were, the
    groups in flight have none, and --resume with workers completes the run, each case once."""
    results, log = tmp_path / "results", tmp_path / "killed-driver.log"
    ray_flags = ["--workers", "2", "--ray-address", cluster]
    csv_path = results / "cpu" / "driver.csv"
    proc = popen_bench(*SWEEP, "--min-time", "0.1", "--results-dir", str(results), "--run-id", "driver", *ray_flags,
                       stderr_path=log)
    try:
        wait_for(lambda: len(data_lines(csv_path)) > 1, proc, "first row", log, timeout=120)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        stop(proc)
    before = data_lines(csv_path)
    written = len(before) - 1
    assert 1 <= written < PLANNED
    resumed = run_bench("--resume", "driver", "--results-dir", str(results), "--quiet", "--no-report", *ray_flags)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{PLANNED - written} cases run, {written} already complete" in resumed.stdout
    assert data_lines(csv_path)[:len(before)] == before
    frame = load_results(csv_path)
    assert len(frame) == PLANNED and not frame["case_key"].duplicated().any() and frame["status"].isin(TIMED).all()
    meta = bench.schema.metadata.read_metadata(csv_path)
    assert len(meta["resumed"]) == 1 and meta["timing"]["workers"] == 2


@pytest.mark.slow  # a Ray sweep, its resume: about 45 s
def test_sigterm_to_the_driver_stops_the_sweep_as_an_interruption(cluster, tmp_path):
    """SIGTERM to the sweep's own process with groups running on Ray: no raw signal dump, the rows written stay,
    the JSON says interrupted by SIGTERM, exit 143, and --resume with workers completes the run, each case once."""
    results, log = tmp_path / "results", tmp_path / "terminated-driver.log"
    ray_flags = ["--workers", "2", "--ray-address", cluster]
    csv_path = results / "cpu" / "terminated.csv"
    proc = popen_bench(*SWEEP, "--min-time", "0.1", "--results-dir", str(results), "--run-id", "terminated",
                       *ray_flags, stderr_path=log)
    try:
        wait_for(lambda: len(data_lines(csv_path)) > 1, proc, "first row", log, timeout=120)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        stop(proc)
    assert code == 128 + signal.SIGTERM and "Traceback" not in log.read_text(), log.read_text()
    written = len(data_lines(csv_path)) - 1
    meta = bench.schema.metadata.read_metadata(csv_path)
    assert (meta["interrupted"], meta["stopped_by"]) == (True, "SIGTERM") or written == PLANNED
    resumed = run_bench("--resume", "terminated", "--results-dir", str(results), "--quiet", "--no-report", *ray_flags)
    assert resumed.returncode == 0, resumed.stderr
    frame = load_results(csv_path)
    assert len(frame) == PLANNED and not frame["case_key"].duplicated().any() and frame["status"].isin(TIMED).all()


@pytest.mark.slow  # the workers import a module of one's own: the fast tier's Ray test is the first one
def test_ray_workers_take_the_sweeps_numerics_and_extensions(cluster, tmp_path):
    """A family registered by a module outside the package (tests/extension_family.py, imported here as a plugin
    would be) and non-default numerics: the workers import the module, time its cases, and report (in their
    node environment) the sweep's numerics."""
    import extension_family
    from attentions.registry import _FAMILIES
    from bench.core.settings import Numerics
    _FAMILIES[extension_family.FAMILY] = extension_family.ScaledLinearAttention
    try:
        cases = [Case(extension_family.FAMILY, "torch", (), 1, resolution, 16, 1, "float32", "cpu", "fwd")
                 for resolution in (7, 14)]
        path = tmp_path / "extension.csv"
        numerics = Numerics(tf32_matmul=True, tf32_cudnn=False, cudnn_benchmark=True)
        ctx = replace(context(path), numerics=numerics, extension_modules=("extension_family",))
        nodes = {}
        assert run_sweep(cases, ctx, path, executor=executor(on_node=nodes.__setitem__)) == (2, 0)
    finally:
        del _FAMILIES[extension_family.FAMILY]
        Numerics().apply()
    frame = load_results(path)
    assert frame["status"].isin(TIMED).all(), list(frame["status_detail"])
    assert frame["worker"].ne(f"pid {os.getpid()}").all()
    [worker_environment] = nodes.values()
    assert (worker_environment["tf32_matmul"], worker_environment["tf32_cudnn"],
            worker_environment["cudnn_benchmark"]) == (True, False, True)
