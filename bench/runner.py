"""Run cases in isolation and turn them into result rows.

The runner only talks to the ``attentions`` registry: it builds each case's module by name,
asks for its backend's availability, its analytic ``macs()`` and its reference backend. One
bad case never ends a sweep: it becomes a row with status ``unsupported``, ``oom`` or ``error``.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

import attentions
from attentions import BackendUnavailableError

from .cases import Case
from .flops import FlopCounterUnavailable, count_macs, hardware_flops
from .measure import ERROR_TOLERANCE, TimingPolicy, error_against_reference, make_pass, peak_memory_bytes, time_pass
from .profiles import DTYPES, GpuProfile
from .results import COLUMNS, ResultsWriter, completed_case_keys, now_iso

SEED = 0
FLOP_TOLERANCE = 0.01  # fvcore and macs() must agree within 1%
MB = 2 ** 20


@dataclass
class RunContext:
    """What every row of one run shares."""

    run_id: str
    profile: GpuProfile
    device_name: str
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    seed: int = SEED
    tf32: bool = False
    _mac_cache: dict[tuple, tuple[int, str]] = field(default_factory=dict)


def build_module(case: Case, seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The case's module (seeded weights), input and upstream gradient, on its device and dtype."""
    device, dtype = torch.device(case.device), DTYPES[case.dtype]
    torch.manual_seed(seed)
    module = attentions.build(case.family, dim=case.dim, num_heads=case.heads, backend=case.backend,
                              **case.options_dict)
    module = module.to(device=device, dtype=dtype)
    generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    shape = (case.batch, case.resolution, case.resolution, case.dim)
    x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    grad_out = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    return module, x, grad_out


def is_oom(exc: BaseException) -> bool:
    """CUDA's out-of-memory error, or the CPU allocator failing to allocate."""
    message = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in message or "can't allocate memory" in message


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def base_row(case: Case, ctx: RunContext) -> dict[str, Any]:
    effective = case.effective_options()
    return {
        "family": case.family, "backend": case.backend, "resolution": case.resolution, "batch": case.batch,
        "dim": case.dim, "heads": case.heads, "dtype": case.dtype, "phase": case.phase,
        "n_win": effective.get("n_win"), "topk": effective.get("topk"),
        "kv_downsample_mode": effective.get("kv_downsample_mode"),
        "options": case.options_json, "device": case.device, "device_name": ctx.device_name,
        "gpu_profile": ctx.profile.name, "reference_backend": attentions.list_attentions()[case.family][
            "reference_backend"], "seed": ctx.seed, "run_id": ctx.run_id, "case_key": case.key,
    }


def count_macs_any_backend(module: torch.nn.Module, x: torch.Tensor, backend: str) -> tuple[int, Counter, str]:
    """fvcore MACs of ``module(x)``, the ops it could not count, and a note on how it was counted.

    A backend that TorchScript cannot trace (a compiled kernel) is counted on a copy whose
    attentions all run their reference backends: the same mechanism, so the same multiply-adds.
    """
    try:
        return (*count_macs(module, x), "")
    except RuntimeError as exc:
        if is_oom(exc):
            raise
    reference = copy.deepcopy(module)
    for attention in reference.modules():
        if isinstance(attention, attentions.AttentionModule):
            attention.backend = attention.reference_backend
    note = f"fvcore cannot trace backend '{backend}': MACs counted on the reference backend"
    return (*count_macs(reference, x), note)


def count_case_macs(case: Case, module: torch.nn.Module, x: torch.Tensor,
                    ctx: RunContext) -> tuple[int, str, str]:
    """fvcore MACs at the case's batch (counted once per shape at batch 1), the cross-check against
    ``macs()`` (empty when within 1%), and a note on how it was counted."""
    key = (case.family, case.backend, case.options_json, case.resolution, case.dim, case.heads, case.device)
    if key not in ctx._mac_cache:
        analytic = module.macs(1, case.resolution, case.resolution).total
        try:
            counted, unsupported, note = count_macs_any_backend(module, x[:1], case.backend)
            check = ""
            if abs(counted - analytic) > FLOP_TOLERANCE * analytic:
                check = (f"fvcore {counted} vs macs() {analytic} per image ({counted / analytic - 1:+.1%}); "
                         f"uncounted ops: {dict(unsupported)}")
        except FlopCounterUnavailable as exc:
            counted, check, note = analytic, "", f"{exc}: MACs from the family's macs()"
        ctx._mac_cache[key] = (counted, check, note)
    counted, check, note = ctx._mac_cache[key]
    return counted * case.batch, check, note


