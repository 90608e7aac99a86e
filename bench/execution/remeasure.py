"""Re-time a run's cases with the code at hand: what ``compare --rerun-inconclusive`` does before a verdict.

Each case is timed again in its comparison group, paired with its family's reference (re-timed beside
it, so its speedup is paired too), under the run's own timing policy and numerics (from its metadata),
exactly as the sweep times it (the attention suite's ``run_group``). The re-timed rows keep the run's id.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import torch

from bench.core.measure import TimingPolicy
from bench.core.profiles import PROFILES
from bench.execution.runner import Group, run_here
from bench.suites import SUITES
from bench.suites.cases import Case
from bench.suites.base import RunContext
from bench.core.settings import Numerics


class RemeasureError(RuntimeError):
    """NEW's cases cannot be re-timed here (another device, a run without the metadata that says how)."""


def row_case(row: pd.Series | dict[str, Any]) -> Case:
    """The attention-suite case a results row (with its ``options`` as stored, JSON) measured."""
    options = json.loads(row["options"]) if isinstance(row["options"], str) and row["options"] else {}
    return Case(row["family"], row["backend"], tuple(sorted(options.items())), int(row["batch"]),
                int(row["resolution"]), int(row["dim"]), int(row["heads"]), row["dtype"], row["device"], row["phase"])


def timing_policy(metadata: dict[str, Any]) -> TimingPolicy:
    """The timing policy a run's metadata records (its ``timing`` section); defaults where it is silent."""
    timing = metadata.get("timing") if isinstance(metadata.get("timing"), dict) else {}
    default = TimingPolicy()
    min_time = timing.get("min_time_s_per_pass", default.min_time_s)
    sittings = timing.get("sittings", default.sittings)
    if not isinstance(min_time, (int, float)) or isinstance(min_time, bool) or min_time < 0:
        raise RemeasureError(f"the run's metadata has min_time_s_per_pass {min_time!r}: not a number of seconds")
    if not isinstance(sittings, int) or isinstance(sittings, bool) or sittings < 1:
        raise RemeasureError(f"the run's metadata has sittings {sittings!r}: not a count of 1 or more")
    min_rounds, max_rounds = timing.get("min_rounds", default.min_rounds), timing.get("max_rounds")
    if not isinstance(min_rounds, int) or isinstance(min_rounds, bool) or min_rounds < 1:
        raise RemeasureError(f"the run's metadata has min_rounds {min_rounds!r}: not a count of 1 or more")
    if max_rounds is not None and (not isinstance(max_rounds, int) or isinstance(max_rounds, bool) or max_rounds < 1):
        raise RemeasureError(f"the run's metadata has max_rounds {max_rounds!r}: not a count of 1 or more, or null")
    return TimingPolicy(min_time_s=float(min_time), min_rounds=min_rounds, max_rounds=max_rounds, sittings=sittings,
                        l2_flush=bool(timing.get("l2_flush", True)), cuda_graphs=bool(timing.get("cuda_graphs", False)),
                        cpu_allocator=timing.get("cpu_allocator"))


def run_context(metadata: dict[str, Any] | None) -> RunContext:
    """A context that times cases the way the run of ``metadata`` did; RemeasureError when it cannot."""
    if not isinstance(metadata, dict):
        raise RemeasureError("NEW has no run metadata: how its cases were timed is unknown, so they cannot be re-timed")
    profile = PROFILES.get(metadata.get("gpu_profile"))
    if profile is None:
        raise RemeasureError(f"NEW's GPU profile {metadata.get('gpu_profile')!r} is not one of "
                             f"{', '.join(PROFILES)}")
    numerics = metadata.get("numerics") if isinstance(metadata.get("numerics"), dict) else {}
    known = {k: bool(v) for k, v in numerics.items() if k in Numerics.__dataclass_fields__}
    return RunContext(run_id=str(metadata.get("run_id", "")), profile=profile,
                      device_name=str(metadata.get("device_name", "")), timing=timing_policy(metadata),
                      numerics=Numerics(**known))


def remeasure_rows(rows: pd.DataFrame, metadata: dict[str, Any] | None) -> pd.DataFrame:
    """Fresh rows for the cases of ``rows`` (attention-suite rows of the run of ``metadata``), each re-timed in
    its comparison group beside its reference. RemeasureError when they cannot be re-timed on this machine."""
    ctx = run_context(metadata)
    cases = [row_case(row) for _, row in rows.iterrows()]
    devices = sorted({case.device for case in cases})
    if "cuda" in devices and not torch.cuda.is_available():
        raise RemeasureError("NEW's cases ran on CUDA and this machine has no GPU: they cannot be re-timed here")
    suite = SUITES["attentions"]
    fresh = []
    for group in suite.groups(cases):
        keys = {case.key for case in group}
        companions = list({suite.reference_case(case) for case in group if suite.reference_case(case).key not in keys})
        fresh += run_here(suite.run_group, Group(group, companions), ctx)
    return pd.DataFrame(fresh, columns=rows.columns)
