"""Tests of the ``deformable`` family (DAT's DAttentionBaseline) against a naive reference."""

from __future__ import annotations

import copy
import functools
import logging
import math

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

import attentions
from attentions import AttentionConfigError
from reference_helpers import (CudaCase, check_against_reference, check_backend_switch, eager_backends,
                               check_float32_against_reference, random_module, ref_params, run_module)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

# every floating parameter (convs, LayerNorm, rpe table) random; the offset net's LayerNorm at scale 1
make = functools.partial(random_module, "deformable", std=0.3, overrides={"conv_offset.1": 1.0})


def bilinear(img: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Sample an (Hi, Wi, Cc) image at pixel coordinates (py, px) (any equal shapes S).

    Plain bilinear interpolation from the 4 neighbours of (floor(py), floor(px)); neighbours
    outside the image count as zero. Returns (*S, Cc).
    """
    hi, wi, cc = img.shape
    flat = img.reshape(hi * wi, cc)
    y0 = torch.floor(py)
    x0 = torch.floor(px)
    fy = py - y0
    fx = px - x0
    out = 0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy = (y0 + dy).long()
            xx = (x0 + dx).long()
            inside = (yy >= 0) & (yy < hi) & (xx >= 0) & (xx < wi)
            value = flat[(yy.clamp(0, hi - 1) * wi + xx.clamp(0, wi - 1)).reshape(-1)]
            value = value.reshape(*py.shape, cc) * inside[..., None].to(img.dtype)
            out = out + (wy * wx)[..., None] * value
    return out


def naive_depthwise(img: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """A depthwise conv with an odd (k, k) kernel, zero 'same' padding and ``stride`` on an (H, W, C) map:
    out[i, j, c] = bias[c] + Σ_ab weight[c, 0, a, b] · in[i·s + a - k//2, j·s + b - k//2, c]."""
    height, width, channels = img.shape
    kernel = weight.shape[-1]
    pad = kernel // 2
    hk, wk = math.ceil(height / stride), math.ceil(width / stride)
    # zero-padded copy of the map
    zr = torch.zeros(height, pad, channels, dtype=img.dtype)
    padded = torch.cat([zr, img, zr], dim=1)
    zc = torch.zeros(pad, width + 2 * pad, channels, dtype=img.dtype)
    padded = torch.cat([zc, padded, zc], dim=0)
    out = bias.expand(hk, wk, channels)
    for a in range(kernel):
        for b in range(kernel):
            out = out + weight[:, 0, a, b] * padded[a:a + stride * (hk - 1) + 1:stride,
                                                    b:b + stride * (wk - 1) + 1:stride]
    return out


def naive_offsets(qg: torch.Tensor, p: dict[str, torch.Tensor], kernel: int, stride: int) -> torch.Tensor:
    """DAT's offset network on one group's queries (H, W, Cg) -> raw offsets (Hk, Wk, 2)."""
    assert p["conv_offset.0.weight"].shape[-1] == kernel
    conv = naive_depthwise(qg, p["conv_offset.0.weight"], p["conv_offset.0.bias"], stride)
    mean = conv.mean(dim=-1, keepdim=True)
    var = ((conv - mean) ** 2).mean(dim=-1, keepdim=True)
    normed = (conv - mean) / torch.sqrt(var + 1e-5) * p["conv_offset.1.norm.weight"] + p["conv_offset.1.norm.bias"]
    gelu = 0.5 * normed * (1 + torch.erf(normed / math.sqrt(2.0)))
    return gelu @ p["conv_offset.3.weight"][:, :, 0, 0].T


def naive_points(raw: torch.Tensor, factor: float) -> torch.Tensor:
    """Raw offsets (Hk, Wk, 2) -> deformed normalised (y, x) points per DAT."""
    hk, wk, _ = raw.shape
    ref = torch.tensor([[[(i + 0.5) / hk * 2 - 1, (j + 0.5) / wk * 2 - 1] for j in range(wk)]
                        for i in range(hk)], dtype=raw.dtype)
    if factor > 0:
        off = torch.stack([torch.tanh(raw[..., 0]) * factor / hk, torch.tanh(raw[..., 1]) * factor / wk], dim=-1)
        return ref + off
    if factor < 0:
        return torch.tanh(ref + raw)
    return ref + raw


def naive_deformable(x: torch.Tensor, p: dict[str, torch.Tensor], num_heads: int, n_groups: int, stride: int,
                     factor: float, kernel: int, use_pe: bool, dwc_pe: bool = False, return_points: bool = False):
    """DAT's DAttentionBaseline written out per image, group and head. With use_pe: the relative position
    bias in the logits, or with dwc_pe instead a 3×3 depthwise conv of q added to the heads' output."""
    batch, height, width, dim = x.shape
    cg = dim // n_groups
    hd = dim // num_heads
    heads_per_group = num_heads // n_groups
    scale = hd ** -0.5

    def conv1x1(t, name):
        return t @ p[f"{name}.weight"][:, :, 0, 0].T + p[f"{name}.bias"]

    outs, all_points = [], []
    for b in range(batch):
        q = conv1x1(x[b], "proj_q")                                      # (H, W, C)
        samples, points = [], []
        for g in range(n_groups):
            chans = slice(g * cg, (g + 1) * cg)
            pos = naive_points(naive_offsets(q[..., chans], p, kernel, stride), factor)   # (Hk, Wk, 2)
            points.append(pos)
            py = (pos[..., 0] + 1) / 2 * (height - 1)                      # align_corners=True
            px = (pos[..., 1] + 1) / 2 * (width - 1)
            samples.append(bilinear(x[b][..., chans], py, px).reshape(-1, cg))
        all_points.append(torch.stack(points))
        samples = torch.cat(samples, dim=-1)                              # (Ns, C), group order
        k, v = conv1x1(samples, "proj_k"), conv1x1(samples, "proj_v")
        qt = q.reshape(height * width, dim)
        qref = torch.tensor([[(y + 0.5) / height * 2 - 1, (xx + 0.5) / width * 2 - 1]
                             for y in range(height) for xx in range(width)], dtype=x.dtype)
        heads = []
        for h in range(num_heads):
            g = h // heads_per_group
            sl = slice(h * hd, (h + 1) * hd)
            logits = scale * (qt[:, sl] @ k[:, sl].T)                     # (N, Ns)
            if use_pe and not dwc_pe:
                table = p["rpe_table"][h]
                th, tw = table.shape
                pos = points[g].reshape(-1, 2)
                d = 0.5 * (qref[:, None, :] - pos[None, :, :])           # (N, Ns, 2)
                ty = (d[..., 0] + 1) / 2 * (th - 1)
                tx = (d[..., 1] + 1) / 2 * (tw - 1)
                logits = logits + bilinear(table[..., None], ty, tx)[..., 0]
            logits = logits - logits.max(dim=-1, keepdim=True).values
            w = logits.exp()
            w = w / w.sum(dim=-1, keepdim=True)
            heads.append(w @ v[:, sl])
        attended = torch.cat(heads, dim=-1)                               # (N, C)
        if dwc_pe:
            attended = attended + naive_depthwise(q, p["rpe_table.weight"], p["rpe_table.bias"]).reshape(-1, dim)
        outs.append(conv1x1(attended, "proj_out").reshape(height, width, dim))
    out = torch.stack(outs)
    if return_points:
        return out, torch.stack(all_points).reshape(batch * n_groups, *all_points[0].shape[1:])
    return out


def naive_for(module):
    """``naive_deformable`` as ``(x, params) -> out`` with the module's options."""
    return lambda x, p: naive_deformable(
        x, p, num_heads=module.num_heads, n_groups=module.n_groups, stride=module.stride,
        factor=module.offset_range_factor, kernel=module.offset_kernel, use_pe=module.use_pe, dwc_pe=module.dwc_pe)


# tests/test_cuda.py's case: DAT's defaults (fmap_size 14 sizes the position-bias table for this map). Its offset
# network, sampling points and bilinear sampling run in the input dtype: in bfloat16 they alone move the output
# 4-12 % from float64 and the offset network's gradients 10-250 %, for every backend alike (measured with torch and
# sdpa on the CPU); the reference backend's own error bounds that
CUDA_CASE = CudaCase((2, 14, 14), dict(fmap_size=14), lambda module, x: naive_for(module),
                     overrides={"conv_offset.1": 1.0})


# --------------------------------------------------------------------------------------------
# correctness vs the naive reference
# --------------------------------------------------------------------------------------------

CASES = [
    # (H, W, options)
    (5, 5, dict(num_heads=2, n_groups=1, stride=1, offset_range_factor=2.0, use_pe=True, fmap_size=5)),
    (5, 6, dict(num_heads=4, n_groups=2, stride=1, offset_range_factor=2.0, use_pe=True, fmap_size=4)),
    (5, 7, dict(num_heads=4, n_groups=2, stride=2, offset_range_factor=2.0, use_pe=True, fmap_size=3)),
    (6, 4, dict(num_heads=2, n_groups=1, stride=2, offset_range_factor=-1.0, use_pe=False)),
    (4, 5, dict(num_heads=4, n_groups=2, stride=1, offset_range_factor=0.0, use_pe=True, offset_kernel=3,
                fmap_size=(3, 5))),
    (3, 5, dict(num_heads=4, n_groups=4, stride=1, offset_range_factor=-1.0, use_pe=True, fmap_size=(3, 5),
                offset_kernel=1)),
    (7, 3, dict(num_heads=2, n_groups=2, stride=3, offset_range_factor=3.0, use_pe=False, offset_kernel=7)),
    # DAT's depthwise-conv position encoding instead of the bias
    (5, 6, dict(num_heads=4, n_groups=2, stride=1, offset_range_factor=2.0, use_pe=True, dwc_pe=True)),
    (6, 5, dict(num_heads=2, n_groups=1, stride=2, offset_range_factor=-1.0, use_pe=True, dwc_pe=True,
                offset_kernel=3)),
    (1, 4, dict(num_heads=2, n_groups=2, stride=1, offset_range_factor=0.0, use_pe=True, dwc_pe=True,
                offset_kernel=3)),
]


@pytest.mark.parametrize("backend", eager_backends("deformable"))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-" + "-".join(
    f"{k.replace('offset_range_factor', 'f').replace('offset_kernel', 'k')}{v}" for k, v in c[2].items()))
