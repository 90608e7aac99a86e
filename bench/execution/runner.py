"""Run cases in isolation and turn them into result rows.

The runner only talks to the ``attentions`` registry: it builds each case's module by name,
asks for its backend's availability, its analytic ``macs()`` and its reference backend. One
bad case never ends a sweep: it becomes a row with status ``unsupported``, ``oom`` or ``error``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

import attentions
from attentions import BackendUnavailableError

from bench.suites.cases import Case, ModelCase
from bench.core.flops import FlopCounterUnavailable, count_macs, hardware_flops
from bench.core.accuracy import Accuracy, ReferencePasses, accuracy, reference_passes
from bench.core.measure import (Timing, TimingPolicy, machine_state, make_pass, median_interval, paired_speedup,
                      peak_memory_bytes, time_rounds, timing_notes)
from bench.core.profiles import DTYPES, GpuProfile
from bench.schema.results import COLUMNS, ResultsWriter, completed_case_keys, cpu_name, now_iso
from bench.core.settings import Numerics, ProcessSettings

SEED = 0
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
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
    numerics: Numerics = field(default_factory=Numerics)
    # modules that registered families or backends in the sweep's process: every process timing cases imports them
    extension_modules: tuple[str, ...] = field(default_factory=attentions.extension_modules)
    _mac_cache: dict[tuple, tuple] = field(default_factory=dict)  # MAC counts by shape: see count_case_macs
    # on_progress(cases, fraction): how much of a group's work is done (see group_progress); called in the process
    # that runs the group, so None where groups run elsewhere (Ray)
    on_progress: Callable[[Sequence[Any], float], None] | None = field(default=None, compare=False, repr=False)


def build_module(case: Case, seed: int, inputs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
                 ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The case's module (seeded weights), input and upstream gradient, on its device and dtype.
    Inputs depend on the seed, shape, dtype and device only: ``inputs`` keeps them for the next case
    of the same (a group's cases share one copy)."""
    device, dtype = torch.device(case.device), DTYPES[case.dtype]
    torch.manual_seed(seed)
    module = attentions.build(case.family, dim=case.dim, num_heads=case.heads, backend=case.backend,
                              **case.options_dict)
    module = module.to(device=device, dtype=dtype)
    shape = (case.batch, case.resolution, case.resolution, case.dim)
    inputs = {} if inputs is None else inputs
    if (shape, dtype, device) not in inputs:
        generator = torch.Generator(device="cpu").manual_seed(seed + 1)
        inputs[shape, dtype, device] = tuple(torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
                                             for _ in range(2))
    x, grad_out = inputs[shape, dtype, device]
    return module, x, grad_out


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


@dataclass
class Prepared:
    """A case measured up to its timing: its row so far, the pass to time, and what finishing it needs."""

    case: Case
    row: dict[str, Any]
    module: torch.nn.Module
    x: torch.Tensor
    grad_out: torch.Tensor
    macs: int  # on the real (unpadded) map: what throughput figures count
    notes: list[str]
    mismatch: str | None  # why the error check failed, or None

    @property
    def run(self) -> Callable[[], list[torch.Tensor]]:
        return make_pass(self.module, self.x, self.case.phase, self.grad_out)


def measure_accuracy(case: Case, module: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor,
                     references: dict[tuple, tuple[int, ReferencePasses]]) -> tuple[Accuracy, int]:
    """The case's accuracy against float64 (``bench.core.accuracy``) on the whole batch, or, when the reference
    passes (float64 needs twice to four times the case's memory) run out of memory, on the first half of
    it, a quarter, ... down to one image: the images are independent in every family, and a bug in how a
    kernel indexes the batch still shows on the images it checks. ``references`` keeps each
    configuration's reference passes (and on how many images) for its other backends. Returns the
    accuracy and the images it was measured on; an allocation failure on one image propagates."""
    key = configuration_key(case)
    images = references[key][0] if key in references else case.batch
    while True:
        try:
            if key not in references:
                references[key] = (images, reference_passes(module, x[:images], case.phase, grad_out[:images]))
            return accuracy(module, x[:images], case.phase, grad_out[:images], references[key][1]), images
        except Exception as exc:
            if not is_oom(exc) or images == 1:
                raise
            references.pop(key, None)
            free_memory(case.device)
            images = (images + 1) // 2


