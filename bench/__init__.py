"""Benchmark harness: sweeps the ``attentions`` registry into pandas rows of FLOPs, memory, latency and error."""

from .cases import Case, Rule, SweepBlock, unique_cases
from .flops import count_macs, hardware_flops, register_flop_handle
from .measure import ERROR_TOLERANCE, TimingPolicy
from .profiles import PROFILES, GpuProfile
from .results import COLUMNS, REQUIRED_COLUMNS, ResultsFormatError, load_results
from .runner import RunContext, run_case, run_sweep

__all__ = [
    "COLUMNS", "Case", "ERROR_TOLERANCE", "GpuProfile", "PROFILES", "REQUIRED_COLUMNS", "ResultsFormatError",
    "Rule", "RunContext", "SweepBlock", "TimingPolicy", "count_macs", "hardware_flops", "load_results",
    "register_flop_handle", "run_case", "run_sweep", "unique_cases",
]
