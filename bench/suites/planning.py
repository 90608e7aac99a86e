"""Checks every suite's plan makes before anything runs: names that must be known, inputs that must fit the
device. A failed check raises ``PlanError`` naming the value and what is allowed."""

from __future__ import annotations

import math
import os
from typing import Iterable

import pandas as pd

from bench.core.profiles import DTYPES, GpuProfile
from bench.schema.columns import MEASURED_STATUSES
from bench.suites.base import PlanError


def check_known(flag: str, given: Iterable[str] | None, valid: Iterable[str], scope: str = "") -> None:
    """PlanError when ``given`` holds a name that is not among ``valid`` (``scope``: for what they are valid)."""
    valid = list(valid)
    unknown = [name for name in given or [] if name not in valid]
    if unknown:
        raise PlanError(f"{flag}: unknown {', '.join(unknown)}{f' for {scope}' if scope else ''}; "
                        f"valid: {', '.join(valid)}")


def device_memory_bytes(profile: GpuProfile) -> int:
    """The memory of the profile's device: its GPU's, or this machine's for the CPU profile."""
    if profile.memory_gb is not None:
        return int(profile.memory_gb * 1e9)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_input_fits(what: str, shape: tuple[int, ...], dtype: str, profile: GpuProfile) -> None:
    """PlanError when a case's input alone is larger than its device's whole memory: such a case cannot run on
    any device of the profile, so it is a bad value, not an ``oom`` row."""
    size = math.prod(shape) * DTYPES[dtype].itemsize
    memory = device_memory_bytes(profile)
    if size > memory:
        raise PlanError(f"{what}: its input alone ({' × '.join(map(str, shape))} {dtype}, {size / 2 ** 30:.4g} GiB) "
                        f"is larger than the memory of {profile.marketing_name} ({memory / 2 ** 30:.4g} GiB); "
                        f"take a smaller --resolutions or --batch")


def summary_cell(row: pd.Series) -> str:
    """A row's median latency and peak memory (marked when noisy or a mismatch), or its status: a cell of the
    table a sweep prints at its end."""
    if row["status"] in MEASURED_STATUSES:
        text = f"{row['latency_ms_median']:.3g} ms, {row['peak_mem_mb']:.3g} MB"
        return text if row["status"] == "ok" else f"{row['status'].upper()} {text}"
    return row["status"]


def text_table(frame: pd.DataFrame) -> str:
    """``frame`` as a plain text table, wide enough for a sweep's summary."""
    with pd.option_context("display.width", 250, "display.max_rows", 1000, "display.max_colwidth", 100):
        return frame.to_string(index=False)