def test_matches_naive_reference_float64(backend, case):
    height, width, opts = case
    torch.manual_seed(200 + height * 10 + width)
    dim = 8
    module = make(seed=height + 7 * width, dim=dim, backend=backend, **opts)
    # raw offsets of the random offset net are O(1); with factor 0 let them leave the map sometimes
    x = torch.randn(2, height, width, dim, dtype=torch.float64)
    g = torch.randn(2, height, width, dim, dtype=torch.float64)
    gp, rgp = check_against_reference(module, x, g, naive_for(module), atol=1e-10, rtol=1e-10)
    position = {"rpe_table.weight", "rpe_table.bias"} if opts.get("dwc_pe") else {"rpe_table"}
    assert (position <= set(gp)) == opts["use_pe"]
    for name in gp:
        assert rgp[name].abs().sum() > 0, name  # every parameter reaches the output


@pytest.mark.parametrize("backend", eager_backends("deformable"))
def test_float32_close_to_float64_reference(backend):
    torch.manual_seed(9)
    module = make(seed=9, dtype=torch.float32, dim=16, num_heads=4, n_groups=2, stride=2, fmap_size=4,
                  backend=backend)
    x = torch.randn(2, 5, 6, 16)
    check_float32_against_reference(module, x, naive_for(module), atol=5e-5, rtol=1e-4)


