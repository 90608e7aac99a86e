"""Row pieces both suites build the same way: failures as statuses, latency and speedup columns, MAC counts
through fvcore, the timestamp. What a suite measures differs; how a measurement becomes columns does not."""

from __future__ import annotations

import copy
import gc
import math
from collections import Counter
from dataclasses import replace
from typing import Any, Callable

import torch

import attentions
from attentions import BackendUnavailableError

from bench.core.compilation import CompileTimeout
from bench.core.flops import count_macs, hardware_flops
from bench.core.measure import Timing, timing_notes
from bench.core.statistics import median_interval, paired_speedup
from bench.core.settings import ProcessSettings
from bench.schema.columns import EAGER
from bench.schema.files import now_iso
from bench.schema.labels import backend_label
from bench.suites.base import RunContext

MB = 2 ** 20

# How allocation failures read when they come as a plain RuntimeError: PyTorch's CPU allocator, CUDA and
# cuBLAS/cuDNN workspaces, Triton and the driver.
OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory",
                "cublas_status_alloc_failed", "cudnn_status_alloc_failed", "cudaerrormemoryallocation",
                "failed to allocate", "memory allocation failed")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure of any kind: torch.OutOfMemoryError, Python's
    MemoryError, or an error whose message is one of ``OOM_MESSAGES``."""
    message = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or any(m in message for m in OOM_MESSAGES)


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def count_macs_any_backend(module: torch.nn.Module, x: torch.Tensor, backend: str) -> tuple[int, Counter, str]:
    """fvcore MACs of ``module(x)``, the ops it could not count, and a note on how it was counted.

    A backend that TorchScript cannot trace (a compiled kernel; a library that checks its sizes as ints, which
    tracing makes tensors: a ValueError) is counted on a copy whose attentions all run their reference backends:
    the same mechanism, so the same multiply-adds.
    """
    try:
        return (*count_macs(module, x), "")
    except (RuntimeError, ValueError) as exc:
        if is_oom(exc):
            raise
    reference = copy.deepcopy(module)
    for attention in reference.modules():
        if isinstance(attention, attentions.AttentionModule):
            attention.backend = attention.reference_backend
    note = f"fvcore cannot trace backend '{backend}': MACs counted on the reference backend"
    return (*count_macs(reference, x), note)


def latency_row(timing: Timing, batch: int, macs: int, phase: str, dtype: str, ctx: RunContext) -> dict[str, Any]:
    """Latency statistics, throughput and achieved TFLOP/s of a timed pass (``macs``: of its forward at
    ``batch``, on the real map: work spent on padding is no throughput)."""
    seconds = timing.median_ms / 1e3
    ci_low, ci_high = median_interval(timing)
    tflops = hardware_flops(macs, phase) / seconds / 1e12
    peak = ctx.profile.peak_for(dtype, tf32=ctx.numerics.tf32_matmul)
    return {"latency_ms_median": timing.median_ms, "latency_ms_p20": timing.p20_ms,
            "latency_ms_p80": timing.p80_ms, "latency_ms_ci_low": ci_low, "latency_ms_ci_high": ci_high,
            "rounds": timing.rounds, "timing_spread": timing.spread,
            "timed_s": timing.timed_s, "warmup_calls": timing.warmup_calls,
            "page_faults": timing.page_faults_median,
            "throughput": batch / seconds, "tflops_achieved": tflops,
            "pct_of_peak": 100 * tflops / peak if peak else None}


def timing_row(timing: Timing, reference: Timing | None, batch: int, macs: int, phase: str, dtype: str, device: str,
               ctx: RunContext, compiled: tuple[str, Timing] | None = None
               ) -> tuple[dict[str, Any], list[str], list[str]]:
    """A timed pass's latency columns and, with a ``reference`` timed in the same rounds, its speedup over it
    with a confidence interval (and likewise over the ``compiled`` reference, labelled); then why it is noise
    (spread or interval beyond the device's limit, the GPU throttling), empty when it is not; then notes on how
    it was timed. Shared by both suites."""
    row = latency_row(timing, batch, macs, phase, dtype, ctx)
    if compiled is not None:
        row["compiled_ref"] = compiled[0]
        (row["speedup_vs_compiled_ref"], row["compiled_speedup_ci_low"],
         row["compiled_speedup_ci_high"]) = paired_speedup(compiled[1], timing)
    notes = ([timing.note] if timing.note else []) + timing_notes(timing, ctx.timing)
    ci_width = 1.0
    if reference is not None:
        row["speedup_vs_ref"], row["speedup_ci_low"], row["speedup_ci_high"] = paired_speedup(reference, timing)
        ci_width = speedup_interval_width(row["speedup_ci_low"], row["speedup_ci_high"])
    limit = ctx.timing.noise_limit_for(torch.device(device))
    noise = []
    if timing.spread > limit or not ci_width <= limit:
        noise.append(f"timing spread p80/p20 {timing.spread:.2f}, speedup interval high/low {ci_width:.2f}: beyond "
                     f"the {limit:g} of a {device}; a longer --min-time or a quieter machine helps")
    if timing.throttled:
        noise.append(timing.throttled)
    return row, noise, notes


def compiled_reference(case: Any, timings: dict[Any, Timing | Exception],
                       reference_case: Callable[[Any], Any]) -> tuple[str, Timing] | None:
    """The compiled reference a case is measured against: among the group's ``timings`` (by case), the fastest
    compiled mode of the case's reference (``reference_case``: its eager reference), with its backend label;
    None where none was timed, and for that case itself."""
    eager = reference_case(case)
    compiled = [(other, timing) for other, timing in timings.items()
                if other != case and other.compile != EAGER and isinstance(timing, Timing)
                and replace(other, compile=EAGER) == eager]
    if not compiled:
        return None
    other, timing = min(compiled, key=lambda item: item[1].median_ms)
    return backend_label(other.backend, other.compile), timing


def recompiled_error(graphs: int) -> RuntimeError:
    """The error of a compiled case that compiled during its timing: the timing measured compiling."""
    return RuntimeError(f"recompiled during timing ({graphs} graph{'s' * (graphs > 1)} compiled after warm-up): "
                        f"its latency is not the compiled pass's")


def speedup_interval_width(low: float, high: float) -> float:
    """high / low of a speedup's interval; inf when it reaches down to zero or is unknown (NaN)."""
    return high / low if low > 0 else math.inf


def failure(exc: BaseException) -> dict[str, Any]:
    """The status (unsupported, oom, timeout or error) and detail of what a case raised."""
    if isinstance(exc, BackendUnavailableError):
        return {"status": "unsupported", "status_detail": str(exc)}
    if isinstance(exc, CompileTimeout):
        return {"status": "timeout", "status_detail": str(exc)}
    if is_oom(exc):
        return {"status": "oom", "status_detail": (str(exc).splitlines() or [type(exc).__name__])[0][:300]}
    return {"status": "error", "status_detail": f"{type(exc).__name__}: {exc}"[:500]}


def stamped(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its timestamp (to the millisecond: when its case, or its group, was done), NaNs as
    empty cells."""
    row["timestamp"] = now_iso("milliseconds")
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def process_settings(ctx: RunContext, threads: int | None = None) -> ProcessSettings:
    """What a process timing the run's cases takes from the sweep's: ``threads`` None leaves its own."""
    return ProcessSettings(ctx.numerics, threads, ctx.extension_modules)
