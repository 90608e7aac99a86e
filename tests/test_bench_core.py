"""The harness's pieces in-process: sweeps, measurements, isolation of bad cases, result files."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import socket
import sys
from dataclasses import replace
from functools import reduce
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import attentions
import bench.suites.attention_rows
import bench.suites.rows
from attentions.registry import _FAMILIES, AttentionModule, Backend, MacCount
from bench import COLUMNS, Case, ResultsFormatError, RunContext, SweepBlock, TimingPolicy, load_results, run_sweep
from bench.execution.runner import placement
from bench.suites.attention_rows import run_case, run_group
from bench.suites.rows import failure
from bench.core.settings import Numerics, ProcessSettings
from bench.core.flops import count_macs
from bench.core.accuracy import ERROR_FLOOR, judge, max_abs_error, relative_errors
import bench.core.measure
from bench.core.measure import Timing, peak_memory_bytes, time_rounds, timing_notes
from bench.core.statistics import paired_speedup
from bench.suites.presets import COMMON_OPTIONS, preset_blocks
from bench.core.profiles import PROFILES
from bench.suites.cases import unique_cases
from bench.core.machine import cpu_name
from bench.schema.columns import PLACEMENT_COLUMNS
from bench.schema.files import ResultsWriter
from small_results import FAST


def context() -> RunContext:
    return RunContext(run_id="test", profile=PROFILES["cpu"], device_name="test-cpu", timing=FAST)


def case(family: str, backend: str, phase: str = "fwd", resolution: int = 8, **options) -> Case:
    return Case(family, backend, tuple(sorted(options.items())), 2, resolution, 16, 2, "float32", "cpu", phase)


# --------------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------------

def test_option_axes_are_crossed_only_with_families_that_have_them():
    block = SweepBlock("t", [(28, 64, 2, {})], {"topk": [{"topk": 1}, {"topk": 4}],
                                               "kv": [{"kv_downsample_mode": "identity"}]},
                       backends=["torch"], phases=["fwd"])
    cases = unique_cases([block], "cpu", COMMON_OPTIONS)
    by_family = {f: [c for c in cases if c.family == f] for f in attentions.list_attentions()}
    crossed = [f for f in by_family if {"topk", "kv_downsample_mode"} <= set(attentions.family_options(f))]
    assert crossed == ["bra"]
    assert all(len(by_family[f]) == 1 for f in by_family if f not in crossed), {f: len(c) for f, c in by_family.items()}
    assert sorted(c.effective_options()["topk"] for c in by_family["bra"]) == [1, 4]
    assert "topk" not in by_family["bra"][1].options_dict  # defaults are not spelled out: one key per configuration
    assert "topk" not in by_family["full"][0].options_dict


@pytest.mark.parametrize("resolution, n_win, region", [(14, 7, 2), (28, 7, 4), (56, 7, 8), (112, 14, 8),
                                                       (224, 28, 8)])
def test_n_win_rule_and_kv_rules(resolution, n_win, region):
    cases = unique_cases(preset_blocks("default", PROFILES["h100"]), "cuda", COMMON_OPTIONS)
    bra = [c for c in cases if c.family == "bra" and c.resolution == resolution]
    if resolution in (14, 28):  # only the stage block has them
        assert bra
    for c in bra:
        options = c.effective_options()
        assert options["n_win"] == n_win and resolution % n_win == 0 and resolution // n_win == region
        if options.get("kv_downsample_mode", "identity").startswith("ada_"):
            assert options["kv_per_win"] == max(1, region // 2)
        assert 1 <= options.get("topk", 4) <= n_win ** 2


def test_default_preset_covers_what_the_issue_names():
    cases = unique_cases(preset_blocks("default", PROFILES["a100"]), "cuda", COMMON_OPTIONS)
    assert {56, 112, 224} <= {c.resolution for c in cases}
    bra = [c for c in cases if c.family == "bra"]
    assert {1, 4, 16} <= {c.effective_options()["topk"] for c in bra}
    assert {c.effective_options()["kv_downsample_mode"] for c in bra} == {
        "identity", "avgpool", "maxpool", "ada_avgpool", "ada_maxpool"}
    assert {(c.dim, c.heads) for c in cases} == {(64, 2), (128, 4), (256, 8)}  # BiFormer's stage widths
    assert {c.dtype for c in cases} == {"bfloat16"} and {c.batch for c in cases} == {64}
    assert len({c.key for c in cases}) == len(cases)


def test_gpu_check_preset_holds_the_fast_path_figures_cases():
    """BiFormer-T's stage shapes and 112²/224² with 8×8-token regions, every BRA backend (the
    reference included) and dense full attention through flash and memory-efficient SDPA, bf16,
    batch 64, both phases."""
    cases = unique_cases(preset_blocks("gpu-check", PROFILES["h100"]), "cuda", COMMON_OPTIONS)
    shapes = {(c.resolution, c.dim, c.heads, c.effective_options().get("topk")) for c in cases if c.family == "bra"}
    assert shapes == {(56, 64, 2, 1), (28, 128, 4, 4), (14, 256, 8, 16), (112, 64, 2, 4), (224, 64, 2, 4)}
    for c in cases:
        if c.family == "bra":
            options = c.effective_options()
            assert (c.resolution // options["n_win"]) in (8, 4, 2) and options["kv_downsample_mode"] == "identity"
    assert {c.backend for c in cases if c.family == "bra"} == set(attentions.list_attentions()["bra"]["backends"])
    assert {c.backend for c in cases if c.family == "full"} == {"sdpa_flash", "sdpa_efficient"}
    assert {(c.dtype, c.batch) for c in cases} == {("bfloat16", 64)} and {c.phase for c in cases} == {"fwd", "fwd+bwd"}


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------

def test_relative_errors_judge_output_and_gradients():
    torch.manual_seed(0)
    out, grad_a, grad_b = torch.randn(100), torch.randn(50) * 100, torch.randn(3) * 1e-9
    assert relative_errors([out, grad_a, grad_b], [out, grad_a, grad_b]) == [0.0, 0.0, 0.0]
    # a gradient that is zero in exact arithmetic, off by rounding noise: judged against 1e-3 of the largest
    noisy = relative_errors([out, grad_a, grad_b + 1e-6], [out, grad_a, grad_b])
    assert noisy[2] == pytest.approx(1e-6 * math.sqrt(3) / (1e-3 * grad_a.norm().item()), rel=1e-6)
    # a real error in a small gradient is still seen
    exact = [out, grad_a, torch.full((3,), 2.0)]
    assert relative_errors([out, grad_a, torch.ones(3)], exact)[2] == pytest.approx(0.5)
    assert max_abs_error([out, grad_a, torch.ones(3)], exact) == pytest.approx(1.0)
    # and in the output, relative to its own norm
    assert relative_errors([out * 1.1, grad_a], [out, grad_a])[0] == pytest.approx(0.1)


def test_judge_bounds_each_tensor_by_the_references_own_error():
    """The bound of each tensor is 2 × the reference's error on it, or the dtype's floor; the deciding tensor is
    the one nearest its bound, and its numbers are the row's."""
    torch.manual_seed(1)
    exact = [torch.randn(200, dtype=torch.float64), torch.randn(100, dtype=torch.float64)]
    direction = [torch.randn_like(t) for t in exact]

    def off(by: list[float]) -> list[torch.Tensor]:  # each tensor at exactly ``by`` relative error
        return [e + d * (b * e.norm() / d.norm()) for e, d, b in zip(exact, direction, by)]

    reference = off([0.01, 0.02])
    within = judge(off([0.019, 0.039]), reference, exact, ["output", "input gradient"], "bfloat16")
    assert within.mismatch_reason() is None
    assert within.bounds == pytest.approx((0.02, 0.04)) and within.tensor == "input gradient"
    beyond = judge(off([0.021, 0.01]), reference, exact, ["output", "input gradient"], "bfloat16")
    assert beyond.tensor == "output"
    assert (beyond.rel, beyond.reference_rel, beyond.bound) == pytest.approx((0.021, 0.01, 0.02))
    assert beyond.mismatch_reason().startswith("output: rel_err 0.021 from float64 > bound 0.02")
    # an exact reference bounds nothing below the floor
    floored = judge(off([4e-3, 4e-3]), exact, exact, ["output", "input gradient"], "bfloat16")
    assert floored.bound == ERROR_FLOOR["bfloat16"] and floored.mismatch_reason() is None


