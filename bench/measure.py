"""Measurements of one pass: error against the reference, latency and peak memory.

- **Passes.** ``fwd`` runs under ``torch.inference_mode`` (no autograd state kept), the way a
  forward is deployed. ``fwd+bwd`` runs the forward and ``torch.autograd.grad`` of a fixed random
  upstream gradient with respect to the input and every parameter.
- **Latency.** Warm-up rounds first (compilation, caches, allocator). Then every round is timed
  on its own: CUDA events on a GPU, ``time.perf_counter`` on the CPU. Rounds continue until both a
  minimum time and a minimum number of rounds are reached, or a maximum count is.
- **Memory.** On CUDA, the allocator's peak during one pass minus what was allocated before it.
  On the CPU, the PyTorch profiler's allocation events during one pass: the peak of the running
  sum of bytes allocated minus freed by PyTorch's CPU allocator (kernel workspaces included,
  Python objects and memory from other allocators not).
- **Error.** Output, and for fwd+bwd every gradient, of the case's backend against the family's
  reference backend on a copy of the same module and the same input: max absolute error and the
  norm-relative error ‖a − b‖ / ‖b‖, the latter judged against a tolerance per dtype. Non-finite
  values (NaN, ±inf) are counted, never compared: any makes both errors inf; one in the case's
  tensors where the reference's value is finite makes the case a mismatch, and a reference with any
  cannot judge the case (``NonFiniteReferenceError``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

# Norm-relative tolerance per dtype for a backend against the reference in the same dtype.
ERROR_TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


@dataclass(frozen=True)
class TimingPolicy:
    warmup_rounds: int = 3
    min_time_s: float = 0.5
    min_rounds: int = 10
    max_rounds: int = 1000


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    rounds: int


class NonFiniteReferenceError(RuntimeError):
    """The reference backend's own output or gradients hold NaN/inf: there is nothing to judge a case against."""


@dataclass(frozen=True)
class ErrorMeasurement:
    """A case's output and gradients against the reference's.

    ``max_abs`` and ``rel`` are inf when a compared tensor holds a non-finite value: a NaN has no
    distance to report, and inf (rather than an empty cell, which means "not measured") keeps it
    beyond every tolerance and never a small number. ``nonfinite`` maps each tensor to its count of
    NaN/inf values where the reference's value is finite (only tensors that have some).
    """

    max_abs: float
    rel: float
    nonfinite: dict[str, int]

    def mismatch_reason(self, tolerance: float, dtype: str) -> str | None:
        """Why the case is a mismatch at this tolerance, or None when every tensor is finite and within it."""
        if self.nonfinite:
            return (f"{_total(self.nonfinite)} in the output/gradients where the reference has none "
                    f"({_per_tensor(self.nonfinite)})")
        if not self.rel <= tolerance:  # written so that a NaN could never pass
            return f"rel_err {self.rel:.3g} > tolerance {tolerance:g} for {dtype}"
        return None


def nonfinite_counts(names: list[str], tensors: list[torch.Tensor],
                     reference: list[torch.Tensor] | None = None) -> dict[str, int]:
    """Per named tensor, its NaN/inf values (only where ``reference``'s are finite, if given); tensors
    without any are left out."""
    counts: dict[str, int] = {}
    for index, (name, tensor) in enumerate(zip(names, tensors)):
        bad = ~tensor.isfinite()
        if reference is not None:
            bad &= reference[index].isfinite()
        count = int(bad.sum())
        if count:
            counts[name] = count
    return counts


def _total(counts: dict[str, int]) -> str:
    """'3 non-finite values (NaN/inf)': the total of ``counts``, for a status_detail."""
    total = sum(counts.values())
    return f"{total} non-finite value{'' if total == 1 else 's'} (NaN/inf)"


def _per_tensor(counts: dict[str, int]) -> str:
    """'output 3, gradient of proj.weight 1': where the non-finite values are, for a status_detail."""
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def trainable_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters a fwd+bwd pass differentiates, with their names, in ``make_pass``'s order."""
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def pass_tensor_names(module: torch.nn.Module, phase: str) -> list[str]:
    """Names of the tensors ``make_pass`` returns, in its order."""
    if phase == "fwd":
        return ["output"]
    return ["output", "input gradient", *(f"gradient of {name}" for name, _ in trainable_parameters(module))]


