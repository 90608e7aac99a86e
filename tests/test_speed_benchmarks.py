"""pytest-benchmark timings of every attention variant at a small CPU size, grouped for side-by-side output.

The project's CI runs this module with ``--benchmark-disable`` (set in pyproject.toml): each pass
runs once and is checked, nothing is timed. To time and gate on speed in your own CI::

    pytest tests/test_speed_benchmarks.py --benchmark-enable --benchmark-only --benchmark-autosave
    pytest tests/test_speed_benchmarks.py --benchmark-enable --benchmark-only \\
        --benchmark-compare --benchmark-compare-fail=median:10%
"""

from __future__ import annotations

import pytest
import torch

from bench import Case
from bench.core.measure import make_pass
from bench.suites.attention_rows import build_module

RESOLUTION, DIM, HEADS, BATCH = 28, 64, 2, 2
VARIANTS = {
    "full": ("full", ()),
    "window w7 s3": ("window", (("shift_size", 3), ("window_size", 7))),
    "deformable s2": ("deformable", (("fmap_size", RESOLUTION), ("stride", 2))),
    "bra topk4": ("bra", (("topk", 4),)),
    "bra topk4 avgpool2": ("bra", (("kv_downsample_mode", "avgpool"), ("kv_downsample_ratio", 2), ("topk", 4))),
}


@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_attention_speed(benchmark, variant, backend, phase):
    family, options = VARIANTS[variant]
    case = Case(family, backend, options, BATCH, RESOLUTION, DIM, HEADS, "float32", "cpu", phase)
    module, x, grad_out = build_module(case, seed=0)
    benchmark.group = f"{phase} {RESOLUTION}² C{DIM} h{HEADS} batch {BATCH} float32"
    benchmark.extra_info.update(family=family, backend=backend, options=dict(options))
    outputs = benchmark(make_pass(module, x, phase, grad_out))
    assert outputs[0].shape == x.shape and torch.isfinite(outputs[0]).all()
    if phase == "fwd+bwd":  # input and every parameter got a finite gradient
        assert len(outputs) == 2 + len(list(module.parameters()))
        assert all(torch.isfinite(g).all() for g in outputs[1:])