def test_time_pass_statistics():
    calls = []
    timing = time_rounds({0: lambda: calls.append(torch.randn(64, 64) @ torch.randn(64, 64))}, torch.device("cpu"),
                         TimingPolicy(warmup_rounds=2, warmup_max_calls=2, min_time_s=0.0, min_rounds=7,
                                      max_rounds=7))[0]
    assert timing.rounds == 7 and len(calls) == 9
    assert 0 < timing.p20_ms <= timing.median_ms <= timing.p80_ms


def test_paired_rounds_rotate_and_drop_a_failing_pass():
    """Rounds run every pass once, each round starting one pass later; a pass that raises leaves the
    rotation with its exception as its result, and the others keep their rounds aligned."""
    calls: list[str] = []

    def recorder(name: str, fail_on_call: int | None = None):
        def run() -> None:
            calls.append(name)
            if calls.count(name) == fail_on_call:
                raise RuntimeError(f"{name} failed")
        return run

    policy = TimingPolicy(warmup_rounds=1, warmup_max_calls=1, min_time_s=0.0, min_rounds=4, max_rounds=4)
    timings = time_rounds({"a": recorder("a"), "b": recorder("b"), "c": recorder("c", fail_on_call=3)},
                          torch.device("cpu"), policy)
    assert calls == ["a", "b", "c",  # warm-up
                     "a", "b", "c", "b", "c", "a", "a", "b", "a", "b"]  # c fails on its second timed call
    assert isinstance(timings["c"], RuntimeError) and timings["a"].rounds == timings["b"].rounds == 4


def test_a_paired_speedup_does_not_drift_with_the_machine():
    """A machine slowing threefold during the rounds changes both passes alike: the per-round ratio,
    and so the paired speedup and its interval, stay at 2; with jitter the interval holds the truth."""
    drift = np.linspace(1.0, 3.0, 30)
    assert paired_speedup(Timing(tuple(2 * drift)), Timing(tuple(drift))) == pytest.approx((2.0, 2.0, 2.0))
    jitter = np.random.default_rng(0).normal(1.0, 0.05, (2, 30))
    speedup, low, high = paired_speedup(Timing(tuple(2 * drift * jitter[0])), Timing(tuple(drift * jitter[1])))
    assert low < 2.0 < high and low <= speedup <= high and high / low < 1.11  # 5% jitter per pass: ±5% or so


def test_a_ratio_that_drifts_within_the_run_widens_its_interval():
    """When the ratio itself moves during the run (from 1.2 to 1.5 here, as a shared CPU's does over
    seconds), the interval holds the median of either half of the run, as it would another run's.
    Rounds taken as independent (a bootstrap over single rounds) give 1.35 ± 0.03, holding neither."""
    rng = np.random.default_rng(1)
    ratio = np.linspace(1.2, 1.5, 100) * rng.normal(1.0, 0.01, 100)
    fast = rng.uniform(10.0, 20.0, 100)
    speedup, low, high = paired_speedup(Timing(tuple(ratio * fast)), Timing(tuple(fast)))
    assert speedup == pytest.approx(np.exp(np.median(np.log(ratio))))
    assert low < np.median(ratio[:50]) < np.median(ratio[50:]) < high