def prepare_case(case: Case, ctx: RunContext, inputs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 references: dict[tuple, tuple[int, ReferencePasses]] | None = None) -> Prepared:
    """Everything of one case but its latency: accuracy against float64, FLOPs, peak memory.
    Exceptions propagate (``failure`` turns them into a status). ``inputs``: see ``build_module``;
    ``references`` keeps each configuration's reference passes for its other backends."""
    device = torch.device(case.device)
    ok, reason = attentions.backend_available(case.family, case.backend, device, backward=case.phase == "fwd+bwd",
                                              dtype=DTYPES[case.dtype])
    if not ok:
        raise BackendUnavailableError(reason)
    module, x, grad_out = build_module(case, ctx.seed, inputs)
    row: dict[str, Any] = {
        "param_mb": sum(p.numel() * p.element_size() for p in module.parameters()) / MB,
        "input_mb": x.numel() * x.element_size() / MB,
    }
    notes = []
    mismatch: str | None = None
    try:
        # NonFiniteReferenceError when the float64 reference's output or gradients hold NaN/inf: the case (the
        # reference's own row included) cannot be judged, and its row records an error.
        measured, images = measure_accuracy(case, module, x, grad_out, {} if references is None else references)
        row.update(max_abs_err=measured.max_abs, rel_err=measured.rel, ref_rel_err=measured.reference_rel,
                   err_tolerance=measured.bound, err_tensor=measured.tensor)
        mismatch = measured.mismatch_reason()
        if images < case.batch:
            notes.append(f"accuracy checked on the first {images} of {case.batch} images: the reference passes do "
                         f"not fit the whole batch")
    except Exception as exc:  # the references may not fit even one image where the fast path does
        if not is_oom(exc):
            raise
        notes.append("accuracy not measured: the reference backend ran out of memory (in float64 or the case's "
                     "dtype) even on one image")
    free_memory(case.device)

    analytic = module.macs(case.batch, case.resolution, case.resolution)
    row["gmacs_analytic"] = analytic.total / 1e9
    row["macs_parts"] = json.dumps(dict(analytic))
    macs, row["flops_check"], flop_note = count_case_macs(case, module, x, ctx)
    if flop_note:
        notes.append(flop_note)
    unpadded = macs - (analytic.total - module.useful_macs(case.batch, case.resolution, case.resolution).total)
    row.update(gmacs=macs / 1e9, gmacs_unpadded=unpadded / 1e9, hw_gflops=hardware_flops(macs, case.phase) / 1e9)
    prepared = Prepared(case, row, module, x, grad_out, unpadded, notes, mismatch)
    run = prepared.run
    run()  # first call outside the measurements: lazy init, compilation
    row["peak_mem_mb"] = peak_memory_bytes(run, device) / MB
    return prepared


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
               ctx: RunContext) -> tuple[dict[str, Any], list[str], list[str]]:
    """A timed pass's latency columns and, with a ``reference`` timed in the same rounds, its speedup over it
    with a confidence interval; then why it is noise (spread or interval beyond the device's limit, the
    GPU throttling), empty when it is not; then notes on how it was timed. Shared by both suites."""
    row = latency_row(timing, batch, macs, phase, dtype, ctx)
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


def finish_case(prepared: Prepared, timing: Timing, reference: Timing | None, ctx: RunContext) -> dict[str, Any]:
    """The rest of a prepared case's row from its timing (and its reference's, from the same rounds):
    latency, its speedup over the reference with a confidence interval, the backend's own metrics,
    and the status: mismatch when the error check failed, noisy when ``timing_row`` finds it noise."""
    case, row = prepared.case, dict(prepared.row)
    timed, noise, notes = timing_row(timing, reference, case.batch, prepared.macs, case.phase, case.dtype,
                                     case.device, ctx)
    row.update(timed)
    notes = prepared.notes + notes
    pass_metrics = prepared.module.backends[prepared.module.backend].pass_metrics
    if pass_metrics is not None:
        row.update(pass_metrics(prepared.run))
    if prepared.mismatch is not None:
        row["status"] = "mismatch"
        notes.insert(0, prepared.mismatch)
    else:
        row["status"] = "noisy" if noise else "ok"
        notes = noise + notes
    row["status_detail"] = "; ".join(notes)
    return row


