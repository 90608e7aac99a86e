"""The ``--compile`` axis end to end through the CLI, fast: torch.compile here runs dynamo with its ``eager``
backend (tracing, guards, graph breaks and recompiles are dynamo's own; only Inductor's code generation is left
out, which tests/test_compile.py runs for real in the slow tier). Rows, keys, the compiled reference's speedup,
resume, and the faults: a graph break, a compile that fails, one past its limit, no C++ compiler, a recompile
during timing. A later sitting (real Inductor, in its own process) and the model suite are marked slow."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch

import attentions
from attentions import register
from attentions.core import REFERENCE_BACKENDS
from attentions.full import FullAttention
from attentions.registry import Backend
from bench import cli
from bench.core import compilation
from bench.core.compilation import CompileError, CompileTimeout, first_compiled_pass, time_limit
from bench.core.measure import make_pass
from bench.schema.files import load_results
from bench.suites.base import RunContext
from bench.core.profiles import PROFILES
from registry_cases import registry_kept

COMMON = ["--gpu", "cpu", "--batch", "1", "--min-time", "0", "--quiet", "--no-report"]
SWEEP = [*COMMON, "--families", "full", "--resolutions", "8"]


def dynamo_only(module: torch.nn.Module, mode: str, fullgraph: bool) -> torch.nn.Module:
    """torch.compile through dynamo with its eager backend: no code generation, a compile in well under a second."""
    return torch.compile(module, backend="eager", fullgraph=fullgraph, dynamic=False)


@pytest.fixture
def fast_compile(monkeypatch):
    monkeypatch.setattr(compilation, "compiled", dynamo_only)
    monkeypatch.setattr(compilation, "_started", {"cpu"})  # no warm-up compile through Inductor


def sweep(tmp_path, run_id: str, *flags: str, common: list[str] = SWEEP) -> pd.DataFrame:
    assert cli.main([*common, "--results-dir", str(tmp_path), "--run-id", run_id, *flags]) == 0
    return load_results(tmp_path / "cpu" / f"{run_id}.csv")


def metadata(tmp_path, run_id: str) -> dict:
    return json.loads((tmp_path / "cpu" / f"{run_id}.json").read_text())


def test_an_unknown_mode_exits_2_naming_the_modes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*SWEEP, "--compile", "foo"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "foo" in error and all(mode in error for mode in ("eager", "default", "reduce-overhead", "max-autotune"))


def test_eager_and_default_give_two_rows_per_case_with_distinct_keys(tmp_path, fast_compile):
    frame = sweep(tmp_path, "two", "--backends", "torch", "sdpa", "--phase", "fwd", "fwd+bwd",
                  "--compile", "eager", "default")
    assert len(frame) == 8 and frame["case_key"].is_unique
    assert set(frame["status"]) == {"ok"} or set(frame["status"]) <= {"ok", "noisy"}
    compiled, eager = frame[frame["compile"] == "default"], frame[frame["compile"] == "eager"]
    assert len(compiled) == len(eager) == 4
    assert (compiled["case_key"].str.endswith("|compile=default")).all()
    assert set(compiled["case_key"].str.removesuffix("|compile=default")) == set(eager["case_key"])
    assert (compiled["compile_s"] > 0).all() and (compiled["graphs"] == 1).all()
    assert (compiled["graph_breaks"] == 0).all() and (compiled["recompiles"] == 0).all()
    assert eager[["compile_s", "graphs", "recompiles"]].isna().all().all()
    # every row but the compiled reference's own: its speedup over the compiled reference, paired
    reference = compiled["backend"] == "torch"
    assert compiled.loc[reference, "speedup_vs_compiled_ref"].isna().all()
    others = pd.concat([eager, compiled[~reference]])
    assert (others["compiled_ref"] == "torch+compile").all()
    assert (others["compiled_speedup_ci_low"] <= others["speedup_vs_compiled_ref"]).all()
    assert (others["speedup_vs_compiled_ref"] <= others["compiled_speedup_ci_high"]).all()
    # a compiled case is judged against float64 like any other
    assert (compiled["rel_err"] <= compiled["err_tolerance"]).all() and (compiled["rel_err"] > 0).all()
    # and a compiled torch row is measured against the eager reference
    assert compiled.loc[reference, "speedup_vs_ref"].notna().all()
    info = metadata(tmp_path, "two")
    assert info["timing"]["compile_limit_s"] == 600 and info["environment"]["cpp_compiler"]


def test_a_preset_block_takes_the_flag(tmp_path, fast_compile):
    cases = attentions_plan(["--preset", "compiled", "--compile", "max-autotune"])
    assert {case.compile for case in cases} == {"max-autotune"}
    assert {case.compile for case in attentions_plan(["--preset", "compiled"])} == {"eager", "default"}
    gpu_check = attentions_plan(["--preset", "gpu-check"])
    assert {(c.family, c.backend, c.resolution) for c in gpu_check if c.compile == "default"} == \
        {("bra", "torch", r) for r in (56, 28, 14)}
    # --backends picks the fast paths; the compiled reference stays, as a baseline
    narrowed = attentions_plan(["--preset", "gpu-check", "--backends", "chunked"])
    assert {(c.backend, c.compile) for c in narrowed if c.family == "bra"} == {("chunked", "eager"),
                                                                              ("torch", "default")}


def attentions_plan(flags: list[str]) -> list:
    from bench.cli.sweep import build_parser
    from bench.suites import SUITES
    args = build_parser().parse_args(["--gpu", "cpu", *flags])
    return SUITES["attentions"].plan(args, "cpu", PROFILES["cpu"])


def broken_graph(*args, **kwargs):
    torch._dynamo.graph_break()
    return REFERENCE_BACKENDS["torch"].attend(*args, **kwargs)


calls = 0


def restless(*args, **kwargs):
    """Explicit attention that counts its calls in a global: dynamo guards on the count's value, so every call
    compiles anew."""
    global calls
    calls += 1
    return REFERENCE_BACKENDS["torch"].attend(*args, **kwargs) * (1 + 0 * calls)


class CompileTestAttention(FullAttention):
    """Full attention with two backends that torch.compile handles badly, registered in the tests that use it."""

    family = "compiletest"
    backends = {"torch": REFERENCE_BACKENDS["torch"],
                "breaking": Backend("breaking", broken_graph, "explicit attention after a graph break"),
                "restless": Backend("restless", restless, "explicit attention that recompiles on every call")}


def test_a_backend_that_breaks_the_graph_is_reported_as_such(tmp_path, fast_compile):
    with registry_kept():
        register(CompileTestAttention)
        frame = sweep(tmp_path, "breaks", "--families", "compiletest", "--backends", "torch", "breaking",
                      "--compile", "default", "--phase", "fwd")
    breaking = frame.set_index("backend").loc["breaking"]
    # counted as dynamo counts them: the break inside the backend breaks each frame that calls it too
    breaks, graphs = int(breaking["graph_breaks"]), int(breaking["graphs"])
    assert breaking["status"] in ("ok", "noisy") and breaks >= 1 and graphs >= 2
    assert (f"{breaks} graph break{'s' * (breaks > 1)} ({graphs} graphs), compiled without fullgraph; first: Call "
            f"to `torch._dynamo.graph_break()`") in breaking["status_detail"]
    assert frame.set_index("backend").loc["torch", "graph_breaks"] == 0


def raising_compile(module, mode, fullgraph):
    def call(*args):
        try:
            raise ValueError("the innermost reason\nand a second line")
        except ValueError as inner:
            raise RuntimeError("dynamo's wrapper, with a traceback\nFile ...") from inner
    return call


def test_a_module_that_does_not_compile_is_an_error_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(compilation, "compiled", raising_compile)
    monkeypatch.setattr(compilation, "_started", {"cpu"})
    frame = sweep(tmp_path, "fails", "--backends", "torch", "--compile", "eager", "default", "--phase", "fwd")
    row = frame.set_index("compile").loc["default"]
    assert row["status"] == "error"
    assert row["status_detail"] == ("CompileError: torch.compile (mode default) failed: ValueError: the innermost "
                                    "reason")
    assert frame.set_index("compile").loc["eager", "status"] in ("ok", "noisy")


def sleeping_compile(module, mode, fullgraph):
    def call(*args):
        time.sleep(30)
    return call


def test_a_compile_past_its_limit_is_a_timeout_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(compilation, "compiled", sleeping_compile)
    monkeypatch.setattr(compilation, "_started", {"cpu"})
    started = time.monotonic()
    frame = sweep(tmp_path, "slow", "--backends", "torch", "sdpa", "--compile", "eager", "default", "--phase", "fwd",
                  "--compile-limit", "0.5")
    assert time.monotonic() - started < 20
    statuses = frame.set_index(["backend", "compile"])["status"]
    assert statuses[("torch", "default")] == statuses[("sdpa", "default")] == "timeout"
    assert statuses[("torch", "eager")] in ("ok", "noisy") and statuses[("sdpa", "eager")] in ("ok", "noisy")
    detail = frame.set_index(["backend", "compile"]).loc[("torch", "default"), "status_detail"]
    assert detail == "compiling took longer than its limit of 0.5 s"


def test_the_time_budget_bounds_a_compile():
    ctx = RunContext("r", PROFILES["cpu"], "cpu", compile_limit_s=600, deadline=time.time() + 5)
    assert 4 < ctx.compile_time_left() <= 5
    assert RunContext("r", PROFILES["cpu"], "cpu", compile_limit_s=3).compile_time_left() == 3
    with pytest.raises(CompileTimeout, match="--time-budget reached"):
        with time_limit(-1.0):
            pass


def test_no_cpp_compiler_makes_compiled_rows_unsupported_and_leaves_eager_rows(tmp_path, monkeypatch, fast_compile):
    from torch._inductor import cpp_builder

    def none_found():
        raise RuntimeError("Unsupported: no C++ compiler found among ('g++',)")
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", none_found)
    frame = sweep(tmp_path, "nocxx", "--backends", "torch", "--compile", "eager", "default", "--phase", "fwd")
    row = frame.set_index("compile").loc["default"]
    assert row["status"] == "unsupported" and row["status_detail"].startswith("no C++ compiler")
    assert "\n" not in row["status_detail"]
    assert frame.set_index("compile").loc["eager", "status"] in ("ok", "noisy")
    assert metadata(tmp_path, "nocxx")["environment"]["cpp_compiler"] is None


def test_a_recompile_during_timing_makes_the_row_an_error(tmp_path, fast_compile):
    with registry_kept():
        register(CompileTestAttention)
        frame = sweep(tmp_path, "recompiles", "--families", "compiletest", "--backends", "torch", "restless",
                      "--compile", "eager", "default", "--phase", "fwd")
    rows = frame.set_index(["backend", "compile"])
    restless = rows.loc[("restless", "default")]
    assert restless["status"] == "error" and restless["recompiles"] > 0
    assert restless["status_detail"].startswith("RuntimeError: recompiled during timing")
    assert rows.loc[("torch", "default"), "recompiles"] == 0
    assert rows.loc[("restless", "eager"), "status"] in ("ok", "noisy")


def test_resume_completes_a_run_with_compiled_cases_against_its_compiled_reference(tmp_path, fast_compile):
    flags = ["--backends", "torch", "sdpa", "--compile", "eager", "default", "--phase", "fwd"]
    full = sweep(tmp_path, "whole", *flags)
    path = tmp_path / "cpu" / "whole.csv"
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines[1:] if "sdpa" not in line.split(",")[1]]  # keep torch's two rows
    path.write_text(lines[0] + "".join(kept))
    assert cli.main(["--resume", "whole", "--results-dir", str(tmp_path), "--quiet", "--no-report"]) == 0
    resumed = load_results(path)
    assert sorted(resumed["case_key"]) == sorted(full["case_key"])
    sdpa = resumed[resumed["backend"] == "sdpa"].set_index("compile")
    # the compiled reference, done before, was timed again beside them: their ratios against it are there
    assert (sdpa["compiled_ref"] == "torch+compile").all() and sdpa["speedup_vs_compiled_ref"].notna().all()


@pytest.mark.slow  # a real Inductor compile in a process of its own: about 35 s
def test_a_later_sitting_compiles_the_case_again_in_its_own_process(tmp_path):
    """Sittings run in a fresh process: there torch.compile is the real one (Inductor), on a tiny case."""
    frame = sweep(tmp_path, "sittings", "--backends", "torch", "--compile", "default", "--phase", "fwd",
                  "--sittings", "2")
    row = frame.iloc[0]
    assert row["status"] in ("ok", "noisy"), row["status_detail"]
    assert row["recompiles"] == 0 and row["graphs"] == 1 and row["rounds"] > 3


@pytest.mark.slow  # whole backbones traced, eager and compiled: about 11 s
def test_the_model_suite_compiles_the_whole_backbone(tmp_path, fast_compile):
    frame = sweep(tmp_path, "models", "--suite", "models", "--models", "swin_layout", "--attentions", "full",
                  "--resolutions", "32", "--phase", "fwd", "--compile", "eager", "default", common=COMMON)
    assert len(frame) == 2 and frame["case_key"].is_unique
    compiled = frame.set_index("compile").loc["default"]
    assert compiled["status"] in ("ok", "noisy"), compiled["status_detail"]
    # the whole backbone traced into graphs: more than one attention module's worth
    assert compiled["graphs"] >= 1 and compiled["compile_s"] > 0 and compiled["recompiles"] == 0
    assert frame.set_index("compile").loc["eager", "compiled_ref"] == "torch+compile"


def test_first_compiled_pass_reports_the_innermost_cause(monkeypatch):
    monkeypatch.setattr(compilation, "compiled", raising_compile)
    module = attentions.build("full", dim=8, num_heads=2)
    x = torch.randn(1, 4, 4, 8)
    with pytest.raises(CompileError, match=r"^torch.compile \(mode max-autotune\) failed: ValueError: the innermost "
                                           r"reason$"):
        first_compiled_pass(module, "max-autotune", lambda m: make_pass(m, x, "fwd", None), torch.device("cpu"), None)


def swallowing_compile(module, mode, fullgraph):
    """A compile that catches what strikes it and goes on, as Python does in a weakref callback ("Exception
    ignored in ..."): where the alarm fell on the CI machine."""
    def call(*args):
        try:
            time.sleep(30)
        except Exception:  # noqa: BLE001 - the swallowing under test
            pass
    return call


def test_a_limit_that_struck_where_the_compiler_swallows_it_is_still_a_timeout(monkeypatch):
    monkeypatch.setattr(compilation, "compiled", swallowing_compile)
    module = attentions.build("full", dim=8, num_heads=2)
    x = torch.randn(1, 4, 4, 8)
    started = time.monotonic()
    with pytest.raises(CompileTimeout) as raised:
        first_compiled_pass(module, "default", lambda m: make_pass(m, x, "fwd", None), torch.device("cpu"), 0.2)
    assert time.monotonic() - started < 5
    assert str(raised.value) == "compiling took longer than its limit of 0.2 s"