def test_a_speedup_interval_is_positive_and_symmetric_on_the_log_scale():
    """Batches whose ratios sit at 0.3, 1, 3, 0.5 and 2 (a noisy machine): the interval stays above zero, where
    the median ± t · s / √n of the ratios themselves reaches far below it, and it sits as many times below
    the speedup as above."""
    batch_ratios = np.repeat([0.3, 1.0, 3.0, 0.5, 2.0], 4)
    fast = np.random.default_rng(3).uniform(5.0, 9.0, 20)
    speedup, low, high = paired_speedup(Timing(tuple(batch_ratios * fast)), Timing(tuple(fast)))
    # By hand: the ratios' own mean 1.36 and standard deviation 1.1283 give 1.36 - 2.776 * 1.1283 / √5 = -0.4007
    # below zero; their logs (-1.2040, 0, 1.0986, -0.6931, 0.6931) have the median 0 and the standard deviation
    # 0.95068, so the half width is 2.776 * 0.95068 / √5 = 1.18024 and the interval exp(∓1.18024)
    assert speedup == pytest.approx(1.0) and 0 < low < speedup < high
    assert speedup / low == pytest.approx(high / speedup)
    assert (low, high) == pytest.approx((0.30721, 3.25515), rel=1e-4)


def test_a_paired_speedup_interval_needs_two_rounds():
    """Three rounds give an interval from three batches of one round; one round gives none."""
    speedup, low, high = paired_speedup(Timing((3.0, 4.0, 5.0)), Timing((1.0, 2.0, 2.0)))
    assert speedup == 2.5 and low < 2.0 and high > 3.0
    speedup, low, high = paired_speedup(Timing((3.0,)), Timing((2.0,)))
    assert speedup == 1.5 and math.isnan(low) and math.isnan(high)


def test_sittings_are_the_batches_of_a_speedup_interval():
    """Timed in three sittings whose ratios sit at 1.0, 1.2 and 1.4, the interval is exp(m ± t₂ · s / √3) over
    the sittings' median log-ratios, however the rounds within each sitting scatter."""
    times = np.random.default_rng(2).uniform(5.0, 9.0, (3, 6))
    ratios = np.array([[1.0], [1.2], [1.4]]) * np.array([0.99, 1.0, 1.0, 1.0, 1.0, 1.01])
    reference = reduce(Timing.joined, [Timing(tuple(row)) for row in ratios * times])
    fast = reduce(Timing.joined, [Timing(tuple(row)) for row in times])
    assert reference.sittings == fast.sittings == (6, 6, 6) and reference.rounds == 18
    speedup, low, high = paired_speedup(reference, fast)
    # By hand: the sittings' median log-ratios are ln 1, ln 1.2, ln 1.4 (0, 0.18232, 0.33647), with the standard
    # deviation 0.168433; t with 2 degrees of freedom is 4.303, so the half width is 4.303 * 0.168433 / √3 =
    # 0.418443 about the median ln 1.2: 1.2 × exp(∓0.418443)
    assert speedup == pytest.approx(1.2)
    assert (low, high) == pytest.approx((0.78968, 1.82351), rel=1e-4)


@pytest.mark.slow  # a sitting's fresh process: about 7 s (the fast tier's sitting: the test of numerics and extensions)
def test_a_group_timed_in_sittings_adds_the_rounds_of_a_fresh_process(monkeypatch):
    """Two sittings, the second in a spawned process that rebuilds the modules: twice the rounds, and
    the chunked BRA's interval is the paired speedup's over the two sittings as batches. (With one
    degree of freedom t is 12.7, so on a busy machine the interval is wide: the row is then noisy, which
    this test's noise limit lets pass.)"""
    received = []

    def recording_paired_speedup(reference: Timing, timing: Timing) -> tuple[float, float, float]:
        received.append((reference, timing))
        return paired_speedup(reference, timing)

    monkeypatch.setattr(bench.suites.rows, "paired_speedup", recording_paired_speedup)
    ctx = context()
    ctx.timing = replace(FAST, sittings=2)
    reference, chunked = run_group([case("bra", "torch", n_win=2, topk=2), case("bra", "chunked", n_win=2, topk=2)],
                                   ctx)
    assert reference["status"] == chunked["status"] == "ok", (reference["status_detail"], chunked["status_detail"])
    assert reference["rounds"] == chunked["rounds"] == 2 * FAST.max_rounds
    [(reference_timing, chunked_timing)] = received
    assert reference_timing.sittings == chunked_timing.sittings == (FAST.max_rounds, FAST.max_rounds)
    # the row carries the statistic of exactly those two sittings' rounds (its arithmetic is checked above on
    # hand-computed cases)
    speedup, low, high = paired_speedup(reference_timing, chunked_timing)
    assert (chunked["speedup_vs_ref"], chunked["speedup_ci_low"], chunked["speedup_ci_high"]) == pytest.approx(
        (speedup, low, high))
    assert 0 < chunked["speedup_ci_low"] < chunked["speedup_ci_high"] < math.inf


