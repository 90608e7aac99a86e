"""Compile the suite's Triton kernels ahead of time for real GPUs, on a machine without one.

Triton's interpreter (how the CPU tests run the kernels) checks none of what a real compile
checks: loop-carried types, tile limits, shared memory, registers. So this module runs every
registered backend that needs Triton forward and backward, on CPU tensors, at every case the
presets and the model suite launch on the target GPUs (the A100, H100 and H200 profiles), and in
every routing mode and dtype at BiFormer's stage shapes.
Each kernel launch is intercepted before it runs (Triton's ``jit_cache_hook``, asked by a driver
that answers for the target GPU) and compiled instead, down to a cubin with the ptxas of the triton
wheel, for each target: sm_90 (H100, H200) and sm_80 (A100). A launch that fails to compile, or
needs more shared memory than the target has, is an error; registers and spills come from the log
of Triton's own ``ptxas -v``. With ``--metrics`` nothing is compiled: each case's pass reports what
its backend measures (``Backend.pass_metrics``: BRA's tile efficiency).

Run it in a process where Triton's interpreter is off (``TRITON_INTERPRET`` unset when triton is
first imported): ``python -m tools.triton_aot`` (the tests start it as a subprocess).

One module of more than 400 lines because it is one tool: enumerating the launches, capturing them and
compiling them only make sense together, and nothing else imports its parts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import re
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import import_module
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attentions
from attentions.models import list_models
from attentions.registry import AttentionModule

from bench.suites.cases import unique_cases
from bench.suites.model import MODEL_RESOLUTIONS, model_cases
from bench.suites.presets import BIFORMER_STAGES, COMMON_OPTIONS, PRESETS, preset_blocks
from bench.core.profiles import DTYPES, PROFILES

# Opt-in dynamic shared memory per block (bytes), by compute capability.
SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912}
# The GPU profiles whose GPUs the targets are: the cases the presets and the model suite launch there
# (bf16, and the quick preset's fp32). fp16 comes in through the routing modes' cases.
TARGET_PROFILES = ("a100", "h100", "h200")
SETS = ("presets", "models", "tests")
# BRA's routing modes: hard, soft weights, and weights trained through the routing (their gradient
# comes out of the kernels).
ROUTINGS = ({}, {"soft_routing": True}, {"soft_routing": True, "diff_routing": True, "param_routing": True})


@dataclass(frozen=True)
class LayerCase:
    """One attention layer to run: a module (built from the registry or taken from a model), its
    input shape, dtype and phase, and where it comes from (for the report)."""

    source: str
    label: str  # the layer in words
    module: AttentionModule = field(compare=False, hash=False)
    signature: str  # what identifies the layer's launches: module repr and input shape
    shape: tuple[int, int, int, int]
    dtype: str
    phase: str


def triton_backends(module: AttentionModule) -> list[str]:
    """The module's backends that need Triton."""
    return [b.name for b in module.backends.values() if "triton" in b.requires]


def preset_layers() -> list[LayerCase]:
    """Every Triton-backend case of every preset under the target GPUs' profiles, at batch 1 (the
    batch is a runtime argument: it changes no compilation)."""
    layers, modules = [], {}
    for preset in PRESETS:
        for profile in (PROFILES[name] for name in TARGET_PROFILES):
            for case in unique_cases(preset_blocks(preset, profile), "cuda", COMMON_OPTIONS):
                key = (case.family, case.backend, case.dim, case.heads, case.options_json)
                if key not in modules:
                    module = attentions.build(case.family, dim=case.dim, num_heads=case.heads, **case.options_dict)
                    modules[key] = module if case.backend in triton_backends(module) else None
                    if modules[key] is not None:
                        module.backend = case.backend
                module = modules[key]
                if module is not None:
                    shape = (1, case.resolution, case.resolution, case.dim)
                    layers.append(LayerCase(f"preset {preset}", case.label().replace(f" b{case.batch} ", " "), module,
                                            f"{module!r} {shape}", shape, case.dtype, case.phase))
    return layers


def attention_inputs(model: torch.nn.Module, resolution: int) -> dict[str, tuple[int, ...]]:
    """The input shape of every attention module of ``model`` for a (1, 3, resolution, resolution)
    image, found on the meta device with the attentions replaced by identities (they keep the shape)."""
    shapes: dict[str, tuple[int, ...]] = {}
    meta = copy.deepcopy(model).to("meta").eval()
    for name, module in meta.named_modules():
        if isinstance(module, AttentionModule):
            def record(x: torch.Tensor, name: str = name) -> torch.Tensor:
                shapes[name] = tuple(x.shape)
                return x
            module.forward = record
    with torch.no_grad():
        meta(torch.empty(1, 3, resolution, resolution, device="meta"))
    return shapes


