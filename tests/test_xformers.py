"""The 'xformers' backends of full and window attention against the float64 naive references.

xformers has no CPU operator. Without CUDA these tests check the suite's side of the call — the
folding of batch and windows into xformers' (B, L, heads, d) layout, the bias materialised per
batch entry with aligned rows, and the unfolding — through a stand-in for
``xformers.ops.memory_efficient_attention`` that asserts xformers' input contract and computes
plain attention. With CUDA and xformers installed they run the real operator.
"""

from __future__ import annotations

import sys
import types
from dataclasses import replace

import pytest
import torch

import attentions
from reference_helpers import F64, random_module, run_module, run_reference
from registry_cases import families_with_backend
from test_full import naive_full
from test_window import naive_for

pytestmark = pytest.mark.cuda
REAL = torch.cuda.is_available() and attentions.backend_available("full", "xformers", "cuda")[0]
DEVICE = "cuda" if REAL else "cpu"
DTYPE, TOLERANCE = (torch.float32, 1e-4) if REAL else (F64, 1e-10)  # xformers has no float64


def stand_in_memory_efficient_attention(query, key, value, attn_bias=None, scale=None):
    """Plain attention with xformers' contract: (B, L, heads, d) inputs, a (B, heads, Lq, Lk) bias
    with no broadcasting and a row stride that is a multiple of 8."""
    assert query.dim() == key.dim() == value.dim() == 4
    batch, queries, heads, _ = query.shape
    if attn_bias is not None:
        assert attn_bias.shape == (batch, heads, queries, key.shape[1])
        assert attn_bias.stride(-2) % 8 == 0 and attn_bias.stride(-1) == 1
    logits = torch.einsum("bqhd,bkhd->bhqk", query, key) * scale
    if attn_bias is not None:
        logits = logits + attn_bias
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), value)


@pytest.fixture
def xformers_here(monkeypatch):
    """Yield a function that lets a module's 'xformers' backend run here (the stand-in on the CPU)."""
    if not REAL:
        ops = types.ModuleType("xformers.ops")
        ops.memory_efficient_attention = stand_in_memory_efficient_attention
        package = types.ModuleType("xformers")
        package.ops = ops
        monkeypatch.setitem(sys.modules, "xformers", package)
        monkeypatch.setitem(sys.modules, "xformers.ops", ops)

    def enable(module: attentions.AttentionModule) -> attentions.AttentionModule:
        if not REAL:  # an instance-level copy: the registry's record stays CUDA-only
            module.backends = dict(module.backends)
            module.backends["xformers"] = replace(module.backends["xformers"], devices=("cpu",), requires=(),
                                                  dtypes=(F64,))
        module.backend = "xformers"
        return module.to(device=DEVICE, dtype=DTYPE)

    return enable


def check_against_naive(module, shape, naive) -> dict[str, torch.Tensor]:
    """Output and every gradient against ``naive`` in float64; returns the reference's parameter grads."""
    x, g = torch.randn(2, *shape, dtype=DTYPE, device=DEVICE)
    out, gx, gp = run_module(module, x, g)
    ref, ref_gx, ref_gp = run_reference(module, x, g, naive)
    for name, got, expected in [("out", out, ref), ("input", gx, ref_gx)] + [(n, gp[n], ref_gp[n]) for n in gp]:
        torch.testing.assert_close(got.double(), expected, atol=TOLERANCE, rtol=TOLERANCE, msg=name)
    return ref_gp


@pytest.mark.parametrize("side_dwconv", [0, 5])
def test_full_matches_naive(xformers_here, side_dwconv):
    module = xformers_here(random_module("full", 3, std=0.5, dim=16, num_heads=2, side_dwconv=side_dwconv))
    check_against_naive(module, (2, 3, 5, 16), lambda x64, p: naive_full(x64, p, 2, side_dwconv=side_dwconv))


@pytest.mark.parametrize("height, width, shift", [(6, 6, 0), (7, 5, 1), (6, 9, 2)])
def test_window_with_bias_and_shift_mask_matches_naive(xformers_here, height, width, shift):
    module = xformers_here(random_module("window", 4, std=0.5, dim=8, num_heads=2, window_size=3, shift_size=shift))
    ref_gp = check_against_naive(module, (2, height, width, 8), naive_for(module))
    assert ref_gp["relative_position_bias_table"].abs().sum() > 0


def test_bias_rows_are_aligned_and_values_kept():
    from attentions.core import xformers_bias
    bias = torch.randn(4, 2, 9, 9)  # (windows, heads, queries, keys) of one image
    folded = xformers_bias(bias, (3, 4), torch.float16)
    assert folded.shape == (12, 2, 9, 9) and folded.dtype == torch.float16 and folded.stride(-2) == 16
    assert torch.equal(folded.view(3, 4, 2, 9, 9), bias.half().expand(3, 4, 2, 9, 9))


@pytest.mark.parametrize("family", families_with_backend("xformers"))
def test_unavailable_without_cuda(family):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    ok, reason = attentions.backend_available(family, "xformers", "cpu")
    assert not ok and "runs on cuda, not on cpu" in reason
    module = attentions.build(family, dim=8, num_heads=2, backend="xformers")
    with pytest.raises(attentions.BackendUnavailableError, match="xformers"):
        module(torch.randn(1, 6, 6, 8))
