"""Tests of the ``full`` family (ViT MHSA, BiFormer's AttentionLePE) against a naive reference."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import attentions
from attentions import BackendUnavailableError
from attentions import AttentionConfigError
from reference_helpers import (CudaCase, check_against_reference, check_backend_switch, eager_backends,
                               check_float32_against_reference, random_module, ref_params)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

make = functools.partial(random_module, "full", std=0.3)


def naive_dwconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise 'same' conv on an (H, W, C) map, explicit loops over pixels and kernel taps."""
    height, width, _ = x.shape
    k = weight.shape[-1]
    pad = k // 2
    rows = []
    for i in range(height):
        row = []
        for j in range(width):
            acc = bias
            for a in range(k):
                for b in range(k):
                    y, xx = i + a - pad, j + b - pad
                    if 0 <= y < height and 0 <= xx < width:   # zero padding
                        acc = acc + weight[:, 0, a, b] * x[y, xx]
            row.append(acc)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def naive_full(x: torch.Tensor, p: dict[str, torch.Tensor], num_heads: int,
               qk_scale: float | None = None, side_dwconv: int = 0) -> torch.Tensor:
    """softmax(q·scale kᵀ) v per head over all row-major tokens, + LePE(x), then proj."""
    batch, height, width, dim = x.shape
    hd = dim // num_heads
    scale = qk_scale if qk_scale else hd ** -0.5
    wqkv = p["qkv.weight"]
    bqkv = p.get("qkv.bias")
    outs = []
    for b in range(batch):
        tokens = x[b].reshape(height * width, dim)   # row-major flatten
        qkv = tokens @ wqkv.T
        if bqkv is not None:
            qkv = qkv + bqkv
        q, k, v = qkv[:, :dim], qkv[:, dim:2 * dim], qkv[:, 2 * dim:]
        heads = []
        for h in range(num_heads):
            sl = slice(h * hd, (h + 1) * hd)
            logits = (q[:, sl] * scale) @ k[:, sl].T
            logits = logits - logits.max(dim=-1, keepdim=True).values
            w = logits.exp()
            w = w / w.sum(dim=-1, keepdim=True)
            heads.append(w @ v[:, sl])
        attn = torch.cat(heads, dim=-1).reshape(height, width, dim)
        if side_dwconv:
            attn = attn + naive_dwconv(x[b], p["lepe.weight"], p["lepe.bias"])
        outs.append(attn @ p["proj.weight"].T + p["proj.bias"])
    return torch.stack(outs)


# tests/test_cuda.py's case: every CUDA backend against naive_full
CUDA_CASE = CudaCase((2, 14, 14), {}, lambda module, x: lambda x64, p: naive_full(x64, p, module.num_heads))


# --------------------------------------------------------------------------------------------
# correctness vs the naive reference
# --------------------------------------------------------------------------------------------

CONFIGS = [
    dict(side_dwconv=0, qkv_bias=True),
    dict(side_dwconv=0, qkv_bias=False),
    dict(side_dwconv=5, qkv_bias=True),
    dict(side_dwconv=5, qkv_bias=False),
    dict(side_dwconv=3, qkv_bias=True, qk_scale=0.7),
]


@pytest.mark.parametrize("backend", eager_backends("full"))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_matches_naive_reference_float64(backend, cfg):
    torch.manual_seed(1)
    dim, heads = 8, 2
    module = make(seed=11, dim=dim, num_heads=heads, backend=backend, **cfg)
    assert ("lepe.weight" in module.state_dict()) == (cfg["side_dwconv"] > 0)
    assert ("qkv.bias" in module.state_dict()) == cfg["qkv_bias"]
    x = torch.randn(2, 3, 5, dim, dtype=torch.float64)      # non-square map
    g = torch.randn(2, 3, 5, dim, dtype=torch.float64)
    ref_kw = {k: cfg[k] for k in ("side_dwconv", "qk_scale") if k in cfg}
    gp, rgp = check_against_reference(module, x, g, lambda x64, p: naive_full(x64, p, heads, **ref_kw),
                                      atol=1e-10, rtol=1e-10)
    assert len(gp) >= 3
    for name in gp:
        assert rgp[name].abs().sum() > 0, name  # every parameter influences the output


@pytest.mark.parametrize("backend", eager_backends("full"))
def test_float32_close_to_float64_reference(backend):
    torch.manual_seed(2)
    dim, heads = 16, 4
    module = make(seed=5, dtype=torch.float32, dim=dim, num_heads=heads, backend=backend, side_dwconv=5)
    x = torch.randn(2, 4, 6, dim)
    check_float32_against_reference(module, x, lambda x64, p: naive_full(x64, p, heads, side_dwconv=5),
                                    atol=2e-5, rtol=1e-4)


