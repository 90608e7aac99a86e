"""Tests of ``attentions.bra.BiLevelRoutingAttention`` (BiFormer's bi-level routing attention).

Everything numeric is checked against ``naive_bra`` below: an independent float64 reference written
from the specification of BiFormer's ``ops/bra_legacy.py`` with explicit loops over batch, query
regions, routed regions and heads. It reads only the module's parameters (by their state_dict names)
and the constructor options, never the module's helpers.
"""

from __future__ import annotations

import copy
import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F

import attentions
from attentions import AttentionConfigError, AttentionModule, BiLevelRoutingAttention
from reference_helpers import F64, CudaCase, Naive, check_backend_switch, eager_backends, grads, random_module

MODES = ("identity", "avgpool", "maxpool", "ada_avgpool", "ada_maxpool")
BRA_BACKENDS = eager_backends("bra")  # torch, sdpa, chunked; flex and triton are tested on their own

# Constructor options and defaults of upstream BiFormer (besides dim / num_heads=8 / backend).
SPEC_DEFAULTS = dict(n_win=7, qk_dim=None, qk_scale=None, kv_per_win=4, kv_downsample_ratio=4,
                     kv_downsample_kernel=None, kv_downsample_mode="identity", topk=4, param_attention="qkvo",
                     param_routing=False, diff_routing=False, soft_routing=False, side_dwconv=3, auto_pad=False)

ROUTINGS = {
    "hard": dict(),
    "soft": dict(soft_routing=True),
    "soft_diff": dict(soft_routing=True, diff_routing=True),
    "soft_diff_param": dict(soft_routing=True, diff_routing=True, param_routing=True),
}


# --------------------------------------------------------------------------------------------------
# naive reference
# --------------------------------------------------------------------------------------------------

def full_options(dim: int, num_heads: int, **opts) -> dict:
    unknown = set(opts) - set(SPEC_DEFAULTS)
    assert not unknown, unknown
    return dict(SPEC_DEFAULTS, dim=dim, num_heads=num_heads, **opts)


def _pool_region(reg: torch.Tensor, o: dict) -> torch.Tensor:
    """reg: (channels, h, w) -> (pooled tokens, channels), pooled tokens in row-major order."""
    mode, ratio = o["kv_downsample_mode"], o["kv_downsample_ratio"]
    batched = reg[None]
    if mode == "identity":
        pooled = batched
    elif mode == "avgpool":
        pooled = F.avg_pool2d(batched, ratio, ratio) if ratio > 1 else batched
    elif mode == "maxpool":
        pooled = F.max_pool2d(batched, ratio, ratio) if ratio > 1 else batched
    elif mode == "ada_avgpool":
        pooled = F.adaptive_avg_pool2d(batched, o["kv_per_win"])
    elif mode == "ada_maxpool":
        pooled = F.adaptive_max_pool2d(batched, o["kv_per_win"])
    else:
        raise AssertionError(mode)
    channels = reg.shape[0]
    return pooled[0].reshape(channels, -1).transpose(0, 1)


