"""The CPU allocator policy and the page-fault count of every CPU pass.

The policies are tried in a fresh interpreter: 'retain' cannot be undone within a process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import sweep as sweep_cli
from bench.core.measure import retain_available, use_cpu_allocator

REPO = Path(__file__).resolve().parents[1]

# One interpreter times a pass that allocates, touches and frees a 64 MiB block (above glibc's largest
# mmap threshold, 32 MiB) under 'system', then under 'retain', then asks for 'system' again.
PROBE = """
import json, torch
from bench.core.measure import TimingPolicy, time_rounds, use_cpu_allocator
def touch_block():
    torch.ones(16 << 20, dtype=torch.float32).sum()
faults = {}
for policy in ("system", "retain"):  # 3 warm-up rounds, then 5 timed
    timing = time_rounds({"pass": touch_block}, torch.device("cpu"),
                         TimingPolicy(min_time_s=0.0, min_rounds=5, max_rounds=5, cpu_allocator=policy))["pass"]
    faults[policy] = timing.page_faults
try:
    use_cpu_allocator("system")
    faults["back_to_system"] = "accepted"
except RuntimeError as exc:
    faults["back_to_system"] = str(exc)
print(json.dumps(faults))
"""

BLOCK_PAGES = (64 << 20) // 4096


@pytest.fixture(scope="module")
def probe() -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not retain_available(), reason="'retain' needs glibc")
def test_retain_reuses_freed_blocks_where_system_faults_them_in_again(probe):
    system, retain = probe["system"], probe["retain"]
    assert len(system) == len(retain) == 5
    assert min(system) >= BLOCK_PAGES // 2, system  # every call faults the block in afresh
    assert max(retain) < BLOCK_PAGES // 20, retain  # after the warm-up, the freed block is reused


@pytest.mark.skipif(not retain_available(), reason="'retain' needs glibc")
def test_system_after_retain_refuses_rather_than_mislabel_the_timing(probe):
    assert "already retains" in probe["back_to_system"] and "fresh process" in probe["back_to_system"]


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
