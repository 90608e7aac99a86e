"""The GPU clock watch (``bench.core.clocks``) with a stand-in NVML: a row timed while the SM clock fell or the GPU
throttled is noisy and says why; steady clocks change nothing. No GPU is needed: the stand-in plays the
NVML calls back from a script, and the rounds are timed on the CPU."""

from __future__ import annotations

import types

import pytest
import torch

import bench.core.clocks
import bench.core.measure
from bench.core.clocks import THROTTLE_REASONS, ClockWatch
from bench.core.measure import time_rounds
from bench.suites.attention_rows import run_group
from test_bench_core import case, context

SW_POWER_CAP, HW_THERMAL, GPU_IDLE = 0x4, 0x40, 0x1


class StandInNvml:
    """NVML's calls that ClockWatch makes, answering from scripted clocks and reason bits (the last one
    repeats once the script runs out); the newer clock-event name, as pynvml 12 and later have it."""

    def __init__(self, clocks_mhz: list[float], reasons: list[int]) -> None:
        self.clocks_mhz, self.reasons = clocks_mhz, reasons
        self.reads = 0

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> float:
        self.reads += 1
        return self.clocks_mhz[min(self.reads - 1, len(self.clocks_mhz) - 1)]

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        return 61

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        return 512_000  # mW

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:
        return self.reasons[min(self.reads - 1, len(self.reasons) - 1)]


def watch(clocks_mhz: list[float], reasons: list[int]) -> ClockWatch:
    return ClockWatch(StandInNvml(clocks_mhz, reasons), 0)


def test_steady_clocks_and_idle_reasons_are_no_verdict():
    steady = watch([1980, 1965, 1980], [0, GPU_IDLE, 0])
    for _ in range(3):
        steady.sample(force=True)
    assert steady.verdict() is None and steady.throttles == []
    assert steady.summary() == {"samples": 3, "sm_clock_mhz": [1965.0, 1980.0], "temperature_c": [61.0, 61.0],
                                "power_w": [512.0, 512.0], "throttle_reasons": []}


def test_a_falling_clock_or_a_throttle_reason_is_named():
    falling = watch([1980, 1980, 1700], [0])
    throttled = watch([1980], [0, SW_POWER_CAP | HW_THERMAL])
    for _ in range(3):
        falling.sample(force=True)
        throttled.sample(force=True)
    assert falling.verdict() == "SM clock fell to 1700 MHz from 1980 MHz during timing"
    assert throttled.verdict() == ("GPU throttled (software power cap, hardware thermal slowdown) during timing")
    assert set(THROTTLE_REASONS) >= {SW_POWER_CAP, HW_THERMAL} and GPU_IDLE not in THROTTLE_REASONS


@pytest.mark.parametrize("pass_ms, reads", [(11, 1 + 5 + 1), (3, 1 + 2 + 1)])
def test_the_rounds_are_watched_between_passes(monkeypatch, pass_ms, reads):
    """The clocks are sampled once before the rounds, after each round at most every 10 ms, and once after, on a
    stand-in clock that only the passes move: two passes of 11 ms make rounds of 22 ms, each sampled (7 reads in
    all for 5 rounds); passes of 3 ms make rounds of 6 ms, sampled at 12 and 24 ms only (4 reads). The verdict
    and the summary reach every pass's timing."""
    now_ms = [0.0]

    def stand_in_pass() -> None:
        now_ms[0] += pass_ms

    def timed_once(run, device, flush):
        start = now_ms[0]
        run()
        return now_ms[0] - start, 0

    stand_in_time = types.SimpleNamespace(perf_counter=lambda: now_ms[0] / 1e3)
    monkeypatch.setattr(bench.core.measure, "timed_once", timed_once)
    monkeypatch.setattr(bench.core.clocks, "time", stand_in_time)
    stand_in = StandInNvml([1980] * (reads - 1) + [1500], [0])
    timings = time_rounds({"a": stand_in_pass, "b": stand_in_pass}, torch.device("cpu"),
                          bench.core.measure.TimingPolicy(warmup_max_calls=3, min_time_s=0.0, min_rounds=5),
                          watch=ClockWatch(stand_in, 0))
    assert stand_in.reads == reads
    for timing in timings.values():
        assert timing.rounds == 5 and set(timing.times_ms) == {float(pass_ms)}
        assert timing.throttled == "SM clock fell to 1500 MHz from 1980 MHz during timing"
        assert timing.clocks[0]["sm_clock_mhz"] == [1500.0, 1980.0]


@pytest.mark.parametrize("reasons, status", [([0], "ok"), ([0, SW_POWER_CAP], "noisy")])
def test_a_row_timed_while_the_gpu_throttled_is_noisy(monkeypatch, reasons, status):
    """A group timed under a stand-in NVML that reports a power cap midway: both rows noisy, with the reason in
    their detail; without it, ok."""
    monkeypatch.setattr(bench.core.measure.ClockWatch, "for_device",
                        classmethod(lambda cls, device, nvml=None: cls(StandInNvml([1980], reasons), 0)))
    rows = run_group([case("full", "torch"), case("full", "sdpa")], context())
    assert [row["status"] for row in rows] == [status, status], [row["status_detail"] for row in rows]
    if status == "noisy":
        assert all(row["status_detail"].startswith("GPU throttled (software power cap) during timing")
                   for row in rows)