@pytest.mark.slow  # a sitting's fresh process: about 7 s (the fast tier's sitting: the test of numerics and extensions)
def test_a_sitting_that_cannot_run_makes_its_passes_errors(fake_family):
    """The fake family is registered by the test, not by importing its module: the fresh process imports
    test_bench_core (the module that defines it) but finds nothing of it registered, and says so."""
    ctx = context()
    assert ctx.extension_modules == ("test_bench_core",)
    ctx.timing = replace(FAST, sittings=2)
    rows = run_group([case("fake", "torch"), case("fake", "jitter")], ctx)
    assert [row["status"] for row in rows] == ["error", "error"]
    assert all(row["status_detail"].startswith("RuntimeError: a timing sitting in a fresh process failed: ")
               and "no family or backend of test_bench_core registered" in row["status_detail"]
               for row in rows), [row["status_detail"] for row in rows]


def test_cpu_peak_memory_sees_a_known_allocation():
    megabytes = 16

    def run():
        a = torch.ones(megabytes * 2 ** 18)  # 16 MB of float32
        b = a * 2                             # another 16 MB alive at the same time
        return b.sum()

    peak = peak_memory_bytes(run, torch.device("cpu"))
    assert 2 * megabytes * 2 ** 20 <= peak < 2.2 * megabytes * 2 ** 20


def test_fvcore_counts_sdpa_through_the_registered_handle():
    module = attentions.build("full", dim=32, num_heads=4, backend="sdpa")
    macs, unsupported = count_macs(module, torch.randn(1, 6, 6, 32))
    assert macs == module.macs(1, 6, 6).total
    assert "aten::scaled_dot_product_attention" not in unsupported


# --------------------------------------------------------------------------------------------
# isolation: every bad case becomes a row and the sweep goes on
# --------------------------------------------------------------------------------------------

def _raise_runtime(*_):
    raise RuntimeError("kernel exploded")


def _raise_oom(*_):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")


_JITTER_CALLS = itertools.count()


class StandInClock:
    """A clock of milliseconds that moves only when a stand-in pass moves it (see ``stand_in_stopwatch``)."""

    def __init__(self) -> None:
        self.now_ms = 0.0


PASS_CLOCK = StandInClock()


def _alternately_slow(y):
    PASS_CLOCK.now_ms += 6.0 if next(_JITTER_CALLS) % 2 else 1.0  # 1 ms and 6 ms passes, on the stand-in clock
    return y


def stand_in_stopwatch(monkeypatch) -> None:
    """The harness's stopwatch (``bench.core.measure.timed_once``) reads PASS_CLOCK: a pass takes the stand-in
    milliseconds it moves the clock on by, whatever the machine does meanwhile."""
    def timed_once(run, device, flush):
        start = PASS_CLOCK.now_ms
        run()
        return PASS_CLOCK.now_ms - start, 0
    monkeypatch.setattr(bench.core.measure, "timed_once", timed_once)


class FakeAttention(AttentionModule):
    """A one-Linear 'attention' whose backends misbehave on purpose."""

    family = "fake"
    backends = {
        "torch": Backend("torch", lambda y: y, "identity after the projection"),
        "boom": Backend("boom", _raise_runtime, "raises"),
        "oom": Backend("oom", _raise_oom, "runs out of memory"),
        "cuda_only": Backend("cuda_only", lambda y: y, "CUDA only", devices=("cuda",)),
        "wrong": Backend("wrong", lambda y: y * 1.01, "1% off"),
        "jitter": Backend("jitter", _alternately_slow, "1 ms and 6 ms passes, alternately"),
    }

    def __init__(self, dim: int, num_heads: int = 1, *, backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.attend(self.proj(x))

    def count_macs(self, batch: int, height: int, width: int) -> MacCount:
        return MacCount(projections=batch * height * width * self.dim * self.dim)


@pytest.mark.parametrize("exc, status", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB"), "oom"),
    (MemoryError(), "oom"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] . DefaultCPUAllocator: not enough memory: you tried to "
                  "allocate 1099511627776 bytes."), "oom"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes. Error code 12"), "oom"),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "oom"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "oom"),
    (RuntimeError("CUDA driver error: cudaErrorMemoryAllocation"), "oom"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x16)"), "error"),
    (ValueError("allocate is a word, not an allocation failure"), "error"),
])
def test_every_allocation_failure_is_oom(exc, status):
    recorded = failure(exc)
    assert recorded["status"] == status and recorded["status_detail"]


@pytest.fixture
def fake_family(monkeypatch):
    monkeypatch.setitem(_FAMILIES, "fake", FakeAttention)


def test_one_bad_case_never_ends_the_sweep(fake_family, tmp_path):
    path = tmp_path / "run.csv"
    cases = [case("fake", "boom"), case("fake", "oom"), case("fake", "cuda_only"), case("fake", "wrong"),
             case("bra", "torch", n_win=3),  # 8 is not divisible by 3: a configuration error
             case("fake", "torch"), case("fake", "wrong", phase="fwd+bwd"), case("full", "sdpa", phase="fwd+bwd")]
    ran, skipped = run_sweep(cases, context(), path)
    assert (ran, skipped) == (len(cases), 0)
    rows = load_results(path)
    assert list(rows["status"]) == ["error", "oom", "unsupported", "mismatch", "error", "ok", "mismatch", "ok"]
    detail = list(rows["status_detail"])
    assert "RuntimeError: kernel exploded" in detail[0]
    assert "out of memory" in detail[1]
    assert "runs on cuda, not on cpu" in detail[2]
    assert detail[3].startswith("output: rel_err 0.01 from float64 > bound 1e-05")
    assert "n_win=3" in detail[4] and "auto_pad" in detail[4]
    wrong = rows.iloc[3]
    assert wrong["rel_err"] == pytest.approx(0.01, rel=1e-3) and wrong["latency_ms_median"] > 0
    assert rows.iloc[5]["gmacs"] == pytest.approx(2 * 8 * 8 * 16 * 16 / 1e9)
    assert rows.iloc[7]["rel_err"] < 1e-5 and rows.iloc[7]["hw_gflops"] == pytest.approx(6 * rows.iloc[7]["gmacs"])


