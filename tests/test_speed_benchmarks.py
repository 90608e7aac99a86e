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
from reference_helpers import eager_backends
from registry_cases import families

RESOLUTION, DIM, HEADS, BATCH = 28, 64, 2, 2
# The variants with options of their own; every other registered family runs with its defaults, under its name.
OWN_VARIANTS = {
    "window w7 s3": ("window", (("shift_size", 3), ("window_size", 7))),
    "deformable s2": ("deformable", (("fmap_size", RESOLUTION), ("stride", 2))),
    "bra topk4": ("bra", (("topk", 4),)),
    "bra topk4 avgpool2": ("bra", (("kv_downsample_mode", "avgpool"), ("kv_downsample_ratio", 2), ("topk", 4))),
}
VARIANTS = {**{family: (family, ()) for family in families() if family not in {f for f, _ in OWN_VARIANTS.values()}},
            **OWN_VARIANTS}


def cases() -> list:
    """(variant, backend) for every variant and each of its family's eager CPU backends (FlexAttention and the
    Triton kernels compile: their timings belong on a GPU, with run_bench.py)."""
    return [pytest.param(variant, backend, id=f"{variant}-{backend}")
            for variant, (family, _) in VARIANTS.items() for backend in eager_backends(family)]


@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant, backend", cases())
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
