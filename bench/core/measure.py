"""Measurements of one pass: error against the reference, latency and peak memory.

- **Passes.** ``fwd`` runs under ``torch.inference_mode`` (no autograd state kept), the way a
  forward is deployed. ``fwd+bwd`` runs the forward and ``torch.autograd.grad`` of a fixed random
  upstream gradient with respect to the input and every parameter.
- **Latency.** A warm-up first (compilation, caches, allocator, clocks): at least three calls, then
  until three consecutive calls lie within the device's noise limit of each other, at most 50 calls
  or 10 s (``warm_up``; each row records its warm-up calls and says when it did not settle). Then
  every round is timed on its own: CUDA events on a GPU (after writing a buffer larger than L2, so
  every pass starts with a cold cache), ``time.perf_counter`` on the CPU. Rounds continue until
  there are a minimum number of them and every pass has had a minimum time of its own timed calls;
  no round count cuts that short unless a policy sets ``max_rounds`` (the row then says so).
- **Paired rounds.** Passes whose latencies are compared run round-robin in one process: in each
  round every pass runs once, each round starting one pass later, so that drift of the machine
  (clocks, load, temperature) lands on all of them alike. A speedup is the median of per-round
  ratios, with a 95% confidence interval by batch means of the log-ratios (``bench.core.statistics``).
  The rounds may be taken in several *sittings*, each in a fresh process (``TimingPolicy.sittings``),
  so that the interval also covers what one process fixes for its lifetime. A median latency gets a
  95% interval by the same method (``statistics.median_interval``): what ``compare`` judges two runs by.
- **CPU memory.** glibc serves a block above its mmap threshold (at most 32 MiB, and moved only
  as blocks are freed) with fresh pages and unmaps it when it is freed, so a pass that allocates
  such blocks pays a page fault for every 4 KiB it touches, on every call, and how many depends on
  what ran before it in the process. The ``retain`` CPU allocator policy (the default on glibc)
  keeps freed memory for reuse instead, as PyTorch's CUDA caching allocator does: a pass then
  costs its computation and memory traffic, not the kernel's page zeroing. Every CPU row records
  the page faults of its passes either way.
- **Noise.** A timing whose spread (p80 / p20), or a speedup whose confidence interval (high /
  low), is wider than the device's limit is noise, not a finding.
- **Memory.** On CUDA, the allocator's peak during one pass minus what was allocated before it.
  On the CPU, the PyTorch profiler's allocation events during one pass: the peak of the running
  sum of bytes allocated minus freed by PyTorch's CPU allocator (kernel workspaces included,
  Python objects and memory from other allocators not).
- **Error.** See ``bench.core.accuracy``: every case against float64 math on the same rounded weights
  and inputs, bounded by its reference backend's own error in the case's dtype.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Hashable

import torch
from torch.profiler import ProfilerActivity, profile

from bench.core.clocks import ClockWatch

# Widest timing spread (p80 / p20) and speedup confidence interval (high / low) that are still a
# measurement on each device type; wider is noise. A shared CPU drifts by tens of percent between
# seconds; a GPU's kernels repeat within a few percent.
NOISE_LIMIT = {"cpu": 1.3, "cuda": 1.1}
MAX_SITTINGS = 10
# How latencies are timed (time_rounds): paired passes in rotating rounds, each after a warm-up until stable.
TIMING_METHOD = "paired-rotating-rounds/warmup-until-stable"


@dataclass(frozen=True)
class TimingPolicy:
    warmup_rounds: int = 3  # at least this many warm-up calls, then more until stable (see warm_up)
    warmup_max_calls: int = 50  # the warm-up's cap, in calls ...
    warmup_max_s: float = 10.0  # ... and in seconds of warm-up calls, whichever comes first
    min_time_s: float = 0.5  # timed seconds each pass gets of its own (per sitting)
    min_rounds: int = 10
    max_rounds: int | None = None  # None: as many rounds as min_time_s needs; a number cuts them (rows say so)
    l2_flush: bool = True  # CUDA: write a buffer larger than L2 before every timed pass
    cuda_graphs: bool = False  # CUDA: time replays of a captured graph of the pass (small shapes)
    cpu_allocator: str | None = None  # CPU: 'retain' or 'system' (see use_cpu_allocator); None: as the process is
    noise_limit: float | None = None  # None: the device type's NOISE_LIMIT
    sittings: int = 1  # paired rounds taken this many times, each later sitting in a fresh process (runner)

    def noise_limit_for(self, device: torch.device) -> float:
        return self.noise_limit if self.noise_limit is not None else NOISE_LIMIT[device.type]


@dataclass(frozen=True)
class Timing:
    """Per-round latencies of one pass (ms, in round order) and a note on how they were taken."""

    times_ms: tuple[float, ...]
    note: str = ""
    page_faults: tuple[int, ...] = ()  # per round, on the CPU: the process's minor page faults during the pass
    sittings: tuple[int, ...] = ()  # rounds per sitting, in order, when taken in more than one
    warmup_calls: int = 0  # warm-up calls before the timed rounds (the most of any sitting)
    warmup_settled: bool = True  # whether every sitting's warm-up settled before its cap
    throttled: str = ""  # GPU: what the clocks did wrong during the rounds (bench.core.clocks), empty when nothing
    clocks: tuple[dict, ...] = ()  # GPU: the clocks' summary of each sitting (ClockWatch.summary)

    def joined(self, later: Timing) -> Timing:
        """This timing followed by a later sitting of the same pass."""
        return Timing(self.times_ms + later.times_ms, self.note or later.note, self.page_faults + later.page_faults,
                      (self.sittings or (self.rounds,)) + (later.rounds,), max(self.warmup_calls, later.warmup_calls),
                      self.warmup_settled and later.warmup_settled,
                      "; ".join(filter(None, (self.throttled, later.throttled))), self.clocks + later.clocks)

    @property
    def timed_s(self) -> float:
        """Seconds of timed passes behind the statistics."""
        return sum(self.times_ms) / 1e3

    @property
    def rounds(self) -> int:
        return len(self.times_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p20_ms(self) -> float:
        return self._quintiles()[0]

    @property
    def p80_ms(self) -> float:
        return self._quintiles()[3]

    @property
    def page_faults_median(self) -> float | None:
        return statistics.median(self.page_faults) if self.page_faults else None

    @property
    def spread(self) -> float:
        """p80 / p20: how far the rounds scatter."""
        return self.p80_ms / self.p20_ms

    def _quintiles(self) -> list[float]:
        if len(self.times_ms) == 1:
            return [self.times_ms[0]] * 4
        return statistics.quantiles(self.times_ms, n=5, method="inclusive")


def uncompiled(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself, or the module that torch.compile wrapped (dynamo keeps it as ``_orig_mod``)."""
    return getattr(module, "_orig_mod", module)