def speedup_interval_width(low: float, high: float) -> float:
    """high / low of a speedup's interval; inf when it reaches down to zero or is unknown (NaN)."""
    return high / low if low > 0 else math.inf


def failure(exc: BaseException) -> dict[str, Any]:
    """The status (unsupported, oom or error) and detail of what a case raised."""
    if isinstance(exc, BackendUnavailableError):
        return {"status": "unsupported", "status_detail": str(exc)}
    if is_oom(exc):
        return {"status": "oom", "status_detail": (str(exc).splitlines() or [type(exc).__name__])[0][:300]}
    return {"status": "error", "status_detail": f"{type(exc).__name__}: {exc}"[:500]}


def stamped(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its timestamp (to the millisecond: when its case, or its group, was done), NaNs as
    empty cells."""
    row["timestamp"] = now_iso("milliseconds")
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def configuration_key(case: Case) -> tuple:
    """What a case shares with its reference: everything but the backend."""
    return (case.family, case.options_json, case.batch, case.resolution, case.dim, case.heads, case.dtype,
            case.device, case.phase)


def reference_case(case: Case | ModelCase) -> Case | ModelCase:
    """The same case on its family's reference backend (a model case: on its first attention family's)."""
    family = case.attention.split(",")[0] if isinstance(case, ModelCase) else case.family
    return replace(case, backend=attentions.list_attentions()[family]["reference_backend"])


def comparison_groups(cases: Sequence[Case]) -> list[list[Case]]:
    """The cases timed together in paired rounds: every case of one shape (batch, resolution, dim,
    heads, dtype, device, phase), whatever its family, options and backend, so that a configuration's
    reference, its fast paths and full attention of the same shape share their rounds. Groups come
    in the order of their first case."""
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault((case.batch, case.resolution, case.dim, case.heads, case.dtype, case.device, case.phase),
                          []).append(case)
    return list(groups.values())


def group_progress(ctx: RunContext, cases: Sequence[Any], passes: int) -> Callable[[int], None]:
    """``step(n)``: ``n`` more steps of a group's work are done, reported to ``ctx.on_progress`` as the fraction
    done. A group of ``passes`` passes takes one step per pass prepared and ``passes`` steps per sitting of rounds."""
    total, done = passes * (1 + ctx.timing.sittings), 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        if ctx.on_progress is not None:
            ctx.on_progress(cases, done / total)

    return step


def run_group(cases: Sequence[Case], ctx: RunContext, companions: Sequence[Case] = ()) -> list[dict[str, Any]]:
    """One row per case of ``cases``, whatever happens to each. Their passes (and those of
    ``companions``, references timed only for their cases' speedups) are timed together in paired
    rounds (in ``ctx.timing.sittings`` sittings, the later ones each in a fresh process); a case alone
    is timed unpaired. The machine's state before and after is in every row. The process takes the run's
    numerics and extension modules first (its threads stay as they are)."""
    try:
        process_settings(ctx).apply()
    except ImportError as exc:  # an extension module this process cannot import: its cases cannot run here
        return [stamped({**base_row(case, ctx), **failure(exc)}) for case in cases]
    device = torch.device(cases[0].device)
    before = machine_state(device)
    rows: dict[str, dict[str, Any]] = {}
    prepared: dict[str, Prepared] = {}
    inputs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    references: dict[tuple, tuple[int, ReferencePasses]] = {}
    passes = len(cases) + len(companions)
    step = group_progress(ctx, cases, passes)
    for case in [*cases, *companions]:
        row = base_row(case, ctx)
        try:
            prepared[case.key] = prepare_case(case, ctx, inputs, references)
            prepared[case.key].row = {**row, **prepared[case.key].row}
        except Exception as exc:  # noqa: BLE001 - recorded as the case's status; the group goes on
            rows[case.key] = {**row, **failure(exc)}
            free_memory(case.device)
        step(1)
    references.clear()  # before timing: the device's memory is the passes' alone
    free_memory(device.type)
    timings = time_rounds({key: p.run for key, p in prepared.items()}, device, ctx.timing)
    step(passes)
    for _ in range(1, ctx.timing.sittings):
        timed = [p.case for key, p in prepared.items() if isinstance(timings[key], Timing)]
        if timed:
            later = sitting_in_fresh_process(timed, ctx.seed, ctx.timing, process_settings(ctx, torch.get_num_threads()))
            timings.update({case.key: timings[case.key].joined(later[case.key])
                            if isinstance(later[case.key], Timing) else later[case.key] for case in timed})
        step(passes)
    after = machine_state(device)
    for key, item in prepared.items():
        timing = timings[key]
        reference = timings.get(reference_case(item.case).key)
        paired = isinstance(reference, Timing) and reference_case(item.case).key != key
        try:
            if isinstance(timing, Exception):
                raise timing
            rows[key] = finish_case(item, timing, reference if paired else None, ctx)
        except Exception as exc:  # noqa: BLE001 - as above
            rows[key] = {**item.row, **failure(exc)}
        during = list(timing.clocks) if isinstance(timing, Timing) else []
        rows[key].update(load_before=before["load_avg"], load_after=after["load_avg"],
                         gpu_state=json.dumps({"before": before, "during": during, "after": after})
                         if device.type == "cuda" else None)
    prepared.clear()
    inputs.clear()
    free_memory(device.type)
    return [stamped(rows[case.key]) for case in cases]


def process_settings(ctx: RunContext, threads: int | None = None) -> ProcessSettings:
    """What a process timing the run's cases takes from the sweep's: ``threads`` None leaves its own."""
    return ProcessSettings(ctx.numerics, threads, ctx.extension_modules)


class Stopped(BaseException):
    """The sweep is to stop at once, its group in progress left without rows (a resume runs it): raised by the
    sweep's handler of a stopping signal, or where a process of the sweep was ended by one. A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` turns it into a case's error row."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# Signals that end a process on request rather than by a fault: a sitting ended by one was stopped from outside.
STOPPING_SIGNALS = frozenset({signal.SIGINT, signal.SIGHUP, signal.SIGTERM})
SITTING_MAIN = f"from {__name__} import sitting_main; sitting_main()"


def sitting_in_fresh_process(cases: Sequence[Case], seed: int, policy: TimingPolicy,
                             settings: ProcessSettings) -> dict[str, Timing | Exception]:
    """One more sitting of paired rounds of ``cases`` (rebuilt from the seed: the same weights and
    inputs), in a process started for it, under the sweep's ``settings``. What a process fixes for its
    lifetime (where its memory lies, its allocator's state, its compiled kernels) then varies between
    sittings as it does between runs. A sitting that cannot run, or whose process ends up under other
    settings than the sweep's, makes every pass's result its error.
    The process runs in a session of its own, so that a terminal's Ctrl-C or hang-up reaches the sweep alone,
    which decides what it stops; it ends with the sweep: terminated when the sweep stops, killed by the kernel
    when the sweep's process dies. A sitting ended by a stopping signal from elsewhere raises ``Stopped``: the
    group gets no rows, rather than error rows."""
    receiver, sender = os.pipe()
    job = pickle.dumps((list(cases), seed, policy, settings, os.getpid(), sender))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))}  # imports as in this process
    try:
        process = subprocess.Popen([sys.executable, "-c", SITTING_MAIN], stdin=subprocess.PIPE, pass_fds=(sender,),
                                   start_new_session=True, env=env)
    finally:
        os.close(sender)
    with open(receiver, "rb") as results:
        try:
            with contextlib.suppress(BrokenPipeError):  # a process that ended before reading: see below
                process.stdin.write(job)
                process.stdin.close()
            outcome = pickle.load(results)
        except (EOFError, pickle.UnpicklingError):  # it ended before its outcome was complete
            outcome = None
        except BaseException:
            process.terminate()
            raise
        finally:
            process.wait()
    if outcome is None:
        if -process.returncode in STOPPING_SIGNALS:
            raise Stopped(-process.returncode)
        outcome = RuntimeError(f"the process ended without a result (exit code {process.returncode})")
    if isinstance(outcome, Exception):
        error = RuntimeError(f"a timing sitting in a fresh process failed: {outcome}")
        return {case.key: error for case in cases}
    return outcome