def test_zero_factor_case_samples_outside_the_map():
    """The factor-0 reference case really exercises zero padding (points beyond [-1, 1])."""
    height, width, opts = CASES[4]
    torch.manual_seed(200 + height * 10 + width)
    module = make(seed=height + 7 * width, dim=8, **opts)
    x = torch.randn(2, height, width, 8, dtype=torch.float64)
    points = module.sampling_points(x @ module.proj_q.weight[:, :, 0, 0].T + module.proj_q.bias)
    assert (points.abs() > 1).any()


# unit roundoff of the half-precision formats
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


@pytest.mark.parametrize("dtype", list(UNIT_ROUNDOFF), ids=str)
def test_half_precision_on_the_cpu_is_close_to_float64(dtype):
    """fp16 and bf16 on the CPU, at a shape where torch 2.13's grid_sample went wrong on the channels-last
    view of a one-group map (NaN for whole batch items in fp16, values off by 40× the rounding or more in
    bf16): finite output and gradients, output within 16 unit roundoffs (norm-relative) of float64. The
    module has its own initialisation, as in the benchmark (``make``'s larger random weights make the
    softmax so peaked that even correct half precision is 70–85u off).

    Why 16u: input and weights are rounded to the format, about ten rounded steps follow (projections,
    LayerNorm, GELU, two bilinear samplings, softmax), and every sampling coordinate carries an error of
    u·(side − 1)/2 pixels; that gave 5.2u–7.9u over seeds 0–7, so 16u leaves a margin of 2×.
    The gradients are only checked finite: through the offset network they depend on which pixel a point
    falls in, a step function of the rounded coordinates, so their half-precision error is inherently large.
    """
    torch.manual_seed(3)
    exact = attentions.build("deformable", dim=64, num_heads=4, n_groups=1, stride=2, fmap_size=14).double()
    half = copy.deepcopy(exact).to(dtype)
    x = torch.randn(2, 28, 28, 64, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    out, grad_x, grad_params = run_module(half, x.to(dtype), grad_out.to(dtype))
    assert out.dtype == dtype
    for name, tensor in [("output", out), ("input gradient", grad_x), *grad_params.items()]:
        assert tensor.isfinite().all(), f"{(~tensor.isfinite()).sum().item()} non-finite values in {name}"
    with torch.no_grad():
        expected = exact(x)
    rel_err = ((out.double() - expected).norm() / expected.norm()).item()
    unit = UNIT_ROUNDOFF[dtype]
    assert rel_err < 16 * unit, f"{dtype}: rel_err {rel_err:.3g} = {rel_err / unit:.1f}u"


# --------------------------------------------------------------------------------------------
# sampling points and sampling
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [2.0, 0.5, -1.0, 0.0])
@pytest.mark.parametrize("stride,n_groups,height,width", [(1, 1, 5, 6), (2, 2, 5, 7), (2, 1, 6, 6)])
def test_sampling_points_are_reference_plus_bounded_offset(factor, stride, n_groups, height, width):
    torch.manual_seed(11)
    dim = 8
    module = make(seed=11, dim=dim, num_heads=2, n_groups=n_groups, stride=stride, offset_range_factor=factor)
    q = torch.randn(2, height, width, dim, dtype=torch.float64)
    points = module.sampling_points(q)
    hk, wk = -(-height // stride), -(-width // stride)
    assert points.shape == (2 * n_groups, hk, wk, 2)
    assert module.sampled_grid_size(height, width) == (hk, wk)
    # raw output of the module's own offset network, regrouped: (B·groups, Cg, H, W)
    grouped = q.permute(0, 3, 1, 2).reshape(2 * n_groups, dim // n_groups, height, width)
    raw = module.conv_offset(grouped).permute(0, 2, 3, 1)
    p = ref_params(module)
    for bg in range(2 * n_groups):
        b, g = divmod(bg, n_groups)
        cg = dim // n_groups
        naive_raw = naive_offsets(q[b, ..., g * cg:(g + 1) * cg], p, module.offset_kernel, stride)
        torch.testing.assert_close(raw[bg], naive_raw.detach(), atol=1e-12, rtol=1e-12)
        for i in range(hk):
            for j in range(wk):
                ref_y, ref_x = (i + 0.5) / hk * 2 - 1, (j + 0.5) / wk * 2 - 1
                oy, ox = raw[bg, i, j].tolist()
                if factor > 0:
                    expected = (ref_y + math.tanh(oy) * factor / hk, ref_x + math.tanh(ox) * factor / wk)
                    assert abs(points[bg, i, j, 0] - ref_y) <= factor / hk + 1e-12
                    assert abs(points[bg, i, j, 1] - ref_x) <= factor / wk + 1e-12
                elif factor < 0:
                    expected = (math.tanh(ref_y + oy), math.tanh(ref_x + ox))
                else:
                    expected = (ref_y + oy, ref_x + ox)
                assert points[bg, i, j, 0].item() == pytest.approx(expected[0], abs=1e-12)
                assert points[bg, i, j, 1].item() == pytest.approx(expected[1], abs=1e-12)


@pytest.mark.parametrize("n_groups,stride,height,width", [(1, 1, 5, 6), (2, 1, 6, 5), (2, 2, 7, 5)])
def test_samples_land_where_the_offsets_say(n_groups, stride, height, width):
    """On a map whose channels are affine in the pixel coordinates, bilinear samples are exactly
    the affine function at the sampling points' pixel coordinates (align_corners=True)."""
    torch.manual_seed(12)
    dim, batch = 8, 2
    module = make(seed=12, dim=dim, num_heads=2, n_groups=n_groups, stride=stride, offset_range_factor=0.9)
    a, bb, d = (torch.randn(batch, dim, dtype=torch.float64) for _ in range(3))
    ii = torch.arange(height, dtype=torch.float64)[:, None, None]
    jj = torch.arange(width, dtype=torch.float64)[None, :, None]
    x = torch.stack([a[n] * ii + bb[n] * jj + d[n] for n in range(batch)])          # (B, H, W, C)
    assert torch.equal(x[1, 2, 3], a[1] * 2 + bb[1] * 3 + d[1])
    q = x @ module.proj_q.weight[:, :, 0, 0].T + module.proj_q.bias
    points = module.sampling_points(q)                                           # (B·G, Hk, Wk, 2)
    assert (points.abs() < 1).all()
    samples = module.sample(x, points)
    hk, wk = points.shape[1:3]
    assert samples.shape == (batch, hk * wk, dim)
    cg = dim // n_groups
    for n in range(batch):
        for g in range(n_groups):
            pts = points[n * n_groups + g].reshape(-1, 2)
            py = (pts[:, 0] + 1) / 2 * (height - 1)
            px = (pts[:, 1] + 1) / 2 * (width - 1)
            chans = slice(g * cg, (g + 1) * cg)
            expected = a[n, chans] * py[:, None] + bb[n, chans] * px[:, None] + d[n, chans]
            torch.testing.assert_close(samples[n, :, chans], expected, atol=1e-12, rtol=1e-12)
    # the points are really displaced from the reference grid, so the check is not trivial
    ref_y = (torch.arange(hk, dtype=torch.float64) + 0.5) / hk * 2 - 1
    assert (points[..., 0] - ref_y[:, None]).abs().max() > 0.05


def test_sample_hand_points_corners_and_outside():
    module = attentions.build("deformable", dim=4, num_heads=2, n_groups=2).double()
    torch.manual_seed(13)
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64)
    # group 0 (channels 0-1) and group 1 (channels 2-3) get different points
    points = torch.tensor([
        [[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-1.0, 0.5]]],          # group 0
        [[[1.0, -1.0], [3.0, 0.0], [0.5, -0.25], [-1.5, -1.0]]],        # group 1
    ], dtype=torch.float64)                                              # (B·G=2, 1, 4, 2)
    s = module.sample(x, points)[0]                                      # (4, C)
    torch.testing.assert_close(s[0, :2], x[0, 0, 0, :2])                 # top-left corner
    torch.testing.assert_close(s[1, :2], x[0, 2, 4, :2])                 # bottom-right corner
    torch.testing.assert_close(s[2, :2], x[0, 1, 2, :2])                 # centre pixel
    torch.testing.assert_close(s[3, :2], x[0, 0, 3, :2])                 # x=0.5 -> pixel 3
    torch.testing.assert_close(s[0, 2:], x[0, 2, 0, 2:])                 # (y=1, x=-1): bottom-left
    torch.testing.assert_close(s[1, 2:], torch.zeros(2, dtype=torch.float64))   # y=3: far outside
    # (0.5, -0.25) -> pixel (1.5, 1.5): mean of 4 neighbours
    torch.testing.assert_close(s[2, 2:], x[0, 1:3, 1:3, 2:].mean(dim=(0, 1)))
    # (-1.5, -1) -> pixel (-0.5, 0): half of the weight falls outside (zero padding)
    torch.testing.assert_close(s[3, 2:], 0.5 * x[0, 0, 0, 2:])


