"""``torch.compile`` of every family's eager backends (``default`` mode, CPU Inductor) computes what the eager
module computes: its output and gradients judged against float64 math with the harness's rule
(``bench.core.accuracy.judge``: within max(2 × the eager reference backend's own error, the dtype's floor)).
And the ``--compile`` axis with Inductor's real code generation: one graph per module, a compile cut by its limit,
FlexAttention's graph breaks, resume, a machine without a C++ compiler.

Small shapes (28² maps, batch 1) keep each compile to seconds; the slow tier runs them."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attentions
from bench import cli
from bench.core.accuracy import exact_pass, judge
from bench.core.compilation import CompileTimeout, first_compiled_pass, fresh_compiler
from bench.core.measure import make_pass, pass_tensor_names
from bench.schema.files import load_results
from reference_helpers import eager_backends
from registry_cases import families

pytestmark = pytest.mark.slow  # a compile per case: seconds each
ROOT = Path(__file__).resolve().parent.parent

OPTIONS = {"bra": {"n_win": 7, "topk": 4}, "window": {"window_size": 7, "shift_size": 3},
           "deformable": {"fmap_size": 28}}  # a family without an entry: its defaults


def cases() -> list:
    return [pytest.param(family, backend, id=f"{family}-{backend}")
            for family in families() for backend in eager_backends(family) if backend in ("torch", "sdpa")]


@pytest.mark.parametrize("family, backend", cases())
def test_a_compiled_backend_computes_what_eager_computes(family, backend):
    torch.manual_seed(0)
    module = attentions.build(family, dim=32, num_heads=2, backend=backend, **OPTIONS.get(family, {}))
    generator = torch.Generator().manual_seed(1)
    x, grad_out = (torch.randn(1, 28, 28, 32, generator=generator) for _ in range(2))
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(module), dynamic=False)
    names = pass_tensor_names(module, "fwd+bwd")
    got = make_pass(compiled, x, "fwd+bwd", grad_out)()
    reference = make_pass(module, x, "fwd+bwd", grad_out)()
    exact = exact_pass(module, x, "fwd+bwd", grad_out)
    verdict = judge(got, reference, exact, names, "float32")
    assert verdict.mismatch_reason() is None, verdict.mismatch_reason()


# Through the harness, with Inductor's real code generation: what the fast tier (tests/test_compile_axis.py) runs
# with dynamo's eager backend.

def bra_module(backend: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    module = attentions.build("bra", dim=32, num_heads=2, backend=backend, **OPTIONS["bra"])
    return module, torch.randn(1, 28, 28, 32, generator=torch.Generator().manual_seed(1))


def first_pass(module: torch.nn.Module, x: torch.Tensor, limit_s: float | None = None):
    fresh_compiler(torch.device("cpu"))
    return first_compiled_pass(module, "default", lambda m: make_pass(m, x, "fwd", None), torch.device("cpu"),
                               limit_s)


def test_one_module_compiles_into_one_graph():
    """The input check's cache (a Python dict) stays out of the compiled code: one graph, no break."""
    module, x = bra_module("torch")
    compiled, info = first_pass(module, x)
    assert (info.graphs, info.graph_breaks) == (1, 0) and info.seconds > 0
    torch.testing.assert_close(compiled(x), module(x), rtol=1e-4, atol=1e-5)


def test_a_compile_cut_by_its_limit_leaves_the_next_compile_working():
    module, x = bra_module("torch")
    with pytest.raises(CompileTimeout) as raised:
        first_pass(module, x, limit_s=0.05)
    assert str(raised.value) == "compiling took longer than its limit of 0.05 s"  # one line: no dynamo stack
    compiled, info = first_pass(copy.deepcopy(module), x, limit_s=600)
    assert info.graphs == 1
    torch.testing.assert_close(compiled(x), module(x), rtol=1e-4, atol=1e-5)


def test_flex_breaks_the_graph_on_the_cpu_and_a_resumed_sweep_completes_the_run(tmp_path):
    """A real sweep: the flex backend's graph breaks (FlexAttention on the CPU) reported, every compiled row
    checked against float64, and a resume that redoes the flex cases beside the reference's, compiled again."""
    flags = ["--gpu", "cpu", "--families", "bra", "--resolutions", "28", "--topk", "4", "--kv-modes", "identity",
             "--batch", "1", "--phase", "fwd", "--backends", "torch", "flex", "--compile", "eager", "default",
             "--min-time", "0", "--quiet", "--no-report", "--results-dir", str(tmp_path)]
    assert cli.main([*flags, "--run-id", "flex"]) == 0
    path = tmp_path / "cpu" / "flex.csv"
    full = load_results(path).set_index(["backend", "compile"])
    assert set(full["status"]) <= {"ok", "noisy"}, full["status_detail"].tolist()
    flex = full.loc[("flex", "default")]
    assert flex["graph_breaks"] >= 1 and flex["status_detail"].startswith(f"{int(flex['graph_breaks'])} graph")
    assert full.loc[("torch", "default"), "graph_breaks"] == 0 and full.loc[("torch", "default"), "graphs"] == 1
    assert (full["rel_err"] <= full["err_tolerance"]).all()
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "".join(line for line in lines[1:] if ",flex," not in line))
    assert cli.main(["--resume", "flex", "--results-dir", str(tmp_path), "--quiet", "--no-report"]) == 0
    resumed = load_results(path).set_index(["backend", "compile"])
    assert sorted(resumed.index) == sorted(full.index)
    assert resumed.loc[("flex", "default"), "graph_breaks"] >= 1
    assert resumed.loc[("flex", "eager"), "compiled_ref"] == "torch+compile"


def test_without_a_cpp_compiler_the_compiled_rows_say_so_and_the_eager_rows_run(tmp_path):
    """A real machine without one: a PATH with no C++ compiler on it and CXX unset, in a process of its own."""
    env = {key: value for key, value in os.environ.items() if key not in ("CXX", "CC")}
    env["PATH"] = os.path.dirname(sys.executable)  # the venv's python, and no compiler
    command = [sys.executable, str(ROOT / "run_bench.py"), "--gpu", "cpu", "--families", "full", "--resolutions",
               "8", "--batch", "1", "--phase", "fwd", "--backends", "torch", "--compile", "eager", "default",
               "--min-time", "0", "--quiet", "--no-report", "--results-dir", str(tmp_path), "--run-id", "nocxx"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = load_results(tmp_path / "cpu" / "nocxx.csv").set_index("compile")
    assert rows.loc["default", "status"] == "unsupported"
    assert rows.loc["default", "status_detail"].startswith("no C++ compiler (Inductor's CPU backend needs one")
    assert rows.loc["eager", "status"] in ("ok", "noisy")