def model_layers() -> list[LayerCase]:
    """The attention layers with a Triton backend of every model-suite case (every model with BRA,
    at 224, 512 and 1024 px, in the target GPUs' profiles' dtypes, both phases)."""
    dtypes = sorted({PROFILES[name].default_dtype for name in TARGET_PROFILES})
    layers = []
    cases = model_cases(list(list_models()), ["bra"], ["torch"], list(MODEL_RESOLUTIONS), [1], dtypes,
                        ["fwd", "fwd+bwd"], "cuda", PROFILES["h100"])
    models: dict[tuple, torch.nn.Module] = {}
    inputs: dict[tuple, dict[str, tuple[int, ...]]] = {}
    for case in cases:
        model_key = (case.model, case.options_json)
        if model_key not in models:
            models[model_key] = attentions.models.build_model(case.model, **case.options_dict)
        model = models[model_key]
        input_key = (*model_key, case.resolution)
        if input_key not in inputs:
            inputs[input_key] = attention_inputs(model, case.resolution)
        for name, shape in inputs[input_key].items():
            module = model.get_submodule(name)
            for backend in triton_backends(module):
                layer = copy.copy(module)  # shares the weights; its own backend
                layer.backend = backend
                layers.append(LayerCase(f"models {case.model} {case.resolution}px", f"{case.model} {case.resolution}px "
                                        f"{name} {shape[1]}² C{shape[3]} {case.dtype} {case.phase}", layer,
                                        f"{layer!r} {shape}", shape, case.dtype, case.phase))
    return layers


def test_layers() -> list[LayerCase]:
    """BiFormer's stage shapes in every routing mode and dtype the tests run (the presets route hard,
    in bf16 and fp32)."""
    layers = []
    for resolution, dim, heads, topk in BIFORMER_STAGES:
        for routing in ROUTINGS:
            module = attentions.build("bra", dim=dim, num_heads=heads, topk=topk, backend="triton", **routing)
            shape = (1, resolution, resolution, dim)
            for dtype in ("float16", "bfloat16", "float32"):
                for phase in ("fwd", "fwd+bwd"):
                    label = f"bra{routing or ''}/triton {resolution}² C{dim} h{heads} topk {topk} {dtype} {phase}"
                    layers.append(LayerCase("tests routing modes", label, module, f"{module!r} {shape}", shape, dtype,
                                            phase))
    return layers


def triton_backends_on_cpu() -> contextlib.AbstractContextManager[None]:
    """Let every registered Triton backend take CPU tensors in every float dtype: here its launches
    are captured, never run."""
    return attentions.overridden_capabilities(lambda backend: "triton" in backend.requires, devices=("cpu", "cuda"),
                                              dtypes=tuple(DTYPES.values()))