def test_position_bias_hand_point():
    """The bias of head h for query (y, x) and a sample point at the same normalised position is
    the centre of the table (displacement 0), whatever the map size."""
    module = make(seed=14, dim=4, num_heads=2, n_groups=1, fmap_size=3)          # table 5×5
    height, width = 4, 6
    y, x = 1, 4
    qy, qx = (y + 0.5) / height * 2 - 1, (x + 0.5) / width * 2 - 1
    points = torch.tensor([[[[qy, qx], [qy - 1.0, qx + 0.5], [qy + 4.0, qx]]]], dtype=torch.float64)
    bias = module.position_bias(points, height, width)                           # (1, heads, N, 3)
    assert bias.shape == (1, 2, height * width, 3)
    table = module.rpe_table.detach()
    n = y * width + x
    for h in range(2):
        torch.testing.assert_close(bias[0, h, n, 0], table[h, 2, 2])              # d = 0 -> centre
        # d = (0.5, -0.25) -> table pixel (3, 1.5)
        torch.testing.assert_close(bias[0, h, n, 1], 0.5 * (table[h, 3, 1] + table[h, 3, 2]))
        assert bias[0, h, n, 2] == 0                                               # d_y=-2 outside


# --------------------------------------------------------------------------------------------
# backends, macs
# --------------------------------------------------------------------------------------------

