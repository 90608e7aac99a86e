"""The fused Triton BRA kernels (backend 'triton') against the float64 naive reference of test_bra.

On a machine without CUDA the kernels run under Triton's interpreter (conftest sets TRITON_INTERPRET=1
before triton is first imported), which executes them on CPU tensors in fp32 and fp16. The shapes
are tiny because the interpreter runs every program in Python, but they reach every code path:
regions of 7×7 (padded, masked) tokens, pooled key regions of another size, heads packed into one
tile, qk_dim ≠ dim, soft routing with the routing-weight gradient, and topk = every region.
"""

from __future__ import annotations

import copy

import pytest
import torch

import attentions
from attentions import AttentionConfigError, BackendUnavailableError
from attentions.bra import triton_backend
from reference_helpers import F64, grads
from test_bra import ROUTINGS, _rel_err as rel_err, make, naive_bra

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def triton_kernels():
    """The kernel module (interpreted on the CPU: conftest sets TRITON_INTERPRET=1 without CUDA)."""
    from attentions import bra_triton
    return bra_triton


def check_triton(shape, dtype, tol_out, tol_grad, seed=0, **opts):
    """Forward and the gradients of the input and of every parameter against the naive reference.

    In fp16 a near-tie of two routing logits may pick another region than in float64; the
    reference then follows the run's own routing (``force_idx``), so only the token attention and
    its gradients are judged."""
    module, o = make(16, opts.pop("num_heads", 2), seed=seed, **opts)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*shape, 16, generator=g, dtype=F64)
    low = copy.deepcopy(module).to(device=DEVICE, dtype=dtype)
    x_low = x.to(device=DEVICE, dtype=dtype).requires_grad_()
    with torch.no_grad():
        _, _, r_idx, _ = low(x_low, ret_attn_mask=True)  # the run's routing, from the torch backend
    low.backend = "triton"
    out = low(x_low)
    assert out.dtype == dtype and out.shape == x.shape
    P = {k: v.detach().double().cpu().requires_grad_() for k, v in low.named_parameters()}
    names = sorted(P)
    x_ref = x_low.detach().double().cpu().requires_grad_()
    ref, *_ = naive_bra(x_ref, P, o, force_idx=r_idx.cpu())
    gout = torch.randn(ref.shape, generator=g, dtype=F64)
    expected = grads(ref, [x_ref] + [P[n] for n in names], gout, allow_unused=True)
    low_params = dict(low.named_parameters())
    got = grads(out, [x_low] + [low_params[n] for n in names], gout.to(device=DEVICE, dtype=dtype),
                allow_unused=True)
    assert rel_err(out, ref) < tol_out, rel_err(out, ref)
    for name, a, b in zip(["input"] + names, got, expected):
        if b.norm() > 0:
            assert rel_err(a, b) < tol_grad, (name, rel_err(a, b))
        else:
            assert a.abs().max() == 0, name


SHAPES = [  # (B, H, W), options: every one reaches a distinct path of the kernels
    ((1, 14, 14), dict(n_win=2, topk=2)),  # 7×7 regions: 49 tokens padded to 64 and masked
    ((2, 6, 6), dict(n_win=3, topk=4, num_heads=4)),  # 2×2 regions: four heads packed per tile
    ((1, 8, 8), dict(n_win=2, topk=3, kv_downsample_mode="avgpool", kv_downsample_ratio=2)),  # 16 q, 4 k tokens
    ((1, 12, 12), dict(n_win=2, topk=2, kv_downsample_mode="ada_maxpool", kv_per_win=3)),  # 36 q, 9 k tokens
    ((1, 6, 6), dict(n_win=3, topk=9, qk_dim=8, param_attention="qkv")),  # every region; qk 4 / v 8 per head
    ((1, 7, 5), dict(n_win=2, topk=2, auto_pad=True, side_dwconv=0)),  # padded map, no LePE
]


@pytest.mark.parametrize("shape, opts", SHAPES)
def test_fp32_forward_and_gradients_match_naive(shape, opts):
    check_triton(shape, torch.float32, 1e-5, 1e-5, **opts)


