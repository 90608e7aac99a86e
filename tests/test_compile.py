"""``torch.compile`` of every family's eager backends (``default`` mode, CPU Inductor) computes what the eager
module computes: its output and gradients judged against float64 math with the harness's rule
(``bench.core.accuracy.judge``: within max(2 × the eager reference backend's own error, the dtype's floor)).

Small shapes (28² maps, batch 1) keep each compile to seconds; the slow tier runs them."""

from __future__ import annotations

import copy

import pytest
import torch

import attentions
from bench.core.accuracy import exact_pass, judge
from bench.core.measure import make_pass, pass_tensor_names
from reference_helpers import eager_backends
from registry_cases import families

pytestmark = pytest.mark.slow  # a compile per case: seconds each

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