def test_backend_switch_keeps_state_and_output():
    torch.manual_seed(15)
    module = make(seed=15, dim=8, num_heads=4, n_groups=2, stride=2, fmap_size=4)
    x = torch.randn(2, 5, 6, 8, dtype=torch.float64)
    check_backend_switch(module, x, atol=1e-12, rtol=1e-12)


def test_state_dict_keys_and_shapes():
    module = attentions.build("deformable", dim=8, num_heads=4, n_groups=2, offset_kernel=3, fmap_size=(3, 5))
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    expected = {f"{n}.{s}": ((8, 8, 1, 1) if s == "weight" else (8,))
                for n in ("proj_q", "proj_k", "proj_v", "proj_out") for s in ("weight", "bias")}
    expected.update({
        "conv_offset.0.weight": (4, 1, 3, 3), "conv_offset.0.bias": (4,),
        "conv_offset.1.norm.weight": (4,), "conv_offset.1.norm.bias": (4,),
        "conv_offset.3.weight": (2, 4, 1, 1), "rpe_table": (4, 5, 9),
    })
    assert shapes == expected
    assert "rpe_table" not in attentions.build("deformable", dim=8, num_heads=4, use_pe=False).state_dict()
    # with dwc_pe, DAT's key rpe_table names its depthwise conv
    dwc = attentions.build("deformable", dim=8, num_heads=4, n_groups=2, offset_kernel=3, dwc_pe=True)
    del expected["rpe_table"]
    expected.update({"rpe_table.weight": (8, 1, 3, 3), "rpe_table.bias": (8,)})
    assert {k: tuple(v.shape) for k, v in dwc.state_dict().items()} == expected
    assert "dwc_pe=True" in repr(dwc)