@pytest.mark.parametrize("routing", ["soft", "soft_diff_param"])
def test_soft_routing_inside_the_kernels(routing):
    """soft_diff_param trains the routing through the weights: router.emb's gradient comes from the
    kernels' routing-weight gradient alone."""
    check_triton((1, 8, 8), torch.float32, 1e-5, 1e-5, n_win=2, topk=3, **ROUTINGS[routing])


@pytest.mark.parametrize("shape, opts", [SHAPES[0], SHAPES[1], SHAPES[3]])
def test_fp16(shape, opts):
    check_triton(shape, torch.float16, 5e-3, 2e-2, **opts)


@pytest.mark.skipif(DEVICE == "cpu", reason="Triton's interpreter has no bf16")
def test_bf16_on_cuda():
    check_triton((2, 14, 14), torch.bfloat16, 3e-2, 6e-2, n_win=2, topk=2)


def test_backward_is_deterministic():
    module, _ = make(16, 2, seed=3, backend="triton", n_win=3, topk=3, soft_routing=True, diff_routing=True)
    module = module.float().to(DEVICE)
    x = torch.randn(1, 6, 6, 16, device=DEVICE, requires_grad=True)
    gout = torch.randn(1, 6, 6, 16, device=DEVICE)
    first = grads(module(x), [x, *module.parameters()], gout)
    second = grads(module(x), [x, *module.parameters()], gout)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_heads_per_tile(triton_kernels):
    pack = triton_kernels.heads_per_tile
    assert pack(8, 4, 4) == 8  # BiFormer stage 3 (2×2 regions): all 8 heads in a 32-row tile
    assert pack(4, 16, 16) == 4  # stage 2 (4×4 regions): 64 rows
    assert pack(2, 64, 64) == 1  # stage 1 (8×8 regions)
    assert pack(6, 4, 4) == 2  # only powers of two that divide the heads
    assert pack(8, 4, 49) == 1  # the key side counts too


def test_transposed_routing_lists_each_key_regions_routers(triton_kernels):
    r_idx = torch.tensor([[[1, 2], [2, 0], [2, 1]], [[0, 1], [0, 2], [1, 0]]])  # B 2, 3 regions, topk 2
    q, kv = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 16)
    launch = triton_kernels.RoutedLaunch(q, kv, r_idx, num_heads=2, qk_dim=8, scale=1.0)
    entries, starts = launch.transposed_routing(r_idx)
    flat = r_idx.flatten()
    for batch in range(2):
        for region in range(3):
            key = batch * 3 + region
            listed = entries[starts[key]:starts[key + 1]].tolist()
            expected = [e for e in range(batch * 6, batch * 6 + 6) if flat[e] == region]
            assert listed == expected  # stable: in (query region, slot) order


def test_fvcore_counts_the_fused_op():
    """Without its handle fvcore would count the fused attention as zero."""
    from bench.flops import count_macs
    module, _ = make(16, 2, backend="triton", n_win=2, topk=3, kv_downsample_mode="avgpool", kv_downsample_ratio=2)
    module = module.float().to(DEVICE)
    counted, uncounted = count_macs(module, torch.randn(1, 8, 8, 16, device=DEVICE))
    assert counted == module.macs(1, 8, 8).total
    assert not any("RoutedAttention" in op for op in uncounted)


def test_unavailable_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, reason = triton_backend().availability("cpu")
    assert not ok and "runs on cuda, not on cpu" in reason


def test_refusals():
    module, _ = make(16, 2, backend="triton", n_win=2, topk=2)
    with torch.no_grad(), pytest.raises(AttentionConfigError, match="ret_attn_mask.*'triton'"):
        module.float().to(DEVICE)(torch.randn(1, 8, 8, 16, device=DEVICE), ret_attn_mask=True)
    if DEVICE == "cpu":
        with torch.no_grad(), pytest.raises(BackendUnavailableError, match="bfloat16"):
            module.bfloat16()(torch.randn(1, 8, 8, 16, dtype=torch.bfloat16))
    assert "triton" in attentions.list_attentions()["bra"]["backends"]
