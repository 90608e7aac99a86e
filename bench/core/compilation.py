"""``torch.compile`` as a measured condition: a module compiled in one of its modes, its cold compile time
(first pass with dynamo reset and Inductor's caches empty), the graphs and graph breaks dynamo made of it, and
the compiles that happen later, during timing (a recompile there means the timing measured compiling).

Failures come as one line: ``CompileError`` (the innermost cause's first line, not dynamo's wrapper and
traceback), ``CompileTimeout`` (past the case's limit) and ``BackendUnavailableError`` (no C++ compiler for
Inductor on the CPU)."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from attentions import BackendUnavailableError


class CompileError(RuntimeError):
    """torch.compile could not compile a module: the innermost cause in one line."""


class CompileTimeout(RuntimeError):
    """A compile ran past its limit."""


@dataclass(frozen=True)
class CompileInfo:
    """What compiling one case took: seconds of its first (cold) pass, graphs and graph breaks, and the first
    graph break's reason (empty without one)."""

    seconds: float
    graphs: int
    graph_breaks: int
    first_break: str = ""

    def row(self) -> dict[str, float | int]:
        return {"compile_s": self.seconds, "graphs": self.graphs, "graph_breaks": self.graph_breaks}

    def note(self) -> str:
        """The row's note on graph breaks (empty without one)."""
        if not self.graph_breaks:
            return ""
        return (f"{self.graph_breaks} graph break{'s' * (self.graph_breaks > 1)} ({self.graphs} graphs), compiled "
                f"without fullgraph; first: {self.first_break}")


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (its own counter)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def graph_breaks() -> tuple[int, str]:
    """Graph breaks dynamo has met in this process so far, and the reason of the first one."""
    reasons = torch._dynamo.utils.counters["graph_break"]
    first = (next(iter(reasons), "").strip().splitlines() or [""])[0]
    return sum(reasons.values()), first[:200]