def measure_case(case: Case, ctx: RunContext) -> dict[str, Any]:
    """All measurements of one case; exceptions propagate to ``run_case``."""
    device = torch.device(case.device)
    ok, reason = attentions.backend_available(case.family, case.backend, device, backward=case.phase == "fwd+bwd")
    if not ok:
        raise BackendUnavailableError(reason)
    module, x, grad_out = build_module(case, ctx.seed)
    row: dict[str, Any] = {
        "param_mb": sum(p.numel() * p.element_size() for p in module.parameters()) / MB,
        "input_mb": x.numel() * x.element_size() / MB,
    }
    reference_backend = module.reference_backend
    tolerance = ERROR_TOLERANCE[case.dtype]
    row["err_tolerance"] = tolerance
    notes = []
    if case.backend == reference_backend:
        notes.append("reference backend: no error to measure")
    else:
        try:
            row["max_abs_err"], row["rel_err"] = error_against_reference(
                module, reference_backend, x, case.phase, grad_out)
        except Exception as exc:  # the reference may not fit where the fast path does
            if not is_oom(exc):
                raise
            notes.append("error not measured: the reference backend ran out of memory")
        free_memory(case.device)

    analytic = module.macs(case.batch, case.resolution, case.resolution)
    row["gmacs_analytic"] = analytic.total / 1e9
    row["macs_parts"] = json.dumps(dict(analytic))
    macs, row["flops_check"], flop_note = count_case_macs(case, module, x, ctx)
    if flop_note:
        notes.append(flop_note)
    row["gmacs"] = macs / 1e9
    row["hw_gflops"] = hardware_flops(macs, case.phase) / 1e9

    row.update(speed_and_memory(module, x, grad_out, case.phase, case.dtype, macs, ctx))
    pass_metrics = module.backends[module.backend].pass_metrics
    if pass_metrics is not None:
        row.update(pass_metrics(make_pass(module, x, case.phase, grad_out)))
    mismatch = row.get("rel_err") is not None and not row["rel_err"] <= tolerance
    row["status"] = "mismatch" if mismatch else "ok"
    if mismatch:
        notes.insert(0, f"rel_err {row['rel_err']:.3g} > tolerance {tolerance:g} for {case.dtype}")
    row["status_detail"] = "; ".join(notes)
    return row


def speed_and_memory(module: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor, phase: str, dtype: str,
                     macs: int, ctx: RunContext) -> dict[str, Any]:
    """Peak memory, latency, throughput and achieved TFLOP/s of the module's pass (``macs``: of its forward
    at the input's batch)."""
    device = x.device
    run = make_pass(module, x, phase, grad_out)
    run()  # first call outside the measurements: lazy init, compilation
    row: dict[str, Any] = {"peak_mem_mb": peak_memory_bytes(run, device) / MB}
    timing = time_pass(run, device, ctx.timing)
    row.update(latency_ms_median=timing.median_ms, latency_ms_p20=timing.p20_ms, latency_ms_p80=timing.p80_ms,
               rounds=timing.rounds)
    seconds = timing.median_ms / 1e3
    row["throughput"] = x.shape[0] / seconds
    row["tflops_achieved"] = hardware_flops(macs, phase) / seconds / 1e12
    peak = ctx.profile.peak_for(dtype, tf32=ctx.tf32)
    row["pct_of_peak"] = 100 * row["tflops_achieved"] / peak if peak else None
    return row


def isolated(row: dict[str, Any], measure: Callable[[], dict[str, Any]], device: str) -> dict[str, Any]:
    """``row`` completed by ``measure()``, or by the status of what it raised, whatever happens."""
    try:
        row.update(measure())
    except BackendUnavailableError as exc:
        row.update(status="unsupported", status_detail=str(exc))
    except Exception as exc:  # noqa: BLE001 - isolation is the point: record and go on
        if is_oom(exc):
            row.update(status="oom", status_detail=str(exc).splitlines()[0][:300])
        else:
            row.update(status="error", status_detail=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        free_memory(device)
    row["timestamp"] = now_iso()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def run_case(case: Case, ctx: RunContext) -> dict[str, Any]:
    """One row for one case, whatever happens to it."""
    return isolated(base_row(case, ctx), lambda: measure_case(case, ctx), case.device)


def run_sweep(cases: Iterable[Any], ctx: RunContext, results_path: Path,
              progress: Callable[[Any, bool], None] | None = None,
              run: Callable[[Any, RunContext], dict[str, Any]] = run_case,
              columns: list[str] = COLUMNS, stop_at: float | None = None,
              starting: Callable[[Any], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> tuple[int, int]:
    """Run every case that has no row yet in ``results_path``, appending each row durably.

    ``run(case, ctx)`` makes a case's row (``run_case``; the model suite's ``run_model_case`` with
    ``columns=MODEL_COLUMNS``). ``progress(case, already_done)`` is called once per case with a row:
    first for every case whose row was already there (before any case runs), then for each case
    once its row is written; ``starting(case)`` just before a case runs. No case starts once
    ``time.monotonic()`` passes ``stop_at`` or ``should_stop()`` is true: the ones left have no row,
    so a resume runs them. Returns (cases run now, cases skipped because a row for them was already there).
    """
    writer = ResultsWriter(results_path, columns)  # first: it cuts a half-written last row
    done = completed_case_keys(results_path)
    todo, skipped = [], 0
    for case in cases:
        if case.key not in done:
            todo.append(case)
            continue
        skipped += 1
        if progress is not None:
            progress(case, True)
    ran = 0
    for case in todo:
        if stop_at is not None and time.monotonic() >= stop_at:
            break  # out of time: no row, so a resume runs it
        if should_stop is not None and should_stop():
            break
        if starting is not None:
            starting(case)
        writer.append(run(case, ctx))
        ran += 1
        if progress is not None:
            progress(case, False)
    return ran, skipped
