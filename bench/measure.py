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
  norm-relative error ‖a − b‖ / ‖b‖, the latter judged against a tolerance per dtype.
"""

from __future__ import annotations

import contextlib
import copy
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


def make_pass(module: torch.nn.Module, x: torch.Tensor, phase: str,
              grad_out: torch.Tensor | None) -> Callable[[], list[torch.Tensor]]:
    """A closure running one measured pass; it returns the output and, for fwd+bwd, the gradients."""
    if phase == "fwd":
        def forward() -> list[torch.Tensor]:
            with torch.inference_mode():
                return [module(x)]
        return forward

    leaf = x.detach().requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]

    def forward_backward() -> list[torch.Tensor]:
        out = module(leaf)
        grads = torch.autograd.grad(out, [leaf, *params], grad_out, allow_unused=True)
        return [out.detach()] + [torch.zeros_like(t) if g is None else g for t, g in zip([leaf, *params], grads)]
    return forward_backward


def compare(results: list[torch.Tensor], reference: list[torch.Tensor]) -> tuple[float, float]:
    """Max absolute error and the worst norm-relative error over matching tensors.

    ``results[0]`` is the output, judged against its own norm. The gradients follow; each is judged
    against its own norm or 1e-3 of the largest gradient norm, whichever is larger, so that a
    gradient that is zero in exact arithmetic (a key bias under softmax, say) is not judged on
    rounding noise alone.
    """
    norms = [want.double().norm().item() for want in reference]
    gradient_scale = max(norms[1:], default=0.0)
    max_abs, rel = 0.0, 0.0
    for index, (got, want) in enumerate(zip(results, reference)):
        diff = got.double() - want.double()
        max_abs = max(max_abs, diff.abs().max().item())
        floor = 1e-3 * gradient_scale if index else 0.0
        rel = max(rel, diff.norm().item() / max(norms[index], floor, 1e-300))
    return max_abs, rel


def error_against_reference(module: torch.nn.Module, reference_backend: str, x: torch.Tensor, phase: str,
                            grad_out: torch.Tensor | None) -> tuple[float, float]:
    """Run the module and a reference-backend copy of it on the same input; compare everything."""
    reference = copy.deepcopy(module)
    reference.backend = reference_backend
    expected = make_pass(reference, x, phase, grad_out)()
    del reference
    got = make_pass(module, x, phase, grad_out)()
    return compare(got, expected)


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
