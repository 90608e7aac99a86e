"""A small results file produced by the harness itself, with a mismatch and two oom rows injected.

Shared by the report, table and plot tests (the ``small_results`` fixture in conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.runner
from bench import Case, RunContext, TimingPolicy, run_sweep
from bench.profiles import PROFILES

# Three rounds and no noise verdict: the tests that use it are about rows and files, not timing noise
# (a loaded test machine would make some rows noisy at random).
FAST = TimingPolicy(warmup_rounds=1, warmup_max_calls=1, min_time_s=0.0, min_rounds=3, max_rounds=3,
                    noise_limit=float("inf"))
BRA_OPTIONS = [{"topk": 1}, {}, {"kv_downsample_mode": "avgpool", "kv_downsample_ratio": 2}]  # {}: topk 4
MISMATCH_LATENCY_MS = 1e-3  # a mismatch row's timing: a huge "speedup" if it were ever used


def cases() -> list[Case]:
    """full / window / bra (topk 1, 4; kv identity, avgpool) x torch / sdpa x 7², 14² x both phases, C16 h2.

    bra's n_win is its default, 7. avgpool with ratio 2 needs regions of 2×2 tokens: at 7² (1×1
    regions) its rows are real 'error' rows.
    """
    out = []
    for family, options in [("full", {}), ("window", {})] + [("bra", o) for o in BRA_OPTIONS]:
        for backend in ("torch", "sdpa"):
            for resolution in (7, 14):
                for phase in ("fwd", "fwd+bwd"):
                    out.append(Case(family, backend, tuple(sorted(options.items())), 1, resolution, 16, 2,
                                      "float32", "cpu", phase))
    return out


def select(frame: pd.DataFrame, family: str, backend: str, resolution: int, phase: str, options: str = "{}"):
    return ((frame["family"] == family) & (frame["backend"] == backend) & (frame["resolution"] == resolution)
            & (frame["phase"] == phase) & (frame["options"] == options))


def make_small_results(tmp_path_factory) -> Path:
    """A real results file, plus three injected rows: a mismatch, an oom, and an oom of a reference row."""
    path = tmp_path_factory.mktemp("plots") / "run.csv"
    context = RunContext(run_id="plots", profile=PROFILES["cpu"], device_name="test-cpu", timing=FAST)
    with pytest.MonkeyPatch.context() as patch:
        # gc.collect between cases costs more than these tiny cases themselves; nothing to free here
        patch.setattr(bench.runner, "free_memory", lambda device: None)
        assert run_sweep(cases(), context, path) == (len(cases()), 0)
    frame = pd.read_csv(path)
    assert set(frame["status"]) == {"ok", "error"}  # only the avgpool cases at 7²
    numbers = ["latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb", "gmacs", "throughput"]
    mismatch = select(frame, "full", "sdpa", 14, "fwd")
    frame.loc[mismatch, ["status", "rel_err", "status_detail"]] = ["mismatch", 0.5, "rel_err 0.5 > tolerance"]
    frame.loc[mismatch, ["latency_ms_median", "latency_ms_p20", "latency_ms_p80"]] = MISMATCH_LATENCY_MS
    for row in (select(frame, "bra", "sdpa", 14, "fwd+bwd", '{"topk": 1}'),
                select(frame, "window", "torch", 14, "fwd+bwd")):
        frame.loc[row, "status"] = "oom"
        frame.loc[row, numbers] = np.nan
    assert (mismatch.sum(), (frame["status"] == "oom").sum()) == (1, 2)
    frame.to_csv(path, index=False)
    return path