def test_resume_skips_completed_cases(fake_family, tmp_path):
    path = tmp_path / "run.csv"
    first = [case("fake", "torch"), case("fake", "boom")]
    assert run_sweep(first, context(), path) == (2, 0)
    assert run_sweep(first + [case("fake", "wrong")], context(), path) == (1, 2)
    assert len(load_results(path)) == 3


def test_progress_follows_the_rows_and_should_stop_ends_the_sweep_between_cases(fake_family, tmp_path):
    """Cases with a row count first, before any case runs; a case run counts once its row is on disk;
    ``starting`` names a group's cases before they run together, ``should_stop`` is asked before each
    group, and the groups after it get no row."""
    path = tmp_path / "run.csv"
    done = [case("fake", "torch"), case("fake", "wrong")]
    assert run_sweep(done, context(), path) == (2, 0)
    todo = [case("fake", "boom"), case("fake", "oom"), case("fake", "torch", phase="fwd+bwd")]  # fwd: one group
    events = []

    def progress(c: Case, already_done: bool) -> None:
        rows = set(load_results(path)["case_key"])
        events.append(("done" if already_done else "ran", c.key, c.key in rows))

    ran, skipped = run_sweep([todo[0], done[0], todo[1], done[1], todo[2]], context(), path, progress=progress,
                             starting=lambda cases: events.append(("start", [c.key for c in cases], False)),
                             should_stop=lambda: sum(e[0] == "ran" for e in events) == 2)
    assert (ran, skipped) == (2, 2)
    assert events == [("done", done[0].key, True), ("done", done[1].key, True),
                      ("start", [todo[0].key, todo[1].key], False),
                      ("ran", todo[0].key, True), ("ran", todo[1].key, True)]
    assert set(load_results(path)["case_key"]) == {c.key for c in done + todo[:2]}


def test_writer_cuts_a_half_written_row(tmp_path, fake_family):
    path = tmp_path / "run.csv"
    run_sweep([case("fake", "torch")], context(), path)
    complete = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b"fake,torch,8,2,16,2,float32,fw")  # a kill -9 in the middle of a row
    ResultsWriter(path)
    assert path.read_bytes() == complete


def test_without_fvcore_the_macs_come_from_the_family(monkeypatch):
    """A machine without fvcore (a GPU machine without network) still gets GMACs: the family's
    analytic count, and the row says so."""
    monkeypatch.setitem(sys.modules, "fvcore", None)  # import fvcore -> ImportError
    monkeypatch.setitem(sys.modules, "fvcore.nn", None)
    row = run_case(case("bra", "torch", resolution=8, n_win=2, topk=2), context())
    module = attentions.build("bra", dim=16, num_heads=2, n_win=2, topk=2)
    assert row["status"] == "ok" and row["gmacs"] == pytest.approx(module.macs(2, 8, 8).total / 1e9)
    assert "fvcore is not installed" in row["status_detail"] and "macs()" in row["status_detail"]


def test_scattered_timings_are_noisy_not_findings(fake_family, monkeypatch):
    """A backend whose passes alternate between 1 ms and 6 ms (on a stand-in clock) scatters beyond the CPU's
    noise limit: its row is noisy, says why (a spread p80/p20 of 6), and still carries its paired speedup with a
    wide interval; the reference, 2 ms every pass, is ok."""
    def steady(y):
        PASS_CLOCK.now_ms += 2.0
        return y

    monkeypatch.setitem(FakeAttention.backends, "torch", Backend("torch", steady, "2 ms a pass, on the stand-in clock"))
    stand_in_stopwatch(monkeypatch)
    jittery = context()
    jittery.timing = TimingPolicy(warmup_rounds=1, min_time_s=0.0, min_rounds=10, max_rounds=10)
    torch_row, jitter_row = run_group([case("fake", "torch"), case("fake", "jitter")], jittery)
    assert torch_row["status"] == "ok" and "speedup_vs_ref" not in torch_row  # the reference itself
    assert torch_row["latency_ms_median"] == 2.0 and torch_row["timing_spread"] == 1.0
    assert jitter_row["status"] == "noisy" and jitter_row["timing_spread"] == pytest.approx(6.0)
    assert "timing spread p80/p20" in jitter_row["status_detail"] and "--min-time" in jitter_row["status_detail"]
    assert jitter_row["speedup_ci_low"] <= jitter_row["speedup_vs_ref"] <= jitter_row["speedup_ci_high"]
    assert jitter_row["load_before"] is not None and jitter_row["gpu_state"] is None  # CPU: no GPU readings


def test_a_resumed_group_times_its_reference_again_without_writing_it(fake_family, tmp_path):
    """The missing case of a group is timed with its reference (already written) so that its speedup
    is still paired; the reference's row is not written twice."""
    path = tmp_path / "run.csv"
    cases = [case("fake", "torch"), case("fake", "wrong")]
    run_sweep(cases, context(), path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]))  # the reference's row only
    assert run_sweep(cases, context(), path) == (1, 1)
    rows = load_results(path)
    assert list(rows["backend"]) == ["torch", "wrong"] and rows.iloc[1]["speedup_vs_ref"] > 0


