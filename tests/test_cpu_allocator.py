"""The CPU allocator policy, and the page faults every CPU pass records.

The policies are tried in a fresh interpreter: 'retain' cannot be undone within a process. Where a freed block
goes is read from glibc's own accounting (``mallinfo2``: the bytes its heap holds, and those it holds in blocks
mapped apart from it), not from page-fault counts, which depend on the kernel (transparent huge pages fault a
block in 512 pages at a time) and on whatever else the process does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from background import Job, background, finished, user_env
from bench.cli import sweep as sweep_cli
from bench.core.measure import retain_available, use_cpu_allocator

REPO = Path(__file__).resolve().parents[1]
BLOCK = 64 << 20  # above glibc's largest mmap threshold, 32 MiB
CYCLES = 6

# One interpreter allocates and frees a 64 MiB block six times under 'system', then six times under 'retain',
# noting what glibc holds (its heap, the part of it in use, the blocks mapped apart) before and after each step;
# times a pass that does the same under each policy; then asks for 'system' again.
PROBE = f"""
CYCLES = {CYCLES}
import ctypes, json, torch
from bench.core.measure import TimingPolicy, time_rounds, use_cpu_allocator

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2

def held():
    info = libc.mallinfo2()
    return {{"heap": info.arena, "heap_in_use": info.uordblks, "mapped": info.hblkhd}}

def touch_block():
    torch.ones(16 << 20, dtype=torch.float32).sum()

out = {{}}
for policy in ("system", "retain"):
    use_cpu_allocator(policy)
    states = [held()]  # then after each allocation and each free
    for _ in range(CYCLES):
        block = torch.ones(16 << 20, dtype=torch.float32)
        states.append(held())
        del block
        states.append(held())
    out[policy] = states
    timing = time_rounds({{"pass": touch_block}}, torch.device("cpu"),
                         TimingPolicy(min_time_s=0.0, min_rounds=5, max_rounds=5, cpu_allocator=policy))["pass"]
    out[policy + " faults"] = list(timing.page_faults)
try:
    use_cpu_allocator("system")
    out["back to system"] = "accepted"
except RuntimeError as exc:
    out["back to system"] = str(exc)
print(json.dumps(out))
"""


@background("probe")
def probe_job(param: None, folder: Path) -> dict[str, Job]:
    """The probe's interpreter (run in the background while other tests run: tests/background.py)."""
    return {"probe": Job([sys.executable, "-c", PROBE], REPO, user_env(), timeout=120)}


@pytest.fixture(scope="module")
def probe(request, tmp_path_factory) -> dict:
    job = finished(request, tmp_path_factory)["probe"]
    assert job.returncode == 0, job.output[-3000:]
    return json.loads(job.output.strip().splitlines()[-1])


@pytest.mark.skipif(not retain_available(), reason="'retain' and mallinfo2 need glibc")
def test_system_maps_each_large_block_apart_and_returns_it_when_freed(probe):
    start, *steps = probe["system"]
    allocated, freed = steps[0::2], steps[1::2]
    assert all(state["mapped"] - start["mapped"] >= BLOCK for state in allocated)  # mapped afresh each time
    assert all(state["mapped"] == start["mapped"] for state in freed)  # and back to the kernel each time


@pytest.mark.skipif(not retain_available(), reason="'retain' and mallinfo2 need glibc")
def test_retain_keeps_freed_blocks_in_the_process(probe):
    """Nothing is mapped apart: every block comes from the heap; a freed block is freed (the heap's part in use goes
    back) but the heap keeps its memory, never shrinking, so that later passes find it there instead of faulting
    fresh pages in. (Whether glibc hands a given freed block out again depends on its bins and on alignment: the
    rows' page_faults show what a pass paid.)"""
    start, *steps = probe["retain"]
    allocated, freed = steps[0::2], steps[1::2]
    assert {state["mapped"] for state in probe["retain"]} == {start["mapped"]}
    assert all(state["heap_in_use"] - start["heap_in_use"] >= BLOCK for state in allocated)
    assert all(after["heap"] == before["heap"] and after["heap_in_use"] < before["heap_in_use"] - BLOCK // 2
               for before, after in zip(allocated, freed))  # freed, and the heap kept it
    heaps = [state["heap"] for state in probe["retain"]]
    assert heaps == sorted(heaps) and heaps[-1] > heaps[0]  # grown for the blocks, and never given back


@pytest.mark.skipif(not retain_available(), reason="'retain' needs glibc")
def test_every_round_of_a_cpu_pass_records_its_page_faults(probe):
    """The rows' page_faults: one count per timed round, under either policy."""
    for policy in ("system", "retain"):
        faults = probe[f"{policy} faults"]
        assert len(faults) == 5 and all(isinstance(count, int) and count >= 0 for count in faults), faults


@pytest.mark.skipif(not retain_available(), reason="'retain' needs glibc")
def test_system_after_retain_refuses_rather_than_mislabel_the_timing(probe):
    assert "already retains" in probe["back to system"] and "fresh process" in probe["back to system"]


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match=r"'keep'.*retain, system"):
        use_cpu_allocator("keep")


def test_cpu_allocator_flag_on_a_gpu_run_exits_2_naming_it(capsys):
    parser = argparse.ArgumentParser(prog="run_bench.py")
    args = argparse.Namespace(cpu_allocator="retain")
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.cpu_allocator_policy(parser, args, "cuda")
    assert exit_info.value.code == 2
    assert "--cpu-allocator retain: applies to CPU runs" in capsys.readouterr().err


def test_gpu_run_without_the_flag_has_no_cpu_policy():
    assert sweep_cli.cpu_allocator_policy(argparse.ArgumentParser(), argparse.Namespace(cpu_allocator=None), "cuda") is None
