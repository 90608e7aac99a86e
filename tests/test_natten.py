"""Our neighborhood attention against NATTEN's own: the ``torch`` backend and ``natten.na2d`` on the same q, k, v.

NATTEN (the test extra's 0.21.7, installed without CUDA: its Flex backend, float32, forward only on the CPU) is the
authority on the window's definition: its border, dilation and stride semantics are what ``window_starts``
reproduces. Tolerance: atol 1e-5, rtol 1e-4 in float32 (the largest difference seen over these cases is about
2e-6 of outputs of order 1). With REQUIRE_NATTEN=1, as in CI, a missing NATTEN fails instead of skipping."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import attentions
from attentions.neighborhood import NeighborhoodAttention

if importlib.util.find_spec("natten") is None and not os.environ.get("REQUIRE_NATTEN"):
    pytest.skip('NATTEN is not installed (pip install --no-build-isolation -e ".[test]"); with REQUIRE_NATTEN=1, '
                'as in CI, this fails instead', allow_module_level=True)

import natten  # noqa: E402  (after the skip)

ATOL, RTOL = 1e-5, 1e-4
CASES = [
    # (H, W, kernel, dilation, stride)
    (7, 7, 3, 1, 1), (14, 14, 7, 1, 1), (9, 13, 5, 1, 1), (13, 11, 3, 3, 1), (14, 9, 3, 2, 1), (16, 21, 7, 2, 1),
    (11, 9, 5, 1, 2), (13, 14, 5, 1, 3), (15, 10, 3, 2, 2), (12, 12, 5, 2, 5), (7, 9, 7, 1, 1),
]


def case_id(case: tuple) -> str:
    return "{}x{}-k{}-d{}-s{}".format(*case)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_torch_backend_computes_what_natten_computes(case):
    height, width, kernel, dilation, stride = case
    module = attentions.build("neighborhood", dim=64, num_heads=2, kernel_size=kernel, dilation=dilation,
                              stride=stride, rel_pos_bias=False)
    generator = torch.Generator().manual_seed(height * 100 + width + kernel)
    q, k, v = (torch.randn(2, height, width, 2, 32, generator=generator) for _ in range(3))
    ours = NeighborhoodAttention.backends["torch"].attend(module, q, k, v)
    theirs = natten.na2d(q, k, v, kernel_size=kernel, dilation=dilation, stride=stride, scale=module.scale)
    torch.testing.assert_close(ours, theirs.reshape(ours.shape), atol=ATOL, rtol=RTOL)


def test_the_natten_backend_runs_the_module_as_the_torch_backend_does():
    """The same module, backend switched: NATTEN's na2d inside our projections."""
    module = attentions.build("neighborhood", dim=32, num_heads=2, kernel_size=5, dilation=2, rel_pos_bias=False)
    x = torch.randn(2, 12, 11, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        module.backend = "natten"
        torch.testing.assert_close(module(x), expected, atol=ATOL, rtol=RTOL)


def test_a_comparison_that_differs_fails():
    """The check can fail: a window one position off (stride 1 against NATTEN's stride 2) is far outside it."""
    module = attentions.build("neighborhood", dim=64, num_heads=2, kernel_size=5, rel_pos_bias=False)
    q, k, v = (torch.randn(1, 11, 9, 2, 32, generator=torch.Generator().manual_seed(n)) for n in range(3))
    ours = NeighborhoodAttention.backends["torch"].attend(module, q, k, v)
    theirs = natten.na2d(q, k, v, kernel_size=5, stride=2, scale=module.scale).reshape(ours.shape)
    assert (ours - theirs).abs().max() > 100 * ATOL