# positional MACs on 2 × 5×7 with 12 samples per image: none; the table's 4 per logit; the 3×3 conv per channel
POSITIONAL = {"none": (dict(use_pe=False), 0), "bias": (dict(use_pe=True), 4 * 2 * 4 * 35 * 12),
              "dwc_pe": (dict(use_pe=True, dwc_pe=True), (2 * 35) * 8 * 9)}


@pytest.mark.parametrize("encoding", list(POSITIONAL))
def test_macs_hand_count(encoding):
    options, positional = POSITIONAL[encoding]
    module = attentions.build("deformable", dim=8, num_heads=4, stride=2, offset_kernel=5, **options)
    # B=2, 5×7 map: N = 35 queries; stride 2 -> 3×4 = 12 samples per image
    macs = module.macs(2, 5, 7)
    assert macs["projections"] == 2 * (2 * 35) * 8 * 8 + 2 * (2 * 12) * 8 * 8 == 12032
    assert macs["offsets"] == (2 * 12) * 8 * (25 + 5 + 2 + 4) == 6912
    assert macs["attention"] == (2 * 35) * 12 * 2 * 8 == 13440
    assert macs["positional"] == positional
    assert macs.total == 12032 + 6912 + 13440 + positional


def test_macs_with_dwc_pe_equal_fvcore():
    module = attentions.build("deformable", dim=8, num_heads=4, stride=2, dwc_pe=True).eval()
    logging.disable(logging.WARNING)
    try:
        counter = FlopCountAnalysis(module, (torch.randn(2, 5, 7, 8),))
        counter.unsupported_ops_warnings(False)
        counted = counter.total()
    finally:
        logging.disable(logging.NOTSET)
    assert counted == module.macs(2, 5, 7).total