def naive_bra(x: torch.Tensor, P: dict, o: dict, force_idx: torch.Tensor | None = None):
    """Plain BRA. x: (B, H, W, dim); P: parameters by state_dict name; o: full options.

    Returns (out, r_weight, r_idx, attn_weight) with attn_weight (B*R, heads, T, topk*pooled).
    ``force_idx`` (B, R, topk) replaces the top-k selection (the weights are still the softmax of
    the logits at those indices); used only for the low-precision runs.
    """
    B, H, W, C = x.shape
    n, heads, topk = o["n_win"], o["num_heads"], o["topk"]
    qk = o["qk_dim"] or C
    scale = o["qk_scale"] or qk ** -0.5
    R = n * n

    if o["auto_pad"]:
        Hp, Wp = -(-H // n) * n, -(-W // n) * n
        xp = x.new_zeros(B, Hp, Wp, C)
        xp[:, :H, :W] = x
    else:
        assert H % n == 0 and W % n == 0
        Hp, Wp, xp = H, W, x
    h, w = Hp // n, Wp // n

    proj = xp @ P["qkv.qkv.weight"].T + P["qkv.qkv.bias"]
    assert proj.shape[-1] == 2 * qk + C
    q, k, v = proj[..., :qk], proj[..., qk:2 * qk], proj[..., 2 * qk:]

    def rows_cols(r):
        j, i = divmod(r, n)
        return slice(j * h, (j + 1) * h), slice(i * w, (i + 1) * w)

    attn_out = x.new_zeros(B, Hp, Wp, C)
    r_weight = x.new_zeros(B, R, topk)
    r_idx = torch.zeros(B, R, topk, dtype=torch.long)
    mats = []
    dq, dv = qk // heads, C // heads
    for b in range(B):
        q_reg, k_reg, kv_pooled = [], [], []
        for r in range(R):
            rs, cs = rows_cols(r)
            q_reg.append(q[b, rs, cs].reshape(-1, qk).mean(0))
            k_reg.append(k[b, rs, cs].reshape(-1, qk).mean(0))
            region_kv = torch.cat([k[b, rs, cs], v[b, rs, cs]], dim=-1)  # (h, w, qk + C)
            kv_pooled.append(_pool_region(region_kv.permute(2, 0, 1), o))
        if not o["diff_routing"]:
            q_reg = [t.detach() for t in q_reg]
            k_reg = [t.detach() for t in k_reg]
        if o["param_routing"]:
            q_reg = [t @ P["router.emb.weight"].T + P["router.emb.bias"] for t in q_reg]
            k_reg = [t @ P["router.emb.weight"].T + P["router.emb.bias"] for t in k_reg]
        logits = torch.stack([torch.stack([torch.dot(q_reg[a] * scale, k_reg[c]) for c in range(R)])
                              for a in range(R)])
        for r in range(R):
            if force_idx is None:
                top_vals, top_idx = torch.topk(logits[r], topk)
            else:
                top_idx = force_idx[b, r].to(torch.long)
                top_vals = logits[r][top_idx]
            weights = torch.softmax(top_vals, dim=0)
            r_weight[b, r] = weights
            r_idx[b, r] = top_idx
            keys, values = [], []
            for t in range(topk):
                src = kv_pooled[int(top_idx[t])]
                if o["soft_routing"]:
                    src = src * weights[t]
                keys.append(src[:, :qk])
                values.append(src[:, qk:])
            K, V = torch.cat(keys), torch.cat(values)
            rs, cs = rows_cols(r)
            Q = q[b, rs, cs].reshape(-1, qk)
            head_out, head_mats = [], []
            for m in range(heads):
                logit = (Q[:, m * dq:(m + 1) * dq] * scale) @ K[:, m * dq:(m + 1) * dq].T
                A = torch.softmax(logit, dim=-1)
                head_out.append(A @ V[:, m * dv:(m + 1) * dv])
                head_mats.append(A)
            attn_out[b, rs, cs] = torch.cat(head_out, dim=-1).reshape(h, w, C)
            mats.append(torch.stack(head_mats))
    out = attn_out
    if o["side_dwconv"]:
        lepe = F.conv2d(v.permute(0, 3, 1, 2), P["lepe.weight"], P["lepe.bias"],
                        padding=o["side_dwconv"] // 2, groups=C)
        out = out + lepe.permute(0, 2, 3, 1)
    if o["param_attention"] == "qkvo":
        out = out @ P["wo.weight"].T + P["wo.bias"]
    return out[:, :H, :W], r_weight, r_idx, torch.stack(mats)


# tests/test_cuda.py's case: 8×8-token regions, BiFormer's at 224² (the flex backend's block mask is in
# FlexAttention's 128-token blocks whatever the region size: its CUDA kernels take no other)
CUDA_OPTIONS = dict(n_win=2, topk=2)


def naive_as_routed(module: AttentionModule, x: torch.Tensor) -> Naive:
    """``naive_bra`` following the run's own routing, as test_bra_triton does: in low precision a
    near-tie of two routing logits may pick another region than in float64. Every backend routes
    with the same code, so the reference backend's routing is the run's."""
    router = copy.deepcopy(module)
    router.backend = router.reference_backend
    with torch.no_grad():
        _, _, routing, _ = router(x, ret_attn_mask=True)
    options = full_options(module.dim, module.num_heads, **CUDA_OPTIONS)
    return lambda x64, params: naive_bra(x64, params, options, force_idx=routing.cpu())[0]


CUDA_CASE = CudaCase((2, 16, 16), CUDA_OPTIONS, naive_as_routed)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def make(dim: int, num_heads: int, seed: int = 0, backend: str = "torch", **opts):
    """A float64 module with random parameters (std 0.5, drawn in name order), and the full option
    dict for the reference."""
    module = random_module("bra", seed, dim=dim, num_heads=num_heads, backend=backend, std=0.5, sort_names=True,
                           **opts)
    return module, full_options(dim, num_heads, **opts)


def params_of(module) -> dict:
    return dict(module.named_parameters())


def check_against_naive(module, o, shape, seed, backends=BRA_BACKENDS, atol=1e-10, rtol=1e-9):
    """Forward and gradients (input and every parameter) of each backend vs the naive reference."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=F64)
    P = params_of(module)
    names = sorted(P)
    x_ref = x.clone().requires_grad_()
    ref_out, ref_w, ref_idx, _ = naive_bra(x_ref, P, o)
    assert ref_out.shape == x.shape
    gout = torch.randn(ref_out.shape, generator=g, dtype=F64)
    ref_grads = grads(ref_out, [x_ref] + [P[k] for k in names], gout, allow_unused=True)
    assert ref_grads[0].abs().max() > 0
    for backend in backends:
        module.backend = backend
        xm = x.clone().requires_grad_()
        out = module(xm)
        assert out.shape == x.shape and out.dtype == F64
        torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol, msg=lambda m: f"[{backend}] forward: {m}")
        got = grads(out, [xm] + [P[k] for k in names], gout, allow_unused=True)
        for name, a, b in zip(["input"] + names, got, ref_grads):
            torch.testing.assert_close(a, b, atol=atol * 10, rtol=rtol,
                                       msg=lambda m: f"[{backend}] grad of {name}: {m}")
    module.backend = "torch"
    return ref_w, ref_idx


# --------------------------------------------------------------------------------------------------
# defaults and the option matrix
# --------------------------------------------------------------------------------------------------

def test_constructor_defaults_match_upstream():
    assert attentions.family_options("bra") == SPEC_DEFAULTS
    assert inspect.signature(BiLevelRoutingAttention).parameters["num_heads"].default == 8
    m = attentions.build("bra", dim=16, num_heads=2)
    assert isinstance(m, BiLevelRoutingAttention) and m.backend == "torch"


def _matrix():
    cases = []
    for idx, (mode, routing, pa, pad) in enumerate(
            itertools.product(MODES, ROUTINGS, ("qkvo", "qkv"), (False, True))):
        topk = 1 + (idx * 5) % 9  # n_win=3: every topk 1..9 occurs, crossed with the other axes
        qk_dim = 8 if idx % 3 == 0 else None
        cases.append(pytest.param(mode, routing, pa, pad, topk, qk_dim,
                                  id=f"{mode}-{routing}-{pa}-{'pad' if pad else 'nopad'}-top{topk}-qk{qk_dim}"))
    return cases


@pytest.mark.parametrize("mode,routing,param_attention,auto_pad,topk,qk_dim", _matrix())
def test_option_matrix_matches_naive(mode, routing, param_attention, auto_pad, topk, qk_dim):
    module, o = make(12, 2, seed=topk, n_win=3, topk=topk, qk_dim=qk_dim, kv_downsample_mode=mode,
                     kv_downsample_ratio=2, kv_per_win=3, param_attention=param_attention, auto_pad=auto_pad,
                     **ROUTINGS[routing])
    # no pad: 12x12 -> regions 4x4 (pool 2x2 / ada 3x3); pad: 10x8 -> 12x9 -> regions 4x3
    shape = (2, 10, 8, 12) if auto_pad else (2, 12, 12, 12)
    check_against_naive(module, o, shape, seed=1000 + topk)


@pytest.mark.parametrize("n_win,topk", [(2, t) for t in range(1, 5)] + [(3, t) for t in range(1, 10)])
@pytest.mark.parametrize("variant", ["hard-identity-qkvo", "softdiffparam-ada_avgpool-qkv-pad"])
def test_every_topk(n_win, topk, variant):
    if variant == "hard-identity-qkvo":
        module, o = make(8, 2, seed=topk, n_win=n_win, topk=topk)
        shape = (2, 6, 6, 8)
    else:
        module, o = make(8, 2, seed=topk, n_win=n_win, topk=topk, kv_downsample_mode="ada_avgpool", kv_per_win=2,
                         param_attention="qkv", auto_pad=True, **ROUTINGS["soft_diff_param"])
        shape = (2, 5, 7, 8)
    ref_w, ref_idx = check_against_naive(module, o, shape, seed=7 * topk + n_win)
    assert ref_idx.shape == (2, n_win ** 2, topk)


@pytest.mark.parametrize("opts,shape", [
    pytest.param(dict(qk_dim=8), (2, 6, 6, 16), id="qk_dim<dim"),
    pytest.param(dict(qk_dim=24, num_heads=4), (1, 6, 6, 16), id="qk_dim>dim-4heads"),
    pytest.param(dict(qk_scale=0.37), (2, 6, 6, 16), id="qk_scale"),
    pytest.param(dict(qk_dim=8, qk_scale=0.9, soft_routing=True), (2, 6, 6, 16), id="qk_dim+qk_scale+soft"),
    pytest.param(dict(side_dwconv=0), (2, 6, 6, 16), id="side0"),
    pytest.param(dict(side_dwconv=0, param_attention="qkv"), (2, 6, 6, 16), id="side0-qkv"),
    pytest.param(dict(side_dwconv=5), (2, 6, 6, 16), id="side5"),
    pytest.param(dict(side_dwconv=5, auto_pad=True), (1, 5, 4, 16), id="side5-pad"),
    pytest.param(dict(num_heads=1), (2, 6, 6, 16), id="1head"),
    pytest.param(dict(num_heads=4, soft_routing=True), (2, 6, 6, 16), id="4heads-soft"),
    pytest.param(dict(n_win=1, topk=1), (2, 3, 4, 16), id="n_win1"),
    pytest.param(dict(kv_downsample_mode="avgpool", kv_downsample_ratio=1), (2, 6, 6, 16), id="avgpool-ratio1"),
    pytest.param(dict(kv_downsample_mode="maxpool", kv_downsample_ratio=1), (2, 6, 6, 16), id="maxpool-ratio1"),
    pytest.param(dict(kv_downsample_mode="avgpool", kv_downsample_ratio=3), (1, 8, 8, 16), id="avgpool-floor"),
    pytest.param(dict(kv_downsample_mode="maxpool", kv_downsample_ratio=4), (1, 8, 8, 16), id="maxpool-whole"),
    pytest.param(dict(kv_downsample_mode="avgpool", kv_downsample_ratio=2, auto_pad=True, **ROUTINGS["soft"]),
                 (2, 7, 5, 16), id="avgpool-pad-soft"),
    pytest.param(dict(kv_downsample_mode="ada_avgpool", kv_per_win=3), (1, 6, 8, 16), id="ada_avg-uneven"),
    pytest.param(dict(kv_downsample_mode="ada_maxpool", kv_per_win=1, **ROUTINGS["soft_diff"]), (2, 6, 6, 16),
                 id="ada_max-1"),
    pytest.param(dict(kv_downsample_kernel=3), (2, 6, 6, 16), id="kernel-unused"),
])
def test_special_options_match_naive(opts, shape):
    opts = dict(dict(n_win=2, topk=2), **opts)
    heads = opts.pop("num_heads", 2)
    module, o = make(16, heads, seed=3, **opts)
    check_against_naive(module, o, shape, seed=11)


def test_lepe_absent_when_side_dwconv_zero():
    module, _ = make(8, 2, n_win=2, side_dwconv=0)
    assert module.lepe is None or not any(True for _ in module.lepe.parameters())
    assert not any(k.startswith("lepe") for k in module.state_dict())


def test_auto_pad_on_divisible_input_is_a_no_op():
    a, _ = make(8, 2, seed=5, n_win=2, topk=2, auto_pad=False)
    b = copy.deepcopy(a)
    b.auto_pad = True
    x = torch.randn(2, 6, 4, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(a(x), b(x))


def test_auto_pad_pads_with_zeros_before_projection():
    # the padded tokens' projection is the bias; cropping a larger zero-padded input reproduces it
    module, o = make(8, 2, seed=6, n_win=2, topk=3, auto_pad=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 5, 3, 8, generator=g, dtype=F64)
    out = module(x)
    assert out.shape == (1, 5, 3, 8)
    padded = F.pad(x, (0, 0, 0, 1, 0, 1))  # 6x4, explicitly zero-padded
    module.auto_pad = False
    torch.testing.assert_close(out, module(padded)[:, :5, :3], atol=1e-12, rtol=0)


def test_kv_downsample_kernel_is_unused():
    a, _ = make(8, 2, seed=2, n_win=2, topk=2)
    b, _ = make(8, 2, seed=2, n_win=2, topk=2, kv_downsample_kernel=5)
    x = torch.randn(1, 4, 4, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(a(x), b(x))


def test_routing_uses_unpooled_region_means():
    # maxpool changes the region mean of k; routing must use the mean of the unpooled k
    module, o = make(8, 2, seed=9, n_win=2, topk=1, kv_downsample_mode="maxpool", kv_downsample_ratio=2)
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(4), dtype=F64)
    _, r_w, r_idx, _ = module(x, ret_attn_mask=True)
    _, ref_w, ref_idx, _ = naive_bra(x, params_of(module), o)
    assert torch.equal(r_idx, ref_idx)


# --------------------------------------------------------------------------------------------------
# shared routing across heads
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("routing", ["hard", "soft", "soft_diff_param"])
@pytest.mark.parametrize("mode", ["identity", "avgpool"])
def test_heads_share_routing_gradient_support(routing, mode):
    n, heads, dim = 3, 2, 8
    module, _ = make(dim, heads, seed=21, n_win=n, topk=2, side_dwconv=0, param_attention="qkv",
                     kv_downsample_mode=mode, kv_downsample_ratio=3, **ROUTINGS[routing])
    g = torch.Generator().manual_seed(22)
    x = torch.randn(2, 9, 9, dim, generator=g, dtype=F64)
    _, _, r_idx, _ = module(x, ret_attn_mask=True)
    assert r_idx.shape == (2, n * n, 2)  # no head axis
    dv = dim // heads
    for backend in BRA_BACKENDS:
        module.backend = backend
        xg = x.clone().requires_grad_()
        out = module(xg)
        for b in range(2):
            for r in range(n * n):
                expected = torch.zeros(2, n, n, dtype=torch.bool)
                expected[b, r // n, r % n] = True
                for t in r_idx[b, r].tolist():
                    expected[b, t // n, t % n] = True
                expected = expected.repeat_interleave(3, 1).repeat_interleave(3, 2)
                j, i = divmod(r, n)
                for m in range(heads):
                    sel = out[b, 3 * j:3 * j + 3, 3 * i:3 * i + 3, m * dv:(m + 1) * dv]
                    (gx,) = torch.autograd.grad(sel, xg, torch.randn(sel.shape, generator=g, dtype=F64),
                                                retain_graph=True)
                    support = gx.abs().sum(-1) > 0
                    assert torch.equal(support, expected), (backend, b, r, m)
    module.backend = "torch"


# --------------------------------------------------------------------------------------------------
# ret_attn_mask
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("routing", ["hard", "soft_diff_param"])
@pytest.mark.parametrize("mode", MODES)
def test_ret_attn_mask_outputs(mode, routing):
    n, topk, heads = 3, 3, 2
    module, o = make(12, heads, seed=31, n_win=n, topk=topk, kv_downsample_mode=mode, kv_downsample_ratio=2,
                     kv_per_win=2, auto_pad=True, **ROUTINGS[routing])
    x = torch.randn(2, 11, 12, 12, generator=torch.Generator().manual_seed(32), dtype=F64)  # -> 12x12, 4x4 regions
    result = module(x, ret_attn_mask=True)
    assert isinstance(result, tuple) and len(result) == 4
    out, r_weight, r_idx, attn = result
    ref_out, ref_w, ref_idx, ref_attn = naive_bra(x, params_of(module), o)
    pooled = 16 if mode == "identity" else 4
    assert out.shape == (2, 11, 12, 12)
    assert r_weight.shape == (2, n * n, topk)
    assert r_idx.shape == (2, n * n, topk) and r_idx.dtype == torch.long
    assert attn.shape == (2 * n * n, heads, 16, topk * pooled)
    torch.testing.assert_close(r_weight.sum(-1), torch.ones(2, n * n, dtype=F64), atol=1e-12, rtol=0)
    assert torch.equal(r_idx, ref_idx)
    torch.testing.assert_close(r_weight, ref_w, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1], dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(attn, ref_attn, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-9)
    assert torch.equal(out, module(x))  # plain call returns just the output, same values
    # sorted descending like torch.topk
    assert (r_weight[..., :-1] >= r_weight[..., 1:]).all()
    # the selected regions are distinct
    assert all(len(set(row)) == topk for row in r_idx.reshape(-1, topk).tolist())


def test_ret_attn_mask_default_is_false():
    module, _ = make(8, 2, n_win=2, topk=2)
    out = module(torch.randn(1, 4, 4, 8, dtype=F64, generator=torch.Generator().manual_seed(0)))
    assert isinstance(out, torch.Tensor)


def test_ret_attn_mask_with_sdpa_raises():
    module, _ = make(8, 2, n_win=2, topk=2, backend="sdpa")
    x = torch.randn(1, 4, 4, 8, dtype=F64)
    with pytest.raises(AttentionConfigError, match="sdpa"):
        module(x, ret_attn_mask=True)
    assert module(x).shape == x.shape  # still usable without it


# --------------------------------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------------------------------

def test_state_dict_official_keys_and_round_trip():
    dim, heads, qk_dim = 64, 2, 64
    opts = dict(n_win=2, topk=2, qk_dim=qk_dim, side_dwconv=5, param_routing=True, diff_routing=True,
                soft_routing=True, param_attention="qkvo")
    expected = {
        "qkv.qkv.weight": (qk_dim + qk_dim + dim, dim),  # (192, 64): [q | k | v]
        "qkv.qkv.bias": (192,),
        "wo.weight": (64, 64),
        "wo.bias": (64,),
        "lepe.weight": (64, 1, 5, 5),  # depthwise
        "lepe.bias": (64,),
        "router.emb.weight": (64, 64),
        "router.emb.bias": (64,),
    }
    module = attentions.build("bra", dim=dim, num_heads=heads, **opts)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == expected

    g = torch.Generator().manual_seed(40)
    hand = {k: torch.randn(s, generator=g, dtype=F64) * 0.3 for k, s in expected.items()}
    fresh_a = attentions.build("bra", dim=dim, num_heads=heads, **opts).double()
    fresh_b = attentions.build("bra", dim=dim, num_heads=heads, **opts).double()
    fresh_a.load_state_dict(hand, strict=True)
    fresh_b.load_state_dict(hand, strict=True)
    x = torch.randn(2, 8, 8, dim, generator=g, dtype=F64)
    out_a = fresh_a(x)
    assert torch.equal(out_a, fresh_b(x))
    ref, *_ = naive_bra(x, hand, full_options(dim, heads, **opts))
    torch.testing.assert_close(out_a, ref, atol=1e-10, rtol=1e-9)
    # the q / k / v layout of the fused Linear is [q | k | v]: swapping the k and v rows changes the output
    swapped = dict(hand)
    w = hand["qkv.qkv.weight"]
    swapped["qkv.qkv.weight"] = torch.cat([w[:64], w[128:], w[64:128]])
    fresh_b.load_state_dict(swapped)
    assert not torch.allclose(fresh_b(x), out_a)


@pytest.mark.parametrize("opts,expected", [
    (dict(param_attention="qkv", side_dwconv=0),
     {"qkv.qkv.weight": (48, 16), "qkv.qkv.bias": (48,)}),
    (dict(qk_dim=8),
     {"qkv.qkv.weight": (32, 16), "qkv.qkv.bias": (32,), "wo.weight": (16, 16), "wo.bias": (16,),
      "lepe.weight": (16, 1, 3, 3), "lepe.bias": (16,)}),
    (dict(qk_dim=8, kv_downsample_mode="ada_avgpool", param_attention="qkv", side_dwconv=5),
     {"qkv.qkv.weight": (32, 16), "qkv.qkv.bias": (32,), "lepe.weight": (16, 1, 5, 5), "lepe.bias": (16,)}),
])
def test_state_dict_keys_variants(opts, expected):
    module = attentions.build("bra", dim=16, num_heads=2, n_win=2, topk=2, **opts)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == expected


def test_switch_backend_on_live_module():
    module, o = make(16, 2, seed=41, n_win=2, topk=3, kv_downsample_mode="ada_maxpool", kv_per_win=2,
                     **ROUTINGS["soft_diff_param"])
    x = torch.randn(2, 6, 8, 16, generator=torch.Generator().manual_seed(42), dtype=F64)
    check_backend_switch(module, x, atol=1e-12, rtol=1e-10)


# --------------------------------------------------------------------------------------------------
# bad options and inputs specific to BRA (the generic bad inputs of every family are in test_registry.py)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,pattern", [
    (dict(dim=8, num_heads=4, qk_dim=10), r"qk_dim 10 .*num_heads 4"),
    (dict(dim=8, num_heads=2, n_win=3, topk=0), r"got 0\b"),
    (dict(dim=8, num_heads=2, n_win=3, topk=10), r"1\.\.9.*got 10\b"),
    (dict(dim=8, num_heads=2, n_win=2, topk=5), r"got 5\b"),
    (dict(dim=8, num_heads=2, kv_downsample_mode="bogus"), r"'bogus'.*'identity'.*'ada_maxpool'"),
    (dict(dim=8, num_heads=2, param_attention="qkvx"), r"'qkvx'.*'qkvo'.*'qkv'"),
    (dict(dim=8, num_heads=2, param_routing=True), r"param_routing.*diff_routing"),
    (dict(dim=8, num_heads=2, param_routing=True, soft_routing=True), r"param_routing.*diff_routing"),
    (dict(dim=8, num_heads=2, side_dwconv=4), r"side_dwconv.*got 4\b"),
    (dict(dim=8, num_heads=2, side_dwconv=-3), r"side_dwconv.*got -3\b"),
    (dict(dim=8, num_heads=2, n_win=0), r"n_win.*got 0\b"),
    (dict(dim=8, num_heads=2, topk=True), r"topk.*got True"),
    (dict(dim=8, num_heads=2, topk=2.0), r"topk.*got 2\.0"),
    (dict(dim=8, num_heads=2, kv_downsample_mode="ada_avgpool", kv_per_win=0), r"kv_per_win.*got 0\b"),
])
def test_bad_config_raises(kwargs, pattern):
    with pytest.raises(AttentionConfigError, match=pattern) as info:
        attentions.build("bra", **kwargs)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(kv_downsample_mode="fracpool"), "fracpool"),
    (dict(kv_downsample_mode="conv"), "conv"),
    (dict(diff_routing=True), "soft_routing"),
    (dict(diff_routing=True, param_routing=True), "soft_routing"),
])
def test_unimplemented_upstream_raises_not_implemented(kwargs, pattern):
    with pytest.raises(NotImplementedError, match=pattern):
        attentions.build("bra", dim=8, num_heads=2, **kwargs)


def test_indivisible_size_without_auto_pad():
    module, _ = make(8, 2, n_win=3, topk=2)
    with pytest.raises(AttentionConfigError, match=r"H=7.*W=9.*n_win=3.*auto_pad"):
        module(torch.randn(1, 7, 9, 8, dtype=F64))
    with pytest.raises(AttentionConfigError, match=r"H=6.*W=8.*auto_pad"):
        module(torch.randn(1, 6, 8, 8, dtype=F64))
    with pytest.raises(AttentionConfigError, match=r"H=7.*auto_pad"):
        module.macs(1, 7, 9)


@pytest.mark.parametrize("mode,option", [("avgpool", "kv_downsample_ratio"), ("maxpool", "kv_downsample_ratio"),
                                         ("ada_avgpool", "kv_per_win"), ("ada_maxpool", "kv_per_win")])
def test_pooled_side_larger_than_region(mode, option):
    """A pooling ratio, or an adaptive pooled side, beyond the region's shorter side is refused: upstream's
    adaptive pooling would silently upsample the keys."""
    module, _ = make(8, 2, n_win=2, topk=2, kv_downsample_mode=mode, **{option: 4})
    x = torch.randn(1, 6, 8, 8, dtype=F64)  # regions 3x4
    with pytest.raises(AttentionConfigError, match=rf"{option} 4.*3×4.*<= 3"):
        module(x)
    with pytest.raises(AttentionConfigError, match=rf"{option} 4"):
        module.macs(1, 6, 8)
    module(torch.randn(1, 8, 8, 8, dtype=F64))  # regions 4x4: fine


# --------------------------------------------------------------------------------------------------
# MACs
# --------------------------------------------------------------------------------------------------

def test_macs_hand_count_identity():
    m = attentions.build("bra", dim=64, num_heads=2, n_win=7, topk=4, side_dwconv=3)
    tokens = 1 * 56 * 56  # 3136
    qkv = tokens * 64 * (64 + 64 + 64)  # 38,535,168
    wo = tokens * 64 * 64  # 12,845,056
    lepe = tokens * 64 * 3 * 3  # 1,806,336
    routing = 1 * 49 * 49 * 64  # 153,664
    keys = 4 * 8 * 8  # topk * tokens per 8x8 region = 256
    attention = tokens * keys * (64 + 64)  # q·kᵀ + attn·v = 102,760,448
    count = m.macs(1, 56, 56)
    assert isinstance(count, attentions.MacCount)
    assert dict(count) == {"projections": qkv + wo, "routing": routing, "attention": attention,
                           "positional": lepe}
    assert count.total == qkv + wo + lepe + routing + attention == 156_100_672
    assert m.macs(2, 56, 56).total == 2 * 156_100_672


def test_macs_hand_count_ada_avgpool():
    m = attentions.build("bra", dim=64, num_heads=2, n_win=7, topk=4, kv_downsample_mode="ada_avgpool",
                         kv_per_win=2)
    tokens = 3136
    pool = tokens * (64 + 64)  # fvcore: one per input element of the adaptive avg pool ([k|v]) = 401,408
    routing = 49 * 49 * 64 + pool
    attention = tokens * (4 * 2 * 2) * 128  # 6,422,528
    count = m.macs(1, 56, 56)
    assert count["routing"] == routing == 555_072
    assert count["attention"] == attention
    assert count["projections"] == tokens * 64 * 192 + tokens * 64 * 64
    assert count["positional"] == tokens * 64 * 9
    assert count.total == 60_164_160


def test_macs_hand_count_auto_pad():
    m = attentions.build("bra", dim=64, num_heads=2, n_win=7, topk=4, auto_pad=True)
    # 52x54 is padded to 56x56; every part is counted on the padded map (wo runs before the crop)
    assert dict(m.macs(1, 52, 54)) == dict(attentions.build("bra", dim=64, num_heads=2, n_win=7, topk=4)
                                           .macs(1, 56, 56))
    assert m.macs(1, 52, 54).total == 156_100_672
    # qkv-only, no LePE, avgpool 2, qk_dim 32, param routing, on 50x45 -> 56x49 (regions 8x7 -> 4x3 pooled)
    m = attentions.build("bra", dim=64, num_heads=2, n_win=7, topk=3, qk_dim=32, kv_downsample_mode="avgpool",
                         kv_downsample_ratio=2, param_attention="qkv", side_dwconv=0, auto_pad=True,
                         param_routing=True, diff_routing=True, soft_routing=True)
    tokens = 56 * 49
    assert dict(m.macs(1, 50, 45)) == {
        "projections": tokens * 64 * (32 + 32 + 64),
        "routing": 49 * 49 * 32 + 2 * 49 * 32 * 32,  # logits + router.emb on region q and k
        "attention": tokens * (3 * 4 * 3) * (32 + 64),
        "positional": 0,
    }


@pytest.mark.parametrize("opts,hw", [
    (dict(), (14, 14)),
    (dict(kv_downsample_mode="ada_avgpool", kv_per_win=1, topk=3), (14, 21)),
    (dict(kv_downsample_mode="maxpool", kv_downsample_ratio=2, side_dwconv=5, param_attention="qkv"), (28, 14)),
    (dict(qk_dim=8, auto_pad=True, **ROUTINGS["soft_diff_param"]), (13, 12)),
])
def test_macs_agree_with_fvcore(opts, hw):
    fvcore_nn = pytest.importorskip("fvcore.nn")
    module = attentions.build("bra", dim=16, num_heads=2, n_win=7, **opts)
    x = torch.randn(1, *hw, 16)
    flops = fvcore_nn.FlopCountAnalysis(module, x)
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    assert module.macs(1, *hw).total == flops.total()


@pytest.mark.parametrize("opts,hw", [
    (dict(), (14, 14)),
    (dict(kv_downsample_mode="maxpool", kv_downsample_ratio=2, qk_dim=8), (28, 14)),
    (dict(auto_pad=True, **ROUTINGS["soft"]), (13, 12)),  # the routing weights are one more tensor input
])
def test_harness_counts_the_chunked_op(opts, hw):
    """fvcore sees ChunkedRoutedAttention as one opaque op: the harness counts it through the MAC
    formula the backend declares."""
    from bench.core.flops import count_macs
    module = attentions.build("bra", dim=16, num_heads=2, n_win=7, backend="chunked", **opts)
    counted, uncounted = count_macs(module, torch.randn(1, *hw, 16))
    assert counted == module.macs(1, *hw).total
    assert not any("Chunked" in op for op in uncounted)


# --------------------------------------------------------------------------------------------------
# reduced precision
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("routing", ["hard", "soft_diff_param"])
@pytest.mark.parametrize("mode", ["identity", "ada_avgpool", "maxpool"])
def test_float32_matches_float64_reference(mode, routing):
    module, o = make(12, 2, seed=51, n_win=3, topk=4, kv_downsample_mode=mode, kv_downsample_ratio=2,
                     kv_per_win=2, auto_pad=True, **ROUTINGS[routing])
    g = torch.Generator().manual_seed(52)
    x = torch.randn(2, 10, 11, 12, generator=g, dtype=F64)
    x_ref = x.clone().requires_grad_()
    ref, *_ = naive_bra(x_ref, params_of(module), o)
    gout = torch.randn(ref.shape, generator=g, dtype=F64)
    (ref_gx,) = torch.autograd.grad(ref, x_ref, gout)
    m32 = copy.deepcopy(module).float()
    for backend in BRA_BACKENDS:
        m32.backend = backend
        x32 = x.float().requires_grad_()
        out = m32(x32)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
        (gx,) = torch.autograd.grad(out, x32, gout.float())
        torch.testing.assert_close(gx.double(), ref_gx, atol=1e-3, rtol=1e-3)


def _rel_err(a, b):
    return ((a.double().cpu() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("topk", [2, 9])
@pytest.mark.parametrize("mode", ["identity", "avgpool", "ada_maxpool"])
def test_low_precision_forward(mode, topk, dtype, tol):
    module, o = make(16, 2, seed=61, n_win=3, topk=topk, kv_downsample_mode=mode, kv_downsample_ratio=2,
                     kv_per_win=2, soft_routing=True)
    low = copy.deepcopy(module).to(dtype)
    x = torch.randn(2, 12, 12, 16, generator=torch.Generator().manual_seed(62), dtype=F64).to(dtype)
    out_low, _, r_idx_low, attn_low = low(x, ret_attn_mask=True)
    assert out_low.dtype == dtype and attn_low.dtype == dtype
    assert torch.isfinite(out_low.float()).all()
    # the reference sees the same rounded weights and input; near-tied routing logits may legitimately
    # pick other regions at this precision, so it follows the low-precision run's selection
    P = {k: v.double() for k, v in low.named_parameters()}
    ref, ref_w, _, _ = naive_bra(x.double(), P, o, force_idx=r_idx_low)
    if topk == 9:
        _, _, free_idx, _ = naive_bra(x.double(), P, o)
        assert torch.equal(free_idx.sort(-1).values, r_idx_low.sort(-1).values)  # all regions either way
    for backend in BRA_BACKENDS:
        low.backend = backend
        out = low(x)
        assert out.dtype == dtype
        assert _rel_err(out, ref) < tol, (backend, _rel_err(out, ref))


# --------------------------------------------------------------------------------------------
# the flex backend: FlexAttention over a routed block mask, nothing gathered
# --------------------------------------------------------------------------------------------

FLEX_CASES = [  # two shapes only: every new shape costs a compilation of several seconds on the CPU
    ((1, 6, 6), {"n_win": 3, "topk": 1}),
    ((1, 6, 6), {"n_win": 3, "topk": 9, "param_attention": "qkv", "side_dwconv": 0}),
    ((2, 6, 6), {"n_win": 3, "topk": 4, "qk_dim": 8, "auto_pad": True}),
    ((1, 12, 12), {"n_win": 3, "topk": 3, "kv_downsample_mode": "avgpool", "kv_downsample_ratio": 2}),
    ((1, 12, 12), {"n_win": 3, "topk": 5, "kv_downsample_mode": "ada_maxpool", "kv_per_win": 2}),
]


@pytest.mark.parametrize("shape, opts", FLEX_CASES)
def test_flex_forward_matches_naive(shape, opts):
    """fp32 flex (the CPU compiles it; it has no float64 kernel test here) against the float64 reference."""
    module, o = make(16, 2, seed=11, backend="flex", **opts)
    x = torch.randn(*shape, 16, generator=torch.Generator().manual_seed(5), dtype=F64)
    expected = naive_bra(x, {k: v.detach() for k, v in module.state_dict().items()}, o)[0]
    with torch.no_grad():
        got = module.float()(x.float())
    assert ((got.double() - expected).norm() / expected.norm()).item() < 1e-5


# gathered elements per chunk: chunks of 1 query region; of 4 (first opts, 256 elements a region) or all 18
# (second, 40 a region); of 1 or 7. Chunks of 4 and 7 straddle the batch boundary after region 9.
@pytest.mark.parametrize("elements", [1, 1100, 280])
@pytest.mark.parametrize("opts", [
    dict(n_win=3, topk=4, **ROUTINGS["soft_diff_param"]),
    dict(n_win=3, topk=2, kv_downsample_mode="ada_avgpool", kv_per_win=1, qk_dim=12),
])
def test_chunked_matches_naive_across_chunk_boundaries(monkeypatch, elements, opts):
    """The chunk loop itself: chunks far smaller than the map, some straddling two batch items."""
    import attentions.bra
    monkeypatch.setattr(attentions.bra, "CHUNK_ELEMENTS", elements)
    module, o = make(8, 2, seed=71, **opts)
    check_against_naive(module, o, (2, 6, 6, 8), seed=72, backends=("chunked",))


def test_routed_block_mask_lets_each_region_see_exactly_its_routed_regions():
    """Token by token, the mask's mask_mod lets a query see the keys of its region's routed regions only."""
    from attentions.bra import routed_block_mask
    r_idx = torch.tensor([[[2, 0], [1, 3], [3, 2], [0, 1]]])  # 4 regions, topk 2
    mask = routed_block_mask(r_idx, query_tokens=3, key_tokens=2, block=(128, 128))
    q_idx, kv_idx = torch.arange(12)[:, None], torch.arange(8)[None, :]
    dense = mask.mask_mod(torch.tensor(0), torch.tensor(0), q_idx, kv_idx)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    for region, routed in enumerate(r_idx[0]):
        expected[region, routed] = True
    assert torch.equal(dense, expected.repeat_interleave(3, 0).repeat_interleave(2, 1))


def test_flex_refuses_what_it_cannot_express():
    x = torch.randn(1, 6, 6, 16)  # float32: the CPU's FlexAttention has no float64
    module, _ = make(16, 2, backend="flex", n_win=3, topk=2, soft_routing=True)
    with torch.no_grad(), pytest.raises(attentions.BackendUnavailableError, match="soft_routing"):
        module.float()(x)
    module, _ = make(16, 2, backend="flex", n_win=3, topk=2)
    with pytest.raises(attentions.BackendUnavailableError, match="no backward on cpu"):
        module.float()(x)  # parameters require grad: a backward may follow
    with torch.no_grad(), pytest.raises(AttentionConfigError, match="ret_attn_mask.*'flex'"):
        module(x, ret_attn_mask=True)
    with torch.no_grad(), pytest.raises(attentions.BackendUnavailableError, match="float64 on cpu"):
        module.double()(x.double())
    assert attentions.backend_available("bra", "flex", "cpu") == (True, "")
    ok, reason = attentions.backend_available("bra", "flex", "cpu", backward=True)
    assert not ok and "no backward on cpu" in reason
    assert attentions.backend_available("bra", "flex", "cpu", dtype=torch.float32) == (True, "")
    ok, reason = attentions.backend_available("bra", "flex", "cpu", dtype=torch.float64)
    assert not ok and "float64 on cpu" in reason
    listed = attentions.list_attentions()["bra"]["backends"]["flex"]
    assert listed["backward"] == ["cuda"]
    assert listed["device_dtypes"] == {"cpu": ["float16", "bfloat16", "float32"],
                                       "cuda": ["float16", "bfloat16", "float32", "float64"]}


def test_routed_block_mask_lists_exactly_the_blocks_with_a_routed_pair():
    """Blocks that cut across regions (5 query and 3 key tokens per region, blocks of 4): the listed
    key blocks of each query block are those holding a routed (query, key) pair, in ascending order."""
    from attentions.bra import routed_block_mask
    torch.manual_seed(1)
    batch, regions, query_tokens, key_tokens, topk, block = 2, 9, 5, 3, 3, 4
    r_idx = torch.stack([torch.randperm(regions)[:topk] for _ in range(batch * regions)]).view(batch, regions, topk)
    mask = routed_block_mask(r_idx, query_tokens, key_tokens, (block, block))
    counts, indices = mask.kv_num_blocks[:, 0], mask.kv_indices[:, 0]
    for b in range(batch):
        for qb in range(-(-regions * query_tokens // block)):
            expected = sorted({k // block for q in range(qb * block, min((qb + 1) * block, regions * query_tokens))
                               for slot in range(topk) for k in range(regions * key_tokens)
                               if k // key_tokens == r_idx[b, q // query_tokens, slot]})
            assert indices[b, qb, :counts[b, qb]].tolist() == expected


def test_flex_with_blocks_across_regions(monkeypatch):
    """Compiled flex over blocks of 16 tokens (as CUDA's blocks of 128, not one region each as on the
    CPU) on 25-token query and 9-token key regions: several blocks per sequence, most of them
    partial, cut through the middle of regions."""
    import attentions.bra
    monkeypatch.setattr(attentions.bra, "flex_block", lambda device, query_tokens, key_tokens: (16, 16))
    test_flex_forward_matches_naive((1, 10, 10), {"n_win": 2, "topk": 2, "kv_downsample_mode": "ada_maxpool",
                                                  "kv_per_win": 3})


def test_routed_block_mask_also_holds_for_uncompiled_flex():
    """FlexAttention's uncompiled path reads only the mask_mod: it must say the same as the blocks."""
    from torch.nn.attention.flex_attention import flex_attention

    from attentions.bra import routed_block_mask
    torch.manual_seed(0)
    batch, heads, regions, query_tokens, key_tokens, channels, topk = 2, 2, 9, 4, 2, 8, 3
    q = torch.randn(batch, heads, regions * query_tokens, channels)
    k = torch.randn(batch, heads, regions * key_tokens, channels)
    v = torch.randn(batch, heads, regions * key_tokens, channels)
    r_idx = torch.stack([torch.randperm(regions)[:topk] for _ in range(batch * regions)]).view(batch, regions, topk)
    out = flex_attention(q, k, v, block_mask=routed_block_mask(r_idx, query_tokens, key_tokens, (8, 8)), scale=0.3)
    per_region = lambda t, n: t.view(batch, heads, regions, n, channels)  # noqa: E731
    gather = lambda t: torch.stack([per_region(t, key_tokens)[b, :, r_idx[b]] for b in range(batch)])  # noqa: E731
    keys, values = (gather(t).reshape(batch, heads, regions, topk * key_tokens, channels) for t in (k, v))
    expected = ((per_region(q, query_tokens) * 0.3) @ keys.transpose(-1, -2)).softmax(-1) @ values
    torch.testing.assert_close(out, expected.reshape(out.shape), atol=1e-5, rtol=1e-5)