def test_lepe_acts_on_input_not_values():
    """LePE is a depthwise conv on the attention input x (BiFormer's AttentionLePE)."""
    torch.manual_seed(3)
    dim = 4
    module = make(seed=3, dim=dim, num_heads=1, side_dwconv=3)
    x = torch.randn(1, 3, 4, dim, dtype=torch.float64)
    with_lepe = module(x)
    with torch.no_grad():
        module.lepe.weight.zero_()
        module.lepe.bias.zero_()
    without = module(x)
    # difference = proj.weight @ lepe(x) (proj bias cancels)
    p = ref_params(make(seed=3, dim=dim, num_heads=1, side_dwconv=3))
    lepe_x = naive_dwconv(x[0], p["lepe.weight"], p["lepe.bias"])
    torch.testing.assert_close(with_lepe[0] - without[0], lepe_x @ p["proj.weight"].T, atol=1e-12, rtol=1e-10)


def test_tokens_row_major_permutation_equivariance_without_lepe():
    """Without LePE, full attention is equivariant to any permutation of the pixels."""
    torch.manual_seed(4)
    module = make(seed=4, dim=8, num_heads=2)
    x = torch.randn(1, 3, 4, 8, dtype=torch.float64)
    perm = torch.randperm(12)
    xp = x.reshape(1, 12, 8)[:, perm].reshape(1, 3, 4, 8)
    torch.testing.assert_close(module(xp).reshape(1, 12, 8), module(x).reshape(1, 12, 8)[:, perm],
                               atol=1e-12, rtol=1e-12)


def test_batch_elements_independent():
    torch.manual_seed(5)
    module = make(seed=6, dim=8, num_heads=2, side_dwconv=3)
    x = torch.randn(3, 2, 3, 8, dtype=torch.float64)
    full = module(x)
    for b in range(3):
        torch.testing.assert_close(module(x[b:b + 1]), full[b:b + 1], atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# backends, macs
# --------------------------------------------------------------------------------------------

def test_backend_switch_keeps_state_and_output():
    torch.manual_seed(7)
    module = make(seed=7, dim=8, num_heads=2, side_dwconv=5)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    check_backend_switch(module, x, atol=1e-12, rtol=1e-12)


def test_state_dict_keys_and_shapes():
    module = attentions.build("full", dim=8, num_heads=2, side_dwconv=5, qkv_bias=False)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "qkv.weight": (24, 8), "proj.weight": (8, 8), "proj.bias": (8,),
        "lepe.weight": (8, 1, 5, 5), "lepe.bias": (8,),
    }
    assert math.isclose(module.scale, 4 ** -0.5)
    assert attentions.build("full", dim=8, num_heads=2, qk_scale=0.25).scale == 0.25


@pytest.mark.parametrize("side", [0, 5])
def test_macs_hand_count(side):
    module = attentions.build("full", dim=8, num_heads=2, side_dwconv=side)
    batch, height, width, dim = 2, 3, 5, 8
    n = height * width  # 15 tokens
    macs = module.macs(batch, height, width)
    expected_proj = 2 * 15 * 8 * 4 * 8          # qkv (3·dim²) + proj (dim²) per token
    expected_attn = 2 * 15 * 15 * 2 * 8          # q·k and attn·v
    expected_pos = 2 * 15 * 8 * 25 if side else 0
    assert expected_proj == batch * n * dim * 4 * dim
    assert macs["projections"] == expected_proj == 7680
    assert macs["attention"] == expected_attn == 7200
    assert macs["positional"] == expected_pos
    assert macs.total == 7680 + 7200 + (6000 if side else 0)


# --------------------------------------------------------------------------------------------
# bad options (the generic bad inputs of every family are in test_registry.py)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [2, 4, -1])
def test_bad_side_dwconv(side):
    with pytest.raises(AttentionConfigError, match=rf"side_dwconv.*got {side}"):
        attentions.build("full", dim=8, num_heads=2, side_dwconv=side)


@pytest.mark.parametrize("kernel", ["efficient", "cudnn"])
def test_forced_sdpa_kernels_say_where_they_cannot_run(kernel):
    ok, reason = attentions.backend_available("full", f"sdpa_{kernel}", "cpu")
    assert not ok and "runs on cuda, not on cpu" in reason
    module = attentions.build("full", dim=8, num_heads=2, backend=f"sdpa_{kernel}")
    with pytest.raises(BackendUnavailableError, match=f"sdpa_{kernel}.*runs on cuda"):
        module(torch.randn(1, 3, 3, 8))
    # the kernel function itself, handed CPU tensors it cannot take: a named error, not PyTorch's generic one
    q = torch.randn(1, 2, 9, 4)
    with pytest.raises(BackendUnavailableError, match=f"SDPA's {kernel} kernel cannot run this call"):
        module.backends[f"sdpa_{kernel}"].attend(q, q, q, 0.5)


def test_flex_forward_close_to_float64_reference():
    """Compiled FlexAttention (forward only on the CPU) against the float64 reference."""
    torch.manual_seed(2)
    module = make(seed=5, dtype=torch.float32, dim=16, num_heads=4, backend="flex", side_dwconv=5)
    x = torch.randn(2, 4, 6, 16)
    with torch.no_grad():
        check_float32_against_reference(module, x, lambda x64, p: naive_full(x64, p, 4, side_dwconv=5),
                                        atol=2e-5, rtol=1e-4)
    with pytest.raises(BackendUnavailableError, match="no backward on cpu"):
        module(x)
