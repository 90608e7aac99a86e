"""The model suite (``run_bench.py --suite models``): whole backbones of ``attentions.models``.

Cases are model × attention choice × backend × resolution (image side, pixels) × batch × dtype ×
phase. The BiFormer and NAT models run with their own attention; ``swin_layout``, the comparison backbone,
with every attention choice asked for. Everything about a model comes from ``attentions.models``
(``list_models``, ``build_model``) and its attention modules' registry interface.

Policies (documented in the README):

- **Resolutions**: 224² (classification) and 512², 1024² (dense prediction); BRA pads the stage
  maps its 7×7 regions do not divide (``auto_pad``, a no-op at 224²).
- **Batch**: the profile's default batch at 224² and below, 1 above, unless ``--batch`` is given.
- **Mode**: ``fwd`` in eval mode under ``torch.inference_mode``; ``fwd+bwd`` in training mode (BatchNorm
  on batch statistics), gradients of the input and every parameter.
- **FLOPs**: fvcore's MACs of one image's forward in eval mode, the convention of the published
  figures, counted once per model, attention choice and resolution.
- **Timing**: the backends of one model case in paired rounds, each row with its speedup over the
  reference backend (the attention family's, ``torch``) and a confidence interval, noisy by the
  attention suite's rules.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from typing import Any, Callable, Sequence

import pandas as pd
import torch

import attentions
from attentions import AttentionConfigError, BackendUnavailableError
from attentions.models import build_model, list_models

from bench.core.compilation import counting_compiles, first_compiled_pass, fresh_compiler
from bench.core.flops import hardware_flops
from bench.core.measure import Timing, make_pass, peak_memory_bytes, time_rounds
from bench.core.profiles import DTYPES, GpuProfile
from bench.schema.labels import backend_labels
from bench.schema.columns import EAGER, MODEL_COLUMNS
from bench.suites.base import PlanError, RunContext, SuiteRecord
from bench.suites.cases import PHASES, ModelCase
from bench.suites.planning import check_input_fits, check_known, summary_cell, text_table
from bench.suites.rows import (MB, compiled_reference, count_macs_any_backend, failure, free_memory,
                               process_settings, recompiled_error, stamped, timing_row)

COMPARISON_MODEL = "swin_layout"  # the backbone whose attention the suite swaps
MODEL_RESOLUTIONS = (224, 512, 1024)
CLASSIFICATION_RESOLUTION = 224


def default_model_batch(resolution: int, profile: GpuProfile) -> int:
    return profile.default_batch if resolution <= CLASSIFICATION_RESOLUTION else 1


def model_cases(models: list[str], choices: list[str], backends: list[str], resolutions: list[int],
                batches: list[int] | None, dtypes: list[str], phases: list[str], device: str,
                profile: GpuProfile, compile_modes: Sequence[str] = (EAGER,)) -> list[ModelCase]:
    """Every case of the sweep, in order: the BiFormer and NAT models with their own attention, the comparison
    backbone with each of ``choices``, each in every compile mode."""
    described = list_models()
    cases = []
    for model in models:
        own = [described[model]["options"]["attention"]]
        for attention, resolution in itertools.product(choices if model == COMPARISON_MODEL else own, resolutions):
            for batch, dtype, backend, phase, mode in itertools.product(
                    batches or [default_model_batch(resolution, profile)], dtypes, backends, phases, compile_modes):
                cases.append(ModelCase(model, attention, backend, batch, resolution, dtype, device, phase, mode))
    return cases


def base_model_row(case: ModelCase, ctx: RunContext) -> dict[str, Any]:
    return {
        "model": case.model, "attention": case.attention, "backend": case.backend, "resolution": case.resolution,
        "batch": case.batch, "dtype": case.dtype, "phase": case.phase, "options": case.options_json,
        "device": case.device, "device_name": ctx.device_name, "gpu_profile": ctx.profile.name, "seed": ctx.seed,
        "run_id": ctx.run_id, "case_key": case.key, "compile": case.compile,
    }


def check_backend(model: torch.nn.Module, case: ModelCase) -> None:
    """Raise BackendUnavailableError unless every attention family of the model can run the case's backend."""
    for family in sorted({module.family for module in model.attention_modules()}):
        ok, reason = attentions.backend_available(family, case.backend, case.device,
                                                  backward=case.phase == "fwd+bwd", dtype=DTYPES[case.dtype])
        if not ok:
            raise BackendUnavailableError(f"'{family}': {reason}")