def sitting_main() -> None:
    """The process of ``sitting_in_fresh_process``: its job from stdin, its outcome (each pass's Timing or
    error, or the sitting's error) pickled into the pipe it was handed."""
    cases, seed, policy, settings, sweep_pid, pipe = pickle.load(sys.stdin.buffer)
    die_with(sweep_pid)
    outcome = _time_sitting(cases, seed, policy, settings)
    with open(pipe, "wb") as out:
        pickle.dump(outcome, out)


def _time_sitting(cases: list[Case], seed: int, policy: TimingPolicy,
                  settings: ProcessSettings) -> dict[str, Timing | Exception] | Exception:
    """The body of ``sitting_main``: each pass's Timing or error, or the sitting's error. Exceptions travel
    as text, since not every one pickles."""
    try:
        settings.apply()
        differences = settings.differences()
        if differences:
            raise RuntimeError(f"its process did not take the sweep's settings: {', '.join(differences)}")
        inputs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        runs = {}
        for case in cases:
            module, x, grad_out = build_module(case, seed, inputs)
            runs[case.key] = make_pass(module, x, case.phase, grad_out)
        results = time_rounds(runs, torch.device(cases[0].device), policy)
        return {key: result if isinstance(result, Timing) else RuntimeError(f"{type(result).__name__}: {result}")
                for key, result in results.items()}
    except Exception as exc:  # noqa: BLE001 - the sitting's failure, reported to the sweep
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def die_with(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent ends, however it ends (Linux's PR_SET_PDEATHSIG), so
    that a killed sweep leaves no sitting running on; a parent already gone ends this process now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the sweep still terminates its sittings when it stops
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def run_case(case: Case, ctx: RunContext) -> dict[str, Any]:
    """One row for one case, timed alone."""
    return run_group([case], ctx)[0]


def placement(device: str) -> dict[str, Any]:
    """Where this process runs a case: the node's hostname, the process (``pid N``), the GPU as the node
    numbers it (``CUDA_VISIBLE_DEVICES``' entry for the current device when set, else its index; empty on
    the CPU) and the device's own name."""
    where = {"node": socket.gethostname(), "worker": f"pid {os.getpid()}", "gpu_index": None,
             "device_name": cpu_name()}
    if device == "cuda":
        index = torch.cuda.current_device()
        visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
        where.update(gpu_index=visible[index] if index < len(visible) else str(index),
                     device_name=torch.cuda.get_device_name(index))
    return where


@dataclass
class Group:
    """A comparison group's cases that have no row yet, and the companions timed with them (see ``run_sweep``)."""

    cases: list[Any]
    companions: list[Any]


GroupRunner = Callable[[Sequence[Any], RunContext, Sequence[Any]], list[dict[str, Any]]]
# Runs the groups it pulls from an iterator and yields each with its rows as it completes. It pulls a group
# only when it can start it, so that a sweep that stops (the iterator ends) starts nothing more.
Executor = Callable[[Iterator[Group], GroupRunner, RunContext], Iterator[tuple[Group, list[dict[str, Any]]]]]


@dataclass(frozen=True)
class RetryNoisy:
    """A group runner that re-times a group's noisy cases, beside their references, up to ``retries`` more
    times, and keeps each case's last row (``--retry-noisy``): noise on a shared machine comes and goes, and a
    later attempt is as fair a measurement as the first, not a chosen one. A re-timed row says so."""

    run: GroupRunner
    retries: int

    def __call__(self, cases: Sequence[Any], ctx: RunContext, companions: Sequence[Any] = ()) -> list[dict[str, Any]]:
        rows = {case.key: row for case, row in zip(cases, self.run(cases, ctx, companions))}
        for attempt in range(1, self.retries + 1):
            noisy = [case for case in cases if rows[case.key]["status"] == "noisy"]
            if not noisy:
                break
            keys = {case.key for case in noisy}
            references = {reference_case(case).key: reference_case(case) for case in noisy}
            again = self.run(noisy, ctx, [case for key, case in references.items() if key not in keys])
            for case, row in zip(noisy, again):
                note = f"re-timed {attempt}× (--retry-noisy): the earlier attempts were noisy"
                rows[case.key] = {**row, "status_detail": "; ".join(filter(None, [note, row.get("status_detail")]))}
        return [rows[case.key] for case in cases]


def run_here(run: GroupRunner, group: Group, ctx: RunContext) -> list[dict[str, Any]]:
    """``run``'s rows for ``group`` in this process, each saying where it ran (``placement``)."""
    where = placement(group.cases[0].device)
    rows = run(group.cases, replace(ctx, device_name=where["device_name"]), group.companions)
    return [{**row, **where} for row in rows]


def in_process(groups: Iterator[Group], run: GroupRunner, ctx: RunContext) -> Iterator[tuple[Group, list[dict]]]:
    """``run_sweep``'s default executor: one group after the other, in this process."""
    for group in groups:
        yield group, run_here(run, group, ctx)


def run_sweep(cases: Sequence[Any], ctx: RunContext, results_path: Path,
              progress: Callable[[Any, bool], None] | None = None,
              run: GroupRunner = run_group,
              columns: list[str] = COLUMNS, stop_at: float | None = None,
              groups: Callable[[Sequence[Any]], list[list[Any]]] = comparison_groups,
              starting: Callable[[Sequence[Any]], None] | None = None,
              should_stop: Callable[[], bool] | None = None,
              executor: Executor = in_process) -> tuple[int, int]:
    """Run every case that has no row yet in ``results_path``, appending each row durably.

    Cases are measured in ``groups`` (by default ``comparison_groups``: timed together in paired
    rounds). ``run(cases, ctx, companions)`` makes the rows of a group's cases that have none yet;
    ``companions`` are the references of those cases that already have a row, timed again for the
    pairing. The model suite pairs a model case's backends (``run_model_group``, ``model_groups``,
    ``columns=MODEL_COLUMNS``).
    ``executor`` runs the groups: ``in_process`` one after the other, ``bench.execution.cluster.RayExecutor``
    several at once on a Ray cluster; either way this process alone writes the rows, in the order the
    groups complete, and never a case's row twice.
    ``progress(case, already_done)`` is called once per case with a row: first for every case whose
    row was already there (before any case runs), then for each case once its row is written;
    ``starting(cases)`` just before a group's cases start. No group starts once ``time.monotonic()``
    passes ``stop_at`` or ``should_stop()`` is true (the groups running then finish and are written):
    its cases have no row, so a resume runs them.
    Returns (cases run now, cases skipped because a row for them was already there).
    """
    writer = ResultsWriter(results_path, columns)  # first: it cuts a half-written last row
    written = completed_case_keys(results_path)
    skipped = 0
    for case in cases:
        if case.key in written:
            skipped += 1
            if progress is not None:
                progress(case, True)

    def pending() -> Iterator[Group]:
        for members in groups(cases):
            todo = [case for case in members if case.key not in written]
            if not todo:
                continue
            if (stop_at is not None and time.monotonic() >= stop_at) or (should_stop is not None and should_stop()):
                return  # out of time, or interrupted: no row, so a resume runs them
            todo_keys = {case.key for case in todo}
            companions = [case for case in members if case.key in written and case.key not in todo_keys
                          and any(reference_case(t).key == case.key for t in todo)]
            if starting is not None:
                starting(todo)
            yield Group(todo, companions)

    ran = 0
    for group, rows in executor(pending(), run, ctx):
        for case, row in zip(group.cases, rows):
            if case.key in written:
                continue  # one row per case, whatever an executor hands back
            writer.append(row)
            written.add(case.key)
            ran += 1
            if progress is not None:
                progress(case, False)
    return ran, skipped
