"""Ahead-of-time compilation of the Triton kernels for sm_90 (H100/H200) and sm_80 (A100), no GPU needed.

Triton's interpreter, which runs the kernels in the other tests, checks none of what a real compile
checks. ``tools.triton_aot`` runs the BRA module with backend 'triton' forward and backward at every
case the presets and the model suite launch (and the tests' routing modes and dtypes), intercepts
every kernel launch and compiles it for both targets instead, down to a cubin. It runs in a
subprocess: this session has the interpreter on, and triton builds its own library functions for
one mode only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.slow  # compilations: the launches of every preset (minutes), and two kernels that must fail

ROOT = Path(__file__).resolve().parent.parent
KERNELS = {"_routed_forward", "_routed_backward_query", "_routed_backward_key"}
MAX_SPILL_BYTES = 64  # a few words are ptxas' choice; kilobytes (as fp32 once spilled) are a tile too large


def compile_env(tmp_path: Path) -> dict[str, str]:
    """Triton compiled for real (not interpreted), into an empty cache: every launch compiles here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


@dataclass
class CompileCheck:
    """``python -m tools.triton_aot`` running in a subprocess, writing into ``folder``."""

    folder: Path
    process: subprocess.Popen

    def result(self) -> tuple[int, str, list[dict]]:
        """Its exit status, its report and its results (waits for it)."""
        returncode = self.process.wait(timeout=900)
        report = (self.folder / "report.txt").read_text()
        results = self.folder / "aot.json"
        return returncode, report, json.loads(results.read_text()) if results.exists() else []


COMPILE_CHECK = pytest.StashKey[CompileCheck]()


def start_compile_check(folder: Path, workers: int | None = None) -> CompileCheck:
    """Start the check; ``workers`` compile processes (default: one per CPU)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tools.triton_aot", "--json", str(folder / "aot.json")]
    if workers:
        command += ["--workers", str(workers)]
    with open(folder / "report.txt", "w") as report:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, cwd=ROOT, env=compile_env(folder), stdout=report,
                                   stderr=subprocess.STDOUT)
    return CompileCheck(folder, process)


@pytest.fixture(scope="module")
def aot_results(request, tmp_path_factory):
    """The check's outcome: started by conftest.py when the session began (in the background, on the
    core the single-threaded suite leaves idle), or here when this file runs alone."""
    check = request.config.stash.get(COMPILE_CHECK, None)
    if check is None:
        check = start_compile_check(tmp_path_factory.mktemp("aot"))
    returncode, report, results = check.result()
    print(report[-20000:])  # per launch: target, warps, stages, shared memory, registers, spills
    return returncode, report, results


def test_every_launch_compiles_for_sm90_and_sm80_within_shared_memory(aot_results):
    returncode, report, results = aot_results
    assert returncode == 0, report[-8000:]
    failed = [r for r in results if not r["ok"]]
    assert not failed, json.dumps(failed[:5], indent=1)
    assert all(r["shared"] <= r["shared_limit"] for r in results)
    assert {r["arch"] for r in results} == {90, 80}
    assert {r["kernel"].split(":")[1] for r in results} == KERNELS


def test_the_launches_cover_the_presets_the_model_suite_and_the_routing_modes(aot_results):
    *_, results = aot_results
    sources = {source.split(" ")[0] + " " + source.split(" ")[1] for r in results for source in r["sources"]}
    assert {"preset quick", "preset default", "preset full", "preset gpu-check", "models biformer_tiny",
            "models biformer_base", "models swin_layout", "tests routing"} <= sources
    summaries = {r["summary"] for r in results if r["kernel"].endswith("_routed_backward_key")}
    # pooled kv modes (queries of 8×8 tokens, keys of 4×4), the 512/1024 px model suite (19×19 and
    # 37×37-token regions), soft routing, and all three dtypes reach the dK/dV kernel
    for wanted in ("QUERY_TOKENS=64, KEY_TOKENS=16", "QUERY_TOKENS=361, KEY_TOKENS=361",
                   "QUERY_TOKENS=1369, KEY_TOKENS=1369", "SOFT=True", "bf16", "fp16", "fp32"):
        assert any(wanted in summary for summary in summaries), wanted
    assert any("WEIGHT_GRAD=True" in r["summary"] for r in results)


def test_no_launch_spills_more_than_a_few_words(aot_results):
    *_, results = aot_results
    assert all(r["registers"] is not None for r in results), "ptxas -v gave no register count"
    spilling = [(r["arch"], r["kernel"], r["spill_stores"], r["summary"]) for r in results
                if r["spill_stores"] > MAX_SPILL_BYTES]
    assert not spilling, spilling


def test_the_checker_catches_what_the_interpreter_lets_through(tmp_path):
    """A loop-carried value that changes shape (the pooled-mode bug of the old dK/dV kernel: a mask
    of the key tile reassigned from a query tile) and a pipeline deeper than shared memory: the
    interpreter runs both, both must fail here."""
    (tmp_path / "broken_kernels.py").write_text(textwrap.dedent('''
        import triton
        import triton.language as tl

        @triton.jit
        def shape_changes_in_loop(x_ptr, out_ptr, n, ROWS: tl.constexpr, COLS: tl.constexpr):
            mask = tl.arange(0, ROWS)[:, None] < n
            for _ in range(n):
                mask = tl.arange(0, COLS)[:, None] < n
            tl.store(out_ptr + tl.arange(0, 16), tl.load(x_ptr + tl.arange(0, 16)), mask=tl.arange(0, 16) < n)

        @triton.jit
        def too_much_shared_memory(x_ptr, out_ptr, n, SIDE: tl.constexpr):
            tile = tl.arange(0, SIDE)[:, None] * SIDE + tl.arange(0, SIDE)[None, :]
            acc = tl.zeros([SIDE, SIDE], tl.float32)
            for i in range(n):  # eight pipeline stages of two 128×128 fp16 tiles: 288 KB
                acc += tl.dot(tl.load(x_ptr + i * SIDE + tile), tl.load(x_ptr + i * SIDE + 1 + tile))
            tl.store(out_ptr + tile, acc)
    '''))
    script = textwrap.dedent('''
        import json, torch, broken_kernels
        from tools.triton_aot import captured_launches, compile_launch
        x, out = torch.randn(1 << 16, dtype=torch.float16), torch.empty(1 << 16)
        with captured_launches(90) as recorder:
            broken_kernels.shape_changes_in_loop[(1,)](x, out, 4, ROWS=16, COLS=64)
            broken_kernels.too_much_shared_memory[(1,)](x, out, 8, SIDE=128, num_warps=8, num_stages=8)
        results = [compile_launch(launch, 90) for launch in recorder.launches.values()]
        print(json.dumps([[r.kernel, r.ok, r.error, r.shared, r.shared_limit] for r in results]))
    ''')
    env = compile_env(tmp_path)
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (loop, loop_ok, loop_error, *_), (big, big_ok, big_error, shared, limit) = json.loads(run.stdout.splitlines()[-1])
    assert loop.endswith("shape_changes_in_loop") and not loop_ok and "Loop-carried" in loop_error
    assert big.endswith("too_much_shared_memory") and not big_ok and big_error is None and shared > limit