def trainable_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters a fwd+bwd pass differentiates, with their names (a compiled module's as its own), in
    ``make_pass``'s order."""
    return [(name, p) for name, p in uncompiled(module).named_parameters() if p.requires_grad]


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


CPU_ALLOCATORS = ("retain", "system")
RETAINED_BLOCK_LIMIT = 1 << 30  # under 'retain', blocks up to 1 GiB come from the heap and return to it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_cpu_allocator_in_use = "system"  # what this process has applied: 'retain' cannot be undone


def retain_available() -> bool:
    """Whether this process can apply 'retain': it needs glibc's mallopt."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def use_cpu_allocator(policy: str) -> None:
    """Apply a CPU allocator policy to this process (see the module docstring).

    'system' leaves the C library's defaults. 'retain' raises glibc's mmap threshold to 1 GiB and its trim
    threshold to 2 GiB, so that memory a pass frees is reused by the next instead of being returned to
    the kernel and faulted in again. glibc still returns some blocks of passes that need hundreds of MB
    at once: the rows' page faults show where. A process that retains cannot go back: 'system' after 'retain'
    raises rather than time under a policy other than the one it reports."""
    global _cpu_allocator_in_use
    if policy not in CPU_ALLOCATORS:
        raise ValueError(f"CPU allocator policy {policy!r} is not one of {', '.join(CPU_ALLOCATORS)}")
    if policy == _cpu_allocator_in_use:
        return
    if policy == "system":
        raise RuntimeError("this process already retains freed memory (CPU allocator 'retain'); the 'system' "
                           "policy needs a fresh process")
    if not retain_available():
        raise RuntimeError(f"CPU allocator 'retain' needs glibc's mallopt (Linux), not {platform.system()} "
                           f"{platform.libc_ver()[0] or 'without glibc'}; use 'system'")
    libc = ctypes.CDLL("libc.so.6")
    if not (libc.mallopt(_M_MMAP_THRESHOLD, RETAINED_BLOCK_LIMIT) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)):
        raise RuntimeError("glibc's mallopt refused the 'retain' thresholds")
    _cpu_allocator_in_use = "retain"


def minor_page_faults() -> int:
    """Minor page faults of this process (every thread) so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def l2_flusher(device: torch.device) -> Callable[[], None] | None:
    """On CUDA, a function that overwrites a buffer twice the size of the L2 cache."""
    if device.type != "cuda":
        return None
    size = 2 * getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
    buffer = torch.empty(size, dtype=torch.int8, device=device)
    return buffer.zero_


def captured(run: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """The pass captured in a CUDA graph (after a warm-up on a side stream); replays cost one launch."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def timed_once(run: Callable[[], object], device: torch.device,
               flush: Callable[[], None] | None) -> tuple[float, int | None]:
    """Milliseconds of one call of ``run``, and on the CPU the page faults it took."""
    if device.type == "cuda":
        if flush is not None:
            flush()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        run()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end), None
    faults, begin_s = minor_page_faults(), time.perf_counter()
    run()
    return (time.perf_counter() - begin_s) * 1e3, minor_page_faults() - faults


# The warm-up has settled when this many consecutive calls lie within the device's noise limit of each other.
WARMUP_WINDOW = 3


def warm_up(run: Callable[[], object], device: torch.device, policy: TimingPolicy,
            flush: Callable[[], None] | None) -> tuple[int, bool]:
    """Call ``run`` until it is warm: at least ``policy.warmup_rounds`` calls, then until the last
    ``WARMUP_WINDOW`` calls' times lie within the noise limit of each other (slowest ÷ fastest), or the cap
    (``warmup_max_calls`` calls or ``warmup_max_s`` seconds of them) is reached. Compilation, autotuning,
    caches, the allocator and the clocks settle meanwhile. Returns (calls, whether it settled)."""
    limit = policy.noise_limit_for(device)
    cap = max(policy.warmup_rounds, policy.warmup_max_calls)
    times: list[float] = []
    while True:
        times.append(timed_once(run, device, flush)[0])
        recent = times[-WARMUP_WINDOW:]
        settled = len(recent) == WARMUP_WINDOW and max(recent) <= limit * min(recent)
        if len(times) >= policy.warmup_rounds and (settled or len(times) >= cap
                                                    or sum(times) >= policy.warmup_max_s * 1e3):
            return len(times), settled or cap < WARMUP_WINDOW  # a cap below the window is a fixed count


def time_rounds(runs: dict[Hashable, Callable[[], object]], device: torch.device, policy: TimingPolicy,
                watch: ClockWatch | None = None) -> dict[Hashable, Timing | Exception]:
    """Each pass's latencies over paired rounds (see the module docstring); one pass alone is timed
    the same way, unpaired. Each pass is warmed up first (``warm_up``). Rounds go on until there are
    ``min_rounds`` and every pass has ``min_time_s`` seconds of its own timed calls (or ``max_rounds``,
    when set, cuts them). A pass that raises leaves the rotation, and its exception is its result.
    On a GPU the clocks are watched between rounds (``watch``, by default ``ClockWatch.for_device``):
    what they did wrong is every timing's ``throttled``."""
    if device.type == "cpu" and policy.cpu_allocator is not None:
        use_cpu_allocator(policy.cpu_allocator)
    results: dict[Hashable, Timing | Exception] = {}
    active: dict[Hashable, Callable[[], object]] = {}
    notes: dict[Hashable, str] = {}
    warmups: dict[Hashable, tuple[int, bool]] = {}
    flush = l2_flusher(device) if policy.l2_flush else None
    for key, run in runs.items():
        try:
            warmups[key] = warm_up(run, device, policy, flush)
            if policy.cuda_graphs and device.type == "cuda":
                try:
                    run = captured(run, device)
                    notes[key] = "timed as CUDA graph replays"
                except RuntimeError as exc:
                    notes[key] = f"CUDA graph capture failed, timed eagerly: {str(exc).splitlines()[0][:200]}"
            active[key] = run
        except Exception as exc:  # noqa: BLE001 - the pass's own failure, recorded as its result
            results[key] = exc
    synchronize(device)
    watch = watch or ClockWatch.for_device(device)
    if watch is not None:
        watch.sample(force=True)
    order = list(active)
    times: dict[Hashable, list[float]] = {key: [] for key in order}
    faults: dict[Hashable, list[int]] = {key: [] for key in order}
    spent_ms: dict[Hashable, float] = {key: 0.0 for key in order}
    rounds = 0
    while active and (policy.max_rounds is None or rounds < policy.max_rounds):
        for offset in range(len(order)):
            key = order[(rounds + offset) % len(order)]
            if key not in active:
                continue
            try:
                elapsed_ms, pass_faults = timed_once(active[key], device, flush)
                times[key].append(elapsed_ms)
                spent_ms[key] += elapsed_ms
                if pass_faults is not None:
                    faults[key].append(pass_faults)
            except Exception as exc:  # noqa: BLE001 - as in the warm-up
                results[key] = exc
                del active[key]
        rounds += 1
        if watch is not None:
            watch.sample()
        if rounds >= policy.min_rounds and all(spent_ms[key] >= policy.min_time_s * 1e3 for key in active):
            break
    throttled, clocks = "", ()
    if watch is not None:
        watch.sample(force=True)
        throttled, clocks = watch.verdict() or "", (watch.summary(),)
    results.update({key: Timing(tuple(times[key]), notes.get(key, ""), tuple(faults[key]), (), *warmups[key],
                                throttled, clocks) for key in active})
    return results


def timing_notes(timing: Timing, policy: TimingPolicy) -> list[str]:
    """What a row says about how its timing fell short of the policy: a warm-up that never settled, and
    less timed time than ``min_time_s`` per sitting asked for (rounds cut by ``max_rounds``)."""
    notes = []
    if not timing.warmup_settled:
        notes.append(f"warm-up did not settle within {timing.warmup_calls} calls (the last {WARMUP_WINDOW} spread "
                     f"beyond the noise limit)")
    asked = policy.min_time_s * max(1, len(timing.sittings))
    if timing.timed_s < asked:
        notes.append(f"timed {timing.timed_s:.3g} s of the {asked:g} s asked: rounds cut at {timing.rounds}")
    return notes


def machine_state(device: torch.device) -> dict[str, float | None]:
    """The machine's 1-minute load average and, on CUDA, the GPU's SM clock, temperature and power
    (through NVML, when the pynvml module is there)."""
    state: dict[str, float | None] = {"load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        for name, read in (("sm_clock_mhz", torch.cuda.clock_rate), ("temperature_c", torch.cuda.temperature),
                           ("power_w", lambda d: torch.cuda.power_draw(d) / 1e3)):
            try:
                state[name] = float(read(device))
            except Exception:  # noqa: BLE001 - NVML missing or refusing: the reading is simply absent
                state[name] = None
    return state


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