class TargetDriver:
    """What Triton asks the active driver when it launches a kernel, answered for a GPU that is not here."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> str:
        return f"aot-sm_{self.target.arch}"

    def get_current_stream(self, device: Any = None) -> int:
        return 0

    def get_current_target(self) -> Any:
        return self.target


@dataclass
class Launch:
    """One distinct kernel specialisation, as Triton would compile it, and the layers that launch it."""

    kernel: str  # module:qualified name of the JITFunction
    signature: dict[str, str]
    constants: dict
    attrs: dict
    options: dict[str, Any]
    sources: set[str] = field(default_factory=set)

    def summary(self) -> str:
        """The element type of the first pointer and the named constants (upper-case by convention)."""
        names = list(self.signature)
        element = next((t.lstrip("*") for t in self.signature.values() if t.startswith("*")), "?")
        shown = {names[path[0]]: value for path, value in self.constants.items()
                 if len(path) == 1 and names[path[0]].isupper()}
        return ", ".join([element, *(f"{k}={v}" for k, v in shown.items())])


class LaunchRecorder:
    """The distinct kernel specialisations launched while it is active, keyed by Triton's cache key;
    each launch is credited to the ``sources`` set at the time."""

    def __init__(self, on_new: Callable[[str, Launch], None] | None = None) -> None:
        self.launches: dict[str, Launch] = {}
        self.sources: set[str] = set()
        self.on_new = on_new  # called with each new launch's key, e.g. to start compiling it at once

    def hook(self, *, key: Any, fn: Any, compile: dict, **_: Any) -> bool:
        """Triton's jit_cache_hook, called before a launch compiles: record it, and answer that it
        is handled, so that Triton neither compiles nor launches it."""
        jit = fn.jit_function
        name = f"{jit.fn.__module__}:{jit.fn.__qualname__}"
        launch_key = f"{name} {key}"
        if launch_key not in self.launches:
            self.launches[launch_key] = Launch(
                name, dict(compile["signature"]), dict(compile["constants"]), dict(compile["configs"][0]),
                {k: compile[k] for k in ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion")})
            if self.on_new is not None:
                self.on_new(launch_key, self.launches[launch_key])
        self.launches[launch_key].sources.update(self.sources)
        return True


@contextlib.contextmanager
def captured_launches(arch: int, on_new: Callable[[str, Launch], None] | None = None) -> Iterator[LaunchRecorder]:
    """Inside the block, Triton kernels launched on CPU tensors are recorded (for a GPU of compute
    capability ``arch``), neither compiled nor run."""
    import triton
    from triton.runtime import driver

    recorder = LaunchRecorder(on_new)
    previous_hook, previous_driver = triton.knobs.runtime.jit_cache_hook, driver._active  # None: not made yet
    triton.knobs.runtime.jit_cache_hook = recorder.hook
    driver.set_active(TargetDriver(arch))
    try:
        yield recorder
    finally:
        triton.knobs.runtime.jit_cache_hook = previous_hook
        driver.set_active(previous_driver)


HALF_DTYPES = (torch.float16, torch.bfloat16)


class HalfMatmulsInFloat32(TorchFunctionMode):
    """Linear layers and convolutions on fp16/bf16 CPU tensors computed in fp32 and rounded back.

    A CPU without half-precision matrix units multiplies them about 14× slower than fp32 (measured
    here). The results have the same dtype, shape and strides, so every tensor a kernel is launched
    with has the same metadata, and the metadata is all a launch's compilation depends on."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.linear, F.conv2d) and args[0].dtype in HALF_DTYPES and args[0].device.type == "cpu":
            dtype = args[0].dtype
            upcast = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
            return func(*upcast, **kwargs).to(dtype)
        return func(*args, **kwargs)


def layer_pass(layer: LayerCase) -> Callable[[], None]:
    """One pass of the layer on random CPU input: forward, or forward and the gradients of the input
    and every parameter (the harness's fwd+bwd)."""
    dtype = DTYPES[layer.dtype]
    module = copy.deepcopy(layer.module).to(dtype)
    x = torch.randn(layer.shape, dtype=dtype)

    def run() -> None:
        with HalfMatmulsInFloat32():
            if layer.phase == "fwd":
                with torch.no_grad():
                    module(x)
                return
            leaf = x.detach().requires_grad_(True)
            out = module(leaf)
            torch.autograd.grad(out, [leaf, *module.parameters()], torch.randn_like(out), allow_unused=True)

    return run


@dataclass
class Capture:
    """What running the layers with captured launches gives: the distinct launches by Triton's key,
    and each distinct layer with its sources and the metrics its backend reports over the pass
    (``Backend.pass_metrics``: BRA's tile efficiency)."""

    launches: dict[str, Launch]
    layers: list[tuple[LayerCase, set[str], dict[str, float]]]


def capture(layers: Sequence[LayerCase], on_new: Callable[[str, Launch], None] | None = None) -> Capture:
    """Run each distinct layer case once with its launches captured."""
    distinct: dict[tuple, tuple[LayerCase, set[str]]] = {}
    for layer in layers:
        distinct.setdefault((layer.signature, layer.dtype, layer.phase), (layer, set()))[1].add(layer.source)
    measured = []
    with triton_backends_on_cpu(), captured_launches(90, on_new) as recorder:
        for layer, sources in distinct.values():
            recorder.sources = sources
            run = layer_pass(layer)
            pass_metrics = layer.module.backends[layer.module.backend].pass_metrics
            if pass_metrics is None:
                run()
                measured.append((layer, sources, {}))
            else:
                measured.append((layer, sources, pass_metrics(run)))
    return Capture(recorder.launches, measured)


@dataclass
class CompileResult:
    kernel: str
    arch: int
    summary: str
    num_warps: int
    num_stages: int
    sources: list[str] = field(default_factory=list)
    shared: int | None = None
    shared_limit: int | None = None
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.shared is not None and self.shared <= self.shared_limit


PTXAS_PATTERNS = {"registers": r"Used (\d+) registers", "spill_stores": r"(\d+) bytes spill stores",
                  "spill_loads": r"(\d+) bytes spill loads"}