def test_a_backend_declared_metric_lands_in_its_row_in_both_phases(fake_family, monkeypatch):
    """A backend's ``pass_metrics`` is given the very pass that was timed (a closure that runs it) and its columns
    land in that backend's row, in both phases; a backend without one leaves the column out."""
    calls = []

    def metered(run):
        outputs = run()  # the timed pass itself: the output, then the gradients of a forward+backward
        calls.append(len(outputs))
        return {"tile_efficiency": 0.25 * len(calls)}

    monkeypatch.setitem(FakeAttention.backends, "metered", Backend("metered", lambda y: y, "identity, metered",
                                                                   pass_metrics=metered))
    forward = run_case(case("fake", "metered"), context())
    training = run_case(case("fake", "metered", "fwd+bwd"), context())
    assert (forward["status"], training["status"]) == ("ok", "ok"), (forward["status_detail"],
                                                                     training["status_detail"])
    assert (forward["tile_efficiency"], training["tile_efficiency"]) == (0.25, 0.5)
    parameters = len(list(FakeAttention(16, 2).parameters()))
    assert calls == [1, 2 + parameters]  # fwd: the output; fwd+bwd: the output, the input's and each weight's gradient
    assert "tile_efficiency" not in run_case(case("fake", "torch"), context())


@pytest.mark.slow  # the Triton kernels under their interpreter: about 7 s
def test_a_backend_declared_metric_lands_in_its_row():
    """The Triton BRA backend reports its kernels' tile efficiency through ``Backend.pass_metrics``
    (here under Triton's interpreter): one region of 6×6 tokens, fp32. Rows: 36 of a 64-row tile;
    columns: the routed region's 36 keys in two 32-column tiles; depth: head dim 8 of a 16-wide tile."""
    bra = dict(resolution=6, n_win=1, topk=1)
    row = run_case(case("bra", "triton", **bra), context())
    assert row["status"] == "ok", row["status_detail"]
    assert row["tile_efficiency"] == pytest.approx((36 / 64) ** 2 * 8 / 16)
    row = run_case(case("bra", "triton", "fwd+bwd", **bra), context())
    assert row["status"] == "ok" and row["tile_efficiency"] == pytest.approx((36 / 64) ** 2 * 8 / 16)
    assert "tile_efficiency" not in run_case(case("bra", "torch", **bra), context())


# --------------------------------------------------------------------------------------------
# result files
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("late", [("tile_efficiency",), PLACEMENT_COLUMNS])
def test_a_file_from_before_a_late_column_loads_and_resumes(tmp_path, fake_family, late):
    """A results file written before ``tile_efficiency`` (or the placement columns) existed loads with
    the columns empty, and a resumed run rewrites it with them before appending."""
    path = tmp_path / "run.csv"
    run_sweep([case("fake", "torch")], context(), path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    indices = {COLUMNS.index(column) for column in late}
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([cell for i, cell in enumerate(row) if i not in indices] for row in rows)
    assert load_results(path)[list(late)].isna().all(axis=None)
    assert run_sweep([case("fake", "torch"), case("fake", "wrong")], context(), path) == (1, 1)
    assert path.read_text().splitlines()[0].split(",") == COLUMNS
    frame = load_results(path)
    assert len(frame) == 2 and list(frame["backend"]) == ["torch", "wrong"]


def test_rows_say_where_they_ran(tmp_path, fake_family, monkeypatch):
    """An in-process sweep's rows name this host, this process and its device (not the RunContext's);
    on CUDA, the GPU as its node numbers it: CUDA_VISIBLE_DEVICES' entry for the current device."""
    path = tmp_path / "run.csv"
    run_sweep([case("fake", "torch")], context(), path)
    row = load_results(path).iloc[0]
    assert (row["node"], row["worker"], row["device_name"]) == (socket.gethostname(), f"pid {os.getpid()}", cpu_name())
    assert pd.isna(row["gpu_index"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")
    assert placement("cuda") == {"node": socket.gethostname(), "worker": f"pid {os.getpid()}", "gpu_index": "5",
                                 "device_name": "GPU 1"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert placement("cuda")["gpu_index"] == "1"


def test_load_results_rejects_what_is_not_ours(tmp_path):
    with pytest.raises(ResultsFormatError, match="does not exist"):
        load_results(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ResultsFormatError, match="is empty"):
        load_results(tmp_path / "empty.csv")
    with pytest.raises(ResultsFormatError, match="directory"):
        load_results(tmp_path)
    (tmp_path / "foreign.csv").write_text("name,score\nalice,3\n")
    with pytest.raises(ResultsFormatError, match="not a results file of this suite.*family"):
        load_results(tmp_path / "foreign.csv")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ResultsFormatError):
        load_results(tmp_path / "binary.csv")
    row = {c: "" for c in COLUMNS} | {"family": "full", "backend": "torch", "status": "exploded", "resolution": 8,
                                        "batch": 1, "dim": 8, "heads": 1, "dtype": "float32", "phase": "fwd",
                                        "options": "{}", "device": "cpu", "case_key": "k", "compile": "eager"}
    bad = tmp_path / "bad_status.csv"
    ResultsWriter(bad).append(row)
    with pytest.raises(ResultsFormatError, match="line 2: status 'exploded' is not a status"):
        load_results(bad)


def test_load_results_accepts_the_metadata_path_and_keeps_types(tmp_path, fake_family):
    path = tmp_path / "run.csv"
    run_sweep([case("fake", "torch")], context(), path)
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "run"}))
    frame = load_results(tmp_path / "run.json")
    assert len(frame) == 1 and frame["resolution"].dtype.kind == "i" and frame["gmacs"].dtype.kind == "f"


