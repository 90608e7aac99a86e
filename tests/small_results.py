"""Result rows for the report, table and plot tests.

``make_small_results``: a small results file produced by the harness itself, with a mismatch and two oom
rows injected (the ``small_results`` fixture in conftest.py). ``noise_frame``: a frame built by hand,
without timing anything, with the rows that test how noise and failures are shown: noisy rows (one the
fastest of its case, a case where every row is noisy), unsupported, oom, error and mismatch rows, a case
without any measured row, intervals far wider than the rest of the data, and a topk run by one backend only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.suites.attention_rows
from bench import Case, RunContext, TimingPolicy, run_sweep
from bench.core.profiles import PROFILES
from bench.schema.columns import COLUMNS, EAGER

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
        patch.setattr(bench.suites.attention_rows, "free_memory", lambda device: None)
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


# --------------------------------------------------------------------------------------------
# a frame built by hand
# --------------------------------------------------------------------------------------------

NOISE_BACKENDS = {"full": ("torch", "sdpa", "flex"), "bra": ("torch", "sdpa", "chunked", "flex")}
NOISE_RESOLUTIONS = (14, 28)
SPEED = {"torch": 1.0, "sdpa": 0.7, "chunked": 0.5, "flex": 1.3}  # latency factor over the reference
LEAN = {"torch": 2.0, "sdpa": 1.0, "chunked": 0.6, "flex": 1.2}   # peak memory factor
# (family, backend, resolution, phase, topk) -> what differs from a plain ok row (topk None: full attention)
NOISE_CASES: dict[tuple, dict] = {
    # the fastest row of its case is noisy: 2× faster than the ok reference
    ("full", "sdpa", 14, "fwd", None): {"status": "noisy", "speed": 0.5},
    # every row of a case is noisy
    ("full", "torch", 28, "fwd", None): {"status": "noisy"},
    ("full", "sdpa", 28, "fwd", None): {"status": "noisy"},
    ("full", "flex", 28, "fwd", None): {"status": "noisy"},
    # intervals far beyond the rest: a p20-p80 band and a speedup's interval
    ("full", "torch", 28, "fwd+bwd", None): {"status": "noisy", "p80": 40.0},
    ("full", "sdpa", 28, "fwd+bwd", None): {"status": "noisy", "ci": (0.02, 30.0)},
    ("full", "flex", 14, "fwd+bwd", None): {"status": "unsupported"},
    ("full", "flex", 28, "fwd+bwd", None): {"status": "unsupported"},
    ("bra", "flex", 14, "fwd+bwd", 4): {"status": "unsupported"},
    ("bra", "flex", 14, "fwd+bwd", 1): {"status": "unsupported"},
    ("bra", "flex", 28, "fwd+bwd", 1): {"status": "unsupported"},
    # a case without a measured row: bra's default (topk 4) at 28², fwd+bwd
    ("bra", "torch", 28, "fwd+bwd", 4): {"status": "oom"},
    ("bra", "sdpa", 28, "fwd+bwd", 4): {"status": "oom"},
    ("bra", "chunked", 28, "fwd+bwd", 4): {"status": "error"},
    ("bra", "flex", 28, "fwd+bwd", 4): {"status": "unsupported"},
    ("bra", "sdpa", 14, "fwd", 1): {"status": "mismatch"},
    ("bra", "chunked", 14, "fwd", 1): {"status": "noisy"},
}
NOISE_EXTRA_TOPK = ("bra", "chunked", 14, "fwd", 16)  # topk 16: run by one backend, at one resolution and phase


def noise_keys() -> list[tuple]:
    """The cases of ``noise_frame``: (family, backend, resolution, phase, topk)."""
    keys = [(family, backend, resolution, phase, topk)
            for family, backends in NOISE_BACKENDS.items() for topk in ((None,) if family == "full" else (1, 4))
            for backend in backends for resolution in NOISE_RESOLUTIONS for phase in ("fwd", "fwd+bwd")]
    return keys + [NOISE_EXTRA_TOPK]


def noise_row(family: str, backend: str, resolution: int, phase: str, topk: int | None) -> dict:
    """One row of ``noise_frame``: a plain ok row with latency and memory by backend, resolution and
    phase, changed as NOISE_CASES says."""
    change = NOISE_CASES.get((family, backend, resolution, phase, topk), {})
    options = {} if topk in (None, 4) else {"topk": topk}
    case = Case(family, backend, tuple(sorted(options.items())), 1, resolution, 16, 2, "float32", "cpu", phase)
    scale = (resolution / 14) ** 2 * (3 if phase == "fwd+bwd" else 1) * (1 + (topk or 0) / 8)
    latency = 2.0 * scale * change.get("speed", SPEED[backend])
    row = dict.fromkeys(COLUMNS, np.nan) | {
        "family": family, "backend": backend, "compile": EAGER, "resolution": resolution, "batch": 1, "dim": 16,
        "heads": 2, "dtype": "float32", "phase": phase, "n_win": 7 if family == "bra" else np.nan,
        "topk": topk or np.nan,
        "kv_downsample_mode": "identity" if family == "bra" else np.nan, "status": change.get("status", "ok"),
        "device_name": "synthetic-cpu", "gpu_profile": "cpu", "options": case.options_json, "device": "cpu",
        "reference_backend": "torch", "run_id": "noise", "case_key": case.key,
        "timestamp": "2026-01-01T00:00:00+00:00", "gmacs": 0.05 * (resolution / 14) ** 2 * (1 + (topk or 0) / 4)}
    if row["status"] in ("ok", "noisy", "mismatch"):
        row |= {"latency_ms_median": latency, "latency_ms_p20": latency * 0.9,
                "latency_ms_p80": latency * change.get("p80", 1.1),
                "peak_mem_mb": 1.5 * (resolution / 14) ** 2 * LEAN[backend] * (2 if phase == "fwd+bwd" else 1),
                "throughput": 1e3 / latency}
    return row


def noise_frame() -> pd.DataFrame:
    """The rows of ``noise_keys``, with the paired speedup over the reference where both were timed."""
    frame = pd.DataFrame([noise_row(*key) for key in noise_keys()])
    reference = frame[frame["backend"] == "torch"].set_index(["family", "options", "resolution", "phase"])
    for index, row in frame.iterrows():
        key = (row["family"], row["options"], row["resolution"], row["phase"])
        ref = reference["latency_ms_median"].get(key, np.nan)
        if row["backend"] == "torch" or row["status"] not in ("ok", "noisy") or not np.isfinite(ref):
            continue
        change = NOISE_CASES.get((row["family"], row["backend"], row["resolution"], row["phase"],
                                  None if row["family"] == "full" else int(row["topk"])), {})
        speedup = ref / row["latency_ms_median"]
        low, high = change.get("ci", (0.95, 1.05))
        frame.loc[index, ["speedup_vs_ref", "speedup_ci_low", "speedup_ci_high"]] = [
            speedup, speedup * low, speedup * high]
    return frame