def innermost(exc: BaseException) -> BaseException:
    """The exception at the bottom of ``exc``'s chain: dynamo wraps a backend's failure (``inner_exception``) and
    re-raises with a cause."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"[:300]


def in_one_line(exc: Exception) -> Exception:
    """A new ``exc`` of the same type with the first line of its message: dynamo appends the user code's stack
    to the exceptions it passes through."""
    return type(exc)((str(exc).strip().splitlines() or [""])[0])


def cpp_compiler() -> str:
    """The C++ compiler CPU Inductor builds its kernels with; BackendUnavailableError where there is none."""
    from torch._inductor import cpp_builder
    try:
        return cpp_builder.get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - Inductor raises its own types, differing across versions
        raise BackendUnavailableError(f"no C++ compiler (Inductor's CPU backend needs one; set CXX to it): "
                                      f"{first_line(exc)}") from None


def cpp_compiler_version() -> str | None:
    """The first line of the C++ compiler's --version, or None where there is none (the run's metadata)."""
    try:
        compiler = cpp_compiler()
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (BackendUnavailableError, OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.splitlines() or [compiler])[0]


@dataclass
class Expiry:
    """The CompileTimeout a ``time_limit`` raised, once it has: dynamo may re-raise it as another type, without
    its cause (InternalTorchDynamoError), and this says what really happened."""

    raised: CompileTimeout | None = None


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[Expiry]:
    """Raise CompileTimeout in the block once ``seconds`` have passed (SIGALRM: only in the main thread;
    elsewhere, and with ``seconds`` None, unlimited); the Expiry yielded keeps it."""
    expiry = Expiry()
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield expiry
        return
    if seconds <= 0:
        raise CompileTimeout("no time left to compile in (--time-budget reached)")

    def expire(signum, frame):
        expiry.raised = CompileTimeout(f"compiling took longer than its limit of {seconds:g} s")
        raise expiry.raised

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield expiry
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def empty_inductor_cache() -> Iterator[None]:
    """Inductor (and Triton) caches in a new, empty folder for the block: what compiles there compiles cold."""
    from torch._inductor.utils import fresh_cache
    # fresh_cache logs its folder, and warns that it keeps it after an error: this one goes with the block
    logging.getLogger("torch._inductor.utils").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="inductor-") as folder, fresh_cache(dir=folder):
        yield


_started: set[str] = set()  # devices this process has compiled for once (fresh_compiler)


def fresh_compiler(device: torch.device) -> None:
    """Dynamo reset, after one tiny compile on ``device`` in this process's life: what every compile pays once
    per process (importing Inductor, starting its workers) is no case's compile time (none on a CPU without a C++
    compiler: there every case is unsupported, and says so). Once per comparison group,
    before its first compile: a reset throws away what was compiled before it, and a group's compiled modules
    must stay compiled until their rounds are timed."""
    if device.type not in _started and (device.type != "cpu" or cpp_compiler_version() is not None):
        x = torch.randn(8, device=device)
        with empty_inductor_cache():
            torch.compile(lambda t: torch.relu(t) + 1, dynamic=False)(x)
        _started.add(device.type)
    torch._dynamo.reset()
    # a group compiles the same forward code once per backend and mode: each a recompile of that code
    torch._dynamo.config.recompile_limit = 256


def compiled(module: torch.nn.Module, mode: str, fullgraph: bool) -> torch.nn.Module:
    """``module`` under torch.compile in ``mode`` (static shapes)."""
    options = {} if mode == "default" else {"mode": mode}
    return torch.compile(module, fullgraph=fullgraph, dynamic=False, **options)


def first_compiled_pass(module: torch.nn.Module, mode: str, make_pass: Callable[[torch.nn.Module], Callable],
                        device: torch.device, limit_s: float | None) -> tuple[torch.nn.Module, CompileInfo]:
    """``module`` compiled in ``mode`` and its CompileInfo, from a first pass (``make_pass(compiled)()``) timed cold
    (Inductor's caches empty; dynamo has no code for a new module) within ``limit_s``: fullgraph first; where
    dynamo breaks the graph, again without fullgraph, counting the breaks as dynamo does (a break inside nested
    calls breaks each calling frame too). Call ``fresh_compiler`` first. CompileTimeout past the limit,
    CompileError (one line) when it does not compile, BackendUnavailableError on a CPU without a C++ compiler."""
    if device.type == "cpu":
        cpp_compiler()
    with time_limit(limit_s) as expiry:  # both attempts together
        for fullgraph in (True, False):
            torch._dynamo.utils.counters.clear()
            candidate = compiled(module, mode, fullgraph)
            started = time.perf_counter()
            try:
                with empty_inductor_cache():
                    make_pass(candidate)()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
            except Exception as exc:  # noqa: BLE001 - every failure becomes one of the three errors above
                cause = expiry.raised or innermost(exc)
                if isinstance(cause, (CompileTimeout, BackendUnavailableError)):
                    raise in_one_line(cause) from None
                if fullgraph and isinstance(cause, torch._dynamo.exc.Unsupported):
                    continue  # a graph break: compiled again without fullgraph, the breaks counted
                raise CompileError(f"torch.compile (mode {mode}) failed: {first_line(cause)}") from None
            if expiry.raised is not None:  # the alarm struck where the compiler swallows exceptions, and it went on
                raise in_one_line(expiry.raised)
            seconds = time.perf_counter() - started
            breaks, first_break = graph_breaks()
            return candidate, CompileInfo(seconds, graphs_compiled(), breaks, first_break)
    raise AssertionError("unreachable: the second attempt returns or raises")


def counting_compiles(run: Callable[[], object]) -> tuple[Callable[[], object], list[int]]:
    """``run`` wrapped to count the graphs dynamo compiles during its calls, and that count (a one-item list,
    read after the calls): more than zero during timing means the timing measured a compile."""
    count = [0]

    def counted() -> object:
        before = graphs_compiled()
        result = run()
        count[0] += graphs_compiled() - before
        return result

    return counted, count