def scripted_timer(monkeypatch, times_ms: dict[str, Callable[[int], float]]) -> dict[str, int]:
    """Replace the stopwatch: pass ``name`` (a run returning its name) takes ``times_ms[name](call)`` ms on its
    call-th call (from 0); returns the call counts."""
    calls = {name: 0 for name in times_ms}

    def timed_once(run, device, flush):
        name = run()
        elapsed = times_ms[name](calls[name])
        calls[name] += 1
        return elapsed, 0
    monkeypatch.setattr(bench.core.measure, "timed_once", timed_once)
    return calls


def test_the_warm_up_lasts_until_three_calls_agree(monkeypatch):
    """Calls of 50, 30, 20, 10.5, 10, 10.2 ms: warm from the sixth on (three within the CPU's 1.3 of each other);
    a pass alternating 10 and 20 ms never settles and stops at the cap, and its row says so."""
    settling = [50.0, 30.0, 20.0, 10.5, 10.0, 10.2]
    calls = scripted_timer(monkeypatch, {"settling": lambda i: settling[i] if i < 6 else 10.0,
                                         "restless": lambda i: 10.0 if i % 2 else 20.0})
    policy = TimingPolicy(min_time_s=0.0, min_rounds=3, warmup_max_calls=20)
    timings = time_rounds({"settling": lambda: "settling", "restless": lambda: "restless"}, torch.device("cpu"), policy)
    assert (timings["settling"].warmup_calls, timings["settling"].warmup_settled) == (6, True)
    assert (timings["restless"].warmup_calls, timings["restless"].warmup_settled) == (20, False)
    assert calls == {"settling": 6 + 3, "restless": 20 + 3}
    assert timing_notes(timings["restless"], policy) == [
        "warm-up did not settle within 20 calls (the last 3 spread beyond the noise limit)"]
    assert timing_notes(timings["settling"], policy) == []


def test_min_time_is_each_passes_own_and_no_round_cap_cuts_it(monkeypatch):
    """A 1 ms pass paired with a 10 ms one and 2.5 s asked: 2500 rounds (more than the old cap of 1000), so that
    the fast pass gets its 2.5 s of its own; a policy that caps the rounds gets rows that say how short they fell."""
    scripted_timer(monkeypatch, {"fast": lambda i: 1.0, "slow": lambda i: 10.0})
    runs = {"fast": lambda: "fast", "slow": lambda: "slow"}
    policy = TimingPolicy(min_time_s=2.5, min_rounds=10)
    timings = time_rounds(runs, torch.device("cpu"), policy)
    assert timings["fast"].rounds == timings["slow"].rounds == 2500
    assert timings["fast"].timed_s == pytest.approx(2.5) and timings["slow"].timed_s == pytest.approx(25.0)
    assert timing_notes(timings["fast"], policy) == []
    capped = replace(policy, max_rounds=1000)
    timings = time_rounds(runs, torch.device("cpu"), capped)
    assert timings["fast"].rounds == 1000
    assert timing_notes(timings["fast"], capped) == ["timed 1 s of the 2.5 s asked: rounds cut at 1000"]
    assert timing_notes(timings["slow"], capped) == []


@pytest.fixture
def extension_family():
    """tests/extension_family.py imported, as a plugin would be: its family registered until the test ends
    (its import registers it only the first time)."""
    import extension_family
    _FAMILIES[extension_family.FAMILY] = extension_family.ScaledLinearAttention
    yield extension_family.FAMILY
    del _FAMILIES[extension_family.FAMILY]


def test_a_later_sitting_takes_the_sweeps_numerics_threads_and_extensions(extension_family):
    """The sweep's process runs under non-default numerics, one thread, and a family from a module outside the
    package; the second sitting's fresh process imports that module, sets the same numerics and threads,
    checks them and times the passes."""
    numerics = Numerics(tf32_matmul=True, tf32_cudnn=True, cudnn_benchmark=True)
    ctx = replace(context(), numerics=numerics, timing=replace(FAST, sittings=2))
    assert ctx.extension_modules == ("extension_family",)
    rows = run_group([case(extension_family, "torch")], ctx)
    assert rows[0]["status"] == "ok" and rows[0]["rounds"] == 2 * FAST.max_rounds, rows[0]["status_detail"]
    assert Numerics.current() == numerics  # the sweep's own process runs under them too
    Numerics().apply()


def test_settings_a_process_did_not_take_are_named():
    settings = ProcessSettings(Numerics(tf32_matmul=True), torch.get_num_threads() + 1, ("extension_family",))
    Numerics().apply()
    assert settings.differences() == [f"threads {torch.get_num_threads()}, not {torch.get_num_threads() + 1}",
                                      "tf32_matmul False, not True",
                                      "no family or backend of extension_family registered (the sweep's process has "
                                      "some)"]
    assert ProcessSettings(Numerics(), torch.get_num_threads(), ()).differences() == []


def test_throughput_counts_the_real_map_not_the_padding():
    """BRA with auto_pad on a 10×10 map cut into 7×7 regions runs on 14×14: gmacs (fvcore, as run) counts the
    padded map, gmacs_unpadded the real one (the padding's own tokens left out), and tflops_achieved divides
    the latter; without padding the two counts agree."""
    padded = run_case(case("bra", "torch", resolution=10, auto_pad=True, n_win=7), context())
    module = attentions.build("bra", dim=16, num_heads=2, auto_pad=True, n_win=7)
    excess = module.macs(2, 10, 10).total - module.useful_macs(2, 10, 10).total
    assert module.useful_macs(2, 10, 10)["projections"] * 196 == module.macs(2, 10, 10)["projections"] * 100
    assert excess > 0 and padded["gmacs_unpadded"] * 1e9 == pytest.approx(padded["gmacs"] * 1e9 - excess)
    assert padded["tflops_achieved"] == pytest.approx(
        2 * padded["gmacs_unpadded"] * 1e9 / (padded["latency_ms_median"] / 1e3) / 1e12)
    assert padded["hw_gflops"] == pytest.approx(2 * padded["gmacs"])  # the hardware ran the padded map
    whole = run_case(case("bra", "torch", resolution=14, auto_pad=True, n_win=7), context())
    assert whole["gmacs_unpadded"] == whole["gmacs"]