def compile_launch(launch: Launch, arch: int) -> CompileResult:
    """Compile one captured launch for compute capability ``arch``, down to a cubin; registers and
    spills from the log of the ``ptxas -v`` that Triton runs (Triton's cache is bypassed, so that
    ptxas runs and logs every time)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    result = CompileResult(launch.kernel, arch, launch.summary(), launch.options["num_warps"],
                           launch.options["num_stages"], shared_limit=SHARED_MEMORY_LIMIT[arch])
    module_name, qualname = launch.kernel.split(":")
    kernel = getattr(import_module(module_name), qualname)
    knobs = triton.knobs
    saved = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # Triton prints the ptxas log
            compiled = triton.compile(ASTSource(kernel, launch.signature, launch.constants, launch.attrs),
                                      target=GPUTarget("cuda", arch, 32), options=launch.options)
    except Exception as exc:  # noqa: BLE001 - every compile failure is reported, whatever its type
        lines = [line for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
        result.error = " | ".join(lines[-3:])[:600]
        return result
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
    result.shared = int(compiled.metadata.shared)
    for name, pattern in PTXAS_PATTERNS.items():
        if match := re.search(pattern, log.getvalue()):
            setattr(result, name, int(match.group(1)))
    return result


def collect_layers(sets: Sequence[str]) -> list[LayerCase]:
    makers = {"presets": preset_layers, "models": model_layers, "tests": test_layers}
    return [layer for name in sets for layer in makers[name]()]


def check(sets: Sequence[str] = SETS, archs: Sequence[int] = (90, 80), workers: int | None = None) -> list[CompileResult]:
    """Capture every launch of the chosen case sets and compile each for every target: in a pool of
    ``workers`` processes (default: one per CPU) that starts on a launch as soon as it is captured."""
    layers = collect_layers(sets)
    with ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=get_context("spawn")) as pool:
        jobs: dict[tuple[str, int], Future] = {}

        def start(key: str, launch: Launch) -> None:
            for arch in archs:
                jobs[key, arch] = pool.submit(compile_launch, launch, arch)

        launches = capture(layers, start).launches
        results = []
        for (key, _), job in jobs.items():
            result = job.result()
            result.sources = sorted(launches[key].sources)  # complete only now that every layer ran
            results.append(result)
    return results


def report(results: Sequence[CompileResult]) -> str:
    """One line per compiled launch, then the totals."""
    lines = [f"{'target':<7} {'kernel':<24} {'warps':>5} {'stages':>6} {'shared KB':>9} {'regs':>4} "
             f"{'spill B':>7}  tiles / result"]
    for r in sorted(results, key=lambda r: (-r.arch, r.kernel, r.summary)):
        name = r.kernel.split(":")[1]
        if r.error:
            lines.append(f"sm_{r.arch:<4} {name:<24} {r.num_warps:>5} {r.num_stages:>6} {'':>9} {'':>4} {'':>7}  "
                         f"{r.summary}\n        COMPILE ERROR: {r.error}")
            continue
        spills = "?" if r.spill_stores is None else r.spill_stores + r.spill_loads
        over = "" if r.ok else f"  SHARED MEMORY OVER THE {r.shared_limit / 1024:.0f} KB LIMIT"
        lines.append(f"sm_{r.arch:<4} {name:<24} {r.num_warps:>5} {r.num_stages:>6} {r.shared / 1024:>9.1f} "
                     f"{r.registers if r.registers is not None else '?':>4} {spills:>7}  {r.summary}{over}")
    failed = [r for r in results if not r.ok]
    spilling = [r for r in results if r.spill_stores]
    targets = len({r.arch for r in results}) or 1
    lines.append(f"{len(results)} compilations ({len(results) // targets} launches × {targets} targets): "
                 f"{len(failed)} failed, {len(spilling)} spill registers")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.triton_aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS), help="which cases (default: all)")
    parser.add_argument("--targets", nargs="+", type=int, choices=sorted(SHARED_MEMORY_LIMIT), default=[90, 80],
                        help="compute capabilities (default: 90 80)")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: one per CPU)")
    parser.add_argument("--json", type=Path, help="also write every result as JSON here")
    parser.add_argument("--metrics", action="store_true",
                        help="compile nothing: print what the backends report over each distinct layer's pass "
                             "(BRA's tile efficiency), on the routing of a random input")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 is set: the kernels would be interpreted, not compiled; unset it")
    if args.metrics:
        for layer, _, metrics in capture(collect_layers(args.sets)).layers:
            print(f"{layer.label:<72} " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return 0
    results = check(args.sets, args.targets, args.workers)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "ok": r.ok} for r in results], indent=1) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