def make_pass(module: torch.nn.Module, x: torch.Tensor, phase: str,
              grad_out: torch.Tensor | None) -> Callable[[], list[torch.Tensor]]:
    """A closure running one measured pass; it returns the output and, for fwd+bwd, the gradients."""
    if phase == "fwd":
        def forward() -> list[torch.Tensor]:
            with torch.inference_mode():
                return [module(x)]
        return forward

    leaf = x.detach().requires_grad_(True)
    params = [p for _, p in trainable_parameters(module)]

    def forward_backward() -> list[torch.Tensor]:
        out = module(leaf)
        grads = torch.autograd.grad(out, [leaf, *params], grad_out, allow_unused=True)
        return [out.detach()] + [torch.zeros_like(t) if g is None else g for t, g in zip([leaf, *params], grads)]
    return forward_backward


def compare(results: list[torch.Tensor], reference: list[torch.Tensor],
            names: list[str] | None = None) -> ErrorMeasurement:
    """Max absolute error, the worst norm-relative error and the non-finite values over matching tensors.

    ``results[0]`` is the output, judged against its own norm. The gradients follow; each is judged
    against its own norm or 1e-3 of the largest gradient norm, whichever is larger, so that a
    gradient that is zero in exact arithmetic (a key bias under softmax, say) is not judged on
    rounding noise alone. ``names`` label the tensors in ``nonfinite`` (default: 'tensor <index>').
    A non-finite value on either side makes both errors inf: NaN never enters a norm or a maximum,
    where it would turn the result into NaN or, in Python's ``max``, silently lose.
    """
    names = names or [f"tensor {index}" for index in range(len(results))]
    nonfinite = nonfinite_counts(names, results, reference)
    if nonfinite or nonfinite_counts(names, reference):  # any NaN/inf of the results is in one of the two
        return ErrorMeasurement(math.inf, math.inf, nonfinite)

    norms = [want.double().norm().item() for want in reference]
    gradient_scale = max(norms[1:], default=0.0)
    max_abs, rel = 0.0, 0.0
    for index, (got, want) in enumerate(zip(results, reference)):
        diff = got.double() - want.double()
        max_abs = max(max_abs, diff.abs().max().item())
        floor = 1e-3 * gradient_scale if index else 0.0
        rel = max(rel, diff.norm().item() / max(norms[index], floor, 1e-300))
    return ErrorMeasurement(max_abs, rel, nonfinite)


def reference_pass(module: torch.nn.Module, reference_backend: str, x: torch.Tensor, phase: str,
                   grad_out: torch.Tensor | None) -> list[torch.Tensor]:
    """The pass of the module on its reference backend (on a copy, unless it runs that backend already);
    raises ``NonFiniteReferenceError`` naming the backend and the counts when its output or gradients hold
    NaN/inf."""
    if module.backend != reference_backend:
        module = copy.deepcopy(module)
        module.backend = reference_backend
    expected = make_pass(module, x, phase, grad_out)()
    bad = nonfinite_counts(pass_tensor_names(module, phase), expected)
    if bad:
        raise NonFiniteReferenceError(
            f"reference backend '{reference_backend}' gives {_total(bad)} in its output/gradients "
            f"({_per_tensor(bad)}): the case cannot be judged")
    return expected


def error_against_reference(module: torch.nn.Module, reference_backend: str, x: torch.Tensor, phase: str,
                            grad_out: torch.Tensor | None) -> ErrorMeasurement:
    """Run the module and a reference-backend copy of it on the same input; compare everything.

    Raises ``NonFiniteReferenceError`` when the reference's own tensors hold NaN/inf.
    """
    expected = reference_pass(module, reference_backend, x, phase, grad_out)
    got = make_pass(module, x, phase, grad_out)()
    return compare(got, expected, pass_tensor_names(module, phase))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pass(run: Callable[[], object], device: torch.device, policy: TimingPolicy) -> Timing:
    """Median and spread of per-round latency, timed as the module docstring says."""
    for _ in range(policy.warmup_rounds):
        run()
    synchronize(device)
    times_ms: list[float] = []
    started = time.perf_counter()
    while len(times_ms) < policy.max_rounds:
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run()
            end.record()
            end.synchronize()
            times_ms.append(begin.elapsed_time(end))
        else:
            begin_s = time.perf_counter()
            run()
            times_ms.append((time.perf_counter() - begin_s) * 1e3)
        if len(times_ms) >= policy.min_rounds and time.perf_counter() - started >= policy.min_time_s:
            break
    p20, _, _, p80 = statistics.quantiles(times_ms, n=5, method="inclusive")
    return Timing(statistics.median(times_ms), p20, p80, len(times_ms))


@contextlib.contextmanager
def _stderr_silenced():
    """Mute file descriptor 2: the profiler's C++ side logs its start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during one pass above what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak
