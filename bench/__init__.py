"""Benchmark harness: sweeps the ``attentions`` registry (layers, and whole models of ``attentions.models``) into
pandas rows of FLOPs, memory, latency and error.

The names below load on first use, so that ``bench.report`` and ``bench.analysis`` (files in, tables out) never
import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "Case": "bench.suites.cases", "ModelCase": "bench.suites.cases", "Rule": "bench.suites.cases",
    "SweepBlock": "bench.suites.cases", "unique_cases": "bench.suites.cases",
    "count_macs": "bench.core.flops", "hardware_flops": "bench.core.flops", "register_flop_handle": "bench.core.flops",
    "ERROR_FLOOR": "bench.core.accuracy", "ERROR_MULTIPLE": "bench.core.accuracy",
    "TimingPolicy": "bench.core.measure", "PROFILES": "bench.core.profiles", "GpuProfile": "bench.core.profiles",
    "COLUMNS": "bench.schema.columns", "MODEL_COLUMNS": "bench.schema.columns",
    "REQUIRED_COLUMNS": "bench.schema.columns", "ResultsFormatError": "bench.schema.errors",
    "load_results": "bench.schema.files",
    "RunContext": "bench.suites.base", "Suite": "bench.suites.base", "SUITES": "bench.suites",
    "register_suite": "bench.suites", "run_case": "bench.suites.attention_rows",
    "run_model_case": "bench.suites.model", "run_sweep": "bench.execution.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bench' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
