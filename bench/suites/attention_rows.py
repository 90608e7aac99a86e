"""The attention suite's cases measured into rows: one module per case built from the registry by name,
its accuracy against float64, its FLOPs (fvcore, cross-checked with the family's ``macs()``), peak memory,
and its latency in paired rounds with every case of its shape (``comparison_groups``), in one sitting or
more (each later one in a fresh process). One bad case never ends a group: it becomes a row with status
``unsupported``, ``oom`` or ``error``."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

import attentions
from attentions import BackendUnavailableError

from bench.core.accuracy import Accuracy, ReferencePasses, accuracy, reference_passes
from bench.core.compilation import CompileInfo, counting_compiles, first_compiled_pass, fresh_compiler
from bench.core.flops import FlopCounterUnavailable, hardware_flops
from bench.core.measure import (Timing, TimingPolicy, machine_state, make_pass, peak_memory_bytes, time_rounds,
                                uncompiled)
from bench.core.processes import STOPPING_SIGNALS, Stopped, die_with
from bench.core.profiles import DTYPES
from bench.core.settings import ProcessSettings
from bench.suites.base import RunContext
from bench.suites.cases import Case
from bench.schema.columns import EAGER
from bench.suites.rows import (MB, compiled_reference, count_macs_any_backend, failure, free_memory, is_oom,
                               process_settings, recompiled_error, stamped, timing_row)

FLOP_TOLERANCE = 0.01  # fvcore and macs() must agree within 1%


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
        "compile": case.compile,
    }


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
    module: torch.nn.Module  # compiled, for a compiled case
    x: torch.Tensor
    grad_out: torch.Tensor
    macs: int  # on the real (unpadded) map: what throughput figures count
    notes: list[str]
    mismatch: str | None  # why the error check failed, or None
    compiles_during_timing: list[int] = field(default_factory=lambda: [0])  # see counting_compiles

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
                references[key] = (images, reference_passes(uncompiled(module), x[:images], case.phase,
                                                            grad_out[:images]))
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
    if case.compile != EAGER:
        module, compiled = compile_case(case, module, x, grad_out, ctx.compile_time_left())
        row.update(compiled.row())
        notes += [compiled.note()] * bool(compiled.note())
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
    macs, row["flops_check"], flop_note = count_case_macs(case, uncompiled(module), x, ctx)
    if flop_note:
        notes.append(flop_note)
    unpadded = macs - (analytic.total - module.useful_macs(case.batch, case.resolution, case.resolution).total)
    row.update(gmacs=macs / 1e9, gmacs_unpadded=unpadded / 1e9, hw_gflops=hardware_flops(macs, case.phase) / 1e9)
    prepared = Prepared(case, row, module, x, grad_out, unpadded, notes, mismatch)
    run = prepared.run
    run()  # first call outside the measurements: lazy init, compilation
    row["peak_mem_mb"] = peak_memory_bytes(run, device) / MB
    return prepared


def compile_case(case: Case, module: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor,
                 limit_s: float | None) -> tuple[torch.nn.Module, CompileInfo]:
    """The case's module compiled in its mode, from a cold first pass of the case (``first_compiled_pass``)."""
    return first_compiled_pass(module, case.compile, lambda compiled: make_pass(compiled, x, case.phase, grad_out),
                               torch.device(case.device), limit_s)


def finish_case(prepared: Prepared, timing: Timing, reference: Timing | None, compiled: tuple[str, Timing] | None,
                ctx: RunContext) -> dict[str, Any]:
    """The rest of a prepared case's row from its timing (and its references', from the same rounds: the
    eager one and the ``compiled`` one, labelled): latency, its speedups over them with confidence intervals,
    the backend's own metrics, and the status: mismatch when the error check failed, noisy when ``timing_row``
    finds it noise, error when it compiled during timing."""
    case, recompiles = prepared.case, prepared.compiles_during_timing[0]
    if case.compile != EAGER:
        prepared.row["recompiles"] = recompiles  # the failure row below is built from prepared.row too
    row = dict(prepared.row)
    if recompiles:
        raise recompiled_error(recompiles)
    timed, noise, notes = timing_row(timing, reference, case.batch, prepared.macs, case.phase, case.dtype,
                                     case.device, ctx, compiled)
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


def configuration_key(case: Case) -> tuple:
    """What a case shares with its reference: everything but the backend."""
    return (case.family, case.options_json, case.batch, case.resolution, case.dim, case.heads, case.dtype,
            case.device, case.phase)


def reference_case(case: Case) -> Case:
    """The same case on its family's reference backend, eager."""
    return replace(case, backend=attentions.list_attentions()[case.family]["reference_backend"], compile=EAGER)


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
    if any(case.compile != EAGER for case in [*cases, *companions]):
        fresh_compiler(device)
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
    timings = time_rounds({key: timed_run(p) for key, p in prepared.items()}, device, ctx.timing)
    step(passes)
    for _ in range(1, ctx.timing.sittings):
        timed = [p.case for key, p in prepared.items() if isinstance(timings[key], Timing)]
        if timed:
            settings = process_settings(ctx, torch.get_num_threads())
            later = sitting_in_fresh_process(timed, ctx.seed, ctx.timing, settings)
            timings.update({case.key: timings[case.key].joined(later[case.key])
                            if isinstance(later[case.key], Timing) else later[case.key] for case in timed})
        step(passes)
    after = machine_state(device)
    for key, item in prepared.items():
        timing = timings[key]
        reference = timings.get(reference_case(item.case).key)
        paired = isinstance(reference, Timing) and reference_case(item.case).key != key
        compiled = compiled_reference(item.case, {other.case: timings[other.case.key] for other in prepared.values()
                                                  if other.mismatch is None and not other.compiles_during_timing[0]},
                                      reference_case)
        try:
            if isinstance(timing, Exception):
                raise timing
            rows[key] = finish_case(item, timing, reference if paired else None, compiled, ctx)
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


def timed_run(prepared: Prepared) -> Callable[[], list[torch.Tensor]]:
    """The prepared case's pass as timed: a compiled one counts what dynamo compiles during its calls."""
    if prepared.case.compile == EAGER:
        return prepared.run
    run, prepared.compiles_during_timing = counting_compiles(prepared.run)
    return run


def run_case(case: Case, ctx: RunContext) -> dict[str, Any]:
    """One row for one case, timed alone."""
    return run_group([case], ctx)[0]


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
        runs, compiles = {}, {}
        if any(case.compile != EAGER for case in cases):
            fresh_compiler(torch.device(cases[0].device))
        for case in cases:
            module, x, grad_out = build_module(case, seed, inputs)
            if case.compile != EAGER:
                module, _ = compile_case(case, module, x, grad_out, None)
            runs[case.key], compiles[case.key] = counting_compiles(make_pass(module, x, case.phase, grad_out))
        results = time_rounds(runs, torch.device(cases[0].device), policy)
        return {key: recompiled_error(compiles[key][0]) if compiles[key][0]
                else result if isinstance(result, Timing) else RuntimeError(f"{type(result).__name__}: {result}")
                for key, result in results.items()}
    except Exception as exc:  # noqa: BLE001 - the sitting's failure, reported to the sweep
        return RuntimeError(f"{type(exc).__name__}: {exc}")