# --------------------------------------------------------------------------------------------
# bad options (the generic bad inputs of every family are in test_registry.py)
# --------------------------------------------------------------------------------------------

def test_n_groups_not_dividing_heads():
    with pytest.raises(AttentionConfigError, match=r"n_groups 3 .*num_heads 4"):
        attentions.build("deformable", dim=12, num_heads=4, n_groups=3)


@pytest.mark.parametrize("option,value", [("n_groups", 0), ("stride", 0), ("n_groups", -2), ("stride", -1)])
def test_non_positive_ints(option, value):
    with pytest.raises(AttentionConfigError, match=rf"{option}.*got {value}"):
        attentions.build("deformable", dim=8, num_heads=2, **{option: value})


@pytest.mark.parametrize("kernel", [4, 0])
def test_bad_offset_kernel(kernel):
    with pytest.raises(AttentionConfigError, match=rf"offset_kernel.*got {kernel}"):
        attentions.build("deformable", dim=8, num_heads=2, offset_kernel=kernel)


def test_stride_larger_than_map_raises_at_forward():
    module = attentions.build("deformable", dim=8, num_heads=2, stride=3)   # building is fine
    module(torch.randn(1, 3, 4, 8))                                        # stride == min side: ok
    with pytest.raises(AttentionConfigError, match=r"stride 3 .*2×5"):
        module(torch.randn(1, 2, 5, 8))


@pytest.mark.parametrize("dwc_pe", [False, True], ids=["bias", "dwc_pe"])
def test_flex_forward_with_the_bias_as_score_mod(dwc_pe):
    """Compiled FlexAttention (forward only on the CPU) with DAT's position bias in a score_mod, or with the
    depthwise-conv encoding outside the kernel."""
    torch.manual_seed(9)
    module = make(seed=9, dtype=torch.float32, dim=16, num_heads=4, n_groups=2, stride=2, fmap_size=4,
                  dwc_pe=dwc_pe, backend="flex")
    x = torch.randn(2, 5, 6, 16)
    with torch.no_grad():
        check_float32_against_reference(module, x, naive_for(module), atol=5e-5, rtol=1e-4)
    with pytest.raises(attentions.BackendUnavailableError, match="no backward on cpu"):
        module(x)