def test_accuracy_falls_back_to_fewer_images_when_the_references_do_not_fit(monkeypatch):
    """The float64 reference needs several times the case's memory: when its passes run out of memory on the
    whole batch (4 images here), the accuracy is measured on the first half, a quarter, ... and the row says
    on how many; when not even one image fits, the row says that the accuracy was not measured."""
    real = bench.suites.attention_rows.reference_passes
    tried = []

    def fitting(images: int):
        def passes(module, x, phase, grad_out):
            tried.append(x.shape[0])
            if x.shape[0] > images:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
            return real(module, x, phase, grad_out)
        return passes

    four = replace(case("full", "sdpa"), batch=4)
    monkeypatch.setattr(bench.suites.attention_rows, "reference_passes", fitting(1))
    row = run_case(four, context())
    assert tried == [4, 2, 1] and row["status"] == "ok" and 0 < row["rel_err"] <= row["err_tolerance"]
    assert "accuracy checked on the first 1 of 4 images" in row["status_detail"]
    monkeypatch.setattr(bench.suites.attention_rows, "reference_passes", fitting(0))
    row = run_case(four, context())
    assert row["status"] == "ok" and row.get("rel_err") is None
    assert "accuracy not measured" in row["status_detail"]


def test_pct_of_peak_divides_by_the_peak_of_the_math_used():
    """float32 on an H100 profile: the plain fp32 peak (67 TFLOP/s) when TF32 is off, the TF32 peak (495) when
    the run lets matmuls use it; bf16 is its own peak either way."""
    timing = Timing((2.0, 2.0, 2.0))  # 2 ms for 1e9 multiply-adds forward: 1 TFLOP/s
    for tf32, peak in ((False, 67), (True, 495)):
        ctx = replace(context(), profile=PROFILES["h100"], numerics=Numerics(tf32_matmul=tf32, tf32_cudnn=tf32))
        row = bench.suites.rows.latency_row(timing, 1, 10 ** 9, "fwd", "float32", ctx)
        assert row["tflops_achieved"] == pytest.approx(1.0) and row["pct_of_peak"] == pytest.approx(100 / peak)
        assert bench.suites.rows.latency_row(timing, 1, 10 ** 9, "fwd", "bfloat16", ctx)["pct_of_peak"] == pytest.approx(
            100 / 989)


def test_median_interval_is_a_batch_means_interval_of_the_log_latencies():
    """Ten rounds in five batches of two: exp(m ± t(4) · s / √5) with m the median log latency and s the
    standard deviation of the batches' median logs; wider for scattered rounds; none for one round."""
    from bench.core.measure import Timing
    from bench.core.statistics import median_interval
    # Batches of 1, 2, 4, 2 and 1 ms, by hand: in units of ln 2 the batch medians are 0, 1, 2, 1, 0, with the
    # standard deviation √0.7 = 0.83666 (0.579929 in log ms), and the median of all ten is ln 2; the half width is
    # 2.776 * 0.579929 / √5 = 0.719961, so the interval is 2 × exp(∓0.719961) ms
    low, high = median_interval(Timing((1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 2.0, 2.0, 1.0, 1.0)))
    assert (low, high) == pytest.approx((0.97354, 4.10871), rel=1e-4)
    # the same batches three times as far apart on the log scale (1, 8, 64, 8 and 1 ms): three times as wide there
    wide_low, wide_high = median_interval(Timing((1.0, 1.0, 8.0, 8.0, 64.0, 64.0, 8.0, 8.0, 1.0, 1.0)))
    assert math.log(wide_high / wide_low) == pytest.approx(3 * math.log(high / low))
    assert wide_low < 8.0 < wide_high
    assert all(math.isnan(v) for v in median_interval(Timing((2.0,))))


@pytest.mark.parametrize("retries, quiet_on, attempts, status", [(5, 3, 3, "ok"), (1, 3, 2, "noisy"), (0, 3, 1, "noisy")])
def test_retry_noisy_retimes_only_the_noisy_cases_beside_their_reference(retries, quiet_on, attempts, status):
    """A stand-in group runner whose sdpa row is noisy until its ``quiet_on``-th attempt: RetryNoisy re-times
    that case alone (its reference as companion), at most ``retries`` more times, and keeps the last row."""
    from bench.execution.runner import RetryNoisy
    calls = []

    def stand_in(cases, ctx, companions=()):
        calls.append(([c.backend for c in cases], [c.backend for c in companions]))
        sdpa = "ok" if len(calls) >= quiet_on else "noisy"
        return [{"status": sdpa if c.backend == "sdpa" else "ok", "status_detail": f"attempt {len(calls)}"}
                for c in cases]

    cases = [case("full", "torch"), case("full", "sdpa")]
    rows = RetryNoisy(stand_in, retries)(cases, context())
    assert calls == [(["torch", "sdpa"], [])] + [(["sdpa"], ["torch"])] * (attempts - 1)
    assert rows[0]["status_detail"] == "attempt 1" and rows[1]["status"] == status
    assert rows[1]["status_detail"].endswith(f"attempt {attempts}")
    assert (f"re-timed {attempts - 1}×" in rows[1]["status_detail"]) == (attempts > 1)