def padding_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds that the model's attention modules spend on padding in a forward on ``x``: each one's
    ``macs`` less its ``useful_macs`` at the map it is given (BRA's auto_pad; zero where nothing is padded)."""
    seen: list[tuple[attentions.AttentionModule, torch.Size]] = []
    hooks = [module.register_forward_pre_hook(lambda module, args: seen.append((module, args[0].shape)))
             for module in model.modules() if isinstance(module, attentions.AttentionModule)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(module.macs(*shape[:3]).total - module.useful_macs(*shape[:3]).total for module, shape in seen)


def count_model_macs(case: ModelCase, model: torch.nn.Module, x: torch.Tensor,
                     ctx: RunContext) -> tuple[int, int, str]:
    """fvcore MACs of one image's forward in eval mode, the same without what padding costs (the real
    maps' MACs, which throughput figures count), and a note on how they were counted."""
    key = ("model", case.model, case.options_json, case.resolution)
    if key not in ctx._mac_cache:
        training = model.training
        model.eval()
        try:
            counted, _, note = count_macs_any_backend(model, x[:1], case.backend)
            ctx._mac_cache[key] = (counted, counted - padding_macs(model, x[:1]), note)
        finally:
            model.train(training)
    return ctx._mac_cache[key]


def prepare_model_case(case: ModelCase, ctx: RunContext) -> tuple[dict[str, Any], Callable[[], object], int]:
    """Everything of one model case but its latency: the row so far (parameters, FLOPs, peak memory), the
    pass to time and its MACs on the real maps at the case's batch. Exceptions propagate (``failure`` makes them
    a status)."""
    device, dtype = torch.device(case.device), DTYPES[case.dtype]
    torch.manual_seed(ctx.seed)
    model = build_model(case.model, **case.options_dict)
    check_backend(model, case)
    model.backend = case.backend
    model = model.to(device=device, dtype=dtype).train(case.phase == "fwd+bwd")
    generator = torch.Generator(device="cpu").manual_seed(ctx.seed + 1)
    x = torch.randn(case.batch, 3, case.resolution, case.resolution, generator=generator).to(device, dtype)
    classes = list_models()[case.model]["options"]["num_classes"]
    grad_out = torch.randn(case.batch, classes, generator=generator).to(device, dtype)
    params = list(model.parameters())
    row: dict[str, Any] = {
        "params_m": sum(p.numel() for p in params) / 1e6,
        "param_mb": sum(p.numel() * p.element_size() for p in params) / MB,
        "input_mb": x.numel() * x.element_size() / MB,
    }
    macs, unpadded, note = count_model_macs(case, model, x, ctx)
    row.update(gmacs_per_image=macs / 1e9, gmacs_per_image_unpadded=unpadded / 1e9,
               hw_gflops=hardware_flops(macs * case.batch, case.phase) / 1e9)
    notes = [note] * bool(note)
    if case.compile != EAGER:  # the whole backbone
        model, compiled = first_compiled_pass(model, case.compile, lambda m: make_pass(m, x, case.phase, grad_out),
                                              device, ctx.compile_time_left())
        row.update(compiled.row())
        notes += [compiled.note()] * bool(compiled.note())
    row["status_detail"] = "; ".join(notes)
    run = make_pass(model, x, case.phase, grad_out)
    run()  # first call outside the measurements: lazy init, compilation
    row["peak_mem_mb"] = peak_memory_bytes(run, device) / MB
    return row, run, unpadded * case.batch


def run_model_group(cases: Sequence[ModelCase], ctx: RunContext,
                    companions: Sequence[ModelCase] = ()) -> list[dict[str, Any]]:
    """``run_sweep``'s ``run`` for the model suite: one row per case, whatever happens to each. The backends
    of one model case (``model_groups``), and the ``companions`` (references timed again for their cases'
    speedups), are timed together in paired rounds, as the attention suite's shapes are: each row has
    its speedup over the reference backend with an interval, and is noisy by the same rules."""
    try:
        process_settings(ctx).apply()
    except ImportError as exc:
        return [stamped({**base_model_row(case, ctx), **failure(exc)}) for case in cases]
    device = torch.device(cases[0].device)
    rows: dict[str, dict[str, Any]] = {}
    prepared: dict[str, tuple[dict[str, Any], Callable[[], object], int]] = {}
    if any(case.compile != EAGER for case in [*cases, *companions]):
        fresh_compiler(device)
    for case in [*cases, *companions]:
        try:
            row, run, macs = prepare_model_case(case, ctx)
            prepared[case.key] = ({**base_model_row(case, ctx), **row}, run, macs)
        except Exception as exc:  # noqa: BLE001 - recorded as the case's status; the group goes on
            rows[case.key] = {**base_model_row(case, ctx), **failure(exc)}
            free_memory(case.device)
    counted = {key: counting_compiles(run) for key, (_, run, _) in prepared.items()}
    timings = time_rounds({key: run for key, (run, _) in counted.items()}, device, ctx.timing)
    by_key = {case.key: case for case in [*cases, *companions]}
    recompiles = {key: count[0] for key, (_, count) in counted.items()}
    for key, (row, _, macs) in prepared.items():
        case, timing = by_key[key], timings[key]
        reference = timings.get(reference_case(case).key)
        paired = isinstance(reference, Timing) and reference_case(case).key != key
        compiled = compiled_reference(case, {by_key[k]: timings[k] for k in prepared if not recompiles[k]},
                                      reference_case)
        if case.compile != EAGER:
            row["recompiles"] = recompiles[key]
        try:
            if isinstance(timing, Exception):
                raise timing
            if recompiles[key]:
                raise recompiled_error(recompiles[key])
            timed, noise, notes = timing_row(timing, reference if paired else None, case.batch, macs, case.phase,
                                             case.dtype, case.device, ctx, compiled)
            rows[key] = {**row, **timed, "status": "noisy" if noise else "ok",
                         "status_detail": "; ".join(noise + [row["status_detail"]] * bool(row["status_detail"])
                                                    + notes)}
        except Exception as exc:  # noqa: BLE001 - as above
            rows[key] = {**row, **failure(exc)}
    prepared.clear()
    free_memory(device.type)
    return [stamped(rows[case.key]) for case in cases]


def run_model_case(case: ModelCase, ctx: RunContext) -> dict[str, Any]:
    """One row for one model case, timed alone."""
    return run_model_group([case], ctx)[0]


def model_groups(cases: Sequence[ModelCase]) -> list[list[ModelCase]]:
    """``run_sweep``'s ``groups`` for the model suite: the backends of one model, attention choice, resolution,
    batch, dtype, device and phase, in the order of their first case."""
    groups: dict[tuple, list[ModelCase]] = {}
    for case in cases:
        groups.setdefault((case.model, case.attention, case.resolution, case.batch, case.dtype, case.device,
                           case.phase), []).append(case)
    return list(groups.values())


def reference_case(case: ModelCase) -> ModelCase:
    """The same model case on the reference backend of its first attention family, eager."""
    family = case.attention.split(",")[0]
    return replace(case, backend=attentions.list_attentions()[family]["reference_backend"], compile=EAGER)


def check_model_configurations(cases: Sequence[ModelCase], profile: GpuProfile) -> None:
    """Every model and attention choice built on the meta device, asked whether it takes its case's image size,
    and every input checked against the device's memory: PlanError naming a bad value."""
    built: dict[tuple[str, str], torch.nn.Module] = {}
    for case in cases:
        check_input_fits(case.label(), (case.batch, 3, case.resolution, case.resolution), case.dtype, profile)
        try:
            with torch.device("meta"):
                if (case.model, case.attention) not in built:
                    built[case.model, case.attention] = build_model(case.model, **case.options_dict)
                built[case.model, case.attention].check_image(torch.empty(1, 3, case.resolution, case.resolution))
        except AttentionConfigError as exc:
            raise PlanError(f"{case.model} ({case.attention}) at {case.resolution}×{case.resolution} px: "
                            f"{exc}") from None


def model_summary_table(frame: pd.DataFrame) -> str:
    """One line per model case: parameters, GMACs per image, and latency and memory (or the status)."""
    if frame.empty:
        return "(no rows)"
    shown = frame.assign(result=frame.apply(summary_cell, axis=1), params_m=frame["params_m"].map("{:.2f}".format),
                         backend=backend_labels(frame),
                         gmacs_per_image=frame["gmacs_per_image"].map("{:.4g}".format))
    return text_table(shown[["model", "attention", "backend", "resolution", "batch", "dtype", "phase", "params_m",
                             "gmacs_per_image", "result"]])


def plan(request: argparse.Namespace, device: str, profile: GpuProfile) -> list[ModelCase]:
    """The model cases the sweep's flags ask for, checked."""
    models = list(list_models())
    check_known("--models", request.models, models)
    families = list(attentions.list_attentions())
    for choice in request.attentions or []:
        names = choice.split(",")
        if len(names) not in (1, 4) or any(name not in families for name in names):
            raise PlanError(f"--attentions: {choice!r} is not a family or four comma-separated families; "
                            f"families: {', '.join(families)}")
    check_known("--backends", request.backends,
                sorted({b for info in attentions.list_attentions().values() for b in info["backends"]}))
    cases = model_cases(request.models or models, request.attentions or families, request.backends or ["torch"],
                        request.resolutions or list(MODEL_RESOLUTIONS), request.batch,
                        request.dtype or [profile.default_dtype], request.phase or list(PHASES), device, profile,
                        list(dict.fromkeys(request.compile or [EAGER])))
    check_model_configurations(cases, profile)
    return cases


# Whole backbones of attentions.models: a case is a model with an attention choice on one backend, at one image
# size, batch, dtype and phase.
MODEL_SUITE = SuiteRecord(
    name="models", flags=frozenset({"models", "attentions"}), uses_presets=False,
    pairing="paired: a model case's backends round-robin in one process", columns=MODEL_COLUMNS, plan=plan,
    groups=model_groups, run_group=run_model_group, base_row=base_model_row, reference_case=reference_case,
    summary=model_summary_table)
