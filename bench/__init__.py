"""Benchmark harness: sweeps the ``attentions`` registry (layers, and whole models of ``attentions.models``) into
pandas rows of FLOPs, memory, latency and error."""

from bench.suites.cases import Case, ModelCase, Rule, SweepBlock, unique_cases
from bench.core.flops import count_macs, hardware_flops, register_flop_handle
from bench.core.accuracy import ERROR_FLOOR, ERROR_MULTIPLE
from bench.core.measure import TimingPolicy
from bench.suites.model import run_model_case
from bench.core.profiles import PROFILES, GpuProfile
from bench.schema.results import COLUMNS, MODEL_COLUMNS, REQUIRED_COLUMNS, ResultsFormatError, load_results
from bench.execution.runner import RunContext, run_case, run_sweep

__all__ = [
    "COLUMNS", "Case", "ERROR_FLOOR", "ERROR_MULTIPLE", "GpuProfile", "MODEL_COLUMNS", "ModelCase", "PROFILES", "REQUIRED_COLUMNS",
    "ResultsFormatError", "Rule", "RunContext", "SweepBlock", "TimingPolicy", "count_macs", "hardware_flops",
    "load_results", "register_flop_handle", "run_case", "run_model_case", "run_sweep", "unique_cases",
]
