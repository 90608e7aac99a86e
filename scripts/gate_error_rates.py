"""The regression gate's error rates on this machine: identical code compared with itself, and known
slowdowns injected into one backend, many times over.

    python scripts/gate_error_rates.py                      # 20 trials, slowdowns 0, 5%, 10%, 20%, 2x
    python scripts/gate_error_rates.py --trials 5 --out /tmp/rates.csv

Each trial runs a BASE sweep of full attention (``torch``, its reference, and ``sdpa``, timed in paired
rounds at two resolutions, forward, CPU, the CLI's timing policy), then one NEW sweep per slowdown, in
turn, so that the machine's drift lands on every slowdown alike. In NEW, every forward of the ``sdpa``
backend is stretched by busy-waiting for the given fraction of its own time: a pass that really is that
much slower. Each NEW is compared with BASE by ``bench.analysis.compare.compare_runs`` (10% threshold). Prints a
markdown table of verdict rates per slowdown, for the slowed backend (detection, or false alarm at 0) and
for the untouched reference (false alarm), and writes one row per judged case to ``--out``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import attentions.full
from bench import Case, RunContext, run_sweep
from bench.analysis.compare import compare_runs
from bench.analysis.verdicts import VERDICTS
from bench.core.measure import TimingPolicy, retain_available
from bench.core.statistics import SPEEDUP_INTERVAL_METHOD
from bench.core.profiles import PROFILES
from bench.core.machine import cpu_name
from bench.schema.metadata import write_metadata

SLOWED_BACKEND = "sdpa"
ORIGINAL_FORWARD = attentions.full.FullAttention.forward


def stretch(factor: float) -> None:
    """Make every forward of the slowed backend take (1 + factor) times its own time from now on."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        begin = time.perf_counter()
        out = ORIGINAL_FORWARD(self, x)
        if self.backend == SLOWED_BACKEND and factor > 0:
            until = begin + (time.perf_counter() - begin) * (1 + factor)
            while time.perf_counter() < until:
                pass
        return out
    attentions.full.FullAttention.forward = forward


def cases(resolutions: list[int]) -> list[Case]:
    return [Case("full", backend, (), 2, resolution, 64, 2, "float32", "cpu", "fwd")
            for resolution in resolutions for backend in ("torch", SLOWED_BACKEND)]


def sweep(path: Path, planned: list[Case], policy: TimingPolicy) -> Path:
    ctx = RunContext(run_id=path.stem, profile=PROFILES["cpu"], device_name=cpu_name(), timing=policy)
    run_sweep(planned, ctx, path)
    write_metadata(path.with_suffix(".json"), {"run_id": path.stem, "gpu_profile": "cpu", "device_name": cpu_name(),
                                               "timing": {"speedup_interval": SPEEDUP_INTERVAL_METHOD}})
    return path


def trial(index: int, folder: Path, planned: list[Case], slowdowns: list[float], policy: TimingPolicy) -> list[dict]:
    stretch(0.0)
    base = sweep(folder / f"base-{index}.csv", planned, policy)
    judged = []
    for slowdown in slowdowns:
        stretch(slowdown)
        new = sweep(folder / f"new-{index}-{slowdown:g}.csv", planned, policy)
        table = compare_runs(base, new).table
        judged += [{"trial": index, "slowdown": slowdown, "backend": row["backend"], "resolution": row["resolution"],
                    "verdict": row["verdict"], "latency_ratio": row["latency_ratio"], "reason": row["reason"]}
                   for _, row in table.iterrows()]
    stretch(0.0)
    return judged


def rates(rows: pd.DataFrame) -> pd.DataFrame:
    """Per slowdown and role (slowed backend, untouched reference): cases judged and the share of each verdict."""
    rows = rows.assign(role=rows["backend"].map(lambda b: f"{b} (slowed)" if b == SLOWED_BACKEND else f"{b} (untouched)"))
    table = (rows.groupby(["slowdown", "role"])["verdict"].value_counts(normalize=True).unstack(fill_value=0.0)
             .reindex(columns=list(VERDICTS), fill_value=0.0))
    table.insert(0, "cases", rows.groupby(["slowdown", "role"]).size())
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    header = "| injected slowdown | backend | cases | " + " | ".join(VERDICTS) + " |"
    lines = [header, "|" + "---|" * (3 + len(VERDICTS))]
    for _, row in table.iterrows():
        shares = " | ".join(f"{row[v]:.0%}" for v in VERDICTS)
        lines.append(f"| {row['slowdown']:.0%} | {row['role']} | {row['cases']} | {shares} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--slowdowns", type=float, nargs="+", default=[0.0, 0.05, 0.10, 0.20, 1.0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[14, 28])
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per pass (the CLI's CPU default)")
    parser.add_argument("--out", type=Path, default=Path("gate_error_rates.csv"))
    parser.add_argument("--runs", type=Path, help="keep the runs' results files here (default: a temporary folder)")
    args = parser.parse_args()
    policy = TimingPolicy(min_time_s=args.min_time, l2_flush=False,
                          cpu_allocator="retain" if retain_available() else "system")
    planned = cases(args.resolutions)
    judged: list[dict] = []
    begin = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.runs or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(args.trials):
            judged += trial(index, folder, planned, args.slowdowns, policy)
            pd.DataFrame(judged).to_csv(args.out, index=False)  # every finished trial kept
            print(f"trial {index + 1}/{args.trials} done, {time.monotonic() - begin:.0f} s", flush=True)
    print(markdown(rates(pd.DataFrame(judged))))


if __name__ == "__main__":
    main()
