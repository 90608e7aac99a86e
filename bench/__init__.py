"""Benchmark harness: sweeps the ``attentions`` registry (layers, and whole models of ``attentions.models``) into
pandas rows of FLOPs, memory, latency and error."""

from .cases import Case, ModelCase, Rule, SweepBlock, unique_cases
from .flops import count_macs, hardware_flops, register_flop_handle
from .accuracy import ERROR_FLOOR, ERROR_MULTIPLE
from .measure import TimingPolicy
from .model_suite import run_model_case
from .profiles import PROFILES, GpuProfile
from .results import COLUMNS, MODEL_COLUMNS, REQUIRED_COLUMNS, ResultsFormatError, load_results
from .runner import RunContext, run_case, run_sweep

__all__ = [
    "COLUMNS", "Case", "ERROR_FLOOR", "ERROR_MULTIPLE", "GpuProfile", "MODEL_COLUMNS", "ModelCase", "PROFILES", "REQUIRED_COLUMNS",
    "ResultsFormatError", "Rule", "RunContext", "SweepBlock", "TimingPolicy", "count_macs", "hardware_flops",
    "load_results", "register_flop_handle", "run_case", "run_model_case", "run_sweep", "unique_cases",
]
